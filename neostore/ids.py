"""Object ids, transaction ids and how TIDs are chosen.

OIDs and TIDs are 8-byte big-endian integers, exactly as ZODB holds them.
A TID is also a ZODB timestamp (``persistent.TimeStamp``): the high 4 bytes
count minutes since 1900, the low 4 bytes the fraction of the minute.

TIDs must grow strictly, whatever the clock does: :class:`TidGenerator`
never returns a TID at or below the last one, and when the clock goes back
it keeps counting up from the last TID.  A final TID additionally satisfies
``tid % num_partitions == ttid % num_partitions`` (as NEO does) so that the
transaction's metadata, voted on the cells of ``partition(ttid)``, is already
on the cells of ``partition(tid)`` and never moves at commit.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from persistent.TimeStamp import TimeStamp

ZERO_TID = b"\0" * 8
MAX_TID = b"\x7f\xff\xff\xff\xff\xff\xff\xff"
ROOT_OID = b"\0" * 8

_U64 = struct.Struct(">Q")


def p64(value: int) -> bytes:
    """Pack an unsigned 64-bit integer as 8 big-endian bytes."""
    return _U64.pack(value)


def u64(value: bytes) -> int:
    """Unpack 8 big-endian bytes."""
    return _U64.unpack(value)[0]


def tid_repr(tid: bytes | None) -> str:
    """A TID as people read it: hex, as ``neoctl`` and ZODB print them."""
    if not tid:
        return "-"
    return f"0x{u64(tid):016x}"


oid_repr = tid_repr


def timestamp_tid(now: float) -> int:
    """The TID (as an int) of the ZODB timestamp for ``now`` (seconds)."""
    t = time.gmtime(now)
    seconds = t.tm_sec + (now % 1.0)
    return u64(TimeStamp(t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, seconds).raw())


def tid_time(tid: bytes) -> float:
    """Seconds since the epoch encoded in a TID."""
    return TimeStamp(tid).timeTime()


def partition_of(oid_or_tid: bytes, num_partitions: int) -> int:
    """The partition holding an object (by oid) or a transaction (by tid)."""
    return u64(oid_or_tid) % num_partitions


class TidGenerator:
    """Strictly increasing ZODB timestamps, whatever the clock does.

    ``clock`` returns seconds since the epoch; it is a parameter so that
    tests can drive it backwards and forwards.
    """

    def __init__(self, last: bytes = ZERO_TID, clock: Callable[[], float] = time.time) -> None:
        self._last = u64(last)
        self._clock = clock

    @property
    def last(self) -> bytes:
        return p64(self._last)

    def observe(self, tid: bytes) -> None:
        """Never hand out a TID at or below ``tid`` (e.g. after recovery)."""
        self._last = max(self._last, u64(tid))

    def next(self, num_partitions: int = 1, same_partition_as: bytes | None = None,
             partition: int | None = None) -> bytes:
        """A TID above every previous one.

        With ``partition``, the TID falls in that partition (``tid %
        num_partitions == partition``); with ``same_partition_as``, in the
        same partition as that id.
        """
        candidate = max(self._last + 1, timestamp_tid(self._clock()))
        if same_partition_as is not None:
            partition = u64(same_partition_as) % num_partitions
        if partition is not None and num_partitions > 1:
            candidate += (partition - candidate) % num_partitions
        if candidate >= u64(MAX_TID):
            raise OverflowError("TID space exhausted")
        self._last = candidate
        return p64(candidate)
