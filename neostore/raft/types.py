"""Values exchanged with the Raft core: entries, messages, hard state, snapshots.

Everything here is a frozen dataclass or an enum, so a value handed out in a
``Ready`` can never change under the driver's feet.  Node ids are positive
integers; ``NO_NODE`` (0) means "nobody" (no vote cast, no leader known).

Message types (``MessageType``), with direction and meaning (Raft paper,
Ongaro's dissertation section numbers in brackets):

* ``APPEND`` leader → follower: AppendEntries [3.5].  ``index``/``log_term``
  name the entry that precedes ``entries``; ``commit`` is the leader's commit
  index.
* ``APPEND_RESPONSE`` follower → leader: ``index`` is the last index known to
  match.  On ``reject`` it echoes the rejected ``index`` and gives a hint
  (``reject_hint``, ``log_term``): the largest index at or below it whose term
  is at most the leader's ``log_term`` (fast backtracking).  Also the answer to
  ``SNAPSHOT``.
* ``PRE_VOTE`` / ``PRE_VOTE_RESPONSE``: "would you vote for me at ``term``?"
  [9.6], sent with the *next* term without anybody changing term.
* ``VOTE`` / ``VOTE_RESPONSE``: RequestVote [3.4]; ``index``/``log_term``
  describe the candidate's last entry.  ``leader_transfer`` marks the vote of
  a leadership transfer, which voters grant even while they heard from a leader
  recently [3.10, 4.2.3].
* ``HEARTBEAT`` / ``HEARTBEAT_RESPONSE``: empty AppendEntries; ``commit`` is
  ``min(match, commit)``; a non-empty ``context`` is a ReadIndex round [6.4].
* ``SNAPSHOT`` leader → follower: InstallSnapshot [5.3], whole, in one message.
* ``TIMEOUT_NOW`` leader → transferee: start an election now [3.10].
* ``READ_INDEX`` follower → leader: ask for a read index for ``context``;
  ``READ_INDEX_RESPONSE`` carries it back in ``index``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NO_NODE = 0
"""The node id meaning "nobody": no vote cast, no leader known."""


class EntryType(enum.IntEnum):
    """What an entry's ``data`` holds."""

    NORMAL = 0
    """An application command; empty data is the no-op a new leader appends."""
    CONF_CHANGE = 1
    """An encoded ``ConfChangeRecord``: the membership in force from this entry on."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: ``index`` is its position (from 1), ``term`` the leader's term."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate bytes on the wire, used for batching limits."""
        return len(self.data) + 24


class ConfChangeType(enum.IntEnum):
    """A single-server membership change [4.1]."""

    ADD_VOTER = 0
    REMOVE_VOTER = 1


@dataclass(frozen=True, slots=True)
class ConfState:
    """A membership: the ids of the voting members."""

    voters: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if any(node_id <= 0 for node_id in self.voters):
            raise ValueError(f"node ids must be positive: {sorted(self.voters)}")

    @classmethod
    def of(cls, *voters: int) -> ConfState:
        """``ConfState.of(1, 2, 3)``."""
        return cls(frozenset(voters))


@dataclass(frozen=True, slots=True)
class ConfChange:
    """What the application proposes: add or remove one voter."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfChangeRecord:
    """The payload of a ``CONF_CHANGE`` entry.

    It holds the complete membership that results (so a node that joins late
    needs no earlier membership to interpret it) and the change that led to it
    (``None`` for the bootstrap entry).
    """

    conf_state: ConfState
    change: ConfChange | None = None


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message depending on it leaves [Figure 3.1]."""

    term: int = 0
    vote: int = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    """The last entry a snapshot covers, and the membership in force there."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image (opaque ``data``) up to and including ``metadata.index``."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def index(self) -> int:
        return self.metadata.index

    @property
    def term(self) -> int:
        return self.metadata.term

    def is_empty(self) -> bool:
        return self.metadata.index == 0


class MessageType(enum.IntEnum):
    """The messages nodes exchange; see the module docstring for each one."""

    APPEND = 1
    APPEND_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    PRE_VOTE = 5
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESPONSE = 12


RESPONSE_TYPES = frozenset(
    {
        MessageType.APPEND_RESPONSE,
        MessageType.VOTE_RESPONSE,
        MessageType.PRE_VOTE_RESPONSE,
        MessageType.HEARTBEAT_RESPONSE,
        MessageType.READ_INDEX_RESPONSE,
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    """One message between two nodes; which fields matter depends on ``type``."""

    type: MessageType
    source: int
    target: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    leader_transfer: bool = False


class StateRole(enum.Enum):
    """The role a node plays in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth telling the driver about; not persisted."""

    leader_id: int = NO_NODE
    role: StateRole = StateRole.FOLLOWER


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read index for the request that carried ``context``.

    The driver may serve the read once its state machine has applied
    ``index``: every write committed before the request was made is at or
    below it [6.4].
    """

    index: int
    context: bytes
