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

Commands and state encode to deterministic JSON (:func:`encode_command`,
:func:`encode_state`): sorted keys, bytes as hex, enums by name, no pickle.
The codec is driven by the dataclasses' type hints, so a new command needs
no codec code of its own.

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
import json
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, Union

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
    these partitions."""

    node_id: int
    partitions: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class PartitionTid:
    """A node holds every committed transaction of ``partition`` up to ``tid``."""

    partition: int
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


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """Everything the masters agree on.  Change it only through :func:`apply`.

    ``status`` is the cluster's run state (``ClusterInfo.state``).  Before
    :class:`CreateCluster` the state is blank: ``cluster_name`` is empty.
    """

    cluster_name: str = ""
    status: ClusterStatus = ClusterStatus.EMPTY
    num_partitions: int = 0
    num_replicas: int = 0
    table: PartitionTable = PartitionTable(version=0, num_partitions=0, num_replicas=0)
    last_oid: bytes = ZERO_TID
    last_tid: bytes = ZERO_TID
    partition_last_tids: tuple[bytes, ...] = ()
    pending_decisions: tuple[PendingDecision, ...] = ()  # by increasing tid
    next_node_id: int = 1
    # The last MAX_RECENT_OUTCOMES decisions, oldest first (increasing tid):
    # any master can tell a client what became of its TTID after a leader change.
    recent_outcomes: tuple[Outcome, ...] = ()

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

    def outcome_of(self, ttid: bytes, client_id: str) -> bytes | None:
        """The TID ``client_id``'s TTID ``ttid`` committed as, if it is among
        the recent decisions (a record without client id matches any)."""
        for outcome in reversed(self.recent_outcomes):
            if outcome.ttid == ttid and outcome.client_id in ("", client_id):
                return outcome.tid
        return None

    def decision_of_ttid(self, ttid: bytes) -> PendingDecision | None:
        for decision in self.pending_decisions:
            if decision.ttid == ttid:
                return decision
        return None


def initial_state() -> ClusterState:
    """The blank state of a master that has never created its cluster."""
    return ClusterState()


# -- commands -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CreateCluster:
    """First command of every log: name the cluster, fix P and R.

    Result: None.
    """

    name: str
    num_partitions: int
    num_replicas: int


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
    by the previous ones: its TID must exceed ``last_tid`` and share the
    TTID's partition, and once its ``out_of_date`` cells are marked, every
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
    the tid given: its OUT_OF_DATE cells there become UP_TO_DATE when that
    tid reaches the partition's last committed tid (checked here, so that a
    commit decided meanwhile is never missed).  Result: the partitions
    marked.
    """

    node_id: int
    cells: tuple[PartitionTid, ...]


