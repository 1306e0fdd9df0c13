"""Test helpers for the master's tests: a fake storage node, cluster states.

:class:`FakeStorage` is a real gRPC server (built with :mod:`neostore.rpc`,
on 127.0.0.1:0) implementing the two orders a master sends storage nodes,
``Commit`` and ``Abort``: it records them, and can be told to fail or to be
slow.  The real storage node comes from another module; the end-to-end
tests come later.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from neostore import errors, rpc
from neostore.master_node.command_log import MemoryCommandLog, submit_one
from neostore.master_node.state import (
    ClusterState,
    CreateCluster,
    CreatePartitionTable,
    RegisterNode,
    apply,
    initial_state,
)
from neostore.protocol import common_pb2, storage_pb2, storage_pb2_grpc

CLUSTER = "test-cluster"
RPC_CONFIG = rpc.RpcConfig(cluster_name=CLUSTER)


class FakeStorage(storage_pb2_grpc.StorageServicer):
    """Records Commit and Abort orders; ``fail_with`` makes them fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commits: list[tuple[bytes, bytes, int]] = []  # (ttid, tid, term)
        self.aborts: list[tuple[bytes, int]] = []  # (ttid, term)
        self.fail_with: errors.NeoError | None = None
        self.commit_delay = 0.0
        self.commit_gate: threading.Event | None = None  # set: Commit orders wait until it opens
        self.commit_calls = 0
        self.server, port = rpc.make_server(RPC_CONFIG, "127.0.0.1:0", max_workers=8)
        storage_pb2_grpc.add_StorageServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def Commit(self, request: storage_pb2.CommitRequest, context: grpc.ServicerContext) -> storage_pb2.CommitReply:
        with self.lock:
            self.commit_calls += 1
            failure, delay, gate = self.fail_with, self.commit_delay, self.commit_gate
        if gate is not None:
            gate.wait(30)
        if delay:
            time.sleep(delay)
        if failure is not None:
            raise failure
        with self.lock:
            self.commits.extend((decision.ttid, decision.tid, request.term) for decision in request.decisions)
        return storage_pb2.CommitReply(results=[storage_pb2.CommitResult() for _ in request.decisions])

    def Abort(self, request: storage_pb2.AbortTransactionRequest, context: grpc.ServicerContext) -> common_pb2.Empty:
        with self.lock:
            self.aborts.append((request.ttid, request.term))
        return common_pb2.Empty()

    def committed_tids(self) -> list[bytes]:
        with self.lock:
            return [tid for _, tid, _ in self.commits]

    def aborted_ttids(self) -> list[bytes]:
        with self.lock:
            return [ttid for ttid, _ in self.aborts]

    def stop(self) -> None:
        self.server.stop(0).wait()


def running_state(addresses: Sequence[str], num_partitions: int = 4, num_replicas: int = 2) -> ClusterState:
    """A RUNNING cluster whose table spans a node per address (ids 1, 2, ...)."""
    state, _ = apply(initial_state(), CreateCluster(CLUSTER, num_partitions, num_replicas))
    for address in addresses:
        state, _ = apply(state, RegisterNode(0, address))
    state, _ = apply(state, CreatePartitionTable(tuple(range(1, len(addresses) + 1))))
    return state


def running_log(addresses: Sequence[str], num_partitions: int = 4, num_replicas: int = 2) -> MemoryCommandLog:
    command_log = MemoryCommandLog()
    submit_one(command_log, CreateCluster(CLUSTER, num_partitions, num_replicas))
    for address in addresses:
        submit_one(command_log, RegisterNode(0, address))
    submit_one(command_log, CreatePartitionTable(tuple(range(1, len(addresses) + 1))))
    return command_log


def in_background(function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
    """Run ``function(*args)`` in a daemon thread (a failing test never hangs on it)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future
