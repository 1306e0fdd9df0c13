"""The Storage service through a real gRPC server on 127.0.0.1 (no master).

The node runs standalone: the test gives it its node id and partition table
directly, as its master session would.  Partition table used (4 partitions,
``partition(oid) = oid % 4``), for node 1:

    partition 0: UP_TO_DATE on node 1
    partition 1: OUT_OF_DATE on node 1 (writes, no reads)
    partition 2: node 2 only
    partition 3: FEEDING on node 1
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neostore import errors, rpc
from neostore.ids import MAX_TID, ZERO_TID, p64, tid_repr
from neostore.partition_table import Cell, CellState, NodeState, PartitionTable, StorageNodeInfo
from neostore.protocol import common_pb2, storage_pb2, storage_pb2_grpc
from neostore.records import Record
from neostore.storage_node.node import StorageConfig, StorageNode

CLUSTER = "servicer-test"
NODE_ID = 1
OID = p64(4)            # partition 0, up to date
OUT_OF_DATE_OID = p64(1)
FOREIGN_OID = p64(2)
FEEDING_OID = p64(3)
OLD, YOUNG = p64(1000), p64(2000)   # both in partition 0


def table(address: str, version: int = 1) -> PartitionTable:
    return PartitionTable(
        version=version,
        num_partitions=4,
        num_replicas=1,
        rows=(
            (Cell(NODE_ID, CellState.UP_TO_DATE),),
            (Cell(NODE_ID, CellState.OUT_OF_DATE),),
            (Cell(2, CellState.UP_TO_DATE),),
            (Cell(NODE_ID, CellState.FEEDING),),
        ),
        nodes=(
            StorageNodeInfo(NODE_ID, address, NodeState.RUNNING),
            StorageNodeInfo(2, "127.0.0.1:1", NodeState.RUNNING),
        ),
    )


@pytest.fixture
def node(tmp_path: pathlib.Path) -> Iterator[StorageNode]:
    config = StorageConfig(
        rpc=rpc.RpcConfig(CLUSTER), masters=[], data_dir=str(tmp_path / "data"),
        map_size=16 * 2**20, lock_timeout=5,
    )
    started = StorageNode(config)
    started.start()
    started.adopt_node_id(NODE_ID)
    started.set_partition_table(table(started.address))
    yield started
    started.stop()


@pytest.fixture
def stub(node: StorageNode) -> Iterator[storage_pb2_grpc.StorageStub]:
    channel = rpc.make_channel(rpc.RpcConfig(CLUSTER), node.address)
    yield storage_pb2_grpc.StorageStub(channel)
    channel.close()


def object_store(oid: bytes, serial: bytes, data: bytes | None = None, **fields: object) -> storage_pb2.ObjectStore:
    message = storage_pb2.ObjectStore(oid=oid, serial=serial, **fields)  # type: ignore[arg-type]
    if data is not None:
        Record.pack(data).to_proto(message.record)
    return message


def store(
    stub: storage_pb2_grpc.StorageStub, ttid: bytes, *objects: storage_pb2.ObjectStore
) -> list[storage_pb2.Conflict]:
    reply = rpc.call(stub.Store, storage_pb2.StoreRequest(ttid=ttid, objects=list(objects)), timeout=10)
    return list(reply.conflicts)


def commit(stub: storage_pb2_grpc.StorageStub, ttid: bytes, tid: bytes, *objects: storage_pb2.ObjectStore,
           transaction: common_pb2.TransactionInfo | None = None) -> None:
    assert store(stub, ttid, *objects) == []
    vote = storage_pb2.VoteRequest(ttid=ttid)
    if transaction is not None:
        vote.transaction.CopyFrom(transaction)
        vote.has_transaction = True
    rpc.call(stub.Vote, vote, timeout=10)
    commit_order(stub, ttid, tid, term=1)


def commit_order(stub: storage_pb2_grpc.StorageStub, ttid: bytes, tid: bytes, term: int = 0) -> None:
    """The master's order to apply ``ttid`` as ``tid``, alone in its Commit;
    raises the error that refused it."""
    request = storage_pb2.CommitRequest(term=term, decisions=[common_pb2.Decision(ttid=ttid, tid=tid)])
    [result] = rpc.call(stub.Commit, request, timeout=10).results
    if result.error:
        raise errors.from_name(result.error, result.message)


def load_before(stub: storage_pb2_grpc.StorageStub, oid: bytes, before: bytes = MAX_TID) -> storage_pb2.LoadReply:
    reply: storage_pb2.LoadReply = rpc.call(
        stub.LoadBefore, storage_pb2.LoadBeforeRequest(oid=oid, before_tid=before), timeout=10)
    return reply


def test_store_vote_commit_then_load(stub: storage_pb2_grpc.StorageStub) -> None:
    info = common_pb2.TransactionInfo(user=b"alice", description=b"create", extension=b"ext", oids=[OID])
    commit(stub, OLD, p64(1100), object_store(OID, ZERO_TID, b"hello" * 30), transaction=info)

    reply = load_before(stub, OID)
    assert reply.status == storage_pb2.LoadReply.FOUND
    assert Record.from_proto(reply.record).unpack() == b"hello" * 30
    assert (reply.serial, reply.next_serial, reply.data_serial) == (p64(1100), b"", b"")

    serial_reply = rpc.call(stub.LoadSerial, storage_pb2.LoadSerialRequest(oid=OID, serial=p64(1100)))
    assert Record.from_proto(serial_reply.record).unpack() == b"hello" * 30

    before_creation = load_before(stub, OID, p64(1100))
    assert before_creation.status == storage_pb2.LoadReply.NO_REVISION
    assert (before_creation.serial, before_creation.next_serial) == (b"", p64(1100))

    history = rpc.call(stub.History, storage_pb2.HistoryRequest(oid=OID, size=5))
    assert [revision.tid for revision in history.revisions] == [p64(1100)]

    listed = rpc.call(stub.ListTransactions, storage_pb2.ListTransactionsRequest(partitions=[0]))
    [transaction] = listed.transactions
    assert (transaction.tid, transaction.user, transaction.description, transaction.extension) == (
        p64(1100), b"alice", b"create", b"ext")
    assert list(transaction.oids) == [OID]

    stats = rpc.call(stub.GetStats, storage_pb2.StatsRequest(partitions=[0]))
    assert (stats.object_count, stats.last_tid) == (1, p64(1100))
    assert stats.size > 0
    all_readable = rpc.call(stub.GetStats, storage_pb2.StatsRequest())
    assert all_readable.object_count == 1


def test_undo_records_through_the_service(stub: storage_pb2_grpc.StorageStub) -> None:
    commit(stub, p64(1000), p64(1100), object_store(OID, ZERO_TID, b"one"))
    commit(stub, p64(1200), p64(1300), object_store(OID, p64(1100), b"two"))
    commit(stub, p64(1400), p64(1500), object_store(OID, p64(1300), data_serial=p64(1100)))
    undone = load_before(stub, OID)
    assert Record.from_proto(undone.record).unpack() == b"one"
    assert (undone.serial, undone.data_serial) == (p64(1500), p64(1100))

    commit(stub, p64(1600), p64(1700), object_store(OID, p64(1500), undone_creation=True))
    deleted = load_before(stub, OID)
    assert deleted.status == storage_pb2.LoadReply.NO_REVISION
    assert deleted.serial == p64(1700)
    with pytest.raises(errors.NotFound):
        rpc.call(stub.LoadSerial, storage_pb2.LoadSerialRequest(oid=OID, serial=p64(1700)))
    with pytest.raises(errors.NotFound):
        load_before(stub, p64(8))


def test_conflicts_are_reported_and_resolved_by_storing_again(stub: storage_pb2_grpc.StorageStub) -> None:
    commit(stub, p64(1000), p64(1100), object_store(OID, ZERO_TID, b"base"))
    [conflict] = store(stub, p64(1200), object_store(OID, ZERO_TID, b"stale"))
    assert (conflict.oid, conflict.serial, conflict.committed_serial, conflict.read_conflict) == (
        OID, ZERO_TID, p64(1100), False)
    [read_conflict] = store(stub, p64(1200), object_store(FEEDING_OID, p64(5), check_only=True))
    assert read_conflict.read_conflict
    assert store(stub, p64(1200), object_store(OID, p64(1100), b"resolved"),
                 object_store(FEEDING_OID, ZERO_TID, check_only=True)) == []


def test_wound_wait_across_two_transactions(stub: storage_pb2_grpc.StorageStub) -> None:
    # A younger store waits for the older holder and gets the lock after it.
    assert store(stub, OLD, object_store(OID, ZERO_TID, b"old")) == []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store, stub, YOUNG, object_store(OID, ZERO_TID, b"young"))
        time.sleep(0.2)
        assert not waiting.done()
        rpc.call(stub.Abort, storage_pb2.AbortTransactionRequest(ttid=OLD))
        assert waiting.result(timeout=5) == []

    # An older store wounds the younger holder while it is storing
    # (fresh TTIDs: aborted ones are refused).
    assert store(stub, p64(1500), object_store(OID, ZERO_TID, b"older")) == []
    with pytest.raises(errors.LockDied, match="wounded by older transaction"):
        rpc.call(stub.Vote, storage_pb2.VoteRequest(ttid=YOUNG))
    rpc.call(stub.Abort, storage_pb2.AbortTransactionRequest(ttid=YOUNG))
    rpc.call(stub.Abort, storage_pb2.AbortTransactionRequest(ttid=p64(1500)))

    # ...but waits for a younger one that voted.
    older, younger = p64(2400), p64(3000)
    assert store(stub, younger, object_store(OID, ZERO_TID, b"young")) == []
    rpc.call(stub.Vote, storage_pb2.VoteRequest(ttid=younger))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store, stub, older, object_store(OID, ZERO_TID, b"old"))
        time.sleep(0.2)
        assert not waiting.done()
        commit_order(stub, younger, p64(3100))
        [conflict] = waiting.result(timeout=5)
    assert conflict.committed_serial == p64(3100)


def test_only_a_cell_marked_corrupted_can_be_emptied(node: StorageNode, stub: storage_pb2_grpc.StorageStub) -> None:
    commit(stub, p64(1000), p64(1100), object_store(OID, ZERO_TID, b"kept"))
    # neoctl check --repair empties CORRUPTED cells only: a healthy one is refused, naming its state.
    with pytest.raises(errors.NotOwner, match="partition 0 has no CORRUPTED cell on storage node 1 "
                                              r"\(its cell is UP_TO_DATE\)"):
        rpc.call(stub.DropCorruptedCell, storage_pb2.DropCorruptedCellRequest(partition=0, table_version=1))
    assert load_before(stub, OID).status == storage_pb2.LoadReply.FOUND  # nothing deleted
    corrupted = table(node.address, version=2)
    corrupted = corrupted.with_rows(((Cell(NODE_ID, CellState.CORRUPTED),),) + corrupted.rows[1:])
    node.set_partition_table(corrupted)
    reply = rpc.call(stub.DropCorruptedCell, storage_pb2.DropCorruptedCellRequest(partition=0, table_version=2))
    assert reply.records == 1  # the object revision (no transaction metadata was voted)
    assert not node.database.holds_partition(0)


def test_out_of_date_cell_takes_writes_but_serves_no_reads(stub: storage_pb2_grpc.StorageStub) -> None:
    commit(stub, p64(1000), p64(1100), object_store(OUT_OF_DATE_OID, ZERO_TID, b"replica"))
    with pytest.raises(errors.NotOwner, match="partition 1 has no readable cell on storage node 1"):
        load_before(stub, OUT_OF_DATE_OID)
    commit(stub, p64(1200), p64(1300), object_store(FEEDING_OID, ZERO_TID, b"feeding"))
    assert load_before(stub, FEEDING_OID).status == storage_pb2.LoadReply.FOUND


@pytest.mark.parametrize(
    "request_factory, method",
    [
        pytest.param(lambda: storage_pb2.LoadBeforeRequest(oid=b"short", before_tid=MAX_TID), "LoadBefore",
                     id="short-oid"),
        pytest.param(lambda: storage_pb2.LoadBeforeRequest(oid=OID, before_tid=b""), "LoadBefore",
                     id="empty-before-tid"),
        pytest.param(lambda: storage_pb2.LoadSerialRequest(oid=OID, serial=b"123456789"), "LoadSerial",
                     id="long-serial"),
        pytest.param(lambda: storage_pb2.StoreRequest(ttid=b"x", objects=[]), "Store", id="short-ttid"),
        pytest.param(lambda: storage_pb2.StoreRequest(ttid=OLD, objects=[
            storage_pb2.ObjectStore(oid=OID, serial=b"")]), "Store", id="missing-serial"),
        pytest.param(lambda: storage_pb2.CommitRequest(decisions=[common_pb2.Decision(ttid=OLD, tid=b"")]),
                     "Commit", id="missing-tid"),
        pytest.param(lambda: storage_pb2.ListTransactionsRequest(partitions=[7]), "ListTransactions",
                     id="partition-out-of-range"),
    ],
)
def test_malformed_requests_are_bad_requests(
    stub: storage_pb2_grpc.StorageStub, request_factory: Callable[[], Any], method: str
) -> None:
    with pytest.raises(errors.BadRequest):
        rpc.call(getattr(stub, method), request_factory(), timeout=10)


def test_partition_of_another_node_is_not_owned(stub: storage_pb2_grpc.StorageStub) -> None:
    with pytest.raises(errors.NotOwner) as raised:
        store(stub, OLD, object_store(FOREIGN_OID, ZERO_TID, b"x"))
    message = str(raised.value)
    assert "partition 2" in message and "storage node 1" in message and "version 1" in message
    with pytest.raises(errors.NotOwner):
        load_before(stub, FOREIGN_OID)
    with pytest.raises(errors.NotOwner):
        rpc.call(stub.GetStats, storage_pb2.StatsRequest(partitions=[2]))


def test_a_read_during_which_the_cell_moved_away_is_not_trusted(
    node: StorageNode, stub: storage_pb2_grpc.StorageStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the table no longer lists the cell, the node may be deleting its
    data: a read that began before the new table arrived could have seen it
    half deleted, so it answers NotOwner and the client reads elsewhere."""
    commit(stub, OLD, p64(1100), object_store(OID, ZERO_TID, b"hello"))
    database = node.database
    versions = iter(range(2, 100))

    def move_cell_away() -> None:
        held = table(node.address, version=next(versions))
        node.set_partition_table(dataclasses.replace(
            held, rows=((Cell(2, CellState.UP_TO_DATE),),) + held.rows[1:]))

    for name in ("load_before", "scan_range"):
        def read_as_the_cell_moves_away(*args: Any, _real: Any = getattr(database, name)) -> Any:  # noqa: B008 - bound now, on purpose
            result = _real(*args)
            move_cell_away()
            return result
        monkeypatch.setattr(database, name, read_as_the_cell_moves_away)
    with pytest.raises(errors.NotOwner, match="partition 0"):
        load_before(stub, OID)
    assert node.set_partition_table(table(node.address, version=next(versions)))  # the cell back
    range_request = storage_pb2.RangeRequest(partition=0, kind=storage_pb2.OBJECTS, max_tid=MAX_TID)
    with pytest.raises(errors.NotOwner, match="partition 0"):
        rpc.call(stub.ChecksumRange, range_request, timeout=10)


