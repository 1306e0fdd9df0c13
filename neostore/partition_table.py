"""The partition table: which storage nodes hold which partition.

``partition(oid) = u64(oid) % num_partitions``; each partition has up to
``num_replicas`` cells, each a (storage node, :class:`CellState`) pair.  The
table is a frozen value: the master's state machine makes a new one (with a
higher ``version``) for every change, and every process shares this one
type, its proto encoding and its one text formatter.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Iterable, Sequence
from typing import cast

from neostore.ids import u64
from neostore.protocol import common_pb2


class CellState(enum.IntEnum):
    """A cell's state, as in NEO (values are the proto's)."""

    UP_TO_DATE = common_pb2.Cell.UP_TO_DATE
    OUT_OF_DATE = common_pb2.Cell.OUT_OF_DATE
    FEEDING = common_pb2.Cell.FEEDING
    DISCARDED = common_pb2.Cell.DISCARDED
    CORRUPTED = common_pb2.Cell.CORRUPTED


READABLE_STATES = frozenset({CellState.UP_TO_DATE, CellState.FEEDING})
WRITABLE_STATES = frozenset({CellState.UP_TO_DATE, CellState.OUT_OF_DATE, CellState.FEEDING})


class NodeState(enum.IntEnum):
    """A storage node's state in the registry (values are the proto's)."""

    PENDING = common_pb2.StorageNode.PENDING
    RUNNING = common_pb2.StorageNode.RUNNING
    DOWN = common_pb2.StorageNode.DOWN


@dataclasses.dataclass(frozen=True)
class Cell:
    node_id: int
    state: CellState


@dataclasses.dataclass(frozen=True)
class StorageNodeInfo:
    node_id: int
    address: str
    state: NodeState
    label: str = ""
    #: host:port of its framed calls (:mod:`neostore.frames`); "" if none.
    frames_address: str = ""


@dataclasses.dataclass(frozen=True)
class PartitionTable:
    """An immutable partition table; an empty one has no rows."""

    version: int
    num_partitions: int
    num_replicas: int
    rows: tuple[tuple[Cell, ...], ...] = ()
    nodes: tuple[StorageNodeInfo, ...] = ()

    # -- routing -------------------------------------------------------------

    @property
    def created(self) -> bool:
        return len(self.rows) == self.num_partitions

    def partition_of(self, oid: bytes) -> int:
        return u64(oid) % self.num_partitions

    def node(self, node_id: int) -> StorageNodeInfo:
        for info in self.nodes:
            if info.node_id == node_id:
                return info
        raise KeyError(node_id)

    def cells(self, partition: int) -> tuple[Cell, ...]:
        return self.rows[partition]

    def readable_nodes(self, partition: int) -> list[int]:
        """Nodes that may serve reads of ``partition``, RUNNING ones only."""
        return list(self._routes[partition][0])

    def writable_nodes(self, partition: int) -> list[int]:
        """Nodes that must take every write to ``partition``."""
        return list(self._routes[partition][1])

    @functools.cached_property
    def _routes(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """(readable nodes, writable nodes) of each partition, computed once:
        the table never changes, and a client asks for every object it
        stores or loads (not a field: equality, encoding and ``replace``
        ignore it)."""
        running = {info.node_id for info in self.nodes if info.state == NodeState.RUNNING}
        return tuple(
            (tuple(c.node_id for c in row if c.state in READABLE_STATES and c.node_id in running),
             tuple(c.node_id for c in row if c.state in WRITABLE_STATES and c.node_id in running))
            for row in self.rows)

    def partitions_of_node(self, node_id: int, states: Iterable[CellState] = WRITABLE_STATES) -> list[int]:
        wanted = frozenset(states)
        return [p for p, row in enumerate(self.rows)
                if any(c.node_id == node_id and c.state in wanted for c in row)]

    def cell_state(self, partition: int, node_id: int) -> CellState | None:
        for cell in self.rows[partition]:
            if cell.node_id == node_id:
                return cell.state
        return None

    def is_operational(self) -> bool:
        """Every partition has a readable cell on a running node."""
        return self.created and all(self.readable_nodes(p) for p in range(self.num_partitions))

    # -- changes (used by the master's state machine) -------------------------

    def with_node(self, info: StorageNodeInfo) -> PartitionTable:
        others = tuple(n for n in self.nodes if n.node_id != info.node_id)
        nodes = tuple(sorted(others + (info,), key=lambda n: n.node_id))
        return dataclasses.replace(self, version=self.version + 1, nodes=nodes)

    def with_rows(self, rows: Sequence[Sequence[Cell]]) -> PartitionTable:
        return dataclasses.replace(
            self, version=self.version + 1, rows=tuple(tuple(r) for r in rows)
        )

    # -- encoding ------------------------------------------------------------

    def to_proto(self) -> common_pb2.PartitionTable:
        return common_pb2.PartitionTable(
            version=self.version,
            num_partitions=self.num_partitions,
            num_replicas=self.num_replicas,
            rows=[common_pb2.PartitionRow(cells=[
                common_pb2.Cell(node_id=c.node_id, state=cast("common_pb2.Cell.State", int(c.state))) for c in row
            ]) for row in self.rows],
            nodes=[common_pb2.StorageNode(
                node_id=n.node_id, address=n.address, state=cast("common_pb2.StorageNode.State", int(n.state)),
                label=n.label,
                frames_address=n.frames_address,
            ) for n in self.nodes],
        )

    @classmethod
    def from_proto(cls, message: common_pb2.PartitionTable) -> PartitionTable:
        return cls(
            version=message.version,
            num_partitions=message.num_partitions,
            num_replicas=message.num_replicas,
            rows=tuple(
                tuple(Cell(c.node_id, CellState(c.state)) for c in row.cells)
                for row in message.rows
            ),
            nodes=tuple(
                StorageNodeInfo(n.node_id, n.address, NodeState(n.state), n.label, n.frames_address)
                for n in message.nodes
            ),
        )


def initial_rows(node_ids: Sequence[int], num_partitions: int, num_replicas: int) -> list[list[Cell]]:
    """A balanced first assignment, every cell UP_TO_DATE (empty database).

    Cell ``r`` of partition ``p`` goes to node ``(p * R + r) % N``: the R
    replicas of a partition are on R distinct nodes (when R <= N), and every
    node gets ``P * R / N`` cells, within one.
    """
    if not node_ids:
        raise ValueError("a partition table needs at least one storage node")
    if num_partitions < 1 or num_replicas < 1:
        raise ValueError("num_partitions and num_replicas must be at least 1")
    nodes = sorted(node_ids)
    replicas = min(num_replicas, len(nodes))
    return [
        [Cell(nodes[(p * replicas + r) % len(nodes)], CellState.UP_TO_DATE) for r in range(replicas)]
        for p in range(num_partitions)
    ]


_STATE_LETTER = {
    CellState.UP_TO_DATE: "U",
    CellState.OUT_OF_DATE: "O",
    CellState.FEEDING: "F",
    CellState.DISCARDED: "D",
    CellState.CORRUPTED: "C",
}


def format_table(table: PartitionTable) -> str:
    """The table as a grid people read: partitions × nodes, a letter a cell.

    U up to date, O out of date, F feeding, C corrupted, . no cell.
    """
    if not table.created:
        return f"partition table version {table.version}: not created yet"
    node_ids = sorted({n.node_id for n in table.nodes} | {
        c.node_id for row in table.rows for c in row})
    width = max(2, *(len(str(n)) for n in node_ids)) if node_ids else 2
    lines = [
        f"partition table version {table.version}: {table.num_partitions} partitions, "
        f"{table.num_replicas} replicas",
        "partition | " + " ".join(f"{n:>{width}}" for n in node_ids),
    ]
    for p, row in enumerate(table.rows):
        states = {c.node_id: _STATE_LETTER[c.state] for c in row}
        lines.append(f"{p:>9} | " + " ".join(f"{states.get(n, '.'):>{width}}" for n in node_ids))
    lines.append("U up to date, O out of date, F feeding, C corrupted, . none")
    return "\n".join(lines)
