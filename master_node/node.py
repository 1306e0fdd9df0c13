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
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading

import grpc

from neostore import errors, rpc
from neostore.master_node.cluster import DEFAULT_HEARTBEAT_INTERVAL, ClusterManager
from neostore.master_node.command_log import DEFAULT_SNAPSHOT_EVERY, LmdbCommandLog, submit_one
from neostore.master_node.commit import CommitConfig, CommitCoordinator, last_published_tid
from neostore.master_node.invalidations import DEFAULT_HISTORY_SIZE, InvalidationPublisher
from neostore.master_node.leadership import Leadership, ReplicaFeed
from neostore.master_node.raft_driver import DEFAULT_TICK_INTERVAL, RaftCommandLog
from neostore.master_node.raft_transport import RaftServicer
from neostore.master_node.servicer import AdminServicer, MasterInfo, MasterServicer
from neostore.master_node.state import ClusterState, CreateCluster
from neostore.master_node.storage_links import StorageLinks
from neostore.protocol import master_pb2_grpc, raft_pb2_grpc

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
    max_workers: int = 256
    history_size: int = DEFAULT_HISTORY_SIZE
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    commit: CommitConfig = CommitConfig()
    masters: tuple[str, ...] = ()  # every master's address (Raft with more than one)
    node_id: int = 0  # this master's position in ``masters``, from 1
    raft_tick_interval: float = DEFAULT_TICK_INTERVAL

    @property
    def replicated(self) -> bool:
        """Whether this master is one of several agreeing through Raft."""
        return len(self.masters) > 1


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
        self._address = ""

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
            if config.replicated:
                if not 1 <= config.node_id <= len(config.masters):
                    raise ValueError(f"node id {config.node_id} is not in 1..{len(config.masters)}")
                command_log: LmdbCommandLog | RaftCommandLog = RaftCommandLog(
                    pathlib.Path(config.data_dir) / "raft", config.node_id, config.masters, config.rpc,
                    snapshot_every=config.snapshot_every, tick_interval=config.raft_tick_interval)
            else:
                command_log = LmdbCommandLog(pathlib.Path(config.data_dir), snapshot_every=config.snapshot_every)
            storages = StorageLinks(config.rpc)
            leadership: Leadership | None = None
            server: grpc.Server | None = None
            try:
                if isinstance(command_log, RaftCommandLog):
                    state = self._check_cluster(command_log.state)
                else:
                    state = self._open_cluster(command_log)
                publisher = InvalidationPublisher(last_published_tid(state), state.table, config.history_size)
                command_log.add_listener(
                    lambda old, new: publisher.publish_table(new.table) if new.table is not old.table else None)

                def build() -> tuple[ClusterManager, CommitCoordinator]:
                    coordinator = CommitCoordinator(command_log, storages, publisher, config.commit)
                    cluster = ClusterManager(command_log, coordinator, config.autostart, config.heartbeat_interval)
                    return cluster, coordinator

                bind = config.bind
                if isinstance(command_log, RaftCommandLog):
                    feed = ReplicaFeed(publisher, state)
                    command_log.add_listener(feed)
                    leadership = Leadership(
                        command_log, build, command_log.not_leader, feed=feed,
                        create_cluster=CreateCluster(config.rpc.cluster_name, config.num_partitions,
                                                     config.num_replicas))
                    command_log.on_leader(leadership.become_leader)
                    command_log.on_follower(leadership.become_follower)
                    if bind.rsplit(":", 1)[1] == "0":
                        bind = command_log.address
                else:
                    leadership = Leadership(command_log, build, lambda: errors.NotLeader("no leader"))
                server, port = rpc.make_server(config.rpc, bind, max_workers=config.max_workers)
                info = MasterInfo(address=lambda: self._address, masters=self._masters,
                                  leader=self._leader, term=self._raft_term)
                master_pb2_grpc.add_MasterServicer_to_server(MasterServicer(leadership, publisher, info), server)
                master_pb2_grpc.add_AdminServicer_to_server(AdminServicer(leadership, publisher, info), server)
                if isinstance(command_log, RaftCommandLog):
                    raft_pb2_grpc.add_RaftServicer_to_server(RaftServicer(command_log.receive), server)
                    self._address = command_log.address
                else:
                    self._address = f"{bind.rsplit(':', 1)[0]}:{port}"
                server.start()
                if isinstance(command_log, RaftCommandLog):
                    command_log.start()
                else:
                    leadership.become_leader()
            except BaseException:
                self._address = ""
                if server is not None:
                    server.stop(0)
                if leadership is not None:
                    leadership.stop()
                storages.close()
                command_log.close()
                raise
            self._server = server
            self._parts = _Running(command_log, storages, publisher, leadership)
            log.info("master of cluster %r serving on %s (term %d, table version %d)",
                     config.rpc.cluster_name, self._address, command_log.term, state.table.version)

    def campaign(self) -> None:
        """Start a Raft election now instead of after a timeout (tests, leadership tools)."""
        parts = self._parts
        if parts is not None and isinstance(parts.command_log, RaftCommandLog):
            parts.command_log.campaign()

    def _masters(self) -> list[str]:
        return list(self.config.masters) if self.config.replicated else [self._address]

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
            submit_one(command_log, CreateCluster(name, config.num_partitions, config.num_replicas))
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
        with self._lock:
            parts, server = self._parts, self._server
            self._parts = self._server = None
        if parts is None:
            return
        parts.leadership.stop()
        parts.publisher.close()
        if server is not None:
            server.stop(grace).wait()
        parts.storages.close()
        parts.command_log.close()
        log.info("master stopped")