def test_a_bad_object_refuses_the_whole_store_before_locking(stub: storage_pb2_grpc.StorageStub) -> None:
    with pytest.raises(errors.NotOwner):
        store(stub, YOUNG, object_store(OID, ZERO_TID, b"ok"), object_store(FOREIGN_OID, ZERO_TID, b"x"))
    assert store(stub, OLD, object_store(OID, ZERO_TID, b"old")) == []


def test_store_after_vote_is_a_bad_request(stub: storage_pb2_grpc.StorageStub) -> None:
    store(stub, OLD, object_store(OID, ZERO_TID, b"x"))
    rpc.call(stub.Vote, storage_pb2.VoteRequest(ttid=OLD))
    with pytest.raises(errors.BadRequest, match="after its vote"):
        store(stub, OLD, object_store(p64(8), ZERO_TID, b"y"))


def test_checksum_mismatch_is_refused_as_corruption(stub: storage_pb2_grpc.StorageStub) -> None:
    message = storage_pb2.ObjectStore(oid=OID, serial=ZERO_TID)
    message.record.data = b"payload"
    message.record.checksum = 1
    with pytest.raises(errors.Corrupted, match="fails its checksum"):
        store(stub, OLD, message)


def test_commit_of_an_unknown_transaction(stub: storage_pb2_grpc.StorageStub) -> None:
    with pytest.raises(errors.UnknownTransaction):
        commit_order(stub, OLD, p64(1100))


