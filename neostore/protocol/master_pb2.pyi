from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_name", "state", "num_partitions", "num_replicas", "table_version", "last_oid", "last_tid", "masters", "leader", "term")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ClusterInfo.State]
        EMPTY: _ClassVar[ClusterInfo.State]
        RUNNING: _ClassVar[ClusterInfo.State]
    STATE_UNSPECIFIED: ClusterInfo.State
    EMPTY: ClusterInfo.State
    RUNNING: ClusterInfo.State
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_OID_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    MASTERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    state: ClusterInfo.State
    num_partitions: int
    num_replicas: int
    table_version: int
    last_oid: bytes
    last_tid: bytes
    masters: _containers.RepeatedScalarFieldContainer[str]
    leader: str
    term: int
    def __init__(self, cluster_name: _Optional[str] = ..., state: _Optional[_Union[ClusterInfo.State, str]] = ..., num_partitions: _Optional[int] = ..., num_replicas: _Optional[int] = ..., table_version: _Optional[int] = ..., last_oid: _Optional[bytes] = ..., last_tid: _Optional[bytes] = ..., masters: _Optional[_Iterable[str]] = ..., leader: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class NewOidsRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class NewOidsReply(_message.Message):
    __slots__ = ("first_oid", "count")
    FIRST_OID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    first_oid: bytes
    count: int
    def __init__(self, first_oid: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class BeginRequest(_message.Message):
    __slots__ = ("client_id", "tid")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    tid: bytes
    def __init__(self, client_id: _Optional[str] = ..., tid: _Optional[bytes] = ...) -> None: ...

class BeginReply(_message.Message):
    __slots__ = ("ttid",)
    TTID_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    def __init__(self, ttid: _Optional[bytes] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("node_id", "partitions")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[int] = ..., partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("client_id", "ttid", "oids", "partitions", "votes", "table_version")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTID_FIELD_NUMBER: _ClassVar[int]
    OIDS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    ttid: bytes
    oids: _containers.RepeatedScalarFieldContainer[bytes]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    table_version: int
    def __init__(self, client_id: _Optional[str] = ..., ttid: _Optional[bytes] = ..., oids: _Optional[_Iterable[bytes]] = ..., partitions: _Optional[_Iterable[int]] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., table_version: _Optional[int] = ...) -> None: ...

class FinishReply(_message.Message):
    __slots__ = ("tid",)
    TID_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    def __init__(self, tid: _Optional[bytes] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("client_id", "ttid", "node_ids")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTID_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    ttid: bytes
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, client_id: _Optional[str] = ..., ttid: _Optional[bytes] = ..., node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TransactionOutcomeRequest(_message.Message):
    __slots__ = ("ttid", "client_id")
    TTID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    client_id: str
    def __init__(self, ttid: _Optional[bytes] = ..., client_id: _Optional[str] = ...) -> None: ...

class TransactionOutcome(_message.Message):
    __slots__ = ("status", "tid")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[TransactionOutcome.Status]
        COMMITTED: _ClassVar[TransactionOutcome.Status]
        ABORTED: _ClassVar[TransactionOutcome.Status]
    UNKNOWN: TransactionOutcome.Status
    COMMITTED: TransactionOutcome.Status
    ABORTED: TransactionOutcome.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    status: TransactionOutcome.Status
    tid: bytes
    def __init__(self, status: _Optional[_Union[TransactionOutcome.Status, str]] = ..., tid: _Optional[bytes] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("client_id", "since_tid")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_TID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    since_tid: bytes
    def __init__(self, client_id: _Optional[str] = ..., since_tid: _Optional[bytes] = ...) -> None: ...

class Invalidation(_message.Message):
    __slots__ = ("tid", "ttid", "oids")
    TID_FIELD_NUMBER: _ClassVar[int]
    TTID_FIELD_NUMBER: _ClassVar[int]
    OIDS_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    ttid: bytes
    oids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, tid: _Optional[bytes] = ..., ttid: _Optional[bytes] = ..., oids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("start_tid", "invalidation", "partition_table", "reset_cache_at")
    START_TID_FIELD_NUMBER: _ClassVar[int]
    INVALIDATION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    RESET_CACHE_AT_FIELD_NUMBER: _ClassVar[int]
    start_tid: bytes
    invalidation: Invalidation
    partition_table: _common_pb2.PartitionTable
    reset_cache_at: bytes
    def __init__(self, start_tid: _Optional[bytes] = ..., invalidation: _Optional[_Union[Invalidation, _Mapping]] = ..., partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., reset_cache_at: _Optional[bytes] = ...) -> None: ...

class RegisterStorageRequest(_message.Message):
    __slots__ = ("cluster_name", "node_id", "address", "label", "pending_ttids", "partition_last_tids")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PENDING_TTIDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_LAST_TIDS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    node_id: int
    address: str
    label: str
    pending_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    partition_last_tids: _containers.RepeatedCompositeFieldContainer[_common_pb2.PartitionLastTid]
    def __init__(self, cluster_name: _Optional[str] = ..., node_id: _Optional[int] = ..., address: _Optional[str] = ..., label: _Optional[str] = ..., pending_ttids: _Optional[_Iterable[bytes]] = ..., partition_last_tids: _Optional[_Iterable[_Union[_common_pb2.PartitionLastTid, _Mapping]]] = ...) -> None: ...

class RegisterStorageReply(_message.Message):
    __slots__ = ("node_id", "partition_table", "last_tid", "term", "decided")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    partition_table: _common_pb2.PartitionTable
    last_tid: bytes
    term: int
    decided: _containers.RepeatedCompositeFieldContainer[_common_pb2.Decision]
    def __init__(self, node_id: _Optional[int] = ..., partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., last_tid: _Optional[bytes] = ..., term: _Optional[int] = ..., decided: _Optional[_Iterable[_Union[_common_pb2.Decision, _Mapping]]] = ...) -> None: ...

class StorageSessionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class StorageEvent(_message.Message):
    __slots__ = ("partition_table", "heartbeat")
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    partition_table: _common_pb2.PartitionTable
    heartbeat: bool
    def __init__(self, partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., heartbeat: _Optional[bool] = ...) -> None: ...

class AddNodesRequest(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ...) -> None: ...
