"""Which cells this storage node may serve, by its latest partition table.

The node learns its id when it registers and its partition table from the
registration answer and then from its session with the master.  Each
request is checked against them before it reaches data:

* no table yet (or the table not created) → :class:`~neostore.errors.Unavailable`;
* reads only from readable cells (UP_TO_DATE, FEEDING), writes only to
  writable cells (UP_TO_DATE, OUT_OF_DATE, FEEDING); any other partition →
  :class:`~neostore.errors.NotOwner`, naming the partition, this node and
  the table version, so that the client refreshes its table and routes
  again.

Tables only move forward: an update with a lower version than the one held
is ignored (a late registration answer must not undo a session update).
"""

from __future__ import annotations

import threading

from neostore import errors
from neostore.ids import u64
from neostore.partition_table import READABLE_STATES, WRITABLE_STATES, CellState, PartitionTable


class Ownership:
    """This node's id and partition table (thread-safe)."""

    def __init__(self, node_id: int = 0) -> None:
        self._mutex = threading.Lock()
        self._node_id = node_id
        self._table: PartitionTable | None = None

    @property
    def node_id(self) -> int:
        with self._mutex:
            return self._node_id

    def set_node_id(self, node_id: int) -> None:
        with self._mutex:
            self._node_id = node_id

    @property
    def table(self) -> PartitionTable | None:
        with self._mutex:
            return self._table

    def set_table(self, table: PartitionTable) -> bool:
        """Adopt ``table`` unless an equal or newer version is held."""
        with self._mutex:
            if self._table is not None and table.version <= self._table.version:
                return False
            self._table = table
            return True

    def _created_table(self) -> PartitionTable:
        table = self.table
        if table is None or not table.created:
            raise errors.Unavailable(
                f"storage node {self.node_id} has no partition table yet"
            )
        return table

    def partition_of(self, oid_or_tid: bytes) -> int:
        return u64(oid_or_tid) % self._created_table().num_partitions

    def readable(self, partition: int, routed_version: int = 0) -> CellState:
        """The state of this node's readable cell of ``partition``, or NotOwner."""
        return self._check(partition, READABLE_STATES, "readable", routed_version)

    def writable(self, partition: int, routed_version: int = 0) -> CellState:
        """The state of this node's writable cell of ``partition``, or NotOwner."""
        return self._check(partition, WRITABLE_STATES, "writable", routed_version)

    def corrupted(self, partition: int, routed_version: int = 0) -> CellState:
        """NotOwner unless this node's cell of ``partition`` is CORRUPTED."""
        return self._check(partition, frozenset({CellState.CORRUPTED}), "CORRUPTED", routed_version)

    def _check(self, partition: int, states: frozenset[CellState], kind: str, routed_version: int) -> CellState:
        table = self._created_table()
        node_id = self.node_id
        if not 0 <= partition < table.num_partitions:
            raise errors.BadRequest(
                f"partition {partition} does not exist: the cluster has {table.num_partitions} partitions"
            )
        state = table.cell_state(partition, node_id)
        if state is None or state not in states:
            routed = f", request routed with version {routed_version}" if routed_version else ""
            held = f" (its cell is {state.name})" if state is not None else ""
            raise errors.NotOwner(
                f"partition {partition} has no {kind} cell on storage node {node_id}{held} "
                f"(partition table version {table.version}{routed})"
            )
        return state

    def readable_partitions(self) -> list[int]:
        """Partitions this node may serve reads of."""
        table = self._created_table()
        return table.partitions_of_node(self.node_id, READABLE_STATES)
