from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_name", "state", "num_partitions", "num_replicas", "table_version", "last_oid", "last_tid", "masters", "leader", "term", "members", "cluster_id", "frames_address")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ClusterInfo.State]
        EMPTY: _ClassVar[ClusterInfo.State]
        RUNNING: _ClassVar[ClusterInfo.State]
        STOPPING: _ClassVar[ClusterInfo.State]
    STATE_UNSPECIFIED: ClusterInfo.State
    EMPTY: ClusterInfo.State
    RUNNING: ClusterInfo.State
    STOPPING: ClusterInfo.State
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
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ADDRESS_FIELD_NUMBER: _ClassVar[int]
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
    members: _containers.RepeatedCompositeFieldContainer[MasterMember]
    cluster_id: str
    frames_address: str
    def __init__(self, cluster_name: _Optional[str] = ..., state: _Optional[_Union[ClusterInfo.State, str]] = ..., num_partitions: _Optional[int] = ..., num_replicas: _Optional[int] = ..., table_version: _Optional[int] = ..., last_oid: _Optional[bytes] = ..., last_tid: _Optional[bytes] = ..., masters: _Optional[_Iterable[str]] = ..., leader: _Optional[str] = ..., term: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MasterMember, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., frames_address: _Optional[str] = ...) -> None: ...

