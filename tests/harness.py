"""Clusters for tests: real gRPC servers and real LMDB files on 127.0.0.1.

:class:`ThreadCluster` runs a master and storage nodes as threads of the
test process (fast: ZODB's conformance suites start one per test); the
process-level tests use :class:`neostore.launcher.LocalCluster`, which
starts each node as its own process, exactly as ``neo-cluster`` does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from neostore import rpc
from neostore.client import NeoStorage
from neostore.launcher import free_port
from neostore.master_node.node import MasterConfig, MasterNode
from neostore.storage_node.node import StorageConfig, StorageNode


class ThreadCluster:
    """``num_masters`` masters (Raft when more than one) and ``num_storages``
    storage nodes, in this process.  ``master`` is the first master."""

    def __init__(
        self,
        data_dir: str,
        name: str = "test-cluster",
        num_storages: int = 3,
        num_partitions: int = 12,
        num_replicas: int = 2,
        tls: rpc.TlsConfig | None = None,
        num_masters: int = 1,
        raft_tick_interval: float = 0.1,
        snapshot_every: int | None = None,
        metrics: bool = False,
        history_size: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        self.rpc = rpc.RpcConfig(cluster_name=name, tls=tls)
        addresses: tuple[str, ...] = ()
        if num_masters > 1:
            addresses = tuple(f"127.0.0.1:{free_port()}" for _ in range(num_masters))
        self.master_nodes = [
            MasterNode(MasterConfig(
                rpc=self.rpc,
                data_dir=os.path.join(data_dir, "master" if num_masters == 1 else f"master-{index + 1}"),
                num_partitions=num_partitions, num_replicas=num_replicas, autostart=num_storages,
                masters=addresses, node_id=index + 1 if addresses else 0,
                # Every node of the cluster shares this process's GIL: a long
                # election timeout (10 to 20 ticks) keeps a busy test from
                # deposing a healthy leader.
                raft_tick_interval=raft_tick_interval,
                metrics="127.0.0.1:0" if metrics else "",
                **({} if snapshot_every is None else {"snapshot_every": snapshot_every}),
                **({} if history_size is None else {"history_size": history_size}),
            ))
            for index in range(num_masters)
        ]
        self.master = self.master_nodes[0]
        self.num_storages = num_storages
        self.metrics = metrics
        self.storages: list[StorageNode] = []
        self._clients: list[NeoStorage] = []

    @property
    def masters(self) -> list[str]:
        return [master.address for master in self.master_nodes]

    def leader(self) -> MasterNode | None:
        """The master serving writes now, if any."""
        return next((master for master in self.master_nodes if master.is_leader), None)

    def wait_for_leader(self, other_than: MasterNode | None = None, timeout: float = 30.0) -> MasterNode:
        """The leader, once there is one (and it is not ``other_than``): the
        very master seen leading, not whichever leads when asked again."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None and leader is not other_than:
                return leader
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader{' other than ' + other_than.address if other_than else ''} "
                                     f"after {timeout} s")
            time.sleep(0.02)

    def start(self, timeout: float = 30.0) -> ThreadCluster:
        for master in self.master_nodes:
            master.start()
        if len(self.master_nodes) > 1:
            self.master.campaign()  # a leader at once, rather than after an election timeout
        for index in range(self.num_storages):
            storage = StorageNode(StorageConfig(
                rpc=self.rpc, masters=self.masters,
                data_dir=os.path.join(self.data_dir, f"storage-{index}"),
                metrics="127.0.0.1:0" if self.metrics else "",
            ))
            storage.start()
            self.storages.append(storage)
        deadline = time.monotonic() + timeout
        while not self._running():
            if time.monotonic() > deadline:
                raise TimeoutError("cluster did not start")
            time.sleep(0.01)
        return self

    def _running(self) -> bool:
        from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

        for master in self.master_nodes:
            channel = rpc.make_channel(self.rpc, master.address)
            try:
                info = rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=5)
            finally:
                channel.close()
            if info.state != master_pb2.ClusterInfo.RUNNING:
                return False
        return True

    def client(self, **options: Any) -> NeoStorage:
        options.setdefault("tls", self.rpc.tls)
        storage = NeoStorage(self.masters, self.name, **options)
        self._clients.append(storage)
        return storage

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        for master in self.master_nodes:
            master.stop()
        for storage in self.storages:
            storage.stop()

    def __enter__(self) -> ThreadCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def unstarted_cluster(data_dir: str, name: str, num_partitions: int, num_storages: int = 2,
                      ) -> Iterator[tuple[MasterNode, list[StorageNode]]]:
    """A master created with ``autostart`` 0 (the cluster stays EMPTY until
    ``neoctl start``) and ``num_storages`` storage nodes registered with it
    (2 replicas)."""
    config = rpc.RpcConfig(cluster_name=name)
    master = MasterNode(MasterConfig(rpc=config, data_dir=os.path.join(data_dir, "master"),
                                     num_partitions=num_partitions, num_replicas=2, autostart=0))
    master.start()
    storages: list[StorageNode] = []
    try:
        for index in range(num_storages):
            storage = StorageNode(StorageConfig(rpc=config, masters=[master.address],
                                                data_dir=os.path.join(data_dir, f"storage-{index}")))
            storage.start()  # returns once registered
            storages.append(storage)
        yield master, storages
    finally:
        for storage in storages:
            storage.stop()
        master.stop()


class ProcessCluster:
    """The interface of :class:`ThreadCluster` over a :class:`LocalCluster`:
    masters and storage nodes as processes, for tests whose many client
    threads would otherwise share one interpreter (and one GIL) with the
    whole cluster."""

    def __init__(self, data_dir: str, name: str = "test-cluster", num_masters: int = 1,
                 num_storages: int = 3) -> None:
        from neostore.launcher import LocalCluster

        self.local = LocalCluster(data_dir, name=name, num_masters=num_masters, num_storages=num_storages)
        self.name = name
        self._clients: list[NeoStorage] = []

    @property
    def masters(self) -> list[str]:
        return self.local.masters

    def start(self) -> ProcessCluster:
        self.local.start()
        return self

    def client(self, **options: Any) -> NeoStorage:
        storage = NeoStorage(self.masters, self.name, **options)
        self._clients.append(storage)
        return storage

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.local.stop()
