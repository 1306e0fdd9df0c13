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

A request routed with a newer table than this node holds waits for that
table (at most ``table_wait`` seconds, then
:class:`~neostore.errors.Unavailable`): the masters send each table to the
storage nodes and to the clients on separate streams, and a node must not
judge a cell by a table older than its caller's.  The case that needs it: a
transaction committed without this node (unreachable for it) makes its cell
OUT_OF_DATE; the committing client learns that table with its Finish
answer, and its next store comes here before the node's session brings the
table.  By the old table the cell would still be readable: the node would
lock and check conflicts against data that lacks the transaction just
committed, and answer a conflict that does not exist (NEO's storage nodes
likewise wait for the partition table a request names).
"""

from __future__ import annotations

import threading
import time

from neostore import errors
from neostore.ids import u64
from neostore.partition_table import READABLE_STATES, WRITABLE_STATES, CellState, PartitionTable

#: The longest a request routed with a newer table than the node's waits
#: for it: its session with the master brings it within milliseconds.  Short,
#: because a node cut off from the masters but not from the clients would
#: make each such request wait this long; refused, the request goes to
#: another replica (a read) or the node misses the transaction (a write:
#: the master then marks its cells OUT_OF_DATE), which is always safe.
TABLE_WAIT = 2.0


class Ownership:
    """This node's id and partition table (thread-safe)."""

    def __init__(self, node_id: int = 0, table_wait: float = TABLE_WAIT) -> None:
        self._mutex = threading.Lock()
        #: Notified (with ``_mutex``) when a newer table is adopted.
        self._adopted = threading.Condition(self._mutex)
        self._node_id = node_id
        self._table: PartitionTable | None = None
        self._table_wait = table_wait
        #: Requests waiting for a newer table now (for tests and metrics).
        self.waiting = 0

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
            self._adopted.notify_all()
            return True

    def _created_table(self, routed_version: int = 0) -> PartitionTable:
        table = self._table_routed_with(routed_version)
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

    def _table_routed_with(self, routed_version: int) -> PartitionTable | None:
        """The table, once at least at ``routed_version`` (see the module
        docstring); Unavailable if it does not come in time.  None without
        a table (registering): the caller says so at once."""
        with self._mutex:
            table = self._table
            if table is None or routed_version <= table.version:
                return table
            deadline = time.monotonic() + self._table_wait
            self.waiting += 1
            try:
                while True:
                    current = self._table
                    assert current is not None  # a table is never unset
                    if current.version >= routed_version:
                        return current
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise errors.Unavailable(
                            f"storage node {self._node_id} holds partition table version {current.version}, "
                            f"older than version {routed_version} the request was routed with, and no newer "
                            f"one came within {self._table_wait:g}s"
                        )
                    self._adopted.wait(remaining)
            finally:
                self.waiting -= 1

    def _check(self, partition: int, states: frozenset[CellState], kind: str, routed_version: int) -> CellState:
        table = self._created_table(routed_version)
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
