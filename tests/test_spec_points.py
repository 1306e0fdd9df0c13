"""Points of ZODB's storage contract other implementations got wrong,
and bad input: each gets a clear error and changes nothing.

One cluster (threads in this process, real gRPC and LMDB) is shared by the
module: every test works on oids of its own.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
import transaction
from ZODB import POSException
from ZODB.Connection import TransactionMetaData
from ZODB.utils import maxtid, p64, u64, z64

from neostore import errors, rpc
from neostore.client import NeoStorage
from neostore.partition_table import CellState, PartitionTable
from neostore.protocol import common_pb2, master_pb2_grpc, storage_pb2, storage_pb2_grpc

from harness import ThreadCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ThreadCluster(str(tmp_path_factory.mktemp("cluster"))) as running:
        yield running


@pytest.fixture
def storage(cluster: ThreadCluster) -> Any:
    client = cluster.client()
    yield client
    client.close()


def commit(storage: NeoStorage, writes: dict[bytes, tuple[bytes, bytes]]) -> bytes:
    """Store {oid: (serial, data)} in one transaction; return its TID."""
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for oid, (serial, data) in writes.items():
        storage.store(oid, serial, data, "", txn)
    storage.tpc_vote(txn)
    return storage.tpc_finish(txn)


def test_load_before_is_none_before_the_object_existed(storage: NeoStorage) -> None:
    other, oid = storage.new_oid(), storage.new_oid()
    before = commit(storage, {other: (z64, b"other")})
    created = commit(storage, {oid: (z64, b"first")})
    # As of `before`, the oid did not exist yet: None, not POSKeyError
    # (NEO raises here: ZODB issue #318).
    assert storage.loadBefore(oid, p64(u64(before) + 1)) is None
    assert storage.loadBefore(oid, created) is None
    assert storage.loadBefore(oid, p64(u64(created) + 1)) == (b"first", created, None)


def test_load_before_is_none_once_the_creation_was_undone(storage: NeoStorage) -> None:
    oid = storage.new_oid()
    created = commit(storage, {oid: (z64, b"made")})
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.undo(created, txn)
    storage.tpc_vote(txn)
    undone = storage.tpc_finish(txn)
    assert storage.loadBefore(oid, maxtid) is None
    assert storage.loadBefore(oid, undone) == (b"made", created, undone)


def test_load_before_raises_poskeyerror_only_for_an_oid_never_held(storage: NeoStorage) -> None:
    never = p64(2**62 + 12345)
    with pytest.raises(POSException.POSKeyError):
        storage.loadBefore(never, maxtid)
    with pytest.raises(POSException.POSKeyError):
        storage.loadSerial(never, p64(1))


def test_db_hears_of_a_tid_before_last_transaction_reports_it(cluster: ThreadCluster) -> None:
    writer, reader = cluster.client(), cluster.client()
    seen: list[tuple[bytes, bytes]] = []
    done = threading.Event()

    class RecordingDB:
        transform_record_data = untransform_record_data = staticmethod(lambda data: data)

        def invalidate(self, tid: bytes, oids: Any) -> None:
            # Called on the stream thread; lastTransaction must not be there yet.
            seen.append((tid, reader.lastTransaction()))
            done.set()

        def invalidateCache(self) -> None:
            pass

    reader.registerDB(RecordingDB())
    tid = commit(writer, {writer.new_oid(): (z64, b"x")})
    assert done.wait(10)
    invalidated, last_at_that_time = seen[-1]
    assert invalidated == tid
    assert last_at_that_time < tid
    reader.sync()
    assert reader.lastTransaction() >= tid
    writer.close()
    reader.close()


def test_tpc_finish_calls_back_with_the_tid_it_returns(storage: NeoStorage) -> None:
    called: list[bytes] = []
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.store(storage.new_oid(), z64, b"data", "", txn)
    assert storage.tpc_vote(txn) in (None, [])
    tid = storage.tpc_finish(txn, called.append)
    assert called == [tid]
    assert storage.lastTransaction() == tid


def test_store_outside_a_transaction_is_refused(storage: NeoStorage) -> None:
    with pytest.raises(POSException.StorageTransactionError):
        storage.store(storage.new_oid(), z64, b"x", "", TransactionMetaData())


def test_a_conflict_names_the_oid_and_leaves_the_object_unchanged(storage: NeoStorage) -> None:
    oid = storage.new_oid()
    first = commit(storage, {oid: (z64, b"one")})
    commit(storage, {oid: (first, b"two")})
    with pytest.raises(POSException.ConflictError) as raised:
        commit(storage, {oid: (first, b"three")})
    assert raised.value.oid == oid
    storage.tpc_abort(TransactionMetaData())
    assert storage.loadBefore(oid, maxtid)[0] == b"two"


def test_wrong_cluster_name_at_connect_is_refused_without_naming_the_cluster(cluster: ThreadCluster) -> None:
    with pytest.raises(POSException.StorageError, match="wrong cluster name 'other'") as refused:
        NeoStorage(cluster.masters, "other", connect_timeout=5)
    assert "test-cluster" not in str(refused.value)  # a stranger does not learn the name


def _storage_stub(cluster: ThreadCluster, config: rpc.RpcConfig) -> storage_pb2_grpc.StorageStub:
    return storage_pb2_grpc.StorageStub(rpc.make_channel(config, cluster.storages[0].address))


def test_a_malformed_request_is_refused_as_bad_request(cluster: ThreadCluster) -> None:
    stub = _storage_stub(cluster, cluster.rpc)
    with pytest.raises(errors.BadRequest, match="oid"):
        rpc.call(stub.LoadBefore, storage_pb2.LoadBeforeRequest(oid=b"abc", before_tid=maxtid), timeout=5)


def test_a_request_for_a_partition_the_node_does_not_hold_is_refused(cluster: ThreadCluster) -> None:
    node = cluster.storages[0]
    stub = _storage_stub(cluster, cluster.rpc)
    master = master_pb2_grpc.MasterStub(rpc.make_channel(cluster.rpc, cluster.master.address))
    pt = PartitionTable.from_proto(rpc.call(master.GetPartitionTable, common_pb2.Empty(), timeout=5))
    oid = next(p64(i) for i in range(100)  # an oid whose partition is elsewhere
               if node.node_id not in [c.node_id for c in pt.cells(pt.partition_of(p64(i)))])
    with pytest.raises(errors.NotOwner, match="partition"):
        rpc.call(stub.LoadBefore, storage_pb2.LoadBeforeRequest(oid=oid, before_tid=maxtid), timeout=5)


def test_an_oversized_message_is_refused_before_it_is_read(cluster: ThreadCluster) -> None:
    small = rpc.RpcConfig(cluster_name=cluster.name, max_message_bytes=64 * 1024 * 1024)
    stub = _storage_stub(cluster, small)
    request = storage_pb2.StoreRequest(ttid=p64(1), objects=[storage_pb2.ObjectStore(
        oid=p64(1), serial=z64, record=common_pb2.DataRecord(data=b"x" * (65 * 1024 * 1024)))])
    with pytest.raises((errors.TooLarge, grpc.RpcError)):
        rpc.call(stub.Store, request, timeout=30)


def test_a_call_with_another_cluster_name_is_refused(cluster: ThreadCluster) -> None:
    stub = _storage_stub(cluster, rpc.RpcConfig(cluster_name="intruder"))
    with pytest.raises(errors.WrongCluster, match="intruder"):
        rpc.call(stub.GetStats, storage_pb2.StatsRequest(partitions=[0]), timeout=5)


def test_read_only_client_refuses_writes_but_reads(cluster: ThreadCluster, storage: NeoStorage) -> None:
    oid = storage.new_oid()
    tid = commit(storage, {oid: (z64, b"kept")})
    reader = cluster.client(read_only=True)
    assert reader.isReadOnly()
    with pytest.raises(POSException.ReadOnlyError):
        reader.new_oid()
    with pytest.raises(POSException.ReadOnlyError):
        reader.tpc_begin(TransactionMetaData())
    assert reader.loadBefore(oid, maxtid) == (b"kept", tid, None)
    reader.close()


def test_conflict_resolution_across_two_clients(cluster: ThreadCluster) -> None:
    import ZODB
    from BTrees.Length import Length

    # server_sync: begin() makes each client see every commit so far.
    first, second = ZODB.DB(cluster.client(server_sync=True)), ZODB.DB(cluster.client(server_sync=True))
    with first.transaction() as conn:
        conn.root()["counter"] = Length(0)
    tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
    c1, c2 = first.open(tm1), second.open(tm2)
    tm1.begin()  # begin() syncs the connection with the cluster, as
    tm2.begin()  # well-behaved ZODB applications do (server_sync: up to now)
    c1.root()["counter"].change(1)
    c2.root()["counter"].change(10)
    tm1.commit()
    tm2.commit()  # conflicts, resolved by Length._p_resolveConflict
    c1.close()
    c2.close()
    with first.transaction() as conn:
        assert conn.root()["counter"].value == 11
    first.close()
    second.close()


def test_restore_under_a_tid_at_or_below_the_last_is_refused(storage: NeoStorage) -> None:
    last = commit(storage, {storage.new_oid(): (z64, b"x")})
    txn = TransactionMetaData()
    with pytest.raises(POSException.StorageError, match="above the last committed TID"):
        storage.tpc_begin(txn, last)
    # The refused transaction left nothing behind: a normal one commits.
    assert commit(storage, {storage.new_oid(): (z64, b"y")}) > last


def test_a_replica_lost_before_the_vote_does_not_fail_the_commit(tmp_path: Any) -> None:
    with ThreadCluster(str(tmp_path / "lost")) as lost_cluster:
        storage = lost_cluster.client()
        master = master_pb2_grpc.MasterStub(rpc.make_channel(lost_cluster.rpc, lost_cluster.master.address))
        table = PartitionTable.from_proto(rpc.call(master.GetPartitionTable, common_pb2.Empty(), timeout=5))
        oid = storage.new_oid()
        partition = table.partition_of(oid)
        victim_id = table.cells(partition)[0].node_id
        txn = TransactionMetaData()
        storage.tpc_begin(txn)
        storage.store(oid, z64, b"kept", "", txn)
        victim = next(s for s in lost_cluster.storages if s.node_id == victim_id)
        victim.stop()  # the stores go out at vote: one replica is gone by then
        storage.tpc_vote(txn)
        tid = storage.tpc_finish(txn)
        assert storage.loadBefore(oid, maxtid) == (b"kept", tid, None)
        after = PartitionTable.from_proto(rpc.call(master.GetPartitionTable, common_pb2.Empty(), timeout=5))
        assert after.cell_state(partition, victim_id) is not CellState.UP_TO_DATE
        assert victim_id not in after.readable_nodes(partition)
