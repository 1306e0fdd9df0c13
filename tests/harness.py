"""Clusters for tests: real gRPC servers and real LMDB files on 127.0.0.1.

:class:`ThreadCluster` runs a master and storage nodes as threads of the
test process (fast: ZODB's conformance suites start one per test); the
process-level tests use :class:`neostore.launcher.LocalCluster`, which
starts each node as its own process, exactly as ``neo-cluster`` does.
"""

from __future__ import annotations

import os
import time
from typing import Any

from neostore import rpc
from neostore.client import NeoStorage
from neostore.master_node.node import MasterConfig, MasterNode
from neostore.storage_node.node import StorageConfig, StorageNode


class ThreadCluster:
    """One master and ``num_storages`` storage nodes, in this process."""

    def __init__(
        self,
        data_dir: str,
        name: str = "test-cluster",
        num_storages: int = 3,
        num_partitions: int = 12,
        num_replicas: int = 2,
        tls: rpc.TlsConfig | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        self.rpc = rpc.RpcConfig(cluster_name=name, tls=tls)
        self.master = MasterNode(MasterConfig(
            rpc=self.rpc, data_dir=os.path.join(data_dir, "master"),
            num_partitions=num_partitions, num_replicas=num_replicas, autostart=num_storages,
        ))
        self.num_storages = num_storages
        self.storages: list[StorageNode] = []
        self._clients: list[NeoStorage] = []

    @property
    def masters(self) -> list[str]:
        return [self.master.address]

    def start(self, timeout: float = 30.0) -> ThreadCluster:
        self.master.start()
        for index in range(self.num_storages):
            storage = StorageNode(StorageConfig(
                rpc=self.rpc, masters=self.masters,
                data_dir=os.path.join(self.data_dir, f"storage-{index}"),
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

        channel = rpc.make_channel(self.rpc, self.master.address)
        try:
            info = rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=5)
        finally:
            channel.close()
        return info.state == master_pb2.ClusterInfo.RUNNING

    def client(self, **options: Any) -> NeoStorage:
        options.setdefault("tls", self.rpc.tls)
        storage = NeoStorage(self.masters, self.name, **options)
        self._clients.append(storage)
        return storage

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.master.stop()
        for storage in self.storages:
            storage.stop()

    def __enter__(self) -> ThreadCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
