"""``neoctl import``: bring an existing ZODB database into a cluster, and check it came whole.

The source is any ZODB storage a ZConfig file describes (``<filestorage>``,
``<zeoclient>``, ``<relstorage>``, ...: what ``zodbconvert`` reads); the
destination is the cluster, through :class:`~neostore.client.NeoStorage`.
Every source transaction is copied with its TID, status, user, description,
extension and records (IStorageRestoreable: ``tpc_begin(txn, tid, status)``
and ``restore``), in TID order, one destination transaction each: an
interrupted import leaves the cluster with a prefix of the source's
history, which ``--incremental`` continues after its last TID (as
zodbconvert does), never copying a transaction twice.

Copying is pipelined: up to ``window`` transactions are restored and voted
at once (each on its own NeoStorage connection: the storage nodes take
their records while earlier ones are being decided), and they are
finished strictly in TID order, since the masters refuse a TID that is not
above the last one.  A transaction that writes an oid an earlier one in
flight writes starts once that one voted: it then waits on the storage
nodes for its locks, which the earlier one releases when it is applied.
Started sooner, it could take a lock the earlier one still needs, and wait
for a finish that waits for it.

:func:`verify` walks both histories side by side and compares every
transaction's metadata and every record's data.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ZODB.Connection import TransactionMetaData

from neostore import errors
from neostore.ids import ZERO_TID, p64, tid_repr, tid_time, u64

#: Transactions restored and voted ahead of the one being finished.
DEFAULT_WINDOW = 8


def open_source(path: str) -> Any:
    """The storage a ZConfig file describes (one storage section)."""
    import ZConfig
    import ZODB.config

    try:
        with open(path) as config:
            return ZODB.config.storageFromFile(config)
    except OSError as error:
        raise errors.BadRequest(f"cannot read source configuration {path}: {error.strerror}") from None
    except ZConfig.ConfigurationError as error:
        raise errors.BadRequest(
            f"{path} is not a ZODB storage configuration (e.g. <filestorage> path Data.fs </filestorage>): "
            f"{error}") from None


@dataclasses.dataclass
class Progress:
    """How far an import (or a verification) went."""

    transactions: int = 0
    records: int = 0
    bytes: int = 0
    first_tid: bytes = ZERO_TID
    last_tid: bytes = ZERO_TID
    started: float = dataclasses.field(default_factory=time.monotonic)
    fraction: float = 0.0  # of the source's time span (from its first TID to its last)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Records per second so far."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def eta(self) -> float | None:
        if self.fraction <= 0.0 or self.fraction >= 1.0:
            return None
        return self.seconds * (1.0 - self.fraction) / self.fraction

    def as_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions, "records": self.records, "bytes": self.bytes,
            "first_tid": self.first_tid.hex() if self.transactions else None,
            "last_tid": self.last_tid.hex() if self.transactions else None,
            "seconds": round(self.seconds, 3), "records_per_s": round(self.rate(), 1),
        }


class _Span:
    """Where a TID lies in the source's history, as a fraction of its time span."""

    def __init__(self, first: bytes, last: bytes) -> None:
        self._first = tid_time(first)
        self._width = max(tid_time(last) - self._first, 1e-9)

    def fraction(self, tid: bytes) -> float:
        return min(1.0, max(0.0, (tid_time(tid) - self._first) / self._width))


def _first_tid(storage: Any, start: bytes | None) -> bytes | None:
    for transaction in storage.iterator(start):
        return bytes(transaction.tid)
    return None


