"""The master's side of catch-up replication: plans, progress, completion.

A storage node with OUT_OF_DATE cells asks for its plan
(:meth:`ReplicationTracker.plan`): per cell, the TID bound to copy up to
(``ClusterState.replication_bound``: every transaction of the partition up
to it is applied on each of its participants), the last transaction the
cell missed, and the RUNNING nodes holding a readable cell of the partition
to copy from.  It reports progress while it copies, and completion
(:meth:`ReplicationTracker.report`), which becomes :class:`MarkUpToDate`
through the command log; the state machine marks the cell UP_TO_DATE only
if the bound reaches what the cell missed.

Progress is kept in memory on the leader (it is informative: a new leader
learns it again from the next reports) and shown by ``neoctl status``.
"""

from __future__ import annotations

import threading
import time

from neostore import errors
from neostore.ids import ZERO_TID
from neostore.master_node.command_log import CommandLog, submit_one
from neostore.master_node.state import MarkUpToDate, PartitionTid
from neostore.partition_table import READABLE_STATES, CellState, NodeState
from neostore.protocol import master_pb2

#: Progress reports older than this are dropped from the status (the node stopped reporting).
STALE_AFTER = 60.0


class ReplicationTracker:
    """Replication plans and progress of the storage nodes (thread-safe)."""

    def __init__(self, command_log: CommandLog) -> None:
        self._log = command_log
        self._lock = threading.Lock()
        self._progress: dict[tuple[int, int], tuple[float, master_pb2.ReplicationProgress]] = {}

    def plan(self, node_id: int) -> master_pb2.ReplicationPlan:
        state = self._log.state
        info = state.known_node(node_id)
        if info is None:
            raise errors.WrongCluster(f"storage node {node_id} is not known to this cluster")
        plan = master_pb2.ReplicationPlan(table_version=state.table.version)
        if not state.running:
            return plan
        addresses = {node.node_id: node.address for node in state.table.nodes if node.state == NodeState.RUNNING}
        for partition in state.table.partitions_of_node(node_id, [CellState.OUT_OF_DATE]):
            sources = [
                master_pb2.ReplicationSource(node_id=cell.node_id, address=addresses[cell.node_id])
                for cell in state.table.rows[partition]
                if cell.state in READABLE_STATES and cell.node_id != node_id and cell.node_id in addresses
            ]
            plan.cells.append(master_pb2.CellReplication(
                partition=partition,
                max_tid=state.replication_bound(partition),
                missed_tid=state.missed_tid(partition, node_id) or ZERO_TID,
                sources=sources,
            ))
        return plan

    def report(self, progress: master_pb2.ReplicationProgress) -> bool:
        """Record progress; on completion, mark the cell UP_TO_DATE if it is.
        Whether the cell is UP_TO_DATE now."""
        state = self._log.state
        if state.known_node(progress.node_id) is None:
            raise errors.WrongCluster(f"storage node {progress.node_id} is not known to this cluster")
        if not 0 <= progress.partition < state.num_partitions:
            raise errors.BadRequest(f"partition {progress.partition} does not exist "
                                    f"(the cluster has {state.num_partitions})")
        key = (progress.node_id, progress.partition)
        if progress.done:
            if len(progress.tid) != 8:
                raise errors.BadRequest(f"a completed replication must name its tid, got {len(progress.tid)} bytes")
            submit_one(self._log, MarkUpToDate(progress.node_id, (PartitionTid(progress.partition, progress.tid),)))
        up_to_date = self._log.state.table.cell_state(progress.partition, progress.node_id) == CellState.UP_TO_DATE
        with self._lock:
            if up_to_date:
                self._progress.pop(key, None)
            else:
                self._progress[key] = (time.monotonic(), progress)
        return up_to_date

    def status(self) -> master_pb2.ReplicationStatus:
        """Progress of every cell still OUT_OF_DATE, as last reported."""
        table = self._log.state.table
        now = time.monotonic()
        reply = master_pb2.ReplicationStatus()
        with self._lock:
            for key, (when, progress) in sorted(self._progress.items()):
                node_id, partition = key
                if now - when > STALE_AFTER or table.cell_state(partition, node_id) != CellState.OUT_OF_DATE:
                    del self._progress[key]
                    continue
                reply.cells.append(progress)
        return reply
