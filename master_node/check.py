"""The consistency check (``neoctl check``): compare the replicas of partitions.

For each partition, the readable cells on RUNNING nodes are compared range
by range (``storage_node/ranges.py``: transactions, then objects), under the
partition's replication bound — every transaction up to it is applied on
each replica, so the check is exact while the cluster serves traffic.  The
first replica gives the chunk boundaries (``ChecksumRange`` with a limit);
the others digest exactly the same key range (the last chunk unbounded, so
that records the first replica lacks are seen too).  Where digests differ,
the replicas that disagree with a strict majority are marked CORRUPTED
(:class:`MarkCorrupted`); with no majority (two replicas that differ) the
difference is reported and nothing is marked: nobody can tell which is right.

With ``repair`` (``neoctl check --repair``, beyond NEO, whose check only
reports), every CORRUPTED cell of a partition checked is rebuilt from the
healthy replicas: its node deletes its data of the partition
(``Storage.DropCorruptedCell``, refused unless the node's own table shows
the cell CORRUPTED: no writes reach such a cell, so nothing committed is
lost), then :class:`RebuildCells` makes the cell OUT_OF_DATE and it catches
up by replication like a new cell.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from neostore import errors, rpc
from neostore.ids import tid_repr
from neostore.master_node.command_log import CommandLog, submit_one
from neostore.master_node.state import MarkCorrupted, RebuildCells
from neostore.master_node.storage_links import StorageLinks
from neostore.partition_table import READABLE_STATES, CellState, NodeState
from neostore.protocol import master_pb2, storage_pb2
from neostore.storage_node.ranges import KIND_NAMES, walk_chunks

log = logging.getLogger(__name__)

DEFAULT_CHUNK_RECORDS = 5000


class ConsistencyCheck:
    """Compares replicas by checksums (see the module docstring)."""

    def __init__(self, command_log: CommandLog, storages: StorageLinks,
                 chunk_records: int = DEFAULT_CHUNK_RECORDS, timeout: float = 30.0) -> None:
        self._log = command_log
        self._storages = storages
        self._chunk_records = chunk_records
        self._timeout = timeout

    def run(self, partitions: Sequence[int] = (), repair: bool = False) -> master_pb2.CheckReply:
        state = self._log.state
        if not state.running:
            raise errors.Unavailable(f"cluster {state.cluster_name!r} is not running: nothing to check")
        for partition in partitions:
            if not 0 <= partition < state.num_partitions:
                raise errors.BadRequest(
                    f"partition {partition} does not exist: the cluster has {state.num_partitions} partitions")
        wanted = sorted(set(partitions)) or list(range(state.num_partitions))
        results = []
        for partition in wanted:
            result = self._check(partition)
            if repair:
                result.repairing.extend(self._rebuild(partition))
            results.append(result)
        return master_pb2.CheckReply(partitions=results)

    def _rebuild(self, partition: int) -> list[int]:
        """Empty the partition's CORRUPTED cells on running nodes and make
        them catch up (see the module docstring); the nodes rebuilding."""
        state = self._log.state
        addresses = {n.node_id: n.address for n in state.table.nodes if n.state == NodeState.RUNNING}
        row = state.table.rows[partition]
        if not any(c.state in READABLE_STATES and c.node_id in addresses for c in row):
            log.warning("partition %d: no readable replica on a running node to rebuild from", partition)
            return []
        emptied = []
        for cell in row:
            if cell.state != CellState.CORRUPTED or cell.node_id not in addresses:
                continue
            request = storage_pb2.DropCorruptedCellRequest(partition=partition, table_version=state.table.version)
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    reply = rpc.call(self._storages.stub(addresses[cell.node_id]).DropCorruptedCell, request,
                                     timeout=self._timeout, peer=f"storage node {cell.node_id}")
                    break
                except errors.NotOwner:
                    if time.monotonic() > deadline:  # its table still lags: leave it CORRUPTED
                        raise
                    time.sleep(0.1)
            log.warning("partition %d: CORRUPTED cell of node %d emptied (%d records): rebuilding it",
                        partition, cell.node_id, reply.records)
            emptied.append(cell.node_id)
        if not emptied:
            return []
        return list(submit_one(self._log, RebuildCells(partition, tuple(emptied))))

    def _check(self, partition: int) -> master_pb2.PartitionCheck:
        state = self._log.state
        addresses = {n.node_id: n.address for n in state.table.nodes if n.state == NodeState.RUNNING}
        node_ids = [c.node_id for c in state.table.rows[partition]
                    if c.state in READABLE_STATES and c.node_id in addresses]
        bound = state.replication_bound(partition)
        result = master_pb2.PartitionCheck(partition=partition, node_ids=node_ids, max_tid=bound, consistent=True)
        if len(node_ids) < 2:
            result.detail = f"{len(node_ids)} readable replica(s) reachable: nothing to compare"
            return result
        suspects: Counter[int] = Counter()
        differences: list[str] = []
        first_address = addresses[node_ids[0]]
        chunks = walk_chunks(
            lambda request: self._checksum(first_address, request), partition, bound, limit=self._chunk_records)
        for request, first in chunks:
            # The others digest exactly the first's key range; its last chunk
            # unbounded, so that records the first replica lacks are seen too.
            request.end_key = b"" if first.complete else first.last_key
            request.limit = 0
            digests = {node_ids[0]: (first.count, first.digest)}
            for node_id in node_ids[1:]:
                other = self._checksum(addresses[node_id], request)
                digests[node_id] = (other.count, other.digest)
            result.records += first.count
            if len(set(digests.values())) > 1:
                votes = Counter(digests.values())
                value, count = votes.most_common(1)[0]
                if count * 2 > len(node_ids):  # a strict majority agrees: the others diverge
                    suspects.update(n for n, digest in digests.items() if digest != value)
                counts = ", ".join(f"node {n}: {c} records" for n, (c, _) in digests.items())
                differences.append(
                    f"{KIND_NAMES[request.kind]} after key {request.after_key.hex() or '(start)'} up to "
                    f"{request.end_key.hex() or '(end)'} differ ({counts})")
        if differences:
            result.consistent = False
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            result.detail = f"replicas differ up to tid {tid_repr(bound)}: {shown}"
            corrupted = sorted(suspects)
            if corrupted:
                marked = submit_one(self._log, MarkCorrupted(partition, tuple(corrupted)))
                result.corrupted.extend(marked)
                log.warning("partition %d: marked nodes %s CORRUPTED: %s", partition, list(marked), result.detail)
            else:
                result.detail += " (no majority: nothing marked)"
        return result

    def _checksum(self, address: str, request: storage_pb2.RangeRequest) -> storage_pb2.RangeChecksum:
        return rpc.call(self._storages.stub(address).ChecksumRange, request, timeout=self._timeout, peer=address)
