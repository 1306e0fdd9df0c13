"""The master's replicated state machine: cluster state, commands, ``apply``.

Everything the masters agree on lives in one frozen :class:`ClusterState`:
the cluster's name and run state, its partition table (whose ``nodes`` are
the storage-node registry), the OID and TID high-water marks, the last TID
committed in each partition, the commit decisions that some storage node
has not applied yet, and the outcome (ttid -> tid) of the last
:data:`MAX_RECENT_OUTCOMES` decisions, so that any master can answer "what
became of TTID X" after a leader change (``GetTransactionOutcome``).

The state changes only through commands — frozen dataclasses listed in
:data:`COMMAND_TYPES` — and only in :func:`apply`::

    new_state, result = apply(state, command)

``apply`` is pure and deterministic: no clock, no I/O, no randomness, no
iteration over sets.  A command that does not fit the state raises a
:class:`~neostore.errors.NeoError` and changes nothing; a command that
changes nothing returns the very same state object (``is``), so that a log
can skip it.  This is what the command log persists today and what Raft
replicates later: every master that applies the same commands in the same
order holds the same state.

Commands and state encode to deterministic JSON in
:mod:`neostore.master_node.codec`, driven by these dataclasses' type hints:
a new command needs no codec code of its own.

Invariants that every command keeps (tests check them on random command
sequences):

* no partition has two cells on one node;
* ``last_tid`` and ``last_oid`` never decrease; decided TIDs strictly grow;
* every change of the partition table (rows or nodes) raises its version;
* a node going DOWN, a decision or a failed participant never turns the
  last readable cell of a partition OUT_OF_DATE;
* when a transaction is decided, every readable cell of every partition it
  touched voted for it (cells that did not vote are marked OUT_OF_DATE by the
  decision itself), so a published TID is readable wherever reads go.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from neostore import errors
from neostore.ids import MAX_TID, ZERO_TID, p64, tid_repr, u64
from neostore.partition_table import (
    READABLE_STATES,
    WRITABLE_STATES,
    Cell,
    CellState,
    NodeState,
    PartitionTable,
    StorageNodeInfo,
    initial_rows,
)
from neostore.protocol import master_pb2

#: Upper bound on ``num_partitions`` (DESIGN: "allow up to thousands").
MAX_PARTITIONS = 65_536
#: Upper bound on ``num_replicas``.
MAX_REPLICAS = 16
_MAX_U64 = 2**64 - 1


class ClusterStatus(enum.IntEnum):
    """The cluster's run state (``ClusterInfo.State`` in master.proto)."""

    EMPTY = master_pb2.ClusterInfo.EMPTY  # no partition table yet
    RUNNING = master_pb2.ClusterInfo.RUNNING  # serving


# -- values carried by commands and state ---------------------------------------


@dataclasses.dataclass(frozen=True)
class CellRef:
    """One cell of the partition table: (partition, storage node)."""

    partition: int
    node_id: int


@dataclasses.dataclass(frozen=True)
class NodeVote:
    """A storage node that voted (made durable) a transaction's data for
    these partitions; ``unchecked``: those of them where it took some store
    without lock nor conflict check (its cell was not readable then)."""

    node_id: int
    partitions: tuple[int, ...]
    unchecked: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class PartitionTid:
    """A node holds every committed transaction of ``partition`` up to ``tid``."""

    partition: int
    tid: bytes


@dataclasses.dataclass(frozen=True)
class MissedTid:
    """The cell (``partition``, ``node_id``) lacks the transaction ``tid``: the
    last transaction of the partition decided without this node's vote (or
    dropped from its participants).  Such a cell becomes UP_TO_DATE only
    once the node holds everything of the partition up to ``tid``
    (:class:`MarkUpToDate`): it replicated that far, and voted for every
    later transaction of the partition."""

    partition: int
    node_id: int
    tid: bytes


@dataclasses.dataclass(frozen=True)
class Decision:
    """The decision to commit TTID ``ttid`` as TID ``tid`` (a command's payload).

    ``partitions`` are every partition the transaction wrote (its metadata's
    partition included), ``votes`` who holds its voted data, ``oids`` what it
    changed (for invalidations), and ``out_of_date`` the writable cells of
    those partitions that did not vote: deciding marks them OUT_OF_DATE.
    """

    tid: bytes
    ttid: bytes
    partitions: tuple[int, ...]
    votes: tuple[NodeVote, ...]
    oids: tuple[bytes, ...]
    out_of_date: tuple[CellRef, ...] = ()
    client_id: str = ""  # who began it (for GetTransactionOutcome); "" in old logs

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted({vote.node_id for vote in self.votes}))

    def pending(self) -> PendingDecision:
        """What the state keeps of it until every participant applied it."""
        return PendingDecision(
            tid=self.tid,
            ttid=self.ttid,
            partitions=tuple(sorted(set(self.partitions))),
            participants=self.participants,
            oids=self.oids,
        )


@dataclasses.dataclass(frozen=True)
class PendingDecision:
    """A decided transaction that some participant has not applied yet."""

    tid: bytes
    ttid: bytes
    partitions: tuple[int, ...]
    participants: tuple[int, ...]  # storage nodes still to apply it
    oids: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A recent decision: client ``client_id``'s TTID ``ttid`` committed as ``tid``."""

    ttid: bytes
    tid: bytes
    client_id: str = ""


#: How many decisions :attr:`ClusterState.recent_outcomes` remembers.  A
#: client asks about its own in-flight tpc_finish within seconds of a leader
#: change; 10 000 decisions cover that at any realistic commit rate.
MAX_RECENT_OUTCOMES = 10_000


