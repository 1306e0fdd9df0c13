"""A storage node: its database, its gRPC server and its session with the master.

Start-up, in order (:meth:`StorageNode.start`):

1. open the LMDB environment of the data directory (refused with
   :class:`~neostore.errors.WrongCluster` if it belongs to another cluster);
2. start the ``Storage`` gRPC server (it answers Unavailable to reads and
   writes until a partition table arrives; Commit and Abort work at once);
3. register with the master (``Master.RegisterStorage``), trying every
   master address, with backoff, until one answers or the timeout passes.
   The request carries the node id kept in ``meta`` (0 for a new node), the
   address and label, the pending (voted, undecided) TTIDs and the last TID
   of each partition held.  The answer gives the node id (kept in ``meta``),
   the master's term, the partition table, and which pending TTIDs were
   decided: those are committed, every other TTID the request listed is
   aborted, *before* the table is adopted and stores are taken (a TTID
   voted meanwhile, while the request was on its way, is not: see
   ``TransactionManager.recover``);
4. open ``Master.StorageSession`` in a background thread: the stream of
   partition-table changes.  The master marks a node DOWN when its session
   ends, so whenever the stream ends or breaks the thread registers again
   (with backoff, trying every master, following NotLeader hints) and then
   opens a new session.  A WrongCluster answer (the cluster no longer knows
   this node) is fatal: :attr:`StorageNode.failure` is set.

A node with no master addresses skips 3 and 4: tests give it a node id and
a partition table directly (:meth:`adopt_node_id`,
:meth:`set_partition_table`), which is also what the session thread calls.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc

from neostore import errors, leaders, rpc
from neostore.frames import FramesServer
from neostore.ids import tid_repr
from neostore.metrics import Metric, NodeMetrics, counter, gauge, gauges, lmdb_families
from neostore.partition_table import CellState, PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, storage_pb2, storage_pb2_grpc
from neostore.storage_node.database import DEFAULT_MAP_SIZE, Database
from neostore.storage_node.locks import DEFAULT_LOCK_TIMEOUT, LockManager
from neostore.storage_node.ownership import Ownership
from neostore.storage_node.replication import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_RECORDS,
    DEFAULT_REPORT_INTERVAL,
    Replicator,
)
from neostore.storage_node.servicer import StorageServicer
from neostore.storage_node.transaction_manager import TransactionManager

log = logging.getLogger(__name__)

_ADDRESS_PATTERN = re.compile(r"[\w.\-\[\]:]+:\d+")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
#: The master sends a heartbeat on the session every few seconds (2 by
#: default): a session silent this long comes from a master that hangs.
SESSION_SILENCE_LIMIT = 10.0


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """How to run one storage node.

    ``advertise``: the host (or host:port) other nodes reach this one at;
    empty: the host of ``bind`` (127.0.0.1 when ``bind`` is a wildcard).
    """

    rpc: rpc.RpcConfig
    masters: list[str]
    data_dir: str
    bind: str = "127.0.0.1:0"
    label: str = ""
    map_size: int = DEFAULT_MAP_SIZE
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    register_timeout: float = 60.0
    rpc_timeout: float = 10.0
    advertise: str = ""
    # Store rpcs wait for locks on a server thread: enough threads that
    # waiting stores never starve the master's Commit and Abort orders.
    max_workers: int = 512
    #: Reconnection backoff of the session, seconds.
    min_backoff: float = 0.05
    max_backoff: float = 2.0
    #: Catch-up replication chunks (storage_node/replication.py).
    replication_chunk_records: int = DEFAULT_CHUNK_RECORDS
    replication_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    replication_report_interval: float = DEFAULT_REPORT_INTERVAL  # seconds between progress reports
    metrics: str = ""  # HOST:PORT to serve Prometheus metrics on ("": none)
    #: Port of the framed calls (neostore/frames.py: clients' loads and
    #: votes), on the host of ``bind``: 0 picks a free one, -1 serves none.
    frames_port: int = 0


class StorageNode:
    """One storage node, usable in-process (tests) or as a process (main)."""

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._ownership = Ownership()
        self._locks = LockManager(config.lock_timeout)
        self._database: Database | None = None
        self._manager: TransactionManager | None = None
        self._server: grpc.Server | None = None
        self._port = 0
        self._frames: FramesServer | None = None
        self._stopping = threading.Event()
        self._registered = threading.Event()
        self._master_mutex = threading.Lock()
        self._master_channels: dict[str, grpc.Channel] = {}
        self._master_index = 0
        self._session_thread = threading.Thread(
            target=self._run_session, name="neostore-storage-session", daemon=True
        )
        self._session_call: Any = None
        self._failure: errors.NeoError | None = None
        self._shutdown_reason = ""
        self._replicator: Replicator | None = None
        self._dropped = False  # its partition table no longer lists it (neoctl drop-node)
        self._metrics = NodeMetrics() if config.metrics else None

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Open, serve, register; returns once registered and serving."""
        try:
            self._database = Database(self._config.data_dir, self._config.rpc.cluster_name, self._config.map_size)
            self._ownership.set_node_id(self._database.node_id())
            self._manager = TransactionManager(self._database, self._locks)
            if self._config.masters:
                self._manager.set_resolver(self._transaction_state)
                self._manager.set_term_check(self._term_is_real)
            metrics = self._metrics
            server, self._port = rpc.make_server(self._config.rpc, self._config.bind, self._config.max_workers,
                                                 metrics=metrics.rpc if metrics is not None else None)
            if metrics is not None:
                metrics.collect_with(self._collect_metrics)
                metrics.serve(self._config.metrics)
            servicer = StorageServicer(self._database, self._manager, self._ownership)
            storage_pb2_grpc.add_StorageServicer_to_server(servicer, server)
            self._server = server
            server.start()
            if self._config.frames_port >= 0:
                bind_host = self._config.bind.rsplit(":", 1)[0]
                self._frames = FramesServer(
                    self._config.rpc, f"{bind_host or '0.0.0.0'}:{self._config.frames_port}",
                    [(storage_pb2.DESCRIPTOR.services_by_name["Storage"], servicer)],
                    metrics=metrics.rpc if metrics is not None else None)
                self._frames.start()
            log.info("storage node serving on %s (data in %s)", self.address, self._database.path)
            if self._config.masters:
                self._register(self._config.register_timeout)
                self._session_thread.start()
                self._replicator = Replicator(
                    self._database, self._ownership, self._config.rpc, self.call_master,
                    chunk_records=self._config.replication_chunk_records,
                    chunk_bytes=self._config.replication_chunk_bytes,
                    report_interval=self._config.replication_report_interval)
                self._replicator.start()
                self._replicator.wake()
        except BaseException:
            self.stop()
            raise

    def interrupt(self) -> None:
        """Make a start() in progress give up (safe from a signal handler)."""
        self._stopping.set()

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving, end the session, close the database (idempotent)."""
        self._stopping.set()
        if self._replicator is not None:  # first: a node stopping copies nothing more
            self._replicator.stop()
        with self._master_mutex:
            call = self._session_call
        if call is not None:
            call.cancel()
        if self._session_thread.is_alive():
            self._session_thread.join(timeout=10)
        if self._manager is not None:
            self._manager.close()
        if self._frames is not None:
            self._frames.stop()
            self._frames = None
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._dropped and self._replicator is not None:
            # A Commit order decided before the node left may have written a
            # partition after its data was deleted: nothing is served now.
            self._replicator.drop_unowned(finishing=True)
        with self._master_mutex:
            channels = list(self._master_channels.values())
            self._master_channels.clear()
        for channel in channels:
            channel.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._database is not None:
            self._database.close()

    @property
    def metrics_address(self) -> str:
        """host:port of the metrics endpoint ("" when not serving metrics)."""
        return self._metrics.address if self._metrics is not None else ""

    def _collect_metrics(self) -> list[Any]:
        """This node's series read on a scrape (see :mod:`neostore.metrics`)."""
        database, manager = self._database, self._manager
        if database is None or manager is None:
            return []
        cells = {cell_state.name: 0 for cell_state in CellState}
        table = self._ownership.table
        if table is not None:
            for row in table.rows:
                for cell in row:
                    if cell.node_id == self.node_id:
                        cells[cell.state.name] += 1
        families: list[Metric] = [
            gauge("neostore_storage_node_id", "The node id the masters gave this storage node (0: none yet)",
                  self.node_id),
            gauges("neostore_storage_cells", "This node's cells in its partition table, by state", "state", cells),
            gauge("neostore_storage_transactions_in_progress", "Transactions that stored or voted here and "
                  "are not committed or aborted yet", len(manager.active_ttids())),
        ]
        replicator = self._replicator
        if replicator is not None:
            totals = dict(replicator.totals)
            families += [
                counter("neostore_replication_records_copied", "Records copied from other nodes by catch-up "
                        "replication", totals["records_copied"]),
                counter("neostore_replication_chunks_copied", "Chunks copied by catch-up replication",
                        totals["chunks_copied"]),
                counter("neostore_replication_chunks_skipped", "Chunks found identical and skipped by "
                        "catch-up replication", totals["chunks_skipped"]),
                counter("neostore_replication_cells_done", "Cells brought up to date by catch-up replication",
                        totals["cells_done"]),
            ]
            current = replicator.current
            families.append(gauge("neostore_replication_bytes_left", "Estimated bytes left to copy for the cell "
                                  "being replicated (0: none)",
                                  max(0, current.bytes_total - current.bytes_done) if current is not None else 0))
        try:
            families += lmdb_families({"storage": database.lmdb_metrics()})
        except errors.Unavailable:  # closed meanwhile: the node is stopping
            pass
        return families

    # -- state ---------------------------------------------------------------

    @property
    def address(self) -> str:
        """host:port that peers reach this node at."""
        bind_host = self._config.bind.rsplit(":", 1)[0]
        advertise = self._config.advertise
        if advertise:
            return advertise if _ADDRESS_PATTERN.fullmatch(advertise) else f"{advertise}:{self._port}"
        host = "127.0.0.1" if bind_host in _WILDCARD_HOSTS else bind_host
        return f"{host}:{self._port}"

    def frames_served(self, method: str) -> int:
        """Calls of ``method`` this node answered as frames."""
        return self._frames.served[method] if self._frames is not None else 0

    @property
    def frames_address(self) -> str:
        """host:port that clients make their framed calls to ("" if none):
        the host peers reach this node at, the frames port."""
        if self._frames is None:
            return ""
        return f"{self.address.rsplit(':', 1)[0]}:{self._frames.port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def node_id(self) -> int:
        return self._ownership.node_id

    @property
    def partition_table(self) -> PartitionTable | None:
        return self._ownership.table

    @property
    def awaiting_table(self) -> int:
        """Requests waiting now for a newer partition table than this node
        holds (their callers routed with it: see ``ownership.py``)."""
        return self._ownership.waiting

    @property
    def database(self) -> Database:
        if self._database is None:
            raise errors.Unavailable("storage node not started")
        return self._database

    @property
    def manager(self) -> TransactionManager:
        if self._manager is None:
            raise errors.Unavailable("storage node not started")
        return self._manager

    @property
    def shutdown_reason(self) -> str:
        """Why the masters told this node to exit (neoctl kill), or ""."""
        return self._shutdown_reason

    @property
    def failure(self) -> errors.NeoError | None:
        """A fatal error of the session (another cluster...), if any."""
        return self._failure

    def adopt_node_id(self, node_id: int) -> None:
        """Take the node id the master gave (kept in the database)."""
        if node_id <= 0:
            raise errors.BadRequest(f"invalid storage node id {node_id}")
        if self.database.node_id() != node_id:
            self.database.set_node_id(node_id)
        self._ownership.set_node_id(node_id)

    def set_partition_table(self, table: PartitionTable) -> bool:
        """Adopt a newer partition table; whether it was newer."""
        adopted = self._ownership.set_table(table)
        if adopted:
            log.info("storage node %d: partition table version %d", self.node_id, table.version)
            if self._replicator is not None:
                if table.created and all(node.node_id != self.node_id for node in table.nodes):
                    # Dropped from the cluster (neoctl drop-node): reclaim the
                    # space of every cell now, before the session ends.
                    log.warning("storage node %d was dropped from the cluster: deleting its data", self.node_id)
                    self._dropped = True
                    self._replicator.drop_unowned()
                self._replicator.wake()
        return adopted

    @property
    def replicator(self) -> Replicator | None:
        """The catch-up replication thread (None without masters)."""
        return self._replicator

    def call_master(self, method: str, request: Any) -> Any:
        """Call ``method`` of the master leader, following NotLeader hints."""
        last_error: errors.NeoError | None = None
        for _ in range(2 * len(self._config.masters)):
            address = self._masters_in_order()[0]
            try:
                return rpc.call(getattr(self._master_stub(address), method), request,
                                timeout=self._config.rpc_timeout, peer=address)
            except errors.NotLeader as error:
                last_error = error
                self._follow_hint(error)
            except errors.Unavailable as error:
                last_error = error
                self._master_index += 1
        assert last_error is not None
        raise last_error

    def _transaction_state(self, ttid: bytes) -> tuple[str, bytes | None]:
        """The master leader's word on a TTID holding locks here for long."""
        reply = self.call_master("GetTransactionState", master_pb2.TransactionStateRequest(ttid=ttid))
        status = master_pb2.TransactionState.Status.Name(reply.status).lower()
        return status, reply.tid or None

    def _term_is_real(self, term: int) -> bool:
        """Whether the masters are at ``term`` or beyond (an order from a new
        leader that this node did not register with yet); Unavailable when
        no master answers."""
        reply = self.call_master("GetClusterInfo", common_pb2.Empty())
        if reply.term < term:
            log.warning("storage node %d: an order came with master term %d, the masters are at %d: refused",
                        self.node_id, term, reply.term)
        return reply.term >= term

    # -- registration --------------------------------------------------------

    def _master_stub(self, address: str) -> master_pb2_grpc.MasterStub:
        with self._master_mutex:
            channel = self._master_channels.get(address)
            if channel is None:
                channel = self._master_channels[address] = rpc.make_channel(self._config.rpc, address)
        return master_pb2_grpc.MasterStub(channel)

    def _masters_in_order(self) -> list[str]:
        masters = self._config.masters
        start = self._master_index % len(masters)
        return masters[start:] + masters[:start]

    def _follow_hint(self, error: errors.NeoError) -> None:
        """After NotLeader: prefer the leader its message names, if one of ours."""
        for candidate in _ADDRESS_PATTERN.findall(str(error)):
            if candidate not in self._config.masters:  # a master added since: follow it too
                self._config.masters.append(candidate)
            self._master_index = self._config.masters.index(candidate)
            return
        self._master_index += 1

    def _registration_request(self) -> master_pb2.RegisterStorageRequest:
        database = self.database
        return master_pb2.RegisterStorageRequest(
            cluster_name=self._config.rpc.cluster_name,
            node_id=database.node_id(),
            address=self.address,
            frames_address=self.frames_address,
            label=self._config.label,
            cluster_id=database.cluster_id(),
            pending_ttids=database.pending_ttids(),
            partition_last_tids=[
                common_pb2.PartitionLastTid(partition=partition, tid=tid)
                for partition, tid in sorted(database.partition_last_tids().items())
            ],
        )

    def _register(self, timeout: float) -> None:
        """Register with whichever master answers, then recover pending TTIDs."""
        deadline = time.monotonic() + timeout
        delay = self._config.min_backoff
        last_error: errors.NeoError | None = None
        while True:
            for address in self._masters_in_order():
                if self._stopping.is_set():
                    raise errors.Unavailable("storage node stopping during registration")
                request = self._registration_request()
                try:
                    reply = rpc.call(
                        self._master_stub(address).RegisterStorage,
                        request,
                        timeout=self._config.rpc_timeout,
                        peer=address,
                    )
                except errors.NotLeader as error:
                    last_error = error
                    self._follow_hint(error)
                    break
                except errors.Unavailable as error:
                    last_error = error
                    self._master_index += 1
                    continue
                self._master_index = self._config.masters.index(address)
                self._apply_registration(reply, address, request.pending_ttids)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Unavailable(
                    f"storage node {self.address}: no master of {', '.join(self._config.masters)} "
                    f"accepted its registration within {timeout:g}s (last error: {last_error})"
                )
            if self._stopping.wait(min(delay, remaining)):
                raise errors.Unavailable("storage node stopping during registration")
            delay = min(delay * 2, self._config.max_backoff)

    def _apply_registration(self, reply: master_pb2.RegisterStorageReply, master: str,
                            listed: Sequence[bytes]) -> None:
        if reply.node_id <= 0:
            raise errors.BadRequest(f"master {master} answered the registration without a node id")
        if reply.cluster_id:  # before anything else is kept: the data may be another cluster's
            self.database.claim_cluster_id(reply.cluster_id)
        self.adopt_node_id(reply.node_id)
        manager = self.manager
        manager.observe_term(reply.term, "registration", trusted=True)
        decided = {decision.ttid: decision.tid for decision in reply.decided}
        committed, aborted = manager.recover(decided, listed)
        for ttid in committed:
            log.info("recovered transaction %s: committed as %s", tid_repr(ttid), tid_repr(decided[ttid]))
        for ttid in aborted:
            log.info("recovered transaction %s: undecided, aborted", tid_repr(ttid))
        applied = set(self.database.truncations())
        for truncation in reply.truncations:  # those decided while this node was away
            if (truncation.after, truncation.upto) not in applied:
                transactions, revisions = self.database.truncate(truncation.after, truncation.upto)
                log.warning("truncated after %s (decided while this node was away): %d transactions and "
                            "%d object revisions deleted", tid_repr(truncation.after), transactions, revisions)
        self.set_partition_table(PartitionTable.from_proto(reply.partition_table))
        self._registered.set()
        log.info("storage node %d registered with master %s (term %d)", self.node_id, master, reply.term)

    # -- session -------------------------------------------------------------

    def _run_session(self) -> None:
        """Follow partition-table changes; register again whenever it ends.

        The master marks a node DOWN when its session ends (and ends the
        session of a node it marks DOWN), so a node whose session ended,
        for whatever reason, registers again before opening a new one.
        """
        delay = self._config.min_backoff
        must_register = False
        while not self._stopping.is_set():
            address = ""
            try:
                if must_register:
                    self._register(self._config.register_timeout)
                    must_register = False
                    delay = self._config.min_backoff
                address = self._masters_in_order()[0]
                self._follow_session(address)
                if self._shutdown_reason:
                    return  # told to exit (neoctl kill): the process stops
                log.info("session with master %s ended: registering again", address)
            except errors.WrongCluster as error:
                log.error("storage node %d refused by the cluster: %s", self.node_id, error)
                self._failure = error
                return
            except errors.NeoError as error:
                if self._stopping.is_set():
                    return
                log.warning("session with master %s broke: %s", address or "-", error)
            except Exception:  # noqa: BLE001 - the session must survive anything
                log.exception("session with master %s failed", address or "-")
            must_register = True
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self._config.max_backoff)

    def _follow_session(self, address: str) -> None:
        call = self._master_stub(address).StorageSession(
            master_pb2.StorageSessionRequest(node_id=self.node_id)
        )
        with self._master_mutex:
            self._session_call = call
        if self._stopping.is_set():
            call.cancel()
        def silent() -> None:  # a master that hangs sends no heartbeat: register elsewhere
            log.warning("session with master %s silent for %.0fs: moving on", address, SESSION_SILENCE_LIMIT)
            self._master_index += 1

        watchdog = rpc.SilenceWatchdog(call, SESSION_SILENCE_LIMIT, silent,
                                       confirm=lambda: leaders.replaced_leader(
                                           self._master_stub, self._config.masters, address, 2.0, 1.0) is not None)
        try:
            for event in rpc.stream(call, peer=address):
                watchdog.heard()
                if event.HasField("partition_table"):
                    self.set_partition_table(PartitionTable.from_proto(event.partition_table))
                elif event.HasField("shutdown"):
                    log.warning("storage node %d: master %s says: %s", self.node_id, address, event.shutdown)
                    self._shutdown_reason = event.shutdown
                    return
        finally:
            watchdog.stop()
            with self._master_mutex:
                self._session_call = None
