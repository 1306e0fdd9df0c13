"""Rebalancing the partition table: which cells to add, to feed and to drop.

:func:`plan_rows` is pure (no I/O, no clock, no randomness): given the
current rows, the nodes that should hold cells and the wanted number of
replicas R, it returns the *transitional* rows that start moving the table
to a balanced assignment while moving as little data as possible.  The
master's state machine calls it for ``add-node``, ``drop-node``, after a
failure, and for ``neoctl tweak`` (:func:`describe_moves` shows the plan).

Eligible nodes are the members that are not DOWN (a DOWN member gets no
new cell and keeps none as a target).  With N eligible nodes, P partitions
and R' = min(R, N), the *target* is a set of R' distinct eligible nodes per
partition, found in five steps:

1. Quotas: every node gets floor(P*R'/N) target cells, and the remainder
   goes one each to the nodes already holding the most cells (ties: lower
   id), steered away from failure domains (labels) that would otherwise
   have to hold two replicas of a partition.
2. Label caps: a label whose nodes take Q cells in all may hold at most
   max(1, ceil(Q/P)) cells of one partition -- one, that is distinct labels,
   whenever each label has at most N/R' of the nodes.  Such an assignment
   always exists (lay the nodes' quotas out label by label and deal the
   slots to partitions round-robin), so the caps never make the plan fail.
3. Keep: in rounds, each partition keeps one more of its current cells on
   an eligible node -- UP_TO_DATE ones first, then FEEDING, then
   OUT_OF_DATE -- on the node with the most quota left, within quotas/caps.
4. Fill: a partition still short takes the eligible node with the most
   quota left in its label, then the most quota left (ties: lower id; a
   node holding a CORRUPTED or DISCARDED cell of the partition last).
5. Repair: when no node fits any more (those with quota left already hold
   the partition, or their label is at its cap) the cheapest augmenting
   path, as in a min-cost flow, hands a cell of a full node over to the
   short partition and moves the partition that lost it on, until every
   partition has R' cells; losing a kept UP_TO_DATE cell costs most.  (The
   costs are non-negative -- undoing a cell added in step 4 is free, not a
   gain -- so each path is cheapest, the whole not always optimal.)

The transition from the current row to the target: a kept cell keeps its
state, except FEEDING, which is UP_TO_DATE again; a new target cell is
OUT_OF_DATE (it replicates); a readable (UP_TO_DATE or FEEDING) cell outside
the target is FEEDING -- it serves until the master drops it, once the
partition has enough UP_TO_DATE cells -- and any other cell outside the
target is removed.  No readable cell is ever removed, so a partition never
becomes unreadable, and only eligible nodes get new cells.  Re-planning a
converged table (all cells UP_TO_DATE, on target) changes nothing.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence

from neostore.partition_table import READABLE_STATES, Cell, CellState

Row = tuple[Cell, ...]

# The states a cell may keep as a target, most wanted first, and the state it
# then has.  CORRUPTED and DISCARDED cells are never kept: a node holding one
# that becomes a target again starts over as OUT_OF_DATE.
#: A failure domain: ("label", the nodes' label), or ("node", node_id) for a node without one.
Label = tuple[str, str | int]

_KEEP_ORDER = (CellState.UP_TO_DATE, CellState.FEEDING, CellState.OUT_OF_DATE)
_KEPT_STATE = {
    CellState.UP_TO_DATE: CellState.UP_TO_DATE,
    CellState.FEEDING: CellState.UP_TO_DATE,
    CellState.OUT_OF_DATE: CellState.OUT_OF_DATE,
}


def plan_rows(
    rows: Sequence[Sequence[Cell]],
    members: Sequence[int],
    num_replicas: int,
    labels: Mapping[int, str] = {},  # read only: a shared default is harmless
    down: Collection[int] = (),
) -> tuple[tuple[Cell, ...], ...]:
    """The transitional rows moving ``rows`` toward a balanced assignment.

    ``members``: the nodes that should hold cells from now on, any order;
    ``labels``: node id -> failure domain ("" or missing: its own domain);
    ``down``: nodes that are DOWN now (never given a cell, never relied on).
    """
    if num_replicas < 1:
        raise ValueError("num_replicas must be at least 1")
    for partition, row in enumerate(rows):
        if len({cell.node_id for cell in row}) != len(row):
            raise ValueError(f"partition {partition} has two cells on one node")
    down = frozenset(down)
    eligible = sorted(set(members) - down)
    if not eligible or not rows:
        targets: list[frozenset[int]] = [frozenset()] * len(rows)
    else:
        targets = _choose_targets(rows, eligible, min(num_replicas, len(eligible)), labels)
    return tuple(_transition(row, target) for row, target in zip(rows, targets, strict=True))


def describe_moves(old_rows: Sequence[Sequence[Cell]], new_rows: Sequence[Sequence[Cell]]) -> list[str]:
    """One human line per partition that changes, for ``neoctl tweak --dry-run``.

    e.g. ``partition 3: node 4 added (OUT_OF_DATE), node 1 FEEDING``.
    """
    lines = []
    for partition, (old, new) in enumerate(itertools.zip_longest(old_rows, new_rows, fillvalue=())):
        before = {cell.node_id: cell.state for cell in old}
        after = {cell.node_id: cell.state for cell in new}
        changes = []
        for node_id, state in after.items():
            if node_id not in before:
                changes.append(f"node {node_id} added ({state.name})")
            elif before[node_id] != state:
                changes.append(f"node {node_id} {state.name}")
        changes += [f"node {node_id} removed" for node_id in before if node_id not in after]
        if changes:
            lines.append(f"partition {partition}: " + ", ".join(changes))
    return lines


# -- the target ---------------------------------------------------------------


def _choose_targets(
    rows: Sequence[Sequence[Cell]], eligible: list[int], width: int, labels: Mapping[int, str]
) -> list[frozenset[int]]:
    """R' (``width``) distinct eligible nodes per partition (steps 1 to 5)."""
    label_of: dict[int, Label] = {n: ("label", labels[n]) if labels.get(n) else ("node", n) for n in eligible}
    quota, caps = _quotas(rows, eligible, width, label_of)
    plan = _Assignment(len(rows), width, quota, caps, label_of)
    _keep(plan, rows)
    _fill(plan, rows)
    while short := [p for p in range(len(rows)) if plan.missing(p)]:
        if not _augment(plan, rows, short):  # pragma: no cover -- step 2 says it cannot happen
            raise AssertionError("no balanced assignment: quotas and label caps disagree")
    return [frozenset(nodes) for nodes in plan.nodes]


