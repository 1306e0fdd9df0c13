"""neostore's Raft: a pure consensus core, in the manner of etcd's raft.

No I/O here: no sockets, clocks, disks, threads or randomness of its own.
The driver feeds ticks and messages in and drains ``Ready`` batches out (see
``neostore.raft.rawnode`` for the loop and its order rule: persist, then
send, then apply, then ``advance``).

Modules:

* ``types``: entries, messages (with the list of message types), hard
  state, snapshots, memberships — frozen dataclasses and enums;
* ``codec``: their binary encoding for transports and disks;
* ``raft``: the rules (elections with PreVote and CheckQuorum, replication,
  commit, snapshots, membership changes, ReadIndex, leadership transfer);
* ``rawnode``: ``RawNode`` and ``Ready``, the driver's interface;
* ``log``: the log seen by the rules (stable store + unstable part);
* ``storage``: the ``RaftLogStore`` contract and ``MemoryLogStore``;
* ``progress``: the leader's per-follower replication state;
* ``quorum``: majority arithmetic;
* ``membership``: single-server membership changes;
* ``read_only``: ReadIndex bookkeeping;
* ``config``: ``Config`` (timeouts in ticks, limits, the random source);
* ``errors``: the named errors.

The LMDB implementation of ``RaftLogStore`` is ``neostore.master_node.raft_log``.
"""

from .codec import (
    decode_conf_change_record,
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot,
    encode_conf_change_record,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
)
from .config import Config, RandomSource
from .errors import (
    CompactedError,
    ConfChangeRefusedError,
    DecodeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    SnapshotOutOfDateError,
    StorageError,
    UnavailableError,
)
from .membership import apply_conf_change
from .rawnode import RawNode, Ready
from .storage import MemoryLogStore, RaftLogStore, bootstrap
from .types import (
    NO_NODE,
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateRole,
)

__all__ = [
    "NO_NODE",
    "CompactedError",
    "Config",
    "ConfChange",
    "ConfChangeRecord",
    "ConfChangeRefusedError",
    "ConfChangeType",
    "ConfState",
    "DecodeError",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryLogStore",
    "Message",
    "MessageType",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftError",
    "RaftLogStore",
    "RandomSource",
    "RawNode",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "SoftState",
    "StateRole",
    "StorageError",
    "UnavailableError",
    "apply_conf_change",
    "bootstrap",
    "decode_conf_change_record",
    "decode_entry",
    "decode_hard_state",
    "decode_message",
    "decode_snapshot",
    "encode_conf_change_record",
    "encode_entry",
    "encode_hard_state",
    "encode_message",
    "encode_snapshot",
]