def import_start(source: Any, destination: Any, incremental: bool) -> bytes | None:
    """The source TID to copy from (None: nothing to copy).  A destination
    that holds transactions is refused unless ``incremental``; then its last
    TID must be one of the source's, and the copy continues after it."""
    last = destination.lastTransaction()
    if last == ZERO_TID:
        return _first_tid(source, None)
    if not incremental:
        raise errors.BadRequest(
            f"the cluster is not empty: it holds transactions up to {tid_repr(last)}; "
            "import into an empty cluster, or pass --incremental to continue after that TID")
    if _first_tid(source, last) != last:
        raise errors.BadRequest(
            f"the cluster's last transaction {tid_repr(last)} is not a transaction of the source: "
            "it is not a copy of this database, --incremental cannot continue it")
    return _first_tid(source, p64(u64(last) + 1))


@dataclasses.dataclass
class _Copy:
    """One source transaction on its way into the cluster."""

    tid: bytes
    status: str
    meta: TransactionMetaData
    records: list[tuple[bytes, bytes | None]]  # (oid, data)
    voted: threading.Event = dataclasses.field(default_factory=threading.Event)
    storage: Any = None
    error: BaseException | None = None
    oids: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        self.oids = frozenset(oid for oid, _ in self.records)


def _read(source: Any, start: bytes) -> Iterator[_Copy]:
    previous = ZERO_TID
    for transaction in source.iterator(start):
        tid = bytes(transaction.tid)
        if tid <= previous:
            # zodbconvert (BaseStorage.copy) moves such a transaction to a later
            # TID; an import keeps every TID, so that --verify and
            # --incremental can rely on them.
            raise errors.BadRequest(
                f"the source's transaction {tid_repr(tid)} comes after {tid_repr(previous)}: its timestamps are "
                "out of order (an old FileStorage?); zodbconvert can copy it under new TIDs")
        previous = tid
        meta = TransactionMetaData(transaction.user, transaction.description, transaction.extension_bytes)
        records = [(bytes(record.oid), record.data) for record in transaction]
        yield _Copy(tid, transaction.status, meta, records)


class Importer:
    """Copies a source storage into the cluster that ``new_client()`` reaches
    (one NeoStorage per transaction in flight)."""

    def __init__(self, source: Any, new_client: Callable[[], Any], window: int = DEFAULT_WINDOW,
                 report: Callable[[Progress], None] | None = None, report_every: float = 1.0) -> None:
        self._source = source
        self._new_client = new_client
        self._window = max(1, window)
        self._report = report
        self._report_every = report_every

    def run(self, incremental: bool = False) -> Progress:
        progress = Progress()
        clients: list[Any] = []
        try:
            clients.extend(self._new_client() for _ in range(self._window))
            start = import_start(self._source, clients[0], incremental)
            if start is None:
                return progress
            span = _Span(start, self._source.lastTransaction())
            self._copy(_read(self._source, start), clients, progress, span)
        finally:
            for client in clients:
                client.close()
        if self._report is not None:
            self._report(progress)
        return progress

    def _copy(self, copies: Iterator[_Copy], clients: list[Any], progress: Progress, span: _Span) -> None:
        """Restore and vote up to ``window`` transactions at once (one voter
        thread per client), finish them in TID order on this thread."""
        idle: queue.Queue[Any] = queue.Queue()
        for client in clients:
            idle.put(client)
        in_flight: collections.deque[_Copy] = collections.deque()
        waiting: _Copy | None = None  # read, not started: an earlier one writing some of its oids still votes
        exhausted = False

        def launch() -> None:
            nonlocal waiting, exhausted
            while len(in_flight) < self._window and not idle.empty():
                copy = waiting if waiting is not None else next(copies, None)
                waiting = None
                if copy is None:
                    exhausted = True
                    return
                if any(not other.voted.is_set() and not copy.oids.isdisjoint(other.oids) for other in in_flight):
                    waiting = copy
                    return
                copy.storage = idle.get()
                in_flight.append(copy)
                threading.Thread(target=self._vote, args=(copy,), name="neostore-import-vote", daemon=True).start()

        reported = time.monotonic()
        try:
            while in_flight or waiting is not None or not exhausted:
                launch()
                if not in_flight:
                    continue
                head = in_flight[0]
                head.voted.wait()
                if head.error is not None:
                    raise head.error
                launch()  # those that waited for its vote queue on its locks while it finishes
                in_flight.popleft()
                head.storage.tpc_finish(head.meta)
                idle.put(head.storage)
                if not progress.transactions:
                    progress.first_tid = head.tid
                progress.transactions += 1
                progress.records += len(head.records)
                progress.bytes += sum(len(data) for _, data in head.records if data is not None)
                progress.last_tid = head.tid
                progress.fraction = span.fraction(head.tid)
                if self._report is not None and time.monotonic() - reported >= self._report_every:
                    reported = time.monotonic()
                    self._report(progress)
        finally:
            for copy in in_flight:  # a failure: the ones voted or voting are dropped
                copy.voted.wait()
                try:
                    copy.storage.tpc_abort(copy.meta)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass

    @staticmethod
    def _vote(copy: _Copy) -> None:
        storage, meta = copy.storage, copy.meta
        try:
            storage.tpc_begin(meta, copy.tid, copy.status)
            for oid, data in copy.records:
                storage.restore(oid, copy.tid, data, "", None, meta)
            storage.tpc_vote(meta)
        except BaseException as error:  # noqa: BLE001 - handed to the finishing thread
            copy.error = error
        finally:
            copy.voted.set()


