"""A real master node through its gRPC services, with fake storage nodes."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from neostore import errors, rpc
from neostore.ids import p64, u64
from neostore.master_node.commit import CommitConfig
from neostore.master_node.node import MasterConfig, MasterNode
from neostore.partition_table import CellState, NodeState, PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

from master_fakes import CLUSTER, RPC_CONFIG, FakeStorage, in_background
from waiting import wait_until

# Not tight: a healthy Commit on a loaded machine must never count as a failure.
FAST = CommitConfig(commit_timeout=2.0, commit_deadline=2.0, abort_timeout=1.0, mark_applied_delay=0.01,
                    session_grace=0.0)


class Peer:
    """Stubs of one master, as clients, storage nodes and neoctl use them."""

    def __init__(self, address: str, config: rpc.RpcConfig = RPC_CONFIG) -> None:
        self.channel = rpc.make_channel(config, address)
        self.master = master_pb2_grpc.MasterStub(self.channel)
        self.admin = master_pb2_grpc.AdminStub(self.channel)

    def register(self, address: str, node_id: int = 0, cluster: str = CLUSTER,
                 **fields: object) -> master_pb2.RegisterStorageReply:
        request = master_pb2.RegisterStorageRequest(cluster_name=cluster, node_id=node_id, address=address, **fields)
        return rpc.call(self.master.RegisterStorage, request, timeout=5)

    def table(self) -> PartitionTable:
        return PartitionTable.from_proto(rpc.call(self.master.GetPartitionTable, common_pb2.Empty(), timeout=5))

    def info(self) -> master_pb2.ClusterInfo:
        return rpc.call(self.master.GetClusterInfo, common_pb2.Empty(), timeout=5)

    def begin(self, client_id: str = "client") -> bytes:
        return rpc.call(self.master.Begin, master_pb2.BeginRequest(client_id=client_id), timeout=5).ttid

    def finish_one_oid(self, ttid: bytes, client_id: str = "client") -> bytes:
        """Finish a transaction that wrote one oid in partition(ttid), voted by every cell's node."""
        table = self.table()
        partition = u64(ttid) % table.num_partitions
        votes = [master_pb2.Vote(node_id=cell.node_id, partitions=[partition]) for cell in table.rows[partition]]
        request = master_pb2.FinishRequest(client_id=client_id, ttid=ttid, oids=[p64(partition)],
                                           partitions=[partition], votes=votes, table_version=table.version)
        return rpc.call(self.master.Finish, request, timeout=10).tid

    def close(self) -> None:
        self.channel.close()


def make_config(directory: pathlib.Path, **changes: object) -> MasterConfig:
    config = MasterConfig(rpc=RPC_CONFIG, data_dir=str(directory), num_partitions=4, num_replicas=2,
                          autostart=2, heartbeat_interval=0.2, commit=FAST)
    return dataclasses.replace(config, **changes)


