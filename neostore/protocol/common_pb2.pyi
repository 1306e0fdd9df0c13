from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cell(_message.Message):
    __slots__ = ("node_id", "state")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Cell.State]
        UP_TO_DATE: _ClassVar[Cell.State]
        OUT_OF_DATE: _ClassVar[Cell.State]
        FEEDING: _ClassVar[Cell.State]
        DISCARDED: _ClassVar[Cell.State]
        CORRUPTED: _ClassVar[Cell.State]
    STATE_UNSPECIFIED: Cell.State
    UP_TO_DATE: Cell.State
    OUT_OF_DATE: Cell.State
    FEEDING: Cell.State
    DISCARDED: Cell.State
    CORRUPTED: Cell.State
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    state: Cell.State
    def __init__(self, node_id: _Optional[int] = ..., state: _Optional[_Union[Cell.State, str]] = ...) -> None: ...

class PartitionRow(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class StorageNode(_message.Message):
    __slots__ = ("node_id", "address", "state", "label", "frames_address")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[StorageNode.State]
        PENDING: _ClassVar[StorageNode.State]
        RUNNING: _ClassVar[StorageNode.State]
        DOWN: _ClassVar[StorageNode.State]
    STATE_UNSPECIFIED: StorageNode.State
    PENDING: StorageNode.State
    RUNNING: StorageNode.State
    DOWN: StorageNode.State
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    state: StorageNode.State
    label: str
    frames_address: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., state: _Optional[_Union[StorageNode.State, str]] = ..., label: _Optional[str] = ..., frames_address: _Optional[str] = ...) -> None: ...

class PartitionTable(_message.Message):
    __slots__ = ("version", "num_partitions", "num_replicas", "rows", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    num_partitions: int
    num_replicas: int
    rows: _containers.RepeatedCompositeFieldContainer[PartitionRow]
    nodes: _containers.RepeatedCompositeFieldContainer[StorageNode]
    def __init__(self, version: _Optional[int] = ..., num_partitions: _Optional[int] = ..., num_replicas: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[PartitionRow, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[StorageNode, _Mapping]]] = ...) -> None: ...

class DataRecord(_message.Message):
    __slots__ = ("data", "compressed", "checksum")
    DATA_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    compressed: bool
    checksum: int
    def __init__(self, data: _Optional[bytes] = ..., compressed: _Optional[bool] = ..., checksum: _Optional[int] = ...) -> None: ...

class TransactionInfo(_message.Message):
    __slots__ = ("tid", "user", "description", "extension", "oids", "packed")
    TID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_FIELD_NUMBER: _ClassVar[int]
    OIDS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    tid: bytes
    user: bytes
    description: bytes
    extension: bytes
    oids: _containers.RepeatedScalarFieldContainer[bytes]
    packed: bool
    def __init__(self, tid: _Optional[bytes] = ..., user: _Optional[bytes] = ..., description: _Optional[bytes] = ..., extension: _Optional[bytes] = ..., oids: _Optional[_Iterable[bytes]] = ..., packed: _Optional[bool] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("ttid", "tid")
    TTID_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    ttid: bytes
    tid: bytes
    def __init__(self, ttid: _Optional[bytes] = ..., tid: _Optional[bytes] = ...) -> None: ...

class PartitionLastTid(_message.Message):
    __slots__ = ("partition", "tid")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TID_FIELD_NUMBER: _ClassVar[int]
    partition: int
    tid: bytes
    def __init__(self, partition: _Optional[int] = ..., tid: _Optional[bytes] = ...) -> None: ...

class Truncation(_message.Message):
    __slots__ = ("after", "upto")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UPTO_FIELD_NUMBER: _ClassVar[int]
    after: bytes
    upto: bytes
    def __init__(self, after: _Optional[bytes] = ..., upto: _Optional[bytes] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
