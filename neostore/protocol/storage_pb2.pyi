from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANGE_KIND_UNSPECIFIED: _ClassVar[RangeKind]
    TRANSACTIONS: _ClassVar[RangeKind]
    OBJECTS: _ClassVar[RangeKind]
RANGE_KIND_UNSPECIFIED: RangeKind
TRANSACTIONS: RangeKind
OBJECTS: RangeKind

class LoadBeforeRequest(_message.Message):
    __slots__ = ("oid", "before_tid", "table_version", "unfinished_ttids", "read_ahead_bytes")
    OID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TID_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    READ_AHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    before_tid: bytes
    table_version: int
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    read_ahead_bytes: int
    def __init__(self, oid: _Optional[bytes] = ..., before_tid: _Optional[bytes] = ..., table_version: _Optional[int] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ..., read_ahead_bytes: _Optional[int] = ...) -> None: ...

class LoadBeforeManyRequest(_message.Message):
    __slots__ = ("oids", "before_tid", "table_version", "unfinished_ttids", "max_bytes", "no_wait")
    OIDS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TID_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    oids: _containers.RepeatedScalarFieldContainer[bytes]
    before_tid: bytes
    table_version: int
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    max_bytes: int
    no_wait: bool
    def __init__(self, oids: _Optional[_Iterable[bytes]] = ..., before_tid: _Optional[bytes] = ..., table_version: _Optional[int] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ..., max_bytes: _Optional[int] = ..., no_wait: _Optional[bool] = ...) -> None: ...

class LoadManyReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[LoadReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[LoadReply, _Mapping]]] = ...) -> None: ...

class LoadSerialRequest(_message.Message):
    __slots__ = ("oid", "serial", "table_version", "unfinished_ttids")
    OID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    serial: bytes
    table_version: int
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, oid: _Optional[bytes] = ..., serial: _Optional[bytes] = ..., table_version: _Optional[int] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("status", "record", "serial", "next_serial", "data_serial", "read_ahead")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[LoadReply.Status]
        FOUND: _ClassVar[LoadReply.Status]
        NO_REVISION: _ClassVar[LoadReply.Status]
    STATUS_UNSPECIFIED: LoadReply.Status
    FOUND: LoadReply.Status
    NO_REVISION: LoadReply.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NEXT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    DATA_SERIAL_FIELD_NUMBER: _ClassVar[int]
    READ_AHEAD_FIELD_NUMBER: _ClassVar[int]
    status: LoadReply.Status
    record: _common_pb2.DataRecord
    serial: bytes
    next_serial: bytes
    data_serial: bytes
    read_ahead: _containers.RepeatedCompositeFieldContainer[ReadAhead]
    def __init__(self, status: _Optional[_Union[LoadReply.Status, str]] = ..., record: _Optional[_Union[_common_pb2.DataRecord, _Mapping]] = ..., serial: _Optional[bytes] = ..., next_serial: _Optional[bytes] = ..., data_serial: _Optional[bytes] = ..., read_ahead: _Optional[_Iterable[_Union[ReadAhead, _Mapping]]] = ...) -> None: ...

class ReadAhead(_message.Message):
    __slots__ = ("oid", "reply")
    OID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    reply: LoadReply
    def __init__(self, oid: _Optional[bytes] = ..., reply: _Optional[_Union[LoadReply, _Mapping]] = ...) -> None: ...

class ObjectStore(_message.Message):
    __slots__ = ("oid", "serial", "record", "data_serial", "undone_creation", "check_only", "restore", "tid")
    OID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DATA_SERIAL_FIELD_NUMBER: _ClassVar[int]
    UNDONE_CREATION_FIELD_NUMBER: _ClassVar[int]
    CHECK_ONLY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    serial: bytes
    record: _common_pb2.DataRecord
    data_serial: bytes
    undone_creation: bool
    check_only: bool
    restore: bool
    tid: bytes
    def __init__(self, oid: _Optional[bytes] = ..., serial: _Optional[bytes] = ..., record: _Optional[_Union[_common_pb2.DataRecord, _Mapping]] = ..., data_serial: _Optional[bytes] = ..., undone_creation: _Optional[bool] = ..., check_only: _Optional[bool] = ..., restore: _Optional[bool] = ..., tid: _Optional[bytes] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("ttid", "objects", "table_version")
    TTID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    objects: _containers.RepeatedCompositeFieldContainer[ObjectStore]
    table_version: int
    def __init__(self, ttid: _Optional[bytes] = ..., objects: _Optional[_Iterable[_Union[ObjectStore, _Mapping]]] = ..., table_version: _Optional[int] = ...) -> None: ...

class Conflict(_message.Message):
    __slots__ = ("oid", "serial", "committed_serial", "read_conflict")
    OID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    READ_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    serial: bytes
    committed_serial: bytes
    read_conflict: bool
    def __init__(self, oid: _Optional[bytes] = ..., serial: _Optional[bytes] = ..., committed_serial: _Optional[bytes] = ..., read_conflict: _Optional[bool] = ...) -> None: ...

class StoreReply(_message.Message):
    __slots__ = ("conflicts",)
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    def __init__(self, conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ...) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("ttid", "transaction", "has_transaction", "metadata_partition", "objects", "table_version", "lock_timeout", "carried")
    TTID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    HAS_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_PARTITION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCK_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CARRIED_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    transaction: _common_pb2.TransactionInfo
    has_transaction: bool
    metadata_partition: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectStore]
    table_version: int
    lock_timeout: float
    carried: _containers.RepeatedCompositeFieldContainer[_common_pb2.TransactionInfo]
    def __init__(self, ttid: _Optional[bytes] = ..., transaction: _Optional[_Union[_common_pb2.TransactionInfo, _Mapping]] = ..., has_transaction: _Optional[bool] = ..., metadata_partition: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectStore, _Mapping]]] = ..., table_version: _Optional[int] = ..., lock_timeout: _Optional[float] = ..., carried: _Optional[_Iterable[_Union[_common_pb2.TransactionInfo, _Mapping]]] = ...) -> None: ...

