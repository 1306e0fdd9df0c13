"""How a storage node lays its data out in LMDB: keys and values, as bytes.

Pure codecs, no I/O.  Every key is big-endian so that LMDB's byte order is
the order of the tuple it encodes, and starts with the partition number so
that a whole cell is one contiguous key range (to replicate, checksum or
drop it with one cursor walk).

Named databases of the environment:

``objects``
    key ``>I partition | oid (8) | tid (8)`` → :class:`StoredObject`.  All
    revisions of one object are adjacent, oldest first, so ``loadBefore`` is
    one ``set_range`` and one step back.

``transactions``
    key ``>I partition | tid (8)`` → :class:`TransactionMetadata`.  A
    transaction's metadata lives in ``partition(tid)`` (the master picks TIDs
    with ``tid % P == ttid % P``, so what was voted under the TTID's
    partition is already in the right place at commit).

``pending``
    voted, not yet committed data, keyed by TTID first so that one
    transaction is one key range:
    ``ttid (8) | b"o" | >I partition | oid (8)`` → :class:`StoredObject`, and
    ``ttid (8) | b"t" | >I partition`` → :class:`TransactionMetadata`.  A
    restore batch (an import) also carries earlier transactions, each
    committed under its own TID: ``ttid (8) | b"c" | >I partition | oid (8) |
    tid (8)`` → :class:`StoredObject` and ``ttid (8) | b"m" | >I partition |
    tid (8)`` → :class:`TransactionMetadata`.  ``b"c"`` sorts before
    ``b"o"``, so that a commit meets an object's revisions in TID order.

``applied``
    key ``ttid (8)`` → ``tid (8)``: the transactions this node committed,
    so that a repeated ``Commit`` (a new master leader re-driving its
    decisions, even after this node restarted) is recognised as done.

``meta``
    small named values: cluster name, node id, master term, last TID, and
    per partition the last TID and :class:`PartitionStats`.

Object record value (:class:`StoredObject`), header then data::

    version (1) | flags (1) | crc32 (>I) | data_tid (8) | previous_tid (8) | data

``flags``: :data:`FLAG_COMPRESSED` (data is zlib-compressed),
:data:`FLAG_BACK_POINTER` (undo: the data is that of revision ``data_tid``
of the same object; ``data`` is empty), :data:`FLAG_UNDONE_CREATION` (undo
of the object's creation: the object does not exist from this revision on;
``data`` is empty).  The checksum is the CRC-32 of ``data`` exactly as the
client computed it (``neostore.records``); data is kept as it came, never
recompressed.  ``previous_tid`` is the revision the writer based its change
on (all zeros for a creation); a zero ``data_tid`` means "no back-pointer".
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

from neostore.records import Record

OID_SIZE = 8
TID_SIZE = 8
ZERO_ID = b"\0" * 8

#: LMDB named databases.
OBJECTS_DB = b"objects"
TRANSACTIONS_DB = b"transactions"
PENDING_DB = b"pending"
APPLIED_DB = b"applied"
META_DB = b"meta"
DATABASE_NAMES = (OBJECTS_DB, TRANSACTIONS_DB, PENDING_DB, APPLIED_DB, META_DB)

_PARTITION = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_OBJECT_HEADER = struct.Struct(">BBI8s8s")
_TRANSACTION_HEADER = struct.Struct(">BBIII")
_STATS = struct.Struct(">QQ")

RECORD_FORMAT_VERSION = 1
TRANSACTION_FORMAT_VERSION = 1

FLAG_COMPRESSED = 0x01
FLAG_BACK_POINTER = 0x02
FLAG_UNDONE_CREATION = 0x04
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_BACK_POINTER | FLAG_UNDONE_CREATION

TRANSACTION_FLAG_PACKED = 0x01

PENDING_OBJECT = b"o"
PENDING_METADATA = b"t"
PENDING_CARRIED_OBJECT = b"c"
PENDING_CARRIED_METADATA = b"m"

MAX_PARTITION = 2**32 - 1


class LayoutError(ValueError):
    """Bytes that do not decode: a bug or on-disk corruption."""


def _check_id(value: bytes, what: str) -> None:
    if len(value) != 8:
        raise LayoutError(f"{what} must be 8 bytes, got {len(value)}")


def _check_partition(partition: int) -> None:
    if not 0 <= partition <= MAX_PARTITION:
        raise LayoutError(f"partition {partition} out of range")


# -- objects -------------------------------------------------------------------


def object_prefix(partition: int, oid: bytes | None = None) -> bytes:
    """The key prefix of a whole cell, or of every revision of one object."""
    _check_partition(partition)
    if oid is None:
        return _PARTITION.pack(partition)
    _check_id(oid, "oid")
    return _PARTITION.pack(partition) + oid


def object_key(partition: int, oid: bytes, tid: bytes) -> bytes:
    _check_id(tid, "tid")
    return object_prefix(partition, oid) + tid


def decode_object_key(key: bytes) -> tuple[int, bytes, bytes]:
    """``(partition, oid, tid)`` of an ``objects`` key."""
    if len(key) != 4 + OID_SIZE + TID_SIZE:
        raise LayoutError(f"object key of {len(key)} bytes")
    return _PARTITION.unpack_from(key)[0], key[4:12], key[12:20]


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One revision of an object as kept on disk (see the module docstring).

    Exactly one of three kinds: data (``data_tid`` is None and not
    ``undone_creation``), a back-pointer to revision ``data_tid``, or an
    undone creation.
    """

    data: bytes = b""
    compressed: bool = False
    checksum: int = 0
    data_tid: bytes | None = None
    undone_creation: bool = False
    previous_tid: bytes = ZERO_ID

    def __post_init__(self) -> None:
        _check_id(self.previous_tid, "previous tid")
        if self.data_tid is not None:
            _check_id(self.data_tid, "data tid")
            if self.data_tid == ZERO_ID:
                raise LayoutError("a back-pointer cannot point to tid 0")
        if not 0 <= self.checksum < 2**32:
            raise LayoutError(f"checksum {self.checksum} is not a CRC-32")
        if (self.data_tid is not None or self.undone_creation) and (
            self.data or self.compressed or self.checksum
        ):
            raise LayoutError("a back-pointer or an undone creation carries no data")
        if self.data_tid is not None and self.undone_creation:
            raise LayoutError("a record cannot be both a back-pointer and an undone creation")

    @classmethod
    def from_record(cls, record: Record, previous_tid: bytes = ZERO_ID) -> StoredObject:
        return cls(record.data, record.compressed, record.checksum, previous_tid=previous_tid)

    @classmethod
    def back_pointer(cls, data_tid: bytes, previous_tid: bytes = ZERO_ID) -> StoredObject:
        return cls(data_tid=data_tid, previous_tid=previous_tid)

    @classmethod
    def deletion(cls, previous_tid: bytes = ZERO_ID) -> StoredObject:
        """The undo of an object's creation."""
        return cls(undone_creation=True, previous_tid=previous_tid)

    @property
    def has_data(self) -> bool:
        return self.data_tid is None and not self.undone_creation

    @property
    def is_back_pointer(self) -> bool:
        return self.data_tid is not None

    def record(self) -> Record:
        """The data as a :class:`~neostore.records.Record` (data kind only)."""
        if not self.has_data:
            raise LayoutError("this revision holds no data")
        return Record(self.data, self.compressed, self.checksum)


