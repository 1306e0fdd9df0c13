"""A storage node's life cycle against a fake master served over real gRPC."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from neostore import errors, rpc
from neostore.ids import p64
from neostore.launcher import free_port
from neostore.partition_table import Cell, CellState, NodeState, PartitionTable, StorageNodeInfo
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc
from neostore.records import Record
from neostore.storage_node.database import Database, PendingObject
from neostore.storage_node.layout import StoredObject
from neostore.storage_node.node import StorageConfig, StorageNode

from waiting import wait_until

CLUSTER = "node-test"
NODE_ID = 7
TERM = 3
MAP_SIZE = 16 * 2**20


def make_table(version: int, address: str = "127.0.0.1:1") -> PartitionTable:
    return PartitionTable(
        version=version, num_partitions=2, num_replicas=1,
        rows=((Cell(NODE_ID, CellState.UP_TO_DATE),), (Cell(NODE_ID, CellState.UP_TO_DATE),)),
        nodes=(StorageNodeInfo(NODE_ID, address, NodeState.RUNNING),),
    )


class FakeMaster(master_pb2_grpc.MasterServicer):
    """Registers storage nodes and streams whatever the test queues."""

    def __init__(self) -> None:
        self.registrations: list[master_pb2.RegisterStorageRequest] = []
        self.decided: dict[bytes, bytes] = {}
        #: Sessions to refuse, as a master does for a node it marked DOWN.
        self.refuse_sessions = 0
        #: Refuse sessions as a cluster that does not know the node.
        self.forgot_node = False
        self.events: queue.Queue[master_pb2.StorageEvent | None] = queue.Queue()
        self.sessions = 0

    def RegisterStorage(
        self, request: master_pb2.RegisterStorageRequest, context: Any
    ) -> master_pb2.RegisterStorageReply:
        self.registrations.append(request)
        return master_pb2.RegisterStorageReply(
            node_id=NODE_ID,
            partition_table=make_table(1, request.address).to_proto(),
            term=TERM,
            decided=[common_pb2.Decision(ttid=ttid, tid=tid) for ttid, tid in self.decided.items()
                     if ttid in request.pending_ttids],
        )

    def StorageSession(
        self, request: master_pb2.StorageSessionRequest, context: Any
    ) -> Iterator[master_pb2.StorageEvent]:
        if self.forgot_node:
            raise errors.WrongCluster(f"node {request.node_id} is not known to this cluster")
        if self.refuse_sessions:
            self.refuse_sessions -= 1
            raise errors.Unavailable(f"storage node {request.node_id} is marked down: register again")
        self.sessions += 1
        while context.is_active():
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event is None:
                return
            yield event


MasterFixture = tuple[FakeMaster, str]


@pytest.fixture
def master() -> Iterator[MasterFixture]:
    servicer = FakeMaster()
    server, port = rpc.make_server(rpc.RpcConfig(CLUSTER), "127.0.0.1:0")
    master_pb2_grpc.add_MasterServicer_to_server(servicer, server)
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


def config(data_dir: pathlib.Path, masters: list[str], cluster: str = CLUSTER, **overrides: Any) -> StorageConfig:
    settings: dict[str, Any] = dict(
        label="rack-1", map_size=MAP_SIZE, register_timeout=5, min_backoff=0.02, max_backoff=0.1)
    settings.update(overrides)
    return StorageConfig(rpc=rpc.RpcConfig(cluster), masters=masters, data_dir=str(data_dir), **settings)


def unused_address() -> str:
    """An address where nothing listens: below the kernel's ephemeral range
    (free_port), so no outgoing connection or port-0 bind takes it meanwhile."""
    return f"127.0.0.1:{free_port()}"


def test_registration_recovers_pending_transactions(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    data_dir = tmp_path / "data"
    decided, undecided = p64(100), p64(200)
    database = Database(str(data_dir), CLUSTER, map_size=MAP_SIZE)
    for ttid, oid in ((decided, p64(2)), (undecided, p64(4))):
        stored = StoredObject.from_record(Record.pack(b"voted"))
        database.write_pending(ttid, [PendingObject(0, oid, stored)])
    database.close()
    fake.decided = {decided: p64(150)}

    node = StorageNode(config(data_dir, [address]))
    node.start()
    try:
        [request] = fake.registrations
        assert (request.cluster_name, request.node_id, request.address, request.label) == (
            CLUSTER, 0, node.address, "rack-1")
        assert list(request.pending_ttids) == [decided, undecided]
        assert node.node_id == NODE_ID
        assert node.database.pending_ttids() == []
        assert node.database.last_serial(0, p64(2)) == p64(150)
        assert node.database.last_serial(0, p64(4)) is None
        assert node.manager.term == TERM
        table = node.partition_table
        assert table is not None and table.version == 1
    finally:
        node.stop()


def test_restarted_node_registers_with_its_id_and_last_tids(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    data_dir = tmp_path / "data"
    fake.decided = {p64(100): p64(151)}
    database = Database(str(data_dir), CLUSTER, map_size=MAP_SIZE)
    database.write_pending(p64(100), [PendingObject(1, p64(3), StoredObject.from_record(Record.pack(b"x")))])
    database.close()
    first = StorageNode(config(data_dir, [address]))
    first.start()
    first.stop()

    second = StorageNode(config(data_dir, [address]))
    second.start()
    try:
        request = fake.registrations[-1]
        assert request.node_id == NODE_ID
        assert [(entry.partition, entry.tid) for entry in request.partition_last_tids] == [(1, p64(151))]
    finally:
        second.stop()


def test_session_delivers_partition_table_changes(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    node = StorageNode(config(tmp_path / "data", [address]))
    node.start()
    try:
        fake.events.put(master_pb2.StorageEvent(heartbeat=True))
        fake.events.put(master_pb2.StorageEvent(partition_table=make_table(4, node.address).to_proto()))
        wait_until(lambda: node.partition_table is not None and node.partition_table.version == 4,
                   "the node to receive partition table version 4")
    finally:
        node.stop()


def test_node_registers_again_when_its_session_ends(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    node = StorageNode(config(tmp_path / "data", [address]))
    node.start()
    try:
        wait_until(lambda: fake.sessions == 1, "the node's first session")
        fake.refuse_sessions = 1
        fake.events.put(None)  # the master ends the session (it marked the node DOWN)
        # Registers, is refused a session once, registers again, reopens it.
        wait_until(lambda: fake.sessions == 2, "the node to reopen its session")
        assert len(fake.registrations) == 3
        assert all(request.node_id == NODE_ID for request in fake.registrations[1:])
        assert node.failure is None
    finally:
        node.stop()


def test_node_forgotten_by_the_cluster_fails(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    node = StorageNode(config(tmp_path / "data", [address]))
    node.start()
    try:
        wait_until(lambda: fake.sessions == 1, "the node's first session")
        fake.forgot_node = True
        fake.events.put(None)
        wait_until(lambda: node.failure is not None, "the node to fail, forgotten by the cluster")
        assert isinstance(node.failure, errors.WrongCluster)
    finally:
        node.stop()


def test_registration_tries_every_master(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    fake, address = master
    node = StorageNode(config(tmp_path / "data", [unused_address(), address]))
    node.start()
    try:
        assert len(fake.registrations) == 1
        assert node.node_id == NODE_ID
    finally:
        node.stop()


def test_registration_gives_up_after_its_timeout(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    node = StorageNode(config(data_dir, [unused_address()], register_timeout=0.3))
    with pytest.raises(errors.Unavailable, match="registration"):
        node.start()
    # It closed its database on the way out: the directory can be reopened.
    Database(str(data_dir), CLUSTER, map_size=MAP_SIZE).close()


def test_data_directory_of_another_cluster_is_refused_at_start(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    _fake, address = master
    data_dir = tmp_path / "data"
    Database(str(data_dir), "another", map_size=MAP_SIZE).close()
    node = StorageNode(config(data_dir, [address]))
    with pytest.raises(errors.WrongCluster, match="belongs to cluster 'another', not 'node-test'"):
        node.start()


def test_master_of_another_cluster_is_refused(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    _fake, address = master
    node = StorageNode(config(tmp_path / "data", [address], cluster="elsewhere"))
    with pytest.raises(errors.WrongCluster):
        node.start()


def test_stop_is_idempotent_and_releases_the_directory(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    _fake, address = master
    node = StorageNode(config(tmp_path / "data", [address]))
    node.start()
    node.stop()
    node.stop()
    Database(str(tmp_path / "data"), CLUSTER, map_size=MAP_SIZE).close()


# -- the neo-storage process ------------------------------------------------------


def run_storage_process(arguments: list[str]) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "neostore.storage_node.main", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )


@pytest.mark.process
def test_process_prints_ready_and_stops_on_sigterm(tmp_path: pathlib.Path, master: MasterFixture) -> None:
    _fake, address = master
    process = run_storage_process([
        "--cluster", CLUSTER, "--masters", address, "--data", str(tmp_path / "data"),
        "--map-size", str(MAP_SIZE), "--log-level", "WARNING",
    ])
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"neo-storage ready node_id={NODE_ID} address=127.0.0.1:"), line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.process
def test_process_exits_with_one_clear_line_on_a_foreign_data_directory(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"
    Database(str(data_dir), "a", map_size=MAP_SIZE).close()
    process = run_storage_process([
        "--cluster", "b", "--masters", unused_address(), "--data", str(data_dir),
        "--map-size", str(MAP_SIZE),
    ])
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stdout == ""
    assert stderr.strip().splitlines()[-1] == (
        f"neo-storage: error: data directory {data_dir} belongs to cluster 'a', not 'b'"
    )