class MasterMember(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class MasterAddress(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class MembershipReply(_message.Message):
    __slots__ = ("node_id", "members")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    members: _containers.RepeatedCompositeFieldContainer[MasterMember]
    def __init__(self, node_id: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MasterMember, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("client_id", "tid", "release_spare", "restore_from")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_SPARE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FROM_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    tid: bytes
    release_spare: bytes
    restore_from: bytes
    def __init__(self, client_id: _Optional[str] = ..., tid: _Optional[bytes] = ..., release_spare: _Optional[bytes] = ..., restore_from: _Optional[bytes] = ...) -> None: ...

class BeginReply(_message.Message):
    __slots__ = ("ttid",)
    TTID_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    def __init__(self, ttid: _Optional[bytes] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("node_id", "partitions", "unchecked_partitions")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    UNCHECKED_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    partitions: _containers.RepeatedScalarFieldContainer[int]
    unchecked_partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[int] = ..., partitions: _Optional[_Iterable[int]] = ..., unchecked_partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("client_id", "ttid", "oids", "partitions", "votes", "table_version", "metadata_partition", "last_tid", "want_spare")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTID_FIELD_NUMBER: _ClassVar[int]
    OIDS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_PARTITION_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    WANT_SPARE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    ttid: bytes
    oids: _containers.RepeatedScalarFieldContainer[bytes]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    table_version: int
    metadata_partition: int
    last_tid: bytes
    want_spare: bool
    def __init__(self, client_id: _Optional[str] = ..., ttid: _Optional[bytes] = ..., oids: _Optional[_Iterable[bytes]] = ..., partitions: _Optional[_Iterable[int]] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., table_version: _Optional[int] = ..., metadata_partition: _Optional[int] = ..., last_tid: _Optional[bytes] = ..., want_spare: _Optional[bool] = ...) -> None: ...

class FinishReply(_message.Message):
    __slots__ = ("tid", "catch_up", "spare_ttid")
    TID_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    SPARE_TTID_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    catch_up: CatchUp
    spare_ttid: bytes
    def __init__(self, tid: _Optional[bytes] = ..., catch_up: _Optional[_Union[CatchUp, _Mapping]] = ..., spare_ttid: _Optional[bytes] = ...) -> None: ...

class CatchUp(_message.Message):
    __slots__ = ("invalidations", "complete", "partition_table")
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    invalidations: _containers.RepeatedCompositeFieldContainer[Invalidation]
    complete: bool
    partition_table: _common_pb2.PartitionTable
    def __init__(self, invalidations: _Optional[_Iterable[_Union[Invalidation, _Mapping]]] = ..., complete: _Optional[bool] = ..., partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("client_id", "last_tid", "table_version", "release_spare")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_SPARE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    last_tid: bytes
    table_version: int
    release_spare: bytes
    def __init__(self, client_id: _Optional[str] = ..., last_tid: _Optional[bytes] = ..., table_version: _Optional[int] = ..., release_spare: _Optional[bytes] = ...) -> None: ...

class SyncReply(_message.Message):
    __slots__ = ("last_tid", "catch_up", "spare_ttid")
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    SPARE_TTID_FIELD_NUMBER: _ClassVar[int]
    last_tid: bytes
    catch_up: CatchUp
    spare_ttid: bytes
    def __init__(self, last_tid: _Optional[bytes] = ..., catch_up: _Optional[_Union[CatchUp, _Mapping]] = ..., spare_ttid: _Optional[bytes] = ...) -> None: ...

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

class Invalidations(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Invalidation]
    def __init__(self, items: _Optional[_Iterable[_Union[Invalidation, _Mapping]]] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("start_tid", "invalidations", "partition_table", "reset_cache_at", "heartbeat", "stopping")
    START_TID_FIELD_NUMBER: _ClassVar[int]
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    RESET_CACHE_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    start_tid: bytes
    invalidations: Invalidations
    partition_table: _common_pb2.PartitionTable
    reset_cache_at: bytes
    heartbeat: bool
    stopping: bool
    def __init__(self, start_tid: _Optional[bytes] = ..., invalidations: _Optional[_Union[Invalidations, _Mapping]] = ..., partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., reset_cache_at: _Optional[bytes] = ..., heartbeat: _Optional[bool] = ..., stopping: _Optional[bool] = ...) -> None: ...

class RegisterStorageRequest(_message.Message):
    __slots__ = ("cluster_name", "node_id", "address", "label", "pending_ttids", "partition_last_tids", "cluster_id", "frames_address")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PENDING_TTIDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_LAST_TIDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    node_id: int
    address: str
    label: str
    pending_ttids: _containers.RepeatedScalarFieldContainer[bytes]
    partition_last_tids: _containers.RepeatedCompositeFieldContainer[_common_pb2.PartitionLastTid]
    cluster_id: str
    frames_address: str
    def __init__(self, cluster_name: _Optional[str] = ..., node_id: _Optional[int] = ..., address: _Optional[str] = ..., label: _Optional[str] = ..., pending_ttids: _Optional[_Iterable[bytes]] = ..., partition_last_tids: _Optional[_Iterable[_Union[_common_pb2.PartitionLastTid, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., frames_address: _Optional[str] = ...) -> None: ...

class RegisterStorageReply(_message.Message):
    __slots__ = ("node_id", "partition_table", "last_tid", "term", "decided", "truncations", "cluster_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_TID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    partition_table: _common_pb2.PartitionTable
    last_tid: bytes
    term: int
    decided: _containers.RepeatedCompositeFieldContainer[_common_pb2.Decision]
    truncations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Truncation]
    cluster_id: str
    def __init__(self, node_id: _Optional[int] = ..., partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., last_tid: _Optional[bytes] = ..., term: _Optional[int] = ..., decided: _Optional[_Iterable[_Union[_common_pb2.Decision, _Mapping]]] = ..., truncations: _Optional[_Iterable[_Union[_common_pb2.Truncation, _Mapping]]] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class StorageSessionRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class StorageEvent(_message.Message):
    __slots__ = ("partition_table", "heartbeat", "shutdown")
    PARTITION_TABLE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    partition_table: _common_pb2.PartitionTable
    heartbeat: bool
    shutdown: str
    def __init__(self, partition_table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., heartbeat: _Optional[bool] = ..., shutdown: _Optional[str] = ...) -> None: ...

class SetClusterStateRequest(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ClusterInfo.State
    def __init__(self, state: _Optional[_Union[ClusterInfo.State, str]] = ...) -> None: ...

class KillNodeRequest(_message.Message):
    __slots__ = ("node_id", "force")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    force: bool
    def __init__(self, node_id: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AddNodesRequest(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReplicationPlanRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class ReplicationSource(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class CellReplication(_message.Message):
    __slots__ = ("partition", "max_tid", "missed_tid", "sources")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    MAX_TID_FIELD_NUMBER: _ClassVar[int]
    MISSED_TID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    partition: int
    max_tid: bytes
    missed_tid: bytes
    sources: _containers.RepeatedCompositeFieldContainer[ReplicationSource]
    def __init__(self, partition: _Optional[int] = ..., max_tid: _Optional[bytes] = ..., missed_tid: _Optional[bytes] = ..., sources: _Optional[_Iterable[_Union[ReplicationSource, _Mapping]]] = ...) -> None: ...

class ReplicationPlan(_message.Message):
    __slots__ = ("cells", "table_version")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[CellReplication]
    table_version: int
    def __init__(self, cells: _Optional[_Iterable[_Union[CellReplication, _Mapping]]] = ..., table_version: _Optional[int] = ...) -> None: ...

class ReplicationProgress(_message.Message):
    __slots__ = ("node_id", "partition", "source_node_id", "tid", "done", "records_done", "bytes_done", "records_left", "bytes_left", "records_copied", "chunks_skipped", "chunks_copied", "rate", "elapsed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    BYTES_LEFT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_COPIED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_COPIED_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    partition: int
    source_node_id: int
    tid: bytes
    done: bool
    records_done: int
    bytes_done: int
    records_left: int
    bytes_left: int
    records_copied: int
    chunks_skipped: int
    chunks_copied: int
    rate: float
    elapsed: float
    def __init__(self, node_id: _Optional[int] = ..., partition: _Optional[int] = ..., source_node_id: _Optional[int] = ..., tid: _Optional[bytes] = ..., done: _Optional[bool] = ..., records_done: _Optional[int] = ..., bytes_done: _Optional[int] = ..., records_left: _Optional[int] = ..., bytes_left: _Optional[int] = ..., records_copied: _Optional[int] = ..., chunks_skipped: _Optional[int] = ..., chunks_copied: _Optional[int] = ..., rate: _Optional[float] = ..., elapsed: _Optional[float] = ...) -> None: ...

class ReplicationAck(_message.Message):
    __slots__ = ("up_to_date",)
    UP_TO_DATE_FIELD_NUMBER: _ClassVar[int]
    up_to_date: bool
    def __init__(self, up_to_date: _Optional[bool] = ...) -> None: ...

class ReplicationStatus(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[ReplicationProgress]
    def __init__(self, cells: _Optional[_Iterable[_Union[ReplicationProgress, _Mapping]]] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("partitions", "repair")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedScalarFieldContainer[int]
    repair: bool
    def __init__(self, partitions: _Optional[_Iterable[int]] = ..., repair: _Optional[bool] = ...) -> None: ...

class PartitionCheck(_message.Message):
    __slots__ = ("partition", "node_ids", "max_tid", "records", "consistent", "corrupted", "detail", "repairing")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REPAIRING_FIELD_NUMBER: _ClassVar[int]
    partition: int
    node_ids: _containers.RepeatedScalarFieldContainer[int]
    max_tid: bytes
    records: int
    consistent: bool
    corrupted: _containers.RepeatedScalarFieldContainer[int]
    detail: str
    repairing: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, partition: _Optional[int] = ..., node_ids: _Optional[_Iterable[int]] = ..., max_tid: _Optional[bytes] = ..., records: _Optional[int] = ..., consistent: _Optional[bool] = ..., corrupted: _Optional[_Iterable[int]] = ..., detail: _Optional[str] = ..., repairing: _Optional[_Iterable[int]] = ...) -> None: ...

class CheckReply(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionCheck]
    def __init__(self, partitions: _Optional[_Iterable[_Union[PartitionCheck, _Mapping]]] = ...) -> None: ...

class TweakRequest(_message.Message):
    __slots__ = ("drop", "replicas", "dry_run", "force")
    DROP_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    drop: _containers.RepeatedScalarFieldContainer[int]
    replicas: int
    dry_run: bool
    force: bool
    def __init__(self, drop: _Optional[_Iterable[int]] = ..., replicas: _Optional[int] = ..., dry_run: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class TweakReply(_message.Message):
    __slots__ = ("table", "moves")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    table: _common_pb2.PartitionTable
    moves: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[_Union[_common_pb2.PartitionTable, _Mapping]] = ..., moves: _Optional[_Iterable[str]] = ...) -> None: ...

class TruncateRequest(_message.Message):
    __slots__ = ("tid",)
    TID_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    def __init__(self, tid: _Optional[bytes] = ...) -> None: ...

class TruncateReply(_message.Message):
    __slots__ = ("truncation", "truncated", "later", "transactions_deleted", "revisions_deleted")
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    LATER_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    truncation: _common_pb2.Truncation
    truncated: _containers.RepeatedScalarFieldContainer[int]
    later: _containers.RepeatedScalarFieldContainer[int]
    transactions_deleted: int
    revisions_deleted: int
    def __init__(self, truncation: _Optional[_Union[_common_pb2.Truncation, _Mapping]] = ..., truncated: _Optional[_Iterable[int]] = ..., later: _Optional[_Iterable[int]] = ..., transactions_deleted: _Optional[int] = ..., revisions_deleted: _Optional[int] = ...) -> None: ...

class TransactionStateRequest(_message.Message):
    __slots__ = ("ttid",)
    TTID_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    def __init__(self, ttid: _Optional[bytes] = ...) -> None: ...

class TransactionState(_message.Message):
    __slots__ = ("status", "tid")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[TransactionState.Status]
        ALIVE: _ClassVar[TransactionState.Status]
        COMMITTED: _ClassVar[TransactionState.Status]
        ABORTED: _ClassVar[TransactionState.Status]
    STATUS_UNSPECIFIED: TransactionState.Status
    ALIVE: TransactionState.Status
    COMMITTED: TransactionState.Status
    ABORTED: TransactionState.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    status: TransactionState.Status
    tid: bytes
    def __init__(self, status: _Optional[_Union[TransactionState.Status, str]] = ..., tid: _Optional[bytes] = ...) -> None: ...