def encode_object(stored: StoredObject) -> bytes:
    flags = 0
    if stored.compressed:
        flags |= FLAG_COMPRESSED
    if stored.data_tid is not None:
        flags |= FLAG_BACK_POINTER
    if stored.undone_creation:
        flags |= FLAG_UNDONE_CREATION
    header = _OBJECT_HEADER.pack(
        RECORD_FORMAT_VERSION, flags, stored.checksum, stored.data_tid or ZERO_ID, stored.previous_tid
    )
    return header + stored.data


def decode_object(value: bytes) -> StoredObject:
    if len(value) < _OBJECT_HEADER.size:
        raise LayoutError(f"object record of {len(value)} bytes is shorter than its header")
    version, flags, checksum, data_tid, previous_tid = _OBJECT_HEADER.unpack_from(value)
    if version != RECORD_FORMAT_VERSION:
        raise LayoutError(f"unknown object record format {version}")
    if flags & ~_KNOWN_FLAGS:
        raise LayoutError(f"unknown object record flags 0x{flags:02x}")
    return StoredObject(
        data=bytes(value[_OBJECT_HEADER.size:]),
        compressed=bool(flags & FLAG_COMPRESSED),
        checksum=checksum,
        data_tid=data_tid if flags & FLAG_BACK_POINTER else None,
        undone_creation=bool(flags & FLAG_UNDONE_CREATION),
        previous_tid=previous_tid,
    )


# -- transactions --------------------------------------------------------------


def transaction_prefix(partition: int) -> bytes:
    _check_partition(partition)
    return _PARTITION.pack(partition)


def transaction_key(partition: int, tid: bytes) -> bytes:
    _check_id(tid, "tid")
    return transaction_prefix(partition) + tid


def decode_transaction_key(key: bytes) -> tuple[int, bytes]:
    """``(partition, tid)`` of a ``transactions`` key."""
    if len(key) != 4 + TID_SIZE:
        raise LayoutError(f"transaction key of {len(key)} bytes")
    return _PARTITION.unpack_from(key)[0], key[4:12]