def test_stale_master_term_is_refused(stub: storage_pb2_grpc.StorageStub) -> None:
    store(stub, OLD, object_store(OID, ZERO_TID, b"x"))
    rpc.call(stub.Vote, storage_pb2.VoteRequest(ttid=OLD))
    rpc.call(stub.Abort, storage_pb2.AbortTransactionRequest(ttid=p64(999), term=7))
    with pytest.raises(errors.BadRequest, match="stale master term 6"):
        commit_order(stub, OLD, p64(1100), term=6)
    commit_order(stub, OLD, p64(1100), term=7)


def test_wrong_cluster_name_is_refused_by_the_interceptor(node: StorageNode) -> None:
    channel = rpc.make_channel(rpc.RpcConfig("another-cluster"), node.address)
    try:
        with pytest.raises(errors.WrongCluster, match="another-cluster"):
            rpc.call(storage_pb2_grpc.StorageStub(channel).LoadBefore,
                     storage_pb2.LoadBeforeRequest(oid=OID, before_tid=MAX_TID), timeout=10)
    finally:
        channel.close()


def test_reads_and_writes_wait_for_a_partition_table(tmp_path: pathlib.Path) -> None:
    config = StorageConfig(rpc=rpc.RpcConfig(CLUSTER), masters=[], data_dir=str(tmp_path / "data"),
                           map_size=16 * 2**20)
    fresh = StorageNode(config)
    fresh.start()
    channel = rpc.make_channel(rpc.RpcConfig(CLUSTER), fresh.address)
    try:
        fresh_stub = storage_pb2_grpc.StorageStub(channel)
        with pytest.raises(errors.Unavailable, match="no partition table"):
            load_before(fresh_stub, OID)
        with pytest.raises(errors.Unavailable):
            store(fresh_stub, OLD, object_store(OID, ZERO_TID, b"x"))
        rpc.call(fresh_stub.Abort, storage_pb2.AbortTransactionRequest(ttid=OLD))
    finally:
        channel.close()
        fresh.stop()