def _cap(label_total: int, num_partitions: int) -> int:
    """How many cells of one partition a label holding ``label_total`` may take."""
    return max(1, -(-label_total // num_partitions))


def _quotas(
    rows: Sequence[Sequence[Cell]], eligible: list[int], width: int, label_of: Mapping[int, Label]
) -> tuple[dict[int, int], dict[Label, int]]:
    """Target cells per node and label caps (steps 1 and 2).

    The remainder's extra cells go to the nodes holding the most cells that
    would stay targets (UP_TO_DATE or OUT_OF_DATE: re-planning a planned
    table picks the same nodes), then the most UP_TO_DATE, the most FEEDING,
    the fewest CORRUPTED or DISCARDED cells, the lowest id -- in passes that
    let a label's cap grow to 1, then 2...
    """
    num_partitions = len(rows)
    base, extra = divmod(num_partitions * width, len(eligible))
    quota = dict.fromkeys(eligible, base)
    label_total: Counter[Label] = Counter()
    for node_id in eligible:
        label_total[label_of[node_id]] += base
    held: Counter[int] = Counter()
    states: Counter[tuple[int, CellState]] = Counter()
    for cell in itertools.chain.from_iterable(rows):
        states[cell.node_id, cell.state] += 1
        if cell.state in (CellState.UP_TO_DATE, CellState.OUT_OF_DATE):
            held[cell.node_id] += 1
    spoiled = {n: states[n, CellState.CORRUPTED] + states[n, CellState.DISCARDED] for n in eligible}
    order = sorted(eligible, key=lambda n: (
        -held[n], -states[n, CellState.UP_TO_DATE], -states[n, CellState.FEEDING], spoiled[n], n))
    level = 1
    while extra:
        for node_id in order:
            label = label_of[node_id]
            allowed = max(level, _cap(label_total[label], num_partitions))
            if extra and quota[node_id] == base and _cap(label_total[label] + 1, num_partitions) <= allowed:
                quota[node_id] += 1
                label_total[label] += 1
                extra -= 1
        level += 1
    caps = {label: _cap(total, num_partitions) for label, total in label_total.items()}
    return quota, caps


@dataclasses.dataclass
class _Assignment:
    """A partial target: nodes per partition, within quotas and label caps."""

    num_partitions: int
    width: int
    quota: dict[int, int]
    caps: dict[Label, int]
    label_of: dict[int, Label]
    nodes: list[set[int]] = dataclasses.field(init=False)  # per partition
    held: dict[int, set[int]] = dataclasses.field(init=False)  # partitions per node
    in_label: list[Counter[Label]] = dataclasses.field(init=False)  # per partition
    members_of: dict[Label, list[int]] = dataclasses.field(init=False)  # label -> nodes

    def __post_init__(self) -> None:
        self.nodes = [set() for _ in range(self.num_partitions)]
        self.held = {node_id: set() for node_id in self.quota}
        self.in_label = [Counter() for _ in range(self.num_partitions)]
        self.members_of = {label: [] for label in sorted(self.caps)}
        for node_id in sorted(self.quota):
            self.members_of[self.label_of[node_id]].append(node_id)

    def room(self, node_id: int) -> int:
        return self.quota[node_id] - len(self.held[node_id])

    def missing(self, partition: int) -> int:
        return self.width - len(self.nodes[partition])

    def label_room(self, label: Label) -> int:
        return sum(self.room(node_id) for node_id in self.members_of[label])

    def label_has_room(self, partition: int, label: Label) -> bool:
        return self.in_label[partition][label] < self.caps[label]

    def fits(self, partition: int, node_id: int) -> bool:
        return (
            node_id in self.quota
            and node_id not in self.nodes[partition]
            and self.missing(partition) > 0
            and self.room(node_id) > 0
            and self.label_has_room(partition, self.label_of[node_id])
        )

    def add(self, partition: int, node_id: int) -> None:
        self.nodes[partition].add(node_id)
        self.held[node_id].add(partition)
        self.in_label[partition][self.label_of[node_id]] += 1

    def remove(self, partition: int, node_id: int) -> None:
        self.nodes[partition].remove(node_id)
        self.held[node_id].remove(partition)
        self.in_label[partition][self.label_of[node_id]] -= 1


def _keep(plan: _Assignment, rows: Sequence[Sequence[Cell]]) -> None:
    """Step 3: keep current cells, best states first, one per partition a round."""
    for state in _KEEP_ORDER:
        progress = True
        while progress:
            progress = False
            for partition, row in enumerate(rows):
                options = [c.node_id for c in row if c.state == state and plan.fits(partition, c.node_id)]
                if options:
                    plan.add(partition, min(options, key=lambda n: (-plan.room(n), n)))
                    progress = True


def _fill(plan: _Assignment, rows: Sequence[Sequence[Cell]]) -> None:
    """Step 4: give each short partition the eligible nodes with most room.

    Most room in their label first, so that labels fill up evenly and late
    partitions still find distinct labels with room.
    """
    for partition, row in enumerate(rows):
        spoiled = {c.node_id for c in row if c.state not in READABLE_STATES | {CellState.OUT_OF_DATE}}
        while plan.missing(partition):
            options = [n for n in plan.quota if plan.fits(partition, n)]
            if not options:
                break
            plan.add(partition, min(options, key=lambda n: (
                n in spoiled, -plan.label_room(plan.label_of[n]), -plan.room(n), n)))


# Vertices of the flow network searched by _augment: ("p", partition),
# ("pl", partition, label) and ("n", node).  Source -> partition (capacity R'),
# partition -> (partition, label) (the label's cap), (partition, label) ->
# node (1: the cell), node -> sink (the node's quota).
Vertex = tuple

# What a target cell is worth: its current state's (none: 0).  Adding a cell
# costs _VALUE_MAX minus its worth, taking one away costs its worth.
_VALUE = {CellState.UP_TO_DATE: 3, CellState.FEEDING: 2, CellState.OUT_OF_DATE: 1}
_VALUE_MAX = 3


def _augment(plan: _Assignment, rows: Sequence[Sequence[Cell]], short: list[int]) -> bool:
    """Step 5: the cheapest augmenting path from a short partition to a node with room.

    Dijkstra over the residual network: taking a cell away from a partition
    costs what the cell is worth (an UP_TO_DATE cell most), adding one costs
    what it is not, so the path keeps the cells worth most and moves few.
    """
    worth = [{c.node_id: _VALUE.get(c.state, 0) for c in row} for row in rows]
    best: dict[Vertex, tuple[int, int]] = {}
    parent: dict[Vertex, Vertex | None] = {}
    order = itertools.count()
    heap: list[tuple[int, int, int, Vertex, Vertex | None]] = [(0, 0, next(order), ("p", p), None) for p in short]
    while heap:
        cost, hops, _, vertex, previous = heapq.heappop(heap)
        if vertex in parent:
            continue
        parent[vertex] = previous
        if vertex[0] == "n" and plan.room(vertex[1]) > 0:
            _apply_path(plan, parent, vertex)
            return True
        for successor, step in _residual_edges(plan, worth, vertex):
            key = (cost + step, hops + 1)
            if successor not in parent and (successor not in best or key < best[successor]):
                best[successor] = key
                heapq.heappush(heap, (*key, next(order), successor, vertex))
    return False


def _residual_edges(plan: _Assignment, worth: list[dict[int, int]], vertex: Vertex) -> Iterator[tuple[Vertex, int]]:
    """The residual edges out of ``vertex`` and their costs."""
    kind = vertex[0]
    if kind == "p":
        partition = vertex[1]
        for label in plan.members_of:
            if plan.label_has_room(partition, label):
                yield ("pl", partition, label), 0
    elif kind == "pl":
        _, partition, label = vertex
        for node_id in plan.members_of[label]:
            if node_id not in plan.nodes[partition]:
                yield ("n", node_id), _VALUE_MAX - worth[partition].get(node_id, 0)
        if plan.in_label[partition][label]:  # undo one of its cells in this label
            yield ("p", partition), 0
    else:
        node_id = vertex[1]
        for partition in sorted(plan.held[node_id]):  # take its cell away
            yield ("pl", partition, plan.label_of[node_id]), worth[partition].get(node_id, 0)


def _apply_path(plan: _Assignment, parent: Mapping[Vertex, Vertex | None], end: Vertex) -> None:
    """Add the path's (partition, label) -> node cells, remove its node -> (partition, label) ones."""
    vertex = end
    while (previous := parent[vertex]) is not None:
        if previous[0] == "pl" and vertex[0] == "n":
            plan.add(previous[1], vertex[1])
        elif previous[0] == "n" and vertex[0] == "pl":
            plan.remove(vertex[1], previous[1])
        vertex = previous


# -- the transition -------------------------------------------------------------


def _transition(row: Sequence[Cell], target: frozenset[int]) -> Row:
    """The row on its way to ``target``: see the module docstring."""
    cells = []
    for cell in row:
        if cell.node_id in target:
            cells.append(Cell(cell.node_id, _KEPT_STATE.get(cell.state, CellState.OUT_OF_DATE)))
        elif cell.state in READABLE_STATES:
            cells.append(Cell(cell.node_id, CellState.FEEDING))
    held = {cell.node_id for cell in row}
    cells += [Cell(node_id, CellState.OUT_OF_DATE) for node_id in sorted(target - held)]
    return tuple(cells)