@dataclasses.dataclass(frozen=True)
class TransactionMetadata:
    """ZODB's TransactionMetaData as stored (the TID is in the key)."""

    user: bytes = b""
    description: bytes = b""
    extension: bytes = b""
    oids: tuple[bytes, ...] = ()
    packed: bool = False

    def __post_init__(self) -> None:
        for oid in self.oids:
            _check_id(oid, "oid")


def encode_transaction(metadata: TransactionMetadata) -> bytes:
    flags = TRANSACTION_FLAG_PACKED if metadata.packed else 0
    header = _TRANSACTION_HEADER.pack(
        TRANSACTION_FORMAT_VERSION, flags,
        len(metadata.user), len(metadata.description), len(metadata.extension),
    )
    return b"".join((
        header, metadata.user, metadata.description, metadata.extension,
        _PARTITION.pack(len(metadata.oids)), *metadata.oids,
    ))


def decode_transaction(value: bytes) -> TransactionMetadata:
    size = _TRANSACTION_HEADER.size
    if len(value) < size + 4:
        raise LayoutError(f"transaction record of {len(value)} bytes is too short")
    version, flags, user_size, description_size, extension_size = _TRANSACTION_HEADER.unpack_from(value)
    if version != TRANSACTION_FORMAT_VERSION:
        raise LayoutError(f"unknown transaction record format {version}")
    if flags & ~TRANSACTION_FLAG_PACKED:
        raise LayoutError(f"unknown transaction record flags 0x{flags:02x}")
    position = size
    fields = []
    for length in (user_size, description_size, extension_size):
        fields.append(bytes(value[position:position + length]))
        position += length
    if len(value) < position + 4:
        raise LayoutError("transaction record truncated before its oid count")
    (count,) = _PARTITION.unpack_from(value, position)
    position += 4
    if len(value) != position + count * OID_SIZE:
        raise LayoutError(f"transaction record length does not match its {count} oids")
    oids = tuple(bytes(value[position + i * OID_SIZE:position + (i + 1) * OID_SIZE]) for i in range(count))
    return TransactionMetadata(fields[0], fields[1], fields[2], oids, bool(flags & TRANSACTION_FLAG_PACKED))


# -- pending -------------------------------------------------------------------


def pending_prefix(ttid: bytes) -> bytes:
    _check_id(ttid, "ttid")
    return ttid


def pending_object_key(ttid: bytes, partition: int, oid: bytes, tid: bytes | None = None) -> bytes:
    """``tid``: the carried transaction of a restore batch the revision belongs to."""
    _check_partition(partition)
    _check_id(oid, "oid")
    if tid is None:
        return pending_prefix(ttid) + PENDING_OBJECT + _PARTITION.pack(partition) + oid
    _check_id(tid, "carried tid")
    return pending_prefix(ttid) + PENDING_CARRIED_OBJECT + _PARTITION.pack(partition) + oid + tid


def pending_metadata_key(ttid: bytes, partition: int, tid: bytes | None = None) -> bytes:
    """``tid``: that of a carried transaction of a restore batch."""
    _check_partition(partition)
    if tid is None:
        return pending_prefix(ttid) + PENDING_METADATA + _PARTITION.pack(partition)
    _check_id(tid, "carried tid")
    return pending_prefix(ttid) + PENDING_CARRIED_METADATA + _PARTITION.pack(partition) + tid


@dataclasses.dataclass(frozen=True)
class PendingKey:
    """A decoded ``pending`` key; ``oid`` is None for metadata, ``tid`` is
    None but for what a restore batch carries (committed under ``tid``)."""

    ttid: bytes
    partition: int
    oid: bytes | None
    tid: bytes | None = None


def decode_pending_key(key: bytes) -> PendingKey:
    if len(key) < 13:
        raise LayoutError(f"pending key of {len(key)} bytes")
    ttid, kind = key[:8], key[8:9]
    (partition,) = _PARTITION.unpack_from(key, 9)
    if kind == PENDING_OBJECT and len(key) == 21:
        return PendingKey(ttid, partition, key[13:21])
    if kind == PENDING_METADATA and len(key) == 13:
        return PendingKey(ttid, partition, None)
    if kind == PENDING_CARRIED_OBJECT and len(key) == 29:
        return PendingKey(ttid, partition, key[13:21], key[21:29])
    if kind == PENDING_CARRIED_METADATA and len(key) == 21:
        return PendingKey(ttid, partition, None, key[13:21])
    raise LayoutError(f"malformed pending key {key.hex()}")


# -- applied and meta ----------------------------------------------------------


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(value: bytes) -> int:
    if len(value) != 8:
        raise LayoutError(f"u64 value of {len(value)} bytes")
    value_int: int = _U64.unpack(value)[0]
    return value_int


def applied_key(ttid: bytes) -> bytes:
    _check_id(ttid, "ttid")
    return ttid