def test_older_table_versions_are_ignored(node: StorageNode) -> None:
    assert node.set_partition_table(table(node.address, version=3))
    assert not node.set_partition_table(table(node.address, version=2))
    current = node.partition_table
    assert current is not None and current.version == 3


def test_a_vote_carries_stores_and_does_not_vote_on_a_conflict(stub: storage_pb2_grpc.StorageStub) -> None:
    """A small transaction needs one Vote per node: its stores travel with it."""
    info = common_pb2.TransactionInfo(user=b"u", oids=[OID])
    vote = storage_pb2.VoteRequest(ttid=OLD, objects=[object_store(OID, ZERO_TID, b"v1")], has_transaction=True,
                                   metadata_partition=0)
    vote.transaction.CopyFrom(info)
    assert list(rpc.call(stub.Vote, vote, timeout=10).conflicts) == []
    commit_order(stub, OLD, p64(1100))
    assert Record.from_proto(load_before(stub, OID).record).unpack() == b"v1"
    stale = storage_pb2.VoteRequest(ttid=p64(1200), objects=[object_store(OID, ZERO_TID, b"stale")])
    [conflict] = rpc.call(stub.Vote, stale, timeout=10).conflicts
    assert (conflict.oid, conflict.committed_serial) == (OID, p64(1100))
    with pytest.raises(errors.BadRequest, match="has not voted"):  # it did not vote
        commit_order(stub, p64(1200), p64(1300))
    resolved = storage_pb2.VoteRequest(ttid=p64(1200), objects=[object_store(OID, p64(1100), b"v2")])
    assert list(rpc.call(stub.Vote, resolved, timeout=10).conflicts) == []
    commit_order(stub, p64(1200), p64(1300))
    assert Record.from_proto(load_before(stub, OID).record).unpack() == b"v2"