@dataclasses.dataclass
class Verification:
    """What :func:`verify` compared and found."""

    transactions: int = 0
    records: int = 0
    differences: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"transactions": self.transactions, "records": self.records,
                "differences": len(self.differences), "first_differences": self.differences[:20],
                "seconds": round(self.seconds, 3)}


def _metadata(transaction: Any) -> tuple[Any, ...]:
    return (transaction.status, transaction.user, transaction.description, transaction.extension)


def verify(source: Any, destination: Any, report: Callable[[Verification], None] | None = None,
           limit: int = 100) -> Verification:
    """Compare the whole histories: TIDs, metadata, every record's oid and
    data (records of a transaction compared by oid).  Stops listing
    differences after ``limit``."""
    result = Verification()
    started = time.monotonic()
    reported = started
    theirs = iter(destination.iterator())
    for mine in source.iterator():
        other = next(theirs, None)
        if other is None:
            result.differences.append(f"transaction {tid_repr(mine.tid)} and later are missing from the cluster")
            break
        if other.tid != mine.tid:
            result.differences.append(
                f"transaction {tid_repr(mine.tid)} of the source faces {tid_repr(other.tid)} in the cluster")
            break
        result.transactions += 1
        if _metadata(mine) != _metadata(other):
            result.differences.append(f"transaction {tid_repr(mine.tid)}: metadata differ")
        want = {bytes(record.oid): record.data for record in mine}
        got = {bytes(record.oid): record.data for record in other}
        result.records += len(want)
        for oid in sorted(set(want) | set(got)):
            if oid not in want or oid not in got or want[oid] != got[oid]:
                what = "missing" if oid not in got else "unexpected" if oid not in want else "different data"
                result.differences.append(f"transaction {tid_repr(mine.tid)}: object {oid.hex()}: {what}")
        if len(result.differences) >= limit:
            break
        if report is not None and time.monotonic() - reported >= 1.0:
            reported = time.monotonic()
            result.seconds = reported - started
            report(result)
    else:
        extra = next(theirs, None)
        if extra is not None:
            result.differences.append(f"the cluster holds transactions the source does not, from {tid_repr(extra.tid)}")
    result.seconds = time.monotonic() - started
    return result


def progress_line(progress: Progress) -> str:
    eta = progress.eta()
    return (f"{progress.transactions:,} transactions, {progress.records:,} records "
            f"({progress.bytes / 1e6:.1f} MB) in {progress.seconds:.0f}s: {progress.rate():,.0f} records/s, "
            f"{100 * progress.fraction:.0f}% of the source's history"
            + (f", about {eta:.0f}s left" if eta is not None else ""))