META_CLUSTER_NAME = b"cluster_name"
#: The id (32 hex digits) of the cluster the data belongs to, from the
#: first registration; absent in a new directory or one older than ids.
META_CLUSTER_ID = b"cluster_id"
META_NODE_ID = b"node_id"
META_TERM = b"master_term"
META_LAST_TID = b"last_tid"
_META_PARTITION_LAST_TID = b"partition_last_tid:"
_META_PARTITION_STATS = b"partition_stats:"
_META_REPLICATION = b"replication:"
#: The truncations applied (neoctl truncate): (after, upto] TID ranges, 16 bytes each.
META_TRUNCATIONS = b"truncations"


def encode_truncations(ranges: Sequence[tuple[bytes, bytes]]) -> bytes:
    for after, upto in ranges:
        _check_id(after, "tid")
        _check_id(upto, "tid")
    return b"".join(after + upto for after, upto in ranges)


def decode_truncations(value: bytes) -> list[tuple[bytes, bytes]]:
    if len(value) % 16:
        raise LayoutError(f"truncations of {len(value)} bytes")
    return [(value[i:i + 8], value[i + 8:i + 16]) for i in range(0, len(value), 16)]

#: Range kinds of a cell, in the order replication walks them (values of
#: ``RangeKind`` in storage.proto).
RANGE_TRANSACTIONS = 1
RANGE_OBJECTS = 2


def partition_last_tid_key(partition: int) -> bytes:
    _check_partition(partition)
    return _META_PARTITION_LAST_TID + _PARTITION.pack(partition)


def partition_stats_key(partition: int) -> bytes:
    _check_partition(partition)
    return _META_PARTITION_STATS + _PARTITION.pack(partition)


def partition_last_tid_prefix() -> bytes:
    return _META_PARTITION_LAST_TID


def decode_partition_meta_key(key: bytes, prefix: bytes) -> int:
    if not key.startswith(prefix) or len(key) != len(prefix) + 4:
        raise LayoutError(f"malformed meta key {key!r}")
    partition: int = _PARTITION.unpack_from(key, len(prefix))[0]
    return partition


@dataclasses.dataclass(frozen=True)
class PartitionStats:
    """Per partition: objects whose current revision has data, bytes stored."""

    object_count: int = 0
    size: int = 0

    def plus(self, object_delta: int, size_delta: int) -> PartitionStats:
        return PartitionStats(max(0, self.object_count + object_delta), max(0, self.size + size_delta))

    @staticmethod
    def total(stats: Sequence[PartitionStats]) -> PartitionStats:
        return PartitionStats(sum(s.object_count for s in stats), sum(s.size for s in stats))


def encode_stats(stats: PartitionStats) -> bytes:
    return _STATS.pack(stats.object_count, stats.size)


def decode_stats(value: bytes) -> PartitionStats:
    if len(value) != _STATS.size:
        raise LayoutError(f"stats value of {len(value)} bytes")
    return PartitionStats(*_STATS.unpack(value))


def replication_key(partition: int) -> bytes:
    """meta key of the replication position of ``partition``'s cell."""
    _check_partition(partition)
    return _META_REPLICATION + _PARTITION.pack(partition)


@dataclasses.dataclass(frozen=True)
class ReplicationPosition:
    """Where the catch-up of a cell stands: every transaction of the
    partition up to ``max_tid`` is held for every key up to ``after_key`` of
    range ``kind`` (and every key of the kinds before it)."""

    max_tid: bytes
    kind: int
    after_key: bytes = b""


def encode_replication_position(position: ReplicationPosition) -> bytes:
    _check_id(position.max_tid, "tid")
    return position.max_tid + bytes([position.kind]) + position.after_key


def decode_replication_position(value: bytes) -> ReplicationPosition:
    if len(value) < 9 or value[8] not in (RANGE_TRANSACTIONS, RANGE_OBJECTS):
        raise LayoutError(f"malformed replication position of {len(value)} bytes")
    return ReplicationPosition(value[:8], value[8], value[9:])


def range_prefix(kind: int, partition: int) -> bytes:
    """The key prefix of one range kind of one cell."""
    if kind == RANGE_TRANSACTIONS:
        return transaction_prefix(partition)
    if kind == RANGE_OBJECTS:
        return object_prefix(partition)
    raise LayoutError(f"unknown range kind {kind}")


def range_key_tid(kind: int, suffix: bytes) -> bytes:
    """The tid of a range record, from its key without the partition prefix."""
    expected = TID_SIZE if kind == RANGE_TRANSACTIONS else OID_SIZE + TID_SIZE
    if len(suffix) != expected:
        raise LayoutError(f"range key of {len(suffix)} bytes, expected {expected}")
    return suffix[-TID_SIZE:]