def test_load_before_many_answers_each_object_as_load_before_does(stub: storage_pb2_grpc.StorageStub) -> None:
    commit(stub, p64(1000), p64(1100), object_store(OID, ZERO_TID, b"v1"))
    commit(stub, p64(1200), p64(1300), object_store(OID, p64(1100), b"v2"))
    later = p64(8)  # partition 0 too, created after the snapshot
    commit(stub, p64(1400), p64(1500), object_store(later, ZERO_TID, b"later"))
    never = p64(12)  # partition 0, never written
    asked = [OID, later, never, FOREIGN_OID, OUT_OF_DATE_OID, OID]
    request = storage_pb2.LoadBeforeManyRequest(oids=asked, before_tid=p64(1300))
    replies = list(rpc.call(stub.LoadBeforeMany, request, timeout=10).replies)
    assert len(replies) == len(asked)
    assert replies[0] == replies[5] == load_before(stub, OID, p64(1300))
    assert Record.from_proto(replies[0].record).unpack() == b"v1"
    assert (replies[0].serial, replies[0].next_serial) == (p64(1100), p64(1300))
    assert replies[1] == load_before(stub, later, p64(1300))
    assert replies[1].status == storage_pb2.LoadReply.NO_REVISION
    # Not for this node to answer: no revision here, a foreign or unreadable cell.
    assert [r.status for r in replies[2:5]] == [storage_pb2.LoadReply.STATUS_UNSPECIFIED] * 3
    with pytest.raises(errors.BadRequest, match=r"oids\[1\] must be 8 bytes"):
        rpc.call(stub.LoadBeforeMany, storage_pb2.LoadBeforeManyRequest(oids=[OID, b"short"], before_tid=MAX_TID),
                 timeout=10)
    with pytest.raises(errors.BadRequest, match="at most 1000 oids"):
        rpc.call(stub.LoadBeforeMany, storage_pb2.LoadBeforeManyRequest(oids=[OID] * 1001, before_tid=MAX_TID),
                 timeout=10)