Command = Union[
    CreateCluster,
    RegisterNode,
    SetNodeState,
    CreatePartitionTable,
    AdmitNodes,
    AllocateOids,
    CommitDecisions,
    MarkApplied,
    DropParticipants,
    MarkUpToDate,
]

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
    if not isinstance(command, CreateCluster) and not state.created:
        raise errors.Unavailable("the cluster has not been created yet")
    return handler(state, command)


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
    table = PartitionTable(version=1, num_partitions=command.num_partitions, num_replicas=command.num_replicas)
    return dataclasses.replace(
        state,
        cluster_name=command.name,
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
        info = StorageNodeInfo(node_id, command.address, initial, command.label)
        return dataclasses.replace(
            state, table=state.table.with_node(info), next_node_id=node_id + 1
        ), node_id
    known = state.known_node(command.node_id)
    if known is None:
        raise errors.WrongCluster(f"node {command.node_id} is not known to this cluster ({state.cluster_name!r})")
    new_state = NodeState.PENDING if known.state == NodeState.PENDING else NodeState.RUNNING
    info = StorageNodeInfo(command.node_id, command.address, new_state, command.label)
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
    """Every partition keeps a readable cell, and each readable cell voted."""
    for partition in partitions:
        voters = {vote.node_id for vote in votes if partition in vote.partitions}
        readable = [c.node_id for c in rows[partition] if c.state in READABLE_STATES]
        if not readable:
            raise errors.Unavailable(
                f"partition {partition}: the transaction would leave no readable cell "
                f"(voters: {sorted(voters) or 'none'})"
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
            raise errors.Unavailable(
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
    if u64(decision.tid) % state.num_partitions != u64(decision.ttid) % state.num_partitions:
        raise errors.BadRequest(
            f"tid {tid_repr(decision.tid)} and ttid {tid_repr(decision.ttid)} are not in the same partition"
        )
    if state.decision_of_ttid(decision.ttid) is not None:
        raise errors.BadRequest(f"transaction {tid_repr(decision.ttid)} is already decided")
    if not decision.partitions:
        raise errors.BadRequest("a decision must name the partitions the transaction wrote")
    for partition in decision.partitions:
        _check_partition(state, partition)
    for ref in decision.out_of_date:
        _check_partition(state, ref.partition)
    for oid in decision.oids:
        _check_id(oid, "oid")
    for vote in decision.votes:
        _require_node(state, vote.node_id)
        for partition in vote.partitions:
            _check_partition(state, partition)
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
    for partition in decision.partitions:
        partition_last_tids[partition] = decision.tid
    return dataclasses.replace(
        state,
        table=table,
        last_tid=decision.tid,
        partition_last_tids=tuple(partition_last_tids),
        pending_decisions=state.pending_decisions + (decision.pending(),),
        recent_outcomes=_remember(state.recent_outcomes, Outcome(decision.ttid, decision.tid, decision.client_id)),
    )


def _remember(outcomes: tuple[Outcome, ...], outcome: Outcome) -> tuple[Outcome, ...]:
    """``outcomes`` plus ``outcome``, the oldest dropped beyond the bound."""
    kept = outcomes + (outcome,)
    if len(kept) > MAX_RECENT_OUTCOMES:
        kept = kept[len(kept) - MAX_RECENT_OUTCOMES:]
    return kept


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
    new_state = _without_participants(dataclasses.replace(state, table=table), decision, dropped)
    return new_state, tuple(dropped)


@_handles(MarkUpToDate)
def _mark_up_to_date(state: ClusterState, command: MarkUpToDate) -> tuple[ClusterState, tuple[int, ...]]:
    _require_running(state)
    _require_node(state, command.node_id)
    rows = [list(row) for row in state.table.rows]
    marked: list[int] = []
    for held in command.cells:
        _check_partition(state, held.partition)
        _check_id(held.tid, "tid")
        if held.tid < state.partition_last_tids[held.partition]:
            continue
        row = rows[held.partition]
        for index, cell in enumerate(row):
            if cell.node_id == command.node_id and cell.state == CellState.OUT_OF_DATE:
                row[index] = Cell(cell.node_id, CellState.UP_TO_DATE)
                marked.append(held.partition)
    if not marked:
        return state, ()
    return dataclasses.replace(state, table=state.table.with_rows(rows)), tuple(sorted(set(marked)))


# -- encoding ---------------------------------------------------------------------

STATE_FORMAT = 1


def _to_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_to_json(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    raise TypeError(f"cannot encode {type(value).__name__}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _from_json(kind: Any, data: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin is Union or origin is types.UnionType:
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        (option,) = [o for o in options if o is not type(None)]
        return _from_json(option, data)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(data, list):
            raise ValueError(f"expected a list for {kind}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], item) for item in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} items for {kind}")
        return tuple(_from_json(arg, item) for arg, item in zip(args, data))
    if kind is bytes:
        if not isinstance(data, str):
            raise ValueError("expected hex bytes")
        return bytes.fromhex(data)
    if kind is bool:
        if not isinstance(data, bool):
            raise ValueError("expected a boolean")
        return data
    if kind is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise ValueError("expected an integer")
        return data
    if kind is str:
        if not isinstance(data, str):
            raise ValueError("expected a string")
        return data
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind[data]
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {kind.__name__}")
        hints = _hints(kind)
        names = {field.name for field in dataclasses.fields(kind)}
        if set(data) - names:
            raise ValueError(f"unknown fields {sorted(set(data) - names)} for {kind.__name__}")
        return kind(**{name: _from_json(hints[name], value) for name, value in data.items()})
    raise TypeError(f"cannot decode {kind}")


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_command(command: Command) -> bytes:
    """Deterministic bytes for a command (what the log stores and Raft ships)."""
    name = type(command).__name__
    if COMMAND_TYPES.get(name) is not type(command):
        raise TypeError(f"not a command: {command!r}")
    return _dumps({"command": name, "fields": _to_json(command)})


def decode_command(data: bytes) -> Command:
    """The command :func:`encode_command` encoded; ValueError if malformed."""
    try:
        document = json.loads(data)
        cls = COMMAND_TYPES[document["command"]]
        command: Command = _from_json(cls, document["fields"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"undecodable command: {error}") from None
    return command


def encode_state(state: ClusterState) -> bytes:
    """Deterministic bytes for a snapshot of the state."""
    return _dumps({"format": STATE_FORMAT, "state": _to_json(state)})


def decode_state(data: bytes) -> ClusterState:
    """The state :func:`encode_state` encoded; ValueError if malformed."""
    try:
        document = json.loads(data)
        if document.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported snapshot format {document.get('format')!r}")
        state: ClusterState = _from_json(ClusterState, document["state"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"undecodable state snapshot: {error}") from None
    return state
