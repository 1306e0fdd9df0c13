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
from neostore.master_node.servicer import AdminServicer, MasterServicer
from neostore.master_node.state import ClusterState, CreateCluster
from neostore.master_node.storage_links import StorageLinks
from neostore.protocol import master_pb2_grpc

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


class _Running:
    """The parts of a started master, built together and torn down together."""

    def __init__(self, command_log: LmdbCommandLog, storages: StorageLinks, publisher: InvalidationPublisher,
                 coordinator: CommitCoordinator, cluster: ClusterManager) -> None:
        self.command_log = command_log
        self.storages = storages
        self.publisher = publisher
        self.coordinator = coordinator
        self.cluster = cluster


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

    def start(self) -> None:
        with self._lock:
            if self._parts is not None:
                raise RuntimeError("master already started")
            config = self.config
            command_log = LmdbCommandLog(pathlib.Path(config.data_dir), snapshot_every=config.snapshot_every)
            storages = StorageLinks(config.rpc)
            coordinator: CommitCoordinator | None = None
            server: grpc.Server | None = None
            try:
                state = self._open_cluster(command_log)
                publisher = InvalidationPublisher(last_published_tid(state), state.table, config.history_size)
                command_log.add_listener(
                    lambda old, new: publisher.publish_table(new.table) if new.table is not old.table else None)
                coordinator = CommitCoordinator(command_log, storages, publisher, config.commit)
                cluster = ClusterManager(command_log, coordinator, config.autostart, config.heartbeat_interval)
                server, port = rpc.make_server(config.rpc, config.bind, max_workers=config.max_workers)
                term = lambda: command_log.term  # noqa: E731
                master_pb2_grpc.add_MasterServicer_to_server(
                    MasterServicer(cluster, coordinator, publisher, lambda: self._address, term), server)
                master_pb2_grpc.add_AdminServicer_to_server(
                    AdminServicer(cluster, publisher, lambda: self._address, term), server)
                self._address = f"{config.bind.rsplit(':', 1)[0]}:{port}"
                server.start()
                coordinator.start()
            except BaseException:
                self._address = ""
                if server is not None:
                    server.stop(0)
                if coordinator is not None:
                    coordinator.stop()
                storages.close()
                command_log.close()
                raise
            self._server = server
            self._parts = _Running(command_log, storages, publisher, coordinator, cluster)
            log.info("master of cluster %r serving on %s (term %d, table version %d)",
                     state.cluster_name, self._address, command_log.term, state.table.version)

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
        parts.cluster.stop()
        parts.coordinator.stop()
        parts.publisher.close()
        if server is not None:
            server.stop(grace).wait()
        parts.storages.close()
        parts.command_log.close()
        log.info("master stopped")
