"""Catch-up replication: an OUT_OF_DATE cell copies what it missed from a replica.

One thread per storage node (:class:`Replicator`).  Whenever the node's
partition table changes, and every ``poll_interval`` while it holds
OUT_OF_DATE cells, it asks the master leader for its *replication plan*
(``Master.GetReplicationPlan``): for each OUT_OF_DATE cell, the TID bound
``max_tid`` (every transaction of the partition up to it is applied on each
UP_TO_DATE replica, so that range no longer changes), the last transaction
the cell missed, and the readable replicas to copy from.  For each cell:

1. start from the stored position (a restart of this node resumes where it
   stopped, under the bound it was using), or from the beginning;
2. walk the cell range by range, transactions then objects
   (``storage_node/ranges.py``): ask the source for the digest of its next
   chunk (``ChecksumRange``: at most ``chunk_records`` records or about
   ``chunk_bytes`` bytes), compute the digest of the same key range here;
   equal: skip it; different: fetch the chunk (``FetchRange``) and add the
   records this node lacks, storing the new position in the same LMDB
   transaction.  A source that fails is replaced by the next one; the
   position is kept, so nothing is copied twice;
3. once the walk is complete, report it (``Master.ReportReplication`` with
   ``done``): the master marks the cell UP_TO_DATE if the bound reaches the
   last transaction the cell missed — the cell took every later commit
   itself, being writable — and otherwise the next round walks again under
   a higher bound (identical ranges are skipped by checksum).

The cell takes new commits the whole time (it is writable); those are all
above ``max_tid``, so the walk never touches them.  Progress (records and
bytes compared, copied, skipped, left, rate) goes to the master every
``report_interval`` seconds, where ``neoctl status`` shows it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from neostore import errors, rpc
from neostore.ids import ZERO_TID, tid_repr
from neostore.partition_table import CellState
from neostore.protocol import master_pb2, storage_pb2, storage_pb2_grpc
from neostore.storage_node import layout
from neostore.storage_node.database import Database
from neostore.storage_node.ownership import Ownership
from neostore.storage_node.ranges import range_digest, walk_chunks

log = logging.getLogger(__name__)

DEFAULT_CHUNK_RECORDS = 2000
DEFAULT_CHUNK_BYTES = 4 * 2**20
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_REPORT_INTERVAL = 1.0

#: ``call_master(method_name, request)``: the reply of the master leader.
MasterCall = Callable[[str, Any], Any]


@dataclasses.dataclass
class CellProgress:
    """What one catch-up of one cell did so far."""

    partition: int
    source_node_id: int = 0
    max_tid: bytes = ZERO_TID
    records_done: int = 0
    bytes_done: int = 0
    records_copied: int = 0
    chunks_skipped: int = 0
    chunks_copied: int = 0
    bytes_total: int = 0  # estimate, from the source's statistics
    started: float = dataclasses.field(default_factory=time.monotonic)

    def to_proto(self, node_id: int, done: bool = False) -> master_pb2.ReplicationProgress:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        bytes_left = max(0, self.bytes_total - self.bytes_done) if not done else 0
        per_record = self.bytes_done / self.records_done if self.records_done else 0
        return master_pb2.ReplicationProgress(
            node_id=node_id, partition=self.partition, source_node_id=self.source_node_id,
            tid=self.max_tid if done else b"", done=done,
            records_done=self.records_done, bytes_done=self.bytes_done,
            records_left=int(bytes_left / per_record) if per_record else 0, bytes_left=bytes_left,
            records_copied=self.records_copied, chunks_skipped=self.chunks_skipped,
            chunks_copied=self.chunks_copied, rate=self.bytes_done / elapsed, elapsed=elapsed)


class Replicator:
    """The catch-up thread of one storage node (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        ownership: Ownership,
        config: rpc.RpcConfig,
        call_master: MasterCall,
        chunk_records: int = DEFAULT_CHUNK_RECORDS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
        rpc_timeout: float = 30.0,
    ) -> None:
        self._database = database
        self._ownership = ownership
        self._config = config
        self._call_master = call_master
        self._chunk_records = chunk_records
        self._chunk_bytes = chunk_bytes
        self._poll_interval = poll_interval
        self._report_interval = report_interval
        self._rpc_timeout = rpc_timeout
        self._wake = threading.Event()
        self._dropping = threading.Lock()  # drop_unowned runs here and on the session thread
        self._stopping = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self._thread = threading.Thread(target=self._run, name="neostore-replicator", daemon=True)
        #: Totals since start, for tests and statistics.
        self.totals = {"chunks_skipped": 0, "chunks_copied": 0, "records_copied": 0, "cells_done": 0}
        self.current: CellProgress | None = None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look at the cells again now (the partition table changed)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called (a walk in progress gives up at its next chunk)."""
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- the loop ------------------------------------------------------------------

    def _out_of_date(self) -> list[int]:
        table = self._ownership.table
        node_id = self._ownership.node_id
        if table is None or not table.created or not node_id:
            return []
        return table.partitions_of_node(node_id, [CellState.OUT_OF_DATE])

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.drop_unowned()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("dropping cells this node no longer holds failed")
            if not self._out_of_date():
                continue
            try:
                self.run_once()
            except errors.NeoError as error:
                log.warning("replication round failed: %s", error)
            except Exception:  # noqa: BLE001 - the thread must survive anything
                log.exception("replication round failed")

    def drop_unowned(self, finishing: bool = False) -> list[int]:
        """Delete the data of partitions this node holds no cell of any more
        (moved away by rebalancing, or the node dropped): their space is
        reclaimed.  Returns the partitions dropped.  A stop in progress
        interrupts it, unless ``finishing`` (the last pass of a node that
        left the cluster, once it serves nothing)."""
        table = self._ownership.table
        node_id = self._ownership.node_id
        if table is None or not table.created or not node_id:
            return []

        def unheld(partition: int) -> bool:  # by the latest table, asked as each batch is deleted
            latest = self._ownership.table
            return latest is not None and latest.cell_state(partition, node_id) is None

        dropped = []
        with self._dropping:
            for partition in range(table.num_partitions):
                if not unheld(partition) or not self._database.holds_partition(partition):
                    continue
                if self._stopping.is_set() and not finishing:
                    break
                count = self._database.drop_partition(partition, may_drop=functools.partial(unheld, partition))
                if not unheld(partition):
                    log.info("partition %d: back on this node while its data was being dropped: %d records "
                             "dropped, the rest kept (catch-up brings back what is missing)", partition, count)
                    continue
                log.info("partition %d: no cell on this node any more (table version %d): %d records dropped",
                         partition, table.version, count)
                dropped.append(partition)
        return dropped

    def run_once(self) -> int:
        """One round over the plan; the number of cells that became UP_TO_DATE."""
        node_id = self._ownership.node_id
        plan = self._call_master("GetReplicationPlan", master_pb2.ReplicationPlanRequest(node_id=node_id))
        marked = 0
        for cell in plan.cells:
            if self._stopping.is_set():
                break
            if cell.missed_tid and cell.max_tid < cell.missed_tid:
                continue  # what it missed is not applied everywhere yet: next round
            if not cell.sources:
                log.warning("partition %d: no readable replica to replicate from", cell.partition)
                continue
            if self._replicate_cell(node_id, cell):
                marked += 1
        return marked

    def _replicate_cell(self, node_id: int, cell: master_pb2.CellReplication) -> bool:
        partition = cell.partition
        position = self._database.replication_position(partition)
        if position is None or position.max_tid > cell.max_tid:
            position = layout.ReplicationPosition(cell.max_tid, layout.RANGE_TRANSACTIONS, b"")
        last_error: errors.NeoError | None = None
        for source in cell.sources:
            progress = CellProgress(partition, source.node_id, position.max_tid)
            self.current = progress
            try:
                position = self._walk(node_id, source.address, position, progress)
            except errors.NeoError as error:
                last_error = error
                position = self._database.replication_position(partition) or position
                log.warning("partition %d: replication from node %d (%s) stopped: %s",
                            partition, source.node_id, source.address, error)
                continue
            finally:
                self.current = None
            ack = self._call_master("ReportReplication", progress.to_proto(node_id, done=True))
            self._database.set_replication_position(partition, None)
            log.info("partition %d: replicated up to %s from node %d (%d records copied, %d chunks skipped, "
                     "%d copied)%s", partition, tid_repr(position.max_tid), source.node_id,
                     progress.records_copied, progress.chunks_skipped, progress.chunks_copied,
                     ": up to date" if ack.up_to_date else "")
            if ack.up_to_date:
                self.totals["cells_done"] += 1
            return bool(ack.up_to_date)
        if last_error is not None:
            raise last_error
        return False

    def _source(self, address: str) -> storage_pb2_grpc.StorageStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = rpc.make_channel(self._config, address)
        return storage_pb2_grpc.StorageStub(channel)

    def _walk(
        self, node_id: int, address: str, position: layout.ReplicationPosition, progress: CellProgress
    ) -> layout.ReplicationPosition:
        """Copy what differs, range by range, from ``position`` on; the final position."""
        partition = progress.partition
        stub = self._source(address)
        stats = rpc.call(stub.GetStats, storage_pb2.StatsRequest(partitions=[partition]),
                         timeout=self._rpc_timeout, peer=address)
        progress.bytes_total = stats.size
        self._report(node_id, progress)  # the cell shows in the status from the start
        last_report = time.monotonic()
        unsaved = 0
        max_tid = position.max_tid

        def checksum(request: storage_pb2.RangeRequest) -> storage_pb2.RangeChecksum:
            if self._stopping.is_set():
                raise errors.Unavailable("storage node stopping")
            return rpc.call(stub.ChecksumRange, request, timeout=self._rpc_timeout, peer=address)

        chunks = walk_chunks(checksum, partition, max_tid, kind=position.kind, after=position.after_key,
                             limit=self._chunk_records, max_bytes=self._chunk_bytes)
        for request, theirs in chunks:
            if theirs.count:
                kind = request.kind
                mine, _ = self._database.scan_range(partition, kind, request.after_key, theirs.last_key, max_tid)
                position = layout.ReplicationPosition(max_tid, kind, theirs.last_key)
                if range_digest(mine).digest == theirs.digest:
                    progress.chunks_skipped += 1
                    self.totals["chunks_skipped"] += 1
                    unsaved += 1
                    if unsaved >= 50:
                        self._database.set_replication_position(partition, position)
                        unsaved = 0
                else:
                    request.end_key = theirs.last_key
                    request.limit = 0
                    request.max_bytes = 0
                    fetched = rpc.call(stub.FetchRange, request, timeout=self._rpc_timeout, peer=address)
                    records = [(record.key, record.value) for record in fetched.records]
                    added = self._database.insert_replicated(partition, kind, records, position)
                    unsaved = 0
                    progress.chunks_copied += 1
                    progress.records_copied += added
                    self.totals["chunks_copied"] += 1
                    self.totals["records_copied"] += added
                progress.records_done += theirs.count
                progress.bytes_done += theirs.size
            if time.monotonic() - last_report >= self._report_interval:
                last_report = time.monotonic()
                self._report(node_id, progress)
        return position

    def _report(self, node_id: int, progress: CellProgress) -> None:
        try:
            self._call_master("ReportReplication", progress.to_proto(node_id))
        except errors.NeoError as error:  # progress is informative: never stop for it
            log.debug("progress report failed: %s", error)