@pytest.fixture
def master(tmp_path: pathlib.Path) -> Iterator[MasterNode]:
    node = MasterNode(make_config(tmp_path / "master"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def peer(master: MasterNode) -> Iterator[Peer]:
    made = Peer(master.address)
    yield made
    made.close()


@pytest.fixture
def storages() -> Iterator[list[FakeStorage]]:
    made = [FakeStorage(), FakeStorage()]
    yield made
    for storage in made:
        storage.stop()


@pytest.fixture
def running(peer: Peer, storages: list[FakeStorage]) -> Peer:
    """The master with both fake storages registered: the table exists."""
    for storage in storages:
        peer.register(storage.address)
    return peer


def test_a_call_for_another_cluster_is_refused(master: MasterNode) -> None:
    stranger = Peer(master.address, rpc.RpcConfig(cluster_name="other"))
    try:
        with pytest.raises(errors.WrongCluster, match="'other'"):
            stranger.info()
    finally:
        stranger.close()


def test_registering_with_another_cluster_name_is_refused_naming_only_the_callers(peer: Peer) -> None:
    with pytest.raises(errors.WrongCluster) as raised:
        peer.register("127.0.0.1:1", cluster="other")
    assert "'other'" in str(raised.value) and repr(CLUSTER) not in str(raised.value)


def test_registering_with_an_unknown_node_id_is_refused(peer: Peer) -> None:
    with pytest.raises(errors.WrongCluster, match="node 42 is not known to this cluster"):
        peer.register("127.0.0.1:1", node_id=42)


def test_writes_wait_for_autostart_storage_nodes_then_the_table_is_created(peer: Peer) -> None:
    with pytest.raises(errors.Unavailable, match=f"cluster '{CLUSTER}' is not running: waiting for 2 storage nodes"):
        peer.begin()
    first = peer.register("127.0.0.1:7001")
    assert first.node_id == 1 and not first.partition_table.rows
    with pytest.raises(errors.Unavailable, match="waiting for 1 storage nodes"):
        rpc.call(peer.master.NewOids, master_pb2.NewOidsRequest(count=1))
    second = peer.register("127.0.0.1:7002")
    table = PartitionTable.from_proto(second.partition_table)
    assert second.node_id == 2 and table.created and table.is_operational()
    assert peer.info().state == master_pb2.ClusterInfo.RUNNING
    assert len(peer.begin()) == 8


def test_new_oids_hands_out_capped_batches_and_refuses_zero(running: Peer) -> None:
    first = rpc.call(running.master.NewOids, master_pb2.NewOidsRequest(count=100))
    assert (u64(first.first_oid), first.count) == (1, 100)
    capped = rpc.call(running.master.NewOids, master_pb2.NewOidsRequest(count=5000))
    assert (u64(capped.first_oid), capped.count) == (101, 1000)
    with pytest.raises(errors.BadRequest):
        rpc.call(running.master.NewOids, master_pb2.NewOidsRequest(count=0))
    assert u64(running.info().last_oid) == 1100


def test_a_node_registering_after_the_table_waits_until_an_admin_adds_it(running: Peer) -> None:
    reply = running.register("127.0.0.1:7003")
    assert running.table().node(reply.node_id).state == NodeState.PENDING
    added = PartitionTable.from_proto(rpc.call(running.admin.AddNodes, master_pb2.AddNodesRequest()))
    assert added.node(reply.node_id).state == NodeState.RUNNING
    assert added.partitions_of_node(reply.node_id) == []


def test_with_autostart_off_an_admin_creates_the_table(tmp_path: pathlib.Path) -> None:
    node = MasterNode(make_config(tmp_path, autostart=0))
    node.start()
    peer = Peer(node.address)
    try:
        peer.register("127.0.0.1:7001")
        with pytest.raises(errors.Unavailable, match="waiting for an administrator"):
            peer.begin()
        table = PartitionTable.from_proto(rpc.call(peer.admin.AddNodes, master_pb2.AddNodesRequest()))
        assert table.created and table.is_operational()
        assert rpc.call(peer.admin.GetClusterInfo, common_pb2.Empty()).state == master_pb2.ClusterInfo.RUNNING
    finally:
        peer.close()
        node.stop()


def test_a_storage_session_streams_the_table_and_its_end_marks_the_node_down(running: Peer) -> None:
    ttid = running.begin()
    tid = running.finish_one_oid(ttid)
    written = u64(ttid) % 4
    call = running.master.StorageSession(master_pb2.StorageSessionRequest(node_id=1))
    events = rpc.stream(call)
    first = next(events)
    assert first.WhichOneof("event") == "partition_table"
    assert next(events).WhichOneof("event") == "heartbeat"
    call.cancel()
    wait_until(lambda: running.table().node(1).state == NodeState.DOWN, what="node 1 down")
    table = running.table()
    assert all(table.cell_state(p, 1) == CellState.OUT_OF_DATE for p in range(4))
    # A transaction committed while node 1 is away: its partition missed it.
    ttid2 = running.begin()
    missed = u64(ttid2) % 4
    votes = [master_pb2.Vote(node_id=cell.node_id, partitions=[missed])
             for cell in table.rows[missed] if cell.node_id != 1]
    rpc.call(running.master.Finish, master_pb2.FinishRequest(
        client_id="client", ttid=ttid2, oids=[p64(missed)], partitions=[missed], votes=votes,
        table_version=table.version), timeout=10)
    # Back: up to date at once where it missed nothing (including the partition
    # of the transaction it voted for before leaving: it applies that one itself).
    back = PartitionTable.from_proto(running.register("127.0.0.1:7001", node_id=1).partition_table)
    assert back.node(1).state == NodeState.RUNNING
    assert [back.cell_state(p, 1) == CellState.UP_TO_DATE for p in range(4)] == [p != missed for p in range(4)]
    assert written == missed or back.cell_state(written, 1) == CellState.UP_TO_DATE
    # Whatever it claims to hold, the partition it missed waits for replication.
    held = [common_pb2.PartitionLastTid(partition=missed, tid=tid)]
    again = PartitionTable.from_proto(
        running.register("127.0.0.1:7001", node_id=1, partition_last_tids=held).partition_table)
    assert again.cell_state(missed, 1) == CellState.OUT_OF_DATE


def test_a_committed_transaction_is_applied_and_published_to_subscribers(
    running: Peer, storages: list[FakeStorage]
) -> None:
    call = running.master.Subscribe(master_pb2.SubscribeRequest(client_id="watcher"))
    events = rpc.stream(call)
    try:
        assert next(events).WhichOneof("event") == "start_tid"
        assert next(events).WhichOneof("event") == "partition_table"
        ttid = running.begin()
        tid = running.finish_one_oid(ttid)
        event = next(events)
        assert event.WhichOneof("event") == "invalidations"
        [invalidation] = event.invalidations.items
        assert (invalidation.tid, invalidation.ttid) == (tid, ttid)
        assert list(invalidation.oids) == [p64(u64(ttid) % 4)]
        assert running.info().last_tid == tid
        # Published at the decision: the Commit orders reach the participants after.
        wait_until(lambda: all(storage.committed_tids() == [tid] for storage in storages),
                   what="every participant applies it")
    finally:
        call.cancel()


def test_a_client_whose_subscription_ends_has_its_transactions_aborted(
    running: Peer, storages: list[FakeStorage]
) -> None:
    call = running.master.Subscribe(master_pb2.SubscribeRequest(client_id="leaver"))
    next(rpc.stream(call))
    ttid = running.begin("leaver")
    call.cancel()
    for storage in storages:
        wait_until(lambda storage=storage: storage.aborted_ttids() == [ttid], what="abort on every node")
    with pytest.raises(errors.UnknownTransaction):
        running.finish_one_oid(ttid, client_id="leaver")


def test_a_returning_node_is_told_its_decided_transactions_and_completes_them(
    running: Peer, storages: list[FakeStorage]
) -> None:
    for storage in storages:
        storage.fail_with = errors.Unavailable("unreachable")
    ttid = running.begin()
    finishing = in_background(running.finish_one_oid, ttid)
    # The decision is published (Finish answers) once Raft commits it, before any
    # node applies it: the nodes' votes already made it durable on them.
    tid = finishing.result(timeout=30)
    wait_until(lambda: all(running.table().node(n).state == NodeState.DOWN for n in (1, 2)), what="both down")
    assert all(storage.committed_tids() == [] for storage in storages)
    keeper = next(n for n in (1, 2) if running.table().cell_state(u64(ttid) % 4, n) == CellState.UP_TO_DATE)
    storages[keeper - 1].fail_with = None
    reply = running.register(storages[keeper - 1].address, node_id=keeper, pending_ttids=[ttid, p64(12345)])
    assert [(d.ttid, d.tid) for d in reply.decided] == [(ttid, tid)]
    session = running.master.StorageSession(master_pb2.StorageSessionRequest(node_id=keeper))
    try:
        next(rpc.stream(session))
        wait_until(lambda: storages[keeper - 1].committed_tids() == [tid], what="the returning node applies it")
    finally:
        session.cancel()


@pytest.mark.parametrize(
    "method, request_message, error, message",
    [
        pytest.param("Begin", master_pb2.BeginRequest(), errors.BadRequest, "client_id", id="begin-without-client"),
        pytest.param("Finish", master_pb2.FinishRequest(client_id="c", ttid=b"x", partitions=[0]),
                     errors.BadRequest, "ttid must be 8 bytes", id="finish-short-ttid"),
        pytest.param("Finish", master_pb2.FinishRequest(client_id="c", ttid=p64(4), partitions=[0]),
                     errors.UnknownTransaction, "unknown to this master", id="finish-unknown-ttid"),
        pytest.param("Abort", master_pb2.AbortRequest(client_id="c", ttid=b"\0" * 7, node_ids=[1]),
                     errors.BadRequest, "ttid must be 8 bytes", id="abort-short-ttid"),
        pytest.param("RegisterStorage", master_pb2.RegisterStorageRequest(cluster_name=CLUSTER),
                     errors.BadRequest, "address", id="register-without-address"),
    ],
)
def test_bad_unary_requests_are_refused(
    running: Peer, method: str, request_message: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        rpc.call(getattr(running.master, method), request_message, timeout=5)


@pytest.mark.parametrize(
    "method, request_message, error, message",
    [
        pytest.param("Subscribe", master_pb2.SubscribeRequest(), errors.BadRequest, "client_id",
                     id="subscribe-without-client"),
        pytest.param("Subscribe", master_pb2.SubscribeRequest(client_id="c", since_tid=b"abc"),
                     errors.BadRequest, "since_tid must be 8 bytes", id="subscribe-short-since"),
        pytest.param("StorageSession", master_pb2.StorageSessionRequest(node_id=99), errors.WrongCluster,
                     "node 99 is not known", id="session-unknown-node"),
    ],
)
def test_bad_stream_requests_are_refused(
    running: Peer, method: str, request_message: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        next(rpc.stream(getattr(running.master, method)(request_message, timeout=5)))


def test_a_restarted_master_keeps_its_cluster_and_refuses_another_clusters_data(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "master"
    node = MasterNode(make_config(directory, autostart=1))
    node.start()
    peer = Peer(node.address)
    peer.register("127.0.0.1:7001")
    rpc.call(peer.master.NewOids, master_pb2.NewOidsRequest(count=100))
    peer.close()
    node.stop()
    node.stop()  # stopping twice is harmless
    again = MasterNode(make_config(directory, autostart=1, num_partitions=8))
    again.start()
    try:
        assert u64(again.state.last_oid) == 100
        assert again.state.num_partitions == 4, "partitions are fixed when the cluster is created"
        assert again.term == 2
    finally:
        again.stop()
    stranger = MasterNode(make_config(directory, rpc=rpc.RpcConfig(cluster_name="other")))
    with pytest.raises(errors.WrongCluster, match=f"belongs to cluster '{CLUSTER}', not 'other'"):
        stranger.start()
    assert stranger.address == ""


def test_stop_ends_every_stream(master: MasterNode, running: Peer) -> None:
    subscription = rpc.stream(running.master.Subscribe(master_pb2.SubscribeRequest(client_id="c")))
    session = rpc.stream(running.master.StorageSession(master_pb2.StorageSessionRequest(node_id=1)))
    next(subscription)
    next(session)
    master.stop()
    assert [e.WhichOneof("event") for e in subscription] == ["partition_table"]
    remaining = []
    try:
        remaining = [e.WhichOneof("event") for e in session]
    except errors.Unavailable:
        pass  # the stream may also be cut by the server's shutdown
    assert set(remaining) <= {"heartbeat"}