class OutcomeLog(Sequence[Outcome]):
    """The recent outcomes, oldest first: an immutable sequence that grows
    at one end and is trimmed at the other.

    A tuple would be copied whole by every decision (55 us for 10 000
    outcomes, on every master, per decision); this one keeps them in
    chunks of at most ``CHUNK``, so that :meth:`appended` copies one chunk
    and the tuple of chunks.  It compares equal to any sequence of the same
    outcomes (a tuple too), and encodes as their list (:mod:`codec`).
    """

    CHUNK = 256
    __slots__ = ("_chunks", "_length")

    def __init__(self, chunks: tuple[tuple[Outcome, ...], ...] = (), length: int | None = None) -> None:
        """``length``: the outcomes in ``chunks`` (none empty), when known."""
        if length is None:
            chunks = tuple(chunk for chunk in chunks if chunk)
            length = sum(map(len, chunks))
        self._chunks = chunks
        self._length = length

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> OutcomeLog:
        if isinstance(outcomes, OutcomeLog):
            return outcomes
        items = tuple(outcomes)
        return cls(tuple(items[i:i + cls.CHUNK] for i in range(0, len(items), cls.CHUNK)))

    def appended(self, outcome: Outcome, bound: int) -> OutcomeLog:
        """This log plus ``outcome``, the oldest dropped beyond ``bound``."""
        chunks = self._chunks
        if chunks and len(chunks[-1]) < self.CHUNK:
            chunks = (*chunks[:-1], chunks[-1] + (outcome,))
        else:
            chunks = (*chunks, (outcome,))
        length = self._length + 1
        excess = length - bound
        while excess > 0 and chunks:
            first = chunks[0]
            if len(first) <= excess:
                chunks = chunks[1:]
                excess -= len(first)
                length -= len(first)
            else:
                chunks = (first[excess:], *chunks[1:])
                length -= excess
                excess = 0
        return OutcomeLog(chunks, length)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> typing.Iterator[Outcome]:
        for chunk in self._chunks:
            yield from chunk

    def __reversed__(self) -> typing.Iterator[Outcome]:
        for chunk in reversed(self._chunks):
            yield from reversed(chunk)

    @typing.overload
    def __getitem__(self, index: int) -> Outcome: ...

    @typing.overload
    def __getitem__(self, index: slice) -> tuple[Outcome, ...]: ...

    def __getitem__(self, index: int | slice) -> Outcome | tuple[Outcome, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("outcome index out of range")
        for chunk in self._chunks:
            if index < len(chunk):
                return chunk[index]
            index -= len(chunk)
        raise AssertionError("unreachable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (OutcomeLog, tuple, list)):
            return len(self) == len(other) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"OutcomeLog({tuple(self)!r})"


@dataclasses.dataclass(frozen=True)
class Truncation:
    """``neoctl truncate``: every transaction with ``after`` < tid <= ``upto``
    was deleted (``upto`` is a TID allocated for the truncation, above every
    TID before it, so that TIDs never go back)."""

    after: bytes
    upto: bytes


@dataclasses.dataclass(frozen=True)
class MasterMember:
    """A voting member of the masters' Raft group: its Raft node id and address."""

    node_id: int
    address: str


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """Everything the masters agree on.  Change it only through :func:`apply`.

    ``status`` is the cluster's run state (``ClusterInfo.state``).  Before
    :class:`CreateCluster` the state is blank: ``cluster_name`` is empty.
    """

    cluster_name: str = ""
    cluster_id: str = ""  # fixed by CreateCluster ("" for clusters older than ids)
    status: ClusterStatus = ClusterStatus.EMPTY
    num_partitions: int = 0
    num_replicas: int = 0
    table: PartitionTable = PartitionTable(version=0, num_partitions=0, num_replicas=0)
    last_oid: bytes = ZERO_TID
    last_tid: bytes = ZERO_TID
    partition_last_tids: tuple[bytes, ...] = ()
    pending_decisions: tuple[PendingDecision, ...] = ()  # by increasing tid
    next_node_id: int = 1
    # The masters' address book (Raft node id -> address), by increasing id:
    # the applied Raft membership.  Empty for a single master.
    masters: tuple[MasterMember, ...] = ()
    next_master_id: int = 1  # master ids are never reused
    # The last MAX_RECENT_OUTCOMES decisions, oldest first (increasing tid):
    # any master can tell a client what became of its TTID after a leader change.
    recent_outcomes: OutcomeLog = OutcomeLog()
    # Cells that lack a committed transaction, by (partition, node_id): only
    # cells that are not UP_TO_DATE (see MissedTid).
    missed: tuple[MissedTid, ...] = ()
    # Storage nodes being dropped (neoctl drop-node): they get no new cells,
    # and leave the table once they hold none.
    dropping: tuple[int, ...] = ()
    # neoctl set cluster STOPPING: no new transaction begins (reads go on).
    stopping: bool = False
    # Every truncation, oldest first: storage nodes that were away apply
    # those they missed when they register.
    truncations: tuple[Truncation, ...] = ()

    @property
    def created(self) -> bool:
        return bool(self.cluster_name)

    @property
    def running(self) -> bool:
        return self.status == ClusterStatus.RUNNING

    def known_node(self, node_id: int) -> StorageNodeInfo | None:
        for info in self.table.nodes:
            if info.node_id == node_id:
                return info
        return None

    def nodes_in_state(self, state: NodeState) -> tuple[int, ...]:
        return tuple(n.node_id for n in self.table.nodes if n.state == state)

    def pending_decision(self, tid: bytes) -> PendingDecision | None:
        for decision in self.pending_decisions:
            if decision.tid == tid:
                return decision
        return None

    def outcome_of(self, ttid: bytes, client_id: str | None) -> bytes | None:
        """The TID ``client_id``'s TTID ``ttid`` committed as, if it is among
        the recent decisions (a record without client id matches any; a
        ``client_id`` of None matches any record)."""
        for outcome in reversed(self.recent_outcomes):
            if outcome.ttid == ttid and (client_id is None or outcome.client_id in ("", client_id)):
                return outcome.tid
        return None

    def missed_tid(self, partition: int, node_id: int) -> bytes | None:
        """The last transaction the cell lacks (``None``: it lacks nothing)."""
        for miss in self.missed:
            if miss.partition == partition and miss.node_id == node_id:
                return miss.tid
        return None

    def replication_bound(self, partition: int) -> bytes:
        """The highest TID up to which every committed transaction of
        ``partition`` is applied on each of its participants: the bound a
        replica may copy up to from any UP_TO_DATE cell."""
        bound = self.partition_last_tids[partition] if self.partition_last_tids else ZERO_TID
        for decision in self.pending_decisions:  # by increasing tid
            if partition in decision.partitions:
                below = p64(u64(decision.tid) - 1)
                return min(bound, below)
        return bound

    def decision_of_ttid(self, ttid: bytes) -> PendingDecision | None:
        for decision in self.pending_decisions:
            if decision.ttid == ttid:
                return decision
        return None


def initial_state(masters: Sequence[str] = ()) -> ClusterState:
    """The blank state of a master that has never created its cluster.

    ``masters``: the first members of a Raft group, node ``i`` at
    ``masters[i - 1]`` (the image every first member bootstraps from).
    """
    members = tuple(MasterMember(index, address) for index, address in enumerate(masters, start=1))
    return ClusterState(masters=members, next_master_id=len(members) + 1)


# -- commands -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CreateCluster:
    """First command of every log: name the cluster, fix P and R.

    Result: None.
    """

    name: str
    num_partitions: int
    num_replicas: int
    #: 32 hex digits (a UUID), chosen by the master that proposes it; "" in
    #: logs written before cluster ids existed.
    cluster_id: str = ""


@dataclasses.dataclass(frozen=True)
class RegisterNode:
    """A storage node joins (``node_id`` 0: a new node) or rejoins.

    A new node is RUNNING while the cluster is EMPTY (it will get cells when
    the table is created) and PENDING afterwards (an admin admits it).  A
    known node comes back RUNNING, except one never admitted, which stays
    PENDING.  An unknown non-zero id is refused (``WrongCluster``): the node's
    data belongs to another cluster.  Result: the node id.
    """

    node_id: int
    address: str
    label: str = ""
    frames_address: str = ""


@dataclasses.dataclass(frozen=True)
class SetNodeState:
    """Change a node's state.  Going DOWN turns its readable cells
    OUT_OF_DATE, except a cell that is the last readable one of its
    partition (the partition keeps its only up-to-date copy).  Result: None.
    """

    node_id: int
    state: NodeState


@dataclasses.dataclass(frozen=True)
class CreatePartitionTable:
    """Create the first table on these nodes (every cell UP_TO_DATE: the
    database is empty), admit them, and make the cluster RUNNING.
    Result: None.
    """

    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AdmitNodes:
    """Admit PENDING nodes (RUNNING, no cells yet).  Others are skipped.
    Result: the ids admitted.
    """

    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AllocateOids:
    """Hand out ``count`` fresh oids.  Result: the first one (8 bytes)."""

    count: int


@dataclasses.dataclass(frozen=True)
class CommitDecisions:
    """Every transaction decided in one batch (one log entry, one fsync).

    Each decision is checked on its own, in order, against the state left
    by the previous ones: its TID must exceed ``last_tid`` and fall in one
    of the partitions it writes (the one holding its metadata), and once its ``out_of_date`` cells are marked, every
    partition it touched must have a readable cell, every one of which
    voted.  Result: a tuple with, for each decision, None (decided) or the
    :class:`~neostore.errors.NeoError` that refused it (nothing of it
    applied).
    """

    decisions: tuple[Decision, ...]


@dataclasses.dataclass(frozen=True)
class MarkApplied:
    """These participants applied decision ``tid``; once none is left the
    decision is forgotten.  Unknown tids are ignored (idempotent).
    Result: whether the decision was pending.
    """

    tid: bytes
    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DropParticipants:
    """These participants failed to apply decision ``tid``: their cells of
    its partitions become OUT_OF_DATE (they will catch up by replication)
    and they leave its participants — except a node holding the last
    readable cell of one of those partitions, which stays a participant
    (the decision waits for it to come back).  Result: the ids dropped.
    """

    tid: bytes
    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class MarkUpToDate:
    """The node holds every committed transaction of each partition up to
    the tid given (it replicated that far, or, with a zero tid, it only
    claims to lack nothing): its OUT_OF_DATE cell there becomes UP_TO_DATE
    when that tid reaches the last transaction the cell missed
    (:class:`MissedTid`, checked here, so that a transaction decided without
    the node meanwhile is never overlooked); a cell that missed nothing
    becomes UP_TO_DATE at once.  Result: the partitions marked.
    """

    node_id: int
    cells: tuple[PartitionTid, ...]


@dataclasses.dataclass(frozen=True)
class AddMaster:
    """Raft added the voter ``node_id`` (a ``CONF_CHANGE`` entry, applied by
    the Raft driver, never submitted): record its address.  Result: the id.
    """

    node_id: int
    address: str


@dataclasses.dataclass(frozen=True)
class RemoveMaster:
    """Raft removed the voter ``node_id`` (a ``CONF_CHANGE`` entry, applied
    by the Raft driver): forget its address.  Result: the id.
    """

    node_id: int


@dataclasses.dataclass(frozen=True)
class ChangeTable:
    """Move cells (rebalancing, ``neoctl add-node|drop-node|tweak|set
    replicas``): the leader planned ``rows`` from the table of version
    ``version`` (refused if the table changed since).  A cell new to its
    partition must be OUT_OF_DATE (it replicates what the partition holds);
    a cell may leave a partition only if the partition keeps a readable
    cell; nodes in ``dropping`` get no new cell and leave the table once they
    hold none.  ``num_replicas`` (0: unchanged) is the new R.  Result: None.
    """

    version: int
    rows: tuple[tuple[Cell, ...], ...]
    num_replicas: int = 0
    dropping: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class MarkCorrupted:
    """A consistency check found these nodes' cells of ``partition``
    diverging from the other replicas: they become CORRUPTED (no reads, no
    writes), except one that would leave the partition no readable cell.
    Result: the nodes marked."""

    partition: int
    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RebuildCells:
    """``neoctl check --repair``: these nodes deleted their data of
    ``partition``, whose cells are CORRUPTED; the cells become OUT_OF_DATE
    and catch up by replication like new cells (they lack everything up to
    the partition's last transaction).  Cells in another state are left
    alone.  Result: the nodes whose cell changed."""

    partition: int
    node_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SetClusterState:
    """``neoctl set cluster RUNNING|STOPPING``: ``stopping`` refuses new
    transactions (those begun end normally).  Result: None."""

    stopping: bool


@dataclasses.dataclass(frozen=True)
class Truncate:
    """``neoctl truncate``: roll the database back to ``tid``.  Needs a
    STOPPING cluster with no decision left to apply.  ``marker`` (a fresh
    TID above ``last_tid``) becomes the last TID, so that TIDs keep
    increasing and every client resets its cache.  Result: the
    :class:`Truncation`."""

    tid: bytes
    marker: bytes


Command = (
    CreateCluster
    | RegisterNode
    | SetNodeState
    | CreatePartitionTable
    | AdmitNodes
    | AllocateOids
    | CommitDecisions
    | MarkApplied
    | DropParticipants
    | MarkUpToDate
    | AddMaster
    | RemoveMaster
    | MarkCorrupted
    | ChangeTable
    | RebuildCells
    | SetClusterState
    | Truncate
)

COMMAND_TYPES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(Command)}


# -- apply ------------------------------------------------------------------------

_Handler = Callable[[ClusterState, Any], tuple[ClusterState, Any]]
_HANDLERS: dict[type, _Handler] = {}
_F = TypeVar("_F", bound=_Handler)


def _handles(command_type: type) -> Callable[[_F], _F]:
    """Register the function applying ``command_type``."""

    def register(function: _F) -> _F:
        _HANDLERS[command_type] = function
        return function

    return register


def apply(state: ClusterState, command: Command) -> tuple[ClusterState, Any]:
    """Apply one command: the only code that changes cluster state.

    Returns the new state (the same object when nothing changed) and the
    command's result; raises a :class:`~neostore.errors.NeoError` (state
    unchanged) when the command does not fit the state.
    """
    handler = _HANDLERS.get(type(command))
    if handler is None:
        raise errors.BadRequest(f"unknown command {type(command).__name__}")
    if not isinstance(command, (CreateCluster, AddMaster, RemoveMaster)) and not state.created:
        raise errors.Unavailable("the cluster has not been created yet")
    return handler(state, command)


def is_cluster_id(text: str) -> bool:
    """Whether ``text`` has the form of a cluster id: 32 lowercase hex digits."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def _require_node(state: ClusterState, node_id: int) -> StorageNodeInfo:
    info = state.known_node(node_id)
    if info is None:
        raise errors.BadRequest(f"storage node {node_id} is not known to cluster {state.cluster_name!r}")
    return info


def _require_running(state: ClusterState) -> None:
    if not state.running:
        raise errors.Unavailable(f"cluster {state.cluster_name!r} has no partition table yet")


def _check_partition(state: ClusterState, partition: int) -> None:
    if not 0 <= partition < state.num_partitions:
        raise errors.BadRequest(
            f"partition {partition} out of range: cluster {state.cluster_name!r} "
            f"has {state.num_partitions} partitions"
        )


def _check_id(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != 8:
        raise errors.BadRequest(f"{what} must be 8 bytes, got {len(value) if isinstance(value, bytes) else value!r}")


def _has_other_readable(row: Sequence[Cell], node_ids: Iterable[int]) -> bool:
    excluded = frozenset(node_ids)
    return any(c.state in READABLE_STATES and c.node_id not in excluded for c in row)


@_handles(CreateCluster)
def _create_cluster(state: ClusterState, command: CreateCluster) -> tuple[ClusterState, None]:
    if state.created:
        raise errors.WrongCluster(
            f"this master already holds cluster {state.cluster_name!r}; cannot create {command.name!r}"
        )
    if not command.name or not command.name.isprintable():
        raise errors.BadRequest(f"invalid cluster name {command.name!r}")
    if not 1 <= command.num_partitions <= MAX_PARTITIONS:
        raise errors.BadRequest(f"num_partitions must be in 1..{MAX_PARTITIONS}, got {command.num_partitions}")
    if not 1 <= command.num_replicas <= MAX_REPLICAS:
        raise errors.BadRequest(f"num_replicas must be in 1..{MAX_REPLICAS}, got {command.num_replicas}")
    if command.cluster_id and not is_cluster_id(command.cluster_id):
        raise errors.BadRequest(f"invalid cluster id {command.cluster_id!r}: 32 lowercase hex digits expected")
    table = PartitionTable(version=1, num_partitions=command.num_partitions, num_replicas=command.num_replicas)
    return dataclasses.replace(
        state,
        cluster_name=command.name,
        cluster_id=command.cluster_id,
        num_partitions=command.num_partitions,
        num_replicas=command.num_replicas,
        table=table,
        partition_last_tids=(ZERO_TID,) * command.num_partitions,
    ), None


@_handles(RegisterNode)
def _register_node(state: ClusterState, command: RegisterNode) -> tuple[ClusterState, int]:
    if not command.address:
        raise errors.BadRequest("a storage node must give the address of its Storage service")
    if command.node_id == 0:
        node_id = state.next_node_id
        initial = NodeState.RUNNING if state.status == ClusterStatus.EMPTY else NodeState.PENDING
        info = StorageNodeInfo(node_id, command.address, initial, command.label, command.frames_address)
        return dataclasses.replace(
            state, table=state.table.with_node(info), next_node_id=node_id + 1
        ), node_id
    known = state.known_node(command.node_id)
    if known is None:
        raise errors.WrongCluster(f"node {command.node_id} is not known to this cluster ({state.cluster_name!r})")
    new_state = NodeState.PENDING if known.state == NodeState.PENDING else NodeState.RUNNING
    info = StorageNodeInfo(command.node_id, command.address, new_state, command.label, command.frames_address)
    if info == known:
        return state, command.node_id
    return dataclasses.replace(state, table=state.table.with_node(info)), command.node_id


@_handles(SetNodeState)
def _set_node_state(state: ClusterState, command: SetNodeState) -> tuple[ClusterState, None]:
    known = _require_node(state, command.node_id)
    new_state = NodeState(command.state)
    if known.state == new_state:
        return state, None
    table = state.table.with_node(dataclasses.replace(known, state=new_state))
    if new_state == NodeState.DOWN:
        rows = [list(row) for row in table.rows]
        for row in rows:
            for index, cell in enumerate(row):
                if (cell.node_id == command.node_id and cell.state in READABLE_STATES
                        and _has_other_readable(row, [command.node_id])):
                    row[index] = Cell(cell.node_id, CellState.OUT_OF_DATE)
        if tuple(tuple(row) for row in rows) != table.rows:
            table = table.with_rows(rows)
    return dataclasses.replace(state, table=table), None


@_handles(CreatePartitionTable)
def _create_partition_table(state: ClusterState, command: CreatePartitionTable) -> tuple[ClusterState, None]:
    if state.status != ClusterStatus.EMPTY:
        raise errors.BadRequest(f"cluster {state.cluster_name!r} already has a partition table")
    node_ids = tuple(sorted(set(command.node_ids)))
    if not node_ids:
        raise errors.BadRequest("a partition table needs at least one storage node")
    table = state.table
    for node_id in node_ids:
        info = _require_node(state, node_id)
        if info.state == NodeState.DOWN:
            raise errors.Unavailable(f"storage node {node_id} is down")
        if info.state != NodeState.RUNNING:
            table = table.with_node(dataclasses.replace(info, state=NodeState.RUNNING))
    table = table.with_rows(initial_rows(node_ids, state.num_partitions, state.num_replicas))
    return dataclasses.replace(state, table=table, status=ClusterStatus.RUNNING), None


@_handles(AdmitNodes)
def _admit_nodes(state: ClusterState, command: AdmitNodes) -> tuple[ClusterState, tuple[int, ...]]:
    _require_running(state)
    admitted = []
    table = state.table
    for node_id in sorted(set(command.node_ids)):
        info = _require_node(state, node_id)
        if info.state == NodeState.PENDING:
            admitted.append(node_id)
            table = table.with_node(dataclasses.replace(info, state=NodeState.RUNNING))
    if not admitted:
        return state, ()
    return dataclasses.replace(state, table=table), tuple(admitted)


@_handles(AllocateOids)
def _allocate_oids(state: ClusterState, command: AllocateOids) -> tuple[ClusterState, bytes]:
    if command.count < 1:
        raise errors.BadRequest(f"cannot allocate {command.count} oids: ask for at least one")
    first = u64(state.last_oid) + 1
    last = first + command.count - 1
    if last > _MAX_U64:
        raise errors.Unavailable("the oid space is exhausted")
    return dataclasses.replace(state, last_oid=p64(last)), p64(first)


def _check_votes(
    rows: Sequence[Sequence[Cell]], partitions: Iterable[int], votes: Sequence[NodeVote]
) -> None:
    """Every partition keeps a readable cell, each readable cell voted, and
    one of them checked the transaction's conflicts: a vote of a cell that
    was not readable when it took the stores is no such check (without it,
    a transaction that stored only on such a cell, which lacks a recent
    commit, could overwrite that commit unseen)."""
    for partition in partitions:
        voters = {vote.node_id for vote in votes if partition in vote.partitions}
        readable = [c.node_id for c in rows[partition] if c.state in READABLE_STATES]
        if not readable:
            raise errors.NotCommitted(
                f"partition {partition}: the transaction would leave no readable cell "
                f"(voters: {sorted(voters) or 'none'})"
            )
        checked = {vote.node_id for vote in votes
                   if partition in vote.partitions and partition not in vote.unchecked}
        if not any(node_id in checked for node_id in readable):
            raise errors.NotCommitted(
                f"partition {partition}: no readable cell checked the transaction's conflicts "
                f"(readable cells on nodes {readable}; voters {sorted(voters) or 'none'} took its stores "
                f"while not readable)"
            )
        missing = [node_id for node_id in readable if node_id not in voters]
        if missing:
            raise errors.Unavailable(
                f"partition {partition}: readable cells on nodes {missing} did not vote"
            )


def _mark_out_of_date(rows: list[list[Cell]], cells: Iterable[CellRef]) -> None:
    for ref in cells:
        row = rows[ref.partition]
        for index, cell in enumerate(row):
            if cell.node_id == ref.node_id and cell.state in WRITABLE_STATES:
                row[index] = Cell(cell.node_id, CellState.OUT_OF_DATE)


def plan_decision(
    state: ClusterState, partitions: Sequence[int], votes: Sequence[NodeVote]
) -> tuple[CellRef, ...]:
    """The writable cells to mark OUT_OF_DATE for a transaction to commit.

    Raises :class:`~neostore.errors.Unavailable` naming the partition when
    no voting node holds a writable cell of a partition touched, or when
    marking the cells that did not vote would leave it no readable cell.
    Pure: the commit path calls it to answer early; :func:`apply` checks the
    same rule again when the decision is applied.
    """
    _require_running(state)
    out_of_date: list[CellRef] = []
    for partition in sorted(set(partitions)):
        _check_partition(state, partition)
        voters = {vote.node_id for vote in votes if partition in vote.partitions}
        writable = [c.node_id for c in state.table.rows[partition] if c.state in WRITABLE_STATES]
        if not any(node_id in voters for node_id in writable):
            raise errors.NotCommitted(
                f"partition {partition}: no storage node holding a writable cell voted "
                f"(writable cells on nodes {writable or 'none'}, voters {sorted(voters) or 'none'})"
            )
        out_of_date.extend(CellRef(partition, node_id) for node_id in writable if node_id not in voters)
    rows = [list(row) for row in state.table.rows]
    _mark_out_of_date(rows, out_of_date)
    _check_votes(rows, sorted(set(partitions)), votes)
    return tuple(out_of_date)


def _decide(state: ClusterState, decision: Decision) -> ClusterState:
    _check_id(decision.tid, "tid")
    _check_id(decision.ttid, "ttid")
    if decision.tid <= state.last_tid:
        raise errors.BadRequest(
            f"tid {tid_repr(decision.tid)} is not above the last tid {tid_repr(state.last_tid)}"
        )
    if decision.tid >= MAX_TID:
        raise errors.BadRequest("tid out of range")
    if state.decision_of_ttid(decision.ttid) is not None:
        raise errors.BadRequest(f"transaction {tid_repr(decision.ttid)} is already decided")
    if not decision.partitions:
        raise errors.BadRequest("a decision must name the partitions the transaction wrote")
    for partition in decision.partitions:
        _check_partition(state, partition)
    if u64(decision.tid) % state.num_partitions not in decision.partitions:
        raise errors.BadRequest(
            f"tid {tid_repr(decision.tid)} is in partition {u64(decision.tid) % state.num_partitions}, "
            f"which the transaction does not write: its metadata lives there"
        )
    for ref in decision.out_of_date:
        _check_partition(state, ref.partition)
    for oid in decision.oids:
        _check_id(oid, "oid")
    for vote in decision.votes:
        for partition in vote.partitions:
            _check_partition(state, partition)
    # A node being dropped leaves the table once its last cell is replaced
    # (MarkUpToDate of the cell taking over): that can be applied between
    # its vote and this decision.  Its vote held only cells that are gone;
    # the rules below judge the decision on the cells that remain.
    left = [vote.node_id for vote in decision.votes if state.known_node(vote.node_id) is None]
    if left:
        decision = dataclasses.replace(
            decision, votes=tuple(vote for vote in decision.votes if vote.node_id not in left))
    table = state.table
    if decision.out_of_date:
        rows = [list(row) for row in table.rows]
        _mark_out_of_date(rows, decision.out_of_date)
        _check_votes(rows, decision.partitions, decision.votes)
        if tuple(tuple(row) for row in rows) != table.rows:
            table = table.with_rows(rows)
    else:
        _check_votes(table.rows, decision.partitions, decision.votes)
    partition_last_tids = list(state.partition_last_tids)
    misses: list[MissedTid] = []
    for partition in decision.partitions:
        partition_last_tids[partition] = decision.tid
        voters = {vote.node_id for vote in decision.votes if partition in vote.partitions}
        misses.extend(MissedTid(partition, cell.node_id, decision.tid)
                      for cell in table.rows[partition] if cell.node_id not in voters)
    return dataclasses.replace(
        state,
        table=table,
        missed=_with_missed(state.missed, misses),
        last_tid=decision.tid,
        # The oid counter follows every oid written (a restore brings oids
        # no NewOids handed out): new_oid never returns an existing object.
        last_oid=max(state.last_oid, max(decision.oids, default=state.last_oid)),
        partition_last_tids=tuple(partition_last_tids),
        pending_decisions=state.pending_decisions + (decision.pending(),),
        recent_outcomes=_remember(state.recent_outcomes, Outcome(decision.ttid, decision.tid, decision.client_id)),
    )


def _with_missed(missed: tuple[MissedTid, ...], misses: Sequence[MissedTid]) -> tuple[MissedTid, ...]:
    """``missed`` with each of ``misses`` replacing the entry of its cell."""
    if not misses:
        return missed
    cells = {(miss.partition, miss.node_id) for miss in misses}
    kept = [miss for miss in missed if (miss.partition, miss.node_id) not in cells]
    return tuple(sorted(kept + list(misses), key=lambda miss: (miss.partition, miss.node_id)))


def _remember(outcomes: Sequence[Outcome], outcome: Outcome) -> OutcomeLog:
    """``outcomes`` plus ``outcome``, the oldest dropped beyond the bound."""
    return OutcomeLog.of(outcomes).appended(outcome, MAX_RECENT_OUTCOMES)


@_handles(CommitDecisions)
def _commit_decisions(
    state: ClusterState, command: CommitDecisions
) -> tuple[ClusterState, tuple[errors.NeoError | None, ...]]:
    _require_running(state)
    outcomes: list[errors.NeoError | None] = []
    for decision in command.decisions:
        try:
            state = _decide(state, decision)
        except errors.NeoError as error:
            outcomes.append(error)
        else:
            outcomes.append(None)
    return state, tuple(outcomes)


def _without_participants(
    state: ClusterState, decision: PendingDecision, node_ids: Iterable[int]
) -> ClusterState:
    gone = frozenset(node_ids)
    remaining = tuple(n for n in decision.participants if n not in gone)
    if remaining == decision.participants:
        return state
    if remaining:
        replaced = dataclasses.replace(decision, participants=remaining)
        pending = tuple(replaced if d.tid == decision.tid else d for d in state.pending_decisions)
    else:
        pending = tuple(d for d in state.pending_decisions if d.tid != decision.tid)
    return dataclasses.replace(state, pending_decisions=pending)


@_handles(MarkApplied)
def _mark_applied(state: ClusterState, command: MarkApplied) -> tuple[ClusterState, bool]:
    decision = state.pending_decision(command.tid)
    if decision is None:
        return state, False
    return _without_participants(state, decision, command.node_ids), True


@_handles(DropParticipants)
def _drop_participants(state: ClusterState, command: DropParticipants) -> tuple[ClusterState, tuple[int, ...]]:
    decision = state.pending_decision(command.tid)
    if decision is None:
        return state, ()
    rows = [list(row) for row in state.table.rows]
    dropped: list[int] = []
    for node_id in sorted(set(command.node_ids)):
        if node_id not in decision.participants:
            continue
        holds_last_readable = any(
            any(c.node_id == node_id and c.state in READABLE_STATES for c in rows[p])
            and not _has_other_readable(rows[p], [node_id])
            for p in decision.partitions
        )
        if holds_last_readable:
            continue
        _mark_out_of_date(rows, [CellRef(p, node_id) for p in decision.partitions])
        dropped.append(node_id)
    if not dropped:
        return state, ()
    table = state.table
    if tuple(tuple(row) for row in rows) != table.rows:
        table = table.with_rows(rows)
    misses = [MissedTid(p, node_id, decision.tid) for node_id in dropped for p in decision.partitions]
    new_state = dataclasses.replace(state, table=table, missed=_with_missed(state.missed, misses))
    return _without_participants(new_state, decision, dropped), tuple(dropped)


@_handles(MarkUpToDate)
def _mark_up_to_date(state: ClusterState, command: MarkUpToDate) -> tuple[ClusterState, tuple[int, ...]]:
    _require_running(state)
    _require_node(state, command.node_id)
    rows = [list(row) for row in state.table.rows]
    marked: list[int] = []
    caught_up: set[tuple[int, int]] = set()
    for held in command.cells:
        _check_partition(state, held.partition)
        _check_id(held.tid, "tid")
        missed = state.missed_tid(held.partition, command.node_id)
        if missed is not None and held.tid < missed:
            continue
        row = rows[held.partition]
        for index, cell in enumerate(row):
            if cell.node_id == command.node_id and cell.state == CellState.OUT_OF_DATE:
                # A node being dropped keeps leaving: its cell that missed a
                # write (FEEDING, then OUT_OF_DATE) feeds again once caught up.
                row[index] = Cell(cell.node_id, CellState.FEEDING if command.node_id in state.dropping
                                  else CellState.UP_TO_DATE)
                marked.append(held.partition)
                caught_up.add((held.partition, command.node_id))
    if not marked:
        return state, ()
    still_missed = tuple(m for m in state.missed if (m.partition, m.node_id) not in caught_up)
    for partition in set(marked):  # enough replicas up to date: the cells moving away go
        row = rows[partition]
        if sum(1 for cell in row if cell.state == CellState.UP_TO_DATE) >= state.num_replicas:
            rows[partition] = [cell for cell in row if cell.state != CellState.FEEDING]
    new_state = dataclasses.replace(state, table=state.table.with_rows(rows), missed=still_missed)
    return _without_dropped_nodes(new_state), tuple(sorted(set(marked)))


def _without_dropped_nodes(state: ClusterState) -> ClusterState:
    """Nodes being dropped that hold no cell any more leave the table."""
    gone = [node_id for node_id in state.dropping if not state.table.partitions_of_node(node_id, list(CellState))]
    if not gone:
        return state
    table = dataclasses.replace(state.table, version=state.table.version + 1,
                                nodes=tuple(n for n in state.table.nodes if n.node_id not in gone))
    return dataclasses.replace(state, table=table, dropping=tuple(n for n in state.dropping if n not in gone),
                               missed=tuple(m for m in state.missed if m.node_id not in gone))


@_handles(ChangeTable)
def _change_table(state: ClusterState, command: ChangeTable) -> tuple[ClusterState, None]:
    _require_running(state)
    if command.version != state.table.version:
        raise errors.BadRequest(
            f"the partition table changed (version {state.table.version}, planned from {command.version}): plan again")
    if len(command.rows) != state.num_partitions:
        raise errors.BadRequest(f"a table of {len(command.rows)} rows for {state.num_partitions} partitions")
    replicas = command.num_replicas or state.num_replicas
    if not 1 <= replicas <= MAX_REPLICAS:
        raise errors.BadRequest(f"num_replicas must be in 1..{MAX_REPLICAS}, got {replicas}")
    dropping = tuple(sorted(set(state.dropping) | set(command.dropping)))
    for node_id in dropping:
        _require_node(state, node_id)
    misses: list[MissedTid] = []
    for partition, (old_row, new_row) in enumerate(zip(state.table.rows, command.rows, strict=True)):
        old_cells = {cell.node_id: cell for cell in old_row}
        node_ids = [cell.node_id for cell in new_row]
        if len(node_ids) != len(set(node_ids)):
            raise errors.BadRequest(f"partition {partition}: two cells on one node")
        for cell in new_row:
            _require_node(state, cell.node_id)
            if cell.node_id not in old_cells:
                if cell.state != CellState.OUT_OF_DATE:
                    raise errors.BadRequest(f"partition {partition}: a new cell on node {cell.node_id} "
                                            f"must be OUT_OF_DATE, not {cell.state.name}")
                if cell.node_id in dropping:
                    raise errors.BadRequest(f"partition {partition}: node {cell.node_id} is being dropped")
                if state.partition_last_tids[partition] != ZERO_TID:
                    misses.append(MissedTid(partition, cell.node_id, state.partition_last_tids[partition]))
            elif cell.state in READABLE_STATES and old_cells[cell.node_id].state not in READABLE_STATES:
                raise errors.BadRequest(f"partition {partition}: the cell on node {cell.node_id} "
                                        f"is {old_cells[cell.node_id].state.name}, it cannot become readable here")
        if any(c.state in READABLE_STATES for c in old_row) and not any(c.state in READABLE_STATES for c in new_row):
            raise errors.Unavailable(f"partition {partition} would have no readable cell left")
    # Where enough replicas are up to date already (fewer replicas wanted), the
    # cells moving away need not feed anyone.
    rows = [row if sum(1 for c in row if c.state == CellState.UP_TO_DATE) < replicas
            else tuple(c for c in row if c.state != CellState.FEEDING) for row in command.rows]
    kept = {(p, c.node_id) for p, row in enumerate(rows) for c in row}
    missed = tuple(m for m in _with_missed(state.missed, misses) if (m.partition, m.node_id) in kept)
    table = dataclasses.replace(state.table.with_rows(rows), num_replicas=replicas)
    new_state = dataclasses.replace(state, table=table, num_replicas=replicas, missed=missed, dropping=dropping)
    return _without_dropped_nodes(new_state), None


# -- the masters' address book ------------------------------------------------------


@_handles(AddMaster)
def _add_master(state: ClusterState, command: AddMaster) -> tuple[ClusterState, int]:
    if command.node_id < state.next_master_id:
        raise errors.BadRequest(f"master id {command.node_id} was already given out")
    if not command.address:
        raise errors.BadRequest("a master needs an address")
    if any(member.address == command.address for member in state.masters):
        raise errors.BadRequest(f"master {command.address} is already a member")
    members = tuple(sorted((*state.masters, MasterMember(command.node_id, command.address)),
                           key=lambda member: member.node_id))
    return dataclasses.replace(state, masters=members, next_master_id=command.node_id + 1), command.node_id


@_handles(RemoveMaster)
def _remove_master(state: ClusterState, command: RemoveMaster) -> tuple[ClusterState, int]:
    if all(member.node_id != command.node_id for member in state.masters):
        raise errors.BadRequest(f"master {command.node_id} is not a member")
    members = tuple(member for member in state.masters if member.node_id != command.node_id)
    return dataclasses.replace(state, masters=members), command.node_id


def _change_cells(
    state: ClusterState, partition: int, node_ids: Iterable[int],
    new_state: Callable[[Sequence[Cell], Cell], CellState | None],
) -> tuple[ClusterState, tuple[int, ...]]:
    """Set the state of the cells of ``node_ids`` in ``partition`` to what
    ``new_state(row, cell)`` says (None: leave it); the nodes changed."""
    _require_running(state)
    _check_partition(state, partition)
    row = list(state.table.rows[partition])
    changed: list[int] = []
    for node_id in sorted(set(node_ids)):
        _require_node(state, node_id)
        for index, cell in enumerate(row):
            if cell.node_id == node_id:
                wanted = new_state(row, cell)
                if wanted is not None:
                    row[index] = Cell(node_id, wanted)
                    changed.append(node_id)
    if not changed:
        return state, ()
    rows = list(state.table.rows)
    rows[partition] = tuple(row)
    return dataclasses.replace(state, table=state.table.with_rows(rows)), tuple(changed)


@_handles(MarkCorrupted)
def _mark_corrupted(state: ClusterState, command: MarkCorrupted) -> tuple[ClusterState, tuple[int, ...]]:
    def corrupted(row: Sequence[Cell], cell: Cell) -> CellState | None:
        if cell.state == CellState.CORRUPTED:
            return None
        if cell.state in READABLE_STATES and not _has_other_readable(row, [cell.node_id]):
            return None  # the partition keeps its last readable cell
        return CellState.CORRUPTED

    return _change_cells(state, command.partition, command.node_ids, corrupted)


@_handles(RebuildCells)
def _rebuild_cells(state: ClusterState, command: RebuildCells) -> tuple[ClusterState, tuple[int, ...]]:
    state, rebuilt = _change_cells(
        state, command.partition, command.node_ids,
        lambda row, cell: CellState.OUT_OF_DATE if cell.state == CellState.CORRUPTED else None)
    last_tid = state.partition_last_tids[command.partition]
    if not rebuilt or last_tid == ZERO_TID:
        return state, rebuilt
    misses = [MissedTid(command.partition, node_id, last_tid) for node_id in rebuilt]
    return dataclasses.replace(state, missed=_with_missed(state.missed, misses)), rebuilt


@_handles(SetClusterState)
def _set_cluster_state(state: ClusterState, command: SetClusterState) -> tuple[ClusterState, None]:
    _require_running(state)
    if state.stopping == command.stopping:
        return state, None
    return dataclasses.replace(state, stopping=command.stopping), None


@_handles(Truncate)
def _truncate(state: ClusterState, command: Truncate) -> tuple[ClusterState, Truncation]:
    _require_running(state)
    _check_id(command.tid, "truncation tid")
    _check_id(command.marker, "truncation marker")
    if not state.stopping:
        raise errors.BadRequest("a truncation needs a STOPPING cluster (neoctl set cluster STOPPING)")
    if state.pending_decisions:
        raise errors.Refused(f"{len(state.pending_decisions)} committed transaction(s) are not applied "
                                 "on every storage node yet: retry once they are")
    if command.tid >= state.last_tid:
        raise errors.BadRequest(f"nothing to truncate: no transaction after {tid_repr(command.tid)} "
                                f"(the last TID is {tid_repr(state.last_tid)})")
    if command.marker <= state.last_tid:
        raise errors.BadRequest("the truncation marker must be above the last TID")
    truncation = Truncation(command.tid, command.marker)
    return dataclasses.replace(
        state,
        last_tid=command.marker,
        partition_last_tids=tuple(min(tid, command.tid) for tid in state.partition_last_tids),
        missed=tuple(dataclasses.replace(miss, tid=min(miss.tid, command.tid)) for miss in state.missed),
        recent_outcomes=OutcomeLog.of(o for o in state.recent_outcomes if o.tid <= command.tid),
        truncations=(*state.truncations, truncation),
    ), truncation