class AbortTransactionRequest(_message.Message):
    __slots__ = ("ttid", "term")
    TTID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    term: int
    def __init__(self, ttid: _Optional[bytes] = ..., term: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("term", "decisions")
    TERM_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    term: int
    decisions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Decision]
    def __init__(self, term: _Optional[int] = ..., decisions: _Optional[_Iterable[_Union[_common_pb2.Decision, _Mapping]]] = ...) -> None: ...

class CommitResult(_message.Message):
    __slots__ = ("error", "message")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error: str
    message: str
    def __init__(self, error: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CommitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CommitResult, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("oid", "size", "unfinished_ttids")
    OID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    size: int
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, oid: _Optional[bytes] = ..., size: _Optional[int] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("tid", "size")
    TID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    size: int
    def __init__(self, tid: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, revisions: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("partitions", "min_tid", "max_tid", "limit", "descending", "unfinished_ttids")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_TID_FIELD_NUMBER: _ClassVar[int]
    MAX_TID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    min_tid: bytes
    max_tid: bytes
    limit: int
    descending: bool
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, partitions: _Optional[_Iterable[int]] = ..., min_tid: _Optional[bytes] = ..., max_tid: _Optional[bytes] = ..., limit: _Optional[int] = ..., descending: _Optional[bool] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListTransactionsReply(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[_common_pb2.TransactionInfo]
    def __init__(self, transactions: _Optional[_Iterable[_Union[_common_pb2.TransactionInfo, _Mapping]]] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("partition", "after_oid", "limit", "unfinished_ttids")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    AFTER_OID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    after_oid: bytes
    limit: int
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, partition: _Optional[int] = ..., after_oid: _Optional[bytes] = ..., limit: _Optional[int] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CurrentObject(_message.Message):
    __slots__ = ("oid", "serial", "record")
    OID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    oid: bytes
    serial: bytes
    record: _common_pb2.DataRecord
    def __init__(self, oid: _Optional[bytes] = ..., serial: _Optional[bytes] = ..., record: _Optional[_Union[_common_pb2.DataRecord, _Mapping]] = ...) -> None: ...

class ListObjectsReply(_message.Message):
    __slots__ = ("objects", "more")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[CurrentObject]
    more: bool
    def __init__(self, objects: _Optional[_Iterable[_Union[CurrentObject, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("partitions", "unfinished_ttids")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_TTIDS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    unfinished_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, partitions: _Optional[_Iterable[int]] = ..., unfinished_ttids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("object_count", "size", "last_tid")
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    object_count: int
    size: int
    last_tid: bytes
    def __init__(self, object_count: _Optional[int] = ..., size: _Optional[int] = ..., last_tid: _Optional[bytes] = ...) -> None: ...

class RangeRequest(_message.Message):
    __slots__ = ("partition", "kind", "after_key", "end_key", "max_tid", "limit", "max_bytes")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AFTER_KEY_FIELD_NUMBER: _ClassVar[int]
    END_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_TID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    partition: int
    kind: RangeKind
    after_key: bytes
    end_key: bytes
    max_tid: bytes
    limit: int
    max_bytes: int
    def __init__(self, partition: _Optional[int] = ..., kind: _Optional[_Union[RangeKind, str]] = ..., after_key: _Optional[bytes] = ..., end_key: _Optional[bytes] = ..., max_tid: _Optional[bytes] = ..., limit: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class RangeChecksum(_message.Message):
    __slots__ = ("count", "size", "digest", "last_key", "complete")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAST_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    count: int
    size: int
    digest: bytes
    last_key: bytes
    complete: bool
    def __init__(self, count: _Optional[int] = ..., size: _Optional[int] = ..., digest: _Optional[bytes] = ..., last_key: _Optional[bytes] = ..., complete: _Optional[bool] = ...) -> None: ...

class RangeRecord(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class RangeRecords(_message.Message):
    __slots__ = ("records", "complete")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RangeRecord]
    complete: bool
    def __init__(self, records: _Optional[_Iterable[_Union[RangeRecord, _Mapping]]] = ..., complete: _Optional[bool] = ...) -> None: ...

class DropCorruptedCellRequest(_message.Message):
    __slots__ = ("partition", "table_version")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    partition: int
    table_version: int
    def __init__(self, partition: _Optional[int] = ..., table_version: _Optional[int] = ...) -> None: ...

class DropCorruptedCellReply(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: int
    def __init__(self, records: _Optional[int] = ...) -> None: ...

class StorageTruncateRequest(_message.Message):
    __slots__ = ("truncation", "term")
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    truncation: _common_pb2.Truncation
    term: int
    def __init__(self, truncation: _Optional[_Union[_common_pb2.Truncation, _Mapping]] = ..., term: _Optional[int] = ...) -> None: ...

class StorageTruncateReply(_message.Message):
    __slots__ = ("transactions", "revisions")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: int
    revisions: int
    def __init__(self, transactions: _Optional[int] = ..., revisions: _Optional[int] = ...) -> None: ...

class VoteReply(_message.Message):
    __slots__ = ("conflicts", "unchecked_partitions")
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    unchecked_partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ..., unchecked_partitions: _Optional[_Iterable[int]] = ...) -> None: ...
