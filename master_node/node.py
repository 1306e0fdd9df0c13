"""One master node: its command log, commit coordinator, publisher and server.

In-process (tests run masters and storages as threads of one process)::

    node = MasterNode(MasterConfig(rpc=RpcConfig("demo"), data_dir=path))
    node.start()          # opens or creates the cluster, serves on node.address
    ...
    node.stop()

As a process: ``neo-master`` (:mod:`neostore.master_node.main`).

``start`` opens the command log in ``data_dir`` (creating the cluster with
:class:`CreateCluster` on the very first start; a data directory of another
cluster is refused with ``WrongCluster``), builds the publisher above the
last published TID, starts the gRPC server through :func:`neostore.rpc.make_server`,
then re-drives every decision some storage node has not applied yet.
``stop`` ends every stream, fails Finish calls still waiting, stops the
server and closes the log; it is safe to call twice.

Several masters (``masters`` lists every master's address, this one's at
position ``node_id``, from 1): the log is a
:class:`~neostore.master_node.raft_driver.RaftCommandLog` in
``data_dir/raft``, the server also serves ``Raft.Step``, and the writing
components run only while this master leads
(:mod:`~neostore.master_node.leadership`): the first leader of a new
cluster submits :class:`CreateCluster`, every new leader re-drives the
decided-but-unapplied decisions.  With port 0 in ``bind``, the server binds
to this master's address in ``masters``.

Joining a running group (``join=True``; ``masters`` then lists some
existing masters, ``bind`` is this master's own host:port): on an empty
data directory the master asks ``Admin.GetClusterInfo`` of the masters
given, retrying, until ``bind`` is in the membership (``neoctl add-master``
put it there), takes its node id from it, and opens an empty Raft log that
the leader fills; a data directory it already joined with keeps its id.
``add_master``/``remove_master`` change the membership (leader only), and
``removed`` tells that this master was removed from it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
import time
from typing import Any

import grpc

from neostore import errors, rpc
from neostore.frames import FramesServer
from neostore.master_node.cluster import DEFAULT_HEARTBEAT_INTERVAL, ClusterManager
from neostore.master_node.command_log import DEFAULT_SNAPSHOT_EVERY, LmdbCommandLog, submit_one
from neostore.master_node.commit import CommitConfig, CommitCoordinator, last_published_tid
from neostore.master_node.invalidations import DEFAULT_HISTORY_SIZE, InvalidationPublisher
from neostore.master_node.leadership import Leadership, ReplicaFeed
from neostore.master_node.raft_driver import DEFAULT_TICK_INTERVAL, RaftCommandLog, stored_node_id
from neostore.master_node.raft_transport import RaftServicer
from neostore.master_node.servicer import DEFAULT_STREAM_INTERVAL, AdminServicer, MasterInfo, MasterServicer
from neostore.master_node.state import ClusterState, CreateCluster, new_cluster_id
from neostore.master_node.storage_links import StorageLinks
from neostore.metrics import NodeMetrics, counter, gauge, gauges, lmdb_families
from neostore.partition_table import CellState, NodeState
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, raft_pb2, raft_pb2_grpc

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MasterConfig:
    """Everything one master needs.  ``num_partitions`` and ``num_replicas``
    apply when the cluster is created; later starts keep the stored ones."""

    rpc: rpc.RpcConfig
    data_dir: str
    bind: str = "127.0.0.1:0"
    num_partitions: int = 12
    num_replicas: int = 2
    autostart: int = 1  # storage nodes to wait for before creating the table (0: admin only)
    # Every client's invalidation stream holds a server thread for as long
    # as it is connected (grpcio's sync server): with 256, the 250th client
    # left no thread for the calls of the others (connects timed out).
    # Threads wait idle; a client costs one, whatever the commit rate.
    max_workers: int = 4096
    history_size: int = DEFAULT_HISTORY_SIZE
    # A busy invalidation stream sends at most one message this often (seconds).
    invalidation_interval: float = DEFAULT_STREAM_INTERVAL
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    commit: CommitConfig = CommitConfig()
    masters: tuple[str, ...] = ()  # every master's address (Raft with more than one)
    node_id: int = 0  # this master's position in ``masters``, from 1
    raft_tick_interval: float = DEFAULT_TICK_INTERVAL
    join: bool = False  # join the running group of ``masters`` as the master at ``bind``
    join_timeout: float = 0.0  # seconds to wait to be added (0: until stopped)
    metrics: str = ""  # HOST:PORT to serve Prometheus metrics on ("": none)
    #: Port of the framed calls (neostore/frames.py: clients' Begin, Finish,
    #: Sync, NewOids), on the host of ``bind``: 0 picks a free one, -1 none.
    frames_port: int = 0

    @property
    def replicated(self) -> bool:
        """Whether this master is one of several agreeing through Raft."""
        return len(self.masters) > 1 or self.join


class _Running:
    """The parts of a started master, built together and torn down together."""

    def __init__(self, command_log: LmdbCommandLog | RaftCommandLog, storages: StorageLinks,
                 publisher: InvalidationPublisher, leadership: Leadership) -> None:
        self.command_log = command_log
        self.storages = storages
        self.publisher = publisher
        self.leadership = leadership


class MasterNode:
    """A master: see the module docstring."""

    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._parts: _Running | None = None
        self._server: grpc.Server | None = None
        self._frames: FramesServer | None = None
        self._address = ""
        self._stopping = threading.Event()  # interrupts a join still waiting
        self._metrics: NodeMetrics | None = None

    @property
    def address(self) -> str:
        """host:port the master serves on (once started)."""
        return self._address

    @property
    def state(self) -> ClusterState:
        """The current cluster state (for tests and tools)."""
        if self._parts is None:
            raise errors.Unavailable("the master is not started")
        return self._parts.command_log.state

    @property
    def term(self) -> int:
        if self._parts is None:
            raise errors.Unavailable("the master is not started")
        return self._parts.command_log.term

    @property
    def is_leader(self) -> bool:
        """Whether this master serves writes now."""
        return self._parts is not None and self._parts.leadership.is_leader

    def start(self) -> None:
        with self._lock:
            if self._parts is not None:
                raise RuntimeError("master already started")
            config = self.config
            if config.join:
                node_id, members = self._join_group()
                command_log: LmdbCommandLog | RaftCommandLog = RaftCommandLog(
                    pathlib.Path(config.data_dir) / "raft", node_id, members, config.rpc, join=True,
                    snapshot_every=config.snapshot_every, tick_interval=config.raft_tick_interval)
            elif config.replicated:
                if not 1 <= config.node_id <= len(config.masters):
                    raise ValueError(f"node id {config.node_id} is not in 1..{len(config.masters)}")
                command_log = RaftCommandLog(
                    pathlib.Path(config.data_dir) / "raft", config.node_id, config.masters, config.rpc,
                    snapshot_every=config.snapshot_every, tick_interval=config.raft_tick_interval)
            else:
                command_log = LmdbCommandLog(pathlib.Path(config.data_dir), snapshot_every=config.snapshot_every)
            def frames_address_of(address: str) -> str:
                return next((node.frames_address for node in command_log.state.table.nodes
                             if node.address == address), "")

            storages = StorageLinks(config.rpc, frames_address_of)
            leadership: Leadership | None = None
            server: grpc.Server | None = None
            frames_server: FramesServer | None = None
            raft_servicer: RaftServicer | None = None
            metrics = NodeMetrics() if config.metrics else None
            try:
                if isinstance(command_log, RaftCommandLog):
                    state = self._check_cluster(command_log.state)
                else:
                    state = self._open_cluster(command_log)
                publisher = InvalidationPublisher(last_published_tid(state), state.table, config.history_size)
                if metrics is not None:
                    publisher.observe_lag = metrics.histogram(
                        "neostore_invalidation_lag_seconds",
                        "Fan-out lag: time from a transaction's publication on this master to a client stream "
                        "taking it (the oldest in each message sent)").observe
                command_log.add_listener(
                    lambda old, new: publisher.publish_table(new.table) if new.table is not old.table else None)
                publisher.publish_stopping(state.stopping)
                command_log.add_listener(
                    lambda old, new: publisher.publish_stopping(new.stopping) if new.stopping != old.stopping else None)
                # A truncation: every client resets its cache (its last TID is below the marker).
                command_log.add_listener(
                    lambda old, new: publisher.skip_to(new.last_tid) if new.truncations != old.truncations else None)

                def build() -> tuple[ClusterManager, CommitCoordinator]:
                    coordinator = CommitCoordinator(command_log, storages, publisher, config.commit)
                    cluster = ClusterManager(command_log, coordinator, config.autostart, config.heartbeat_interval,
                                             storages)
                    return cluster, coordinator

                bind = config.bind
                if isinstance(command_log, RaftCommandLog):
                    feed = ReplicaFeed(publisher, state)
                    command_log.add_listener(feed)
                    leadership = Leadership(
                        command_log, build, command_log.not_leader, feed=feed,
                        create_cluster=CreateCluster(config.rpc.cluster_name, config.num_partitions,
                                                     config.num_replicas, new_cluster_id()))
                    command_log.on_leader(leadership.become_leader)
                    command_log.on_follower(leadership.become_follower)
                    if bind.rsplit(":", 1)[1] == "0":
                        bind = command_log.address
                else:
                    leadership = Leadership(command_log, build, lambda: errors.NotLeader("no leader"))
                server, port = rpc.make_server(config.rpc, bind, max_workers=config.max_workers,
                                               metrics=metrics.rpc if metrics is not None else None)
                if isinstance(command_log, RaftCommandLog):
                    info = MasterInfo(address=lambda: self._address, masters=command_log.members,
                                      leader=self._leader, term=self._raft_term,
                                      add_master=self.add_master, remove_master=self.remove_master,
                                      frames_address=lambda: self.frames_address)
                else:
                    info = MasterInfo(address=lambda: self._address, masters=lambda: [(0, self._address)],
                                      leader=self._leader, term=self._raft_term,
                                      frames_address=lambda: self.frames_address)
                master_servicer = MasterServicer(leadership, publisher, info, config.invalidation_interval)
                master_pb2_grpc.add_MasterServicer_to_server(master_servicer, server)
                master_pb2_grpc.add_AdminServicer_to_server(AdminServicer(leadership, publisher, info), server)
                if isinstance(command_log, RaftCommandLog):
                    raft_servicer = RaftServicer(command_log.exchange)
                    raft_pb2_grpc.add_RaftServicer_to_server(raft_servicer, server)
                    self._address = command_log.address
                else:
                    self._address = f"{bind.rsplit(':', 1)[0]}:{port}"
                if metrics is not None:
                    metrics.collect_with(self._collect_metrics)
                    metrics.serve(config.metrics)
                server.start()
                if config.frames_port >= 0:
                    frames_server = FramesServer(
                        config.rpc, f"{bind.rsplit(':', 1)[0] or '0.0.0.0'}:{config.frames_port}",
                        [(master_pb2.DESCRIPTOR.services_by_name["Master"], master_servicer)]
                        + ([(raft_pb2.DESCRIPTOR.services_by_name["Raft"], raft_servicer)]
                           if raft_servicer is not None else []),
                        metrics=metrics.rpc if metrics is not None else None,
                        # Every client's invalidation stream from one thread.
                        pumped={"Subscribe": master_servicer.open_subscription})
                    frames_server.start()
                    self._frames = frames_server
                if isinstance(command_log, RaftCommandLog):
                    command_log.start()
                else:
                    leadership.become_leader()
            except BaseException:
                self._address = ""
                if frames_server is not None:
                    frames_server.stop()
                    self._frames = None
                if server is not None:
                    server.stop(0)
                if leadership is not None:
                    leadership.stop()
                if metrics is not None:
                    metrics.close()
                storages.close()
                command_log.close()
                raise
            self._server = server
            self._metrics = metrics
            self._parts = _Running(command_log, storages, publisher, leadership)
            if isinstance(command_log, RaftCommandLog):
                indexes = command_log.raft_indexes()
                # At start the state is the snapshot's: the entries after it apply
                # once a leader confirms they are committed (nothing is lost).
                log.info("master %d of cluster %r serving on %s: Raft log up to entry %d (term %d), state from "
                         "the snapshot at entry %d (partition table version %d) until the entries after it apply",
                         command_log.node_id, config.rpc.cluster_name, self._address, indexes["last"],
                         command_log.raft_term, indexes["snapshot"], state.table.version)
            else:
                log.info("master of cluster %r serving on %s (term %d, partition table version %d)",
                         config.rpc.cluster_name, self._address, command_log.term, state.table.version)

    def frames_served(self, method: str) -> int:
        """Calls of ``method`` this master answered as frames."""
        frames_server = self._frames
        return frames_server.served[method] if frames_server is not None else 0

    @property
    def frames_address(self) -> str:
        """host:port of this master's framed calls ("" if none): the host
        it serves at, the frames port."""
        frames_server = self._frames
        if frames_server is None or not self._address:
            return ""
        return f"{self._address.rsplit(':', 1)[0]}:{frames_server.port}"

    @property
    def metrics_address(self) -> str:
        """host:port of the metrics endpoint ("" when not serving metrics)."""
        metrics = self._metrics
        return metrics.address if metrics is not None else ""

    def _collect_metrics(self) -> list[Any]:
        """This master's series read on a scrape (see :mod:`neostore.metrics`)."""
        parts = self._parts
        if parts is None:
            return []
        command_log, publisher = parts.command_log, parts.publisher
        state = command_log.state
        cells = {cell_state.name: 0 for cell_state in CellState}
        for row in state.table.rows:
            for cell in row:
                cells[cell.state.name] += 1
        nodes = {node_state.name: 0 for node_state in NodeState}
        for node in state.table.nodes:
            nodes[node.state.name] += 1
        families = [
            gauge("neostore_master_leader", "1 while this master leads the cluster, else 0",
                  1 if parts.leadership.is_leader else 0),
            gauge("neostore_master_term", "The fencing term: the Raft term in which this master last led "
                  "(storage nodes refuse orders of an older one)", command_log.term),
            counter("neostore_transactions_committed", "Committed transactions this master published to its "
                    "clients since it started (every master publishes every commit it learns)", publisher.published),
            gauge("neostore_clients_connected", "Clients with an open invalidation stream on this master",
                  publisher.clients),
            gauges("neostore_cells", "Cells of the partition table, by state", "state", cells),
            gauges("neostore_storage_nodes", "Storage nodes of the cluster, by state", "state", nodes),
            gauge("neostore_partition_table_version", "Version of the partition table", state.table.version),
        ]
        if isinstance(command_log, RaftCommandLog):
            indexes = command_log.raft_indexes()
            families += [
                gauge("neostore_raft_term", "The current Raft term as this master knows it", command_log.raft_term),
                gauge("neostore_raft_last_index", "Index of the last entry of this master's Raft log",
                      indexes["last"]),
                gauge("neostore_raft_commit_index", "Index of the last entry known committed", indexes["committed"]),
                gauge("neostore_raft_applied_index", "Index of the last entry applied to the cluster state",
                      indexes["applied"]),
            ]
        files = {"raft-log" if isinstance(command_log, RaftCommandLog) else "command-log": command_log.lmdb_metrics()}
        return families + lmdb_families(files)

    def campaign(self) -> None:
        """Start a Raft election now instead of after a timeout (tests, leadership tools)."""
        parts = self._parts
        if parts is not None and isinstance(parts.command_log, RaftCommandLog):
            parts.command_log.campaign()

    @property
    def removed(self) -> bool:
        """Whether this master was removed from the masters' group (it no longer takes part)."""
        parts = self._parts
        return parts is not None and isinstance(parts.command_log, RaftCommandLog) and parts.command_log.removed

    def members(self) -> list[tuple[int, str]]:
        """The masters' membership (node id, address) as this master applied it."""
        parts = self._parts
        if parts is None:
            raise errors.Unavailable("the master is not started")
        command_log = parts.command_log
        return command_log.members() if isinstance(command_log, RaftCommandLog) else [(0, self._address)]

    def add_master(self, address: str) -> int:
        """Leader: add the master at ``address`` to the group; its node id."""
        parts = self._parts
        if parts is None or not isinstance(parts.command_log, RaftCommandLog):
            raise errors.MembershipRefused("this master runs alone, without Raft")
        return parts.command_log.add_master(address)

    def remove_master(self, address: str) -> int:
        """Leader: remove the master at ``address`` from the group; its node id.

        A leader asked to remove itself first hands leadership over to the
        most up-to-date other master and answers NotLeader naming it: the
        caller (neoctl) asks the new leader, which removes this master as a
        follower.  The cluster then never goes an election timeout without a
        leader.  If no master takes over in time, this one removes itself as
        leader (it steps down once the removal applies)."""
        parts = self._parts
        if parts is None or not isinstance(parts.command_log, RaftCommandLog):
            raise errors.MembershipRefused("this master runs alone, without Raft")
        command_log = parts.command_log
        if address == command_log.address and command_log.is_leader and len(command_log.members()) > 1:
            new_leader = command_log.transfer_leadership()
            if new_leader is not None:
                log.info("handed leadership over to %s before this master's removal", new_leader)
                raise errors.NotLeader(f"this master handed leadership over before its removal; "
                                       f"leader is {new_leader}")
            log.warning("no master took leadership over within an election timeout: "
                        "this master removes itself as leader")
        return command_log.remove_master(address)

    def _join_group(self) -> tuple[int, dict[int, str]]:
        """A joining master's node id and the members it knows of (see the module docstring)."""
        config = self.config
        address = config.bind
        if address.rsplit(":", 1)[-1] in ("", "0"):
            raise ValueError(f"a joining master needs its own host:port in bind, got {address!r}")
        stored = stored_node_id(pathlib.Path(config.data_dir) / "raft")
        if stored is not None:  # joined before: the stored state holds the address book
            return stored, {stored: address}
        if not config.masters:
            raise ValueError("a joining master needs the address of at least one running master")
        deadline = time.monotonic() + config.join_timeout if config.join_timeout else None
        next_notice = 0.0
        while not self._stopping.is_set():
            for seed in config.masters:
                channel = rpc.make_channel(config.rpc, seed)
                try:
                    info = rpc.call(master_pb2_grpc.AdminStub(channel).GetClusterInfo, common_pb2.Empty(),
                                    timeout=5.0, peer=f"master {seed}")
                except errors.NeoError as error:
                    log.debug("join: %s: %s", seed, error)
                    continue
                finally:
                    channel.close()
                for member in info.members:
                    if member.address == address:
                        log.info("joining the masters of cluster %r as master %d at %s",
                                 config.rpc.cluster_name, member.node_id, address)
                        return member.node_id, {m.node_id: m.address for m in info.members}
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise errors.Unavailable(f"{address} was not added to the masters within {config.join_timeout:g}s")
            if now >= next_notice:
                log.info("waiting to be added to the masters: run `neoctl --masters %s add-master %s`",
                         ",".join(config.masters), address)
                next_notice = now + 10.0
            self._stopping.wait(0.5)
        raise errors.Unavailable("the master stopped while waiting to join")

    def _leader(self) -> str:
        parts = self._parts
        if parts is None:
            return ""
        command_log = parts.command_log
        if isinstance(command_log, RaftCommandLog):
            return command_log.leader_address or ""
        return self._address

    def _raft_term(self) -> int:
        """The term ClusterInfo reports: Raft's current term, or the single master's."""
        parts = self._parts
        if parts is None:
            return 0
        command_log = parts.command_log
        return command_log.raft_term if isinstance(command_log, RaftCommandLog) else command_log.term

    def _check_cluster(self, state: ClusterState) -> ClusterState:
        """A replicated master's stored state must belong to this cluster (if any yet)."""
        name = self.config.rpc.cluster_name
        if state.created and state.cluster_name != name:
            raise errors.WrongCluster(
                f"data directory {self.config.data_dir} belongs to cluster {state.cluster_name!r}, not {name!r}"
            )
        return state

    def _open_cluster(self, command_log: LmdbCommandLog) -> ClusterState:
        config = self.config
        name = config.rpc.cluster_name
        state = command_log.state
        if not state.created:
            submit_one(command_log, CreateCluster(name, config.num_partitions, config.num_replicas, new_cluster_id()))
            log.info("created cluster %r: %d partitions, %d replicas",
                     name, config.num_partitions, config.num_replicas)
            return command_log.state
        if state.cluster_name != name:
            raise errors.WrongCluster(
                f"data directory {config.data_dir} belongs to cluster {state.cluster_name!r}, not {name!r}"
            )
        if (state.num_partitions, state.num_replicas) != (config.num_partitions, config.num_replicas):
            log.warning("cluster %r keeps the %d partitions and %d replicas it was created with",
                        name, state.num_partitions, state.num_replicas)
        return state

    def stop(self, grace: float = 1.0) -> None:
        self._stopping.set()
        with self._lock:
            parts, server, frames_server = self._parts, self._server, self._frames
            self._parts = self._server = self._frames = None
        if parts is None:
            return
        parts.leadership.stop()
        parts.publisher.close()
        if frames_server is not None:
            frames_server.stop()
        if server is not None:
            server.stop(grace).wait()
        parts.storages.close()
        parts.command_log.close()
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            metrics.close()
        log.info("master stopped")