def test_a_vote_with_a_lock_timeout_waits_that_long_at_most_for_a_voted_holder(
        stub: storage_pb2_grpc.StorageStub) -> None:
    """A vote sent to several nodes at once (out of node order) bounds its
    lock waits: LockTimeout, nothing voted, and the holder keeps the lock."""
    holder = storage_pb2.VoteRequest(ttid=OLD, objects=[object_store(OID, ZERO_TID, b"holder")])
    rpc.call(stub.Vote, holder, timeout=10)
    hurried = storage_pb2.VoteRequest(ttid=YOUNG, objects=[object_store(OID, ZERO_TID, b"hurried")],
                                      lock_timeout=0.2)
    with pytest.raises(errors.LockTimeout, match=f"locked by transaction {tid_repr(OLD)}"):
        # Not the node's own 5 s: that would miss the call's deadline.
        rpc.call(stub.Vote, hurried, timeout=3)
    with pytest.raises(errors.BadRequest, match="has not voted"):
        commit_order(stub, YOUNG, p64(2100))
    commit_order(stub, OLD, p64(1100))
    assert Record.from_proto(load_before(stub, OID).record).unpack() == b"holder"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(errors.BadRequest, match="lock_timeout must be a finite number of seconds"):
            rpc.call(stub.Vote, storage_pb2.VoteRequest(ttid=p64(3000), lock_timeout=bad), timeout=10)


def test_a_load_waits_for_a_transaction_voted_on_its_object(stub: storage_pb2_grpc.StorageStub) -> None:
    """The masters publish a transaction before their Commit order arrives:
    a load of what it wrote waits for it to be applied."""
    commit(stub, OLD, p64(1100), object_store(OID, ZERO_TID, b"old"))
    vote = storage_pb2.VoteRequest(ttid=p64(1200), objects=[object_store(OID, p64(1100), b"new")])
    rpc.call(stub.Vote, vote, timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_before, stub, OID)
        time.sleep(0.2)
        assert not loading.done()
        commit_order(stub, p64(1200), p64(1300))
        reply = loading.result(timeout=10)
    assert Record.from_proto(reply.record).unpack() == b"new" and reply.serial == p64(1300)


def test_requests_that_do_not_decode_are_refused_with_one_log_line(
        node: StorageNode, stub: storage_pb2_grpc.StorageStub, caplog: pytest.LogCaptureFixture) -> None:
    """gRPC logged each as an ERROR with a 5-line traceback."""
    import logging

    import grpc

    rpc.malformed_request_log.reset()
    channel = grpc.insecure_channel(node.address)
    try:
        abort = channel.unary_unary("/neostore.Storage/Abort")
        with caplog.at_level(logging.INFO, logger="grpc._common"):
            for _ in range(3):
                with pytest.raises(grpc.RpcError):
                    abort(b"\xff\xff\xff garbage", timeout=10, metadata=((rpc.CLUSTER_METADATA_KEY, CLUSTER),))
    finally:
        channel.close()
    logged = [record for record in caplog.records if record.name == "grpc._common"]
    assert [(r.levelname, r.exc_info) for r in logged] == [("WARNING", None)]
    assert "refused a request that does not decode (Error parsing message" in logged[0].getMessage()
    rpc.call(stub.GetStats, storage_pb2.StatsRequest(), timeout=10)  # the node serves on
