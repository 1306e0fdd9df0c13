"""Reference read-ahead: a cold load brings along the objects its record
refers to, so that walking a tree of objects costs a few round trips, not
one per object; never newer than the reader's snapshot, never an object a
read would have had to wait for."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest
import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from test_prefetch import read_snapshots, start_writer
from ZODB.utils import p64

from neostore import errors
from neostore.client.cache import ObjectCache
from neostore.records import Record
from neostore.storage_node import read_ahead
from neostore.storage_node.database import LoadResult, LoadStatus

from harness import ThreadCluster

# -- the node's walk, alone ------------------------------------------------------


def _pickle_referring_to(*oids: bytes) -> bytes:
    """A ZODB record (class pickle, state pickle) whose state refers to ``oids``."""
    import io
    import pickle

    class _Ref:
        def __init__(self, oid: bytes) -> None:
            self.oid = oid

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, 3)
    pickler.persistent_id = lambda obj: (obj.oid, None) if isinstance(obj, _Ref) else None  # type: ignore[method-assign]
    pickler.dump((PersistentMapping, None))
    pickler.dump({"data": {i: _Ref(oid) for i, oid in enumerate(oids)}})
    return buffer.getvalue()


def _found(data: bytes) -> LoadResult:
    return LoadResult(LoadStatus.FOUND, p64(1), None, Record.pack(data, compress=False))


def test_the_walk_goes_breadth_first_within_the_budget_and_skips_what_the_node_does_not_answer() -> None:
    # 1 -> 2, 3, 4; 2 -> 5; 3 -> 6, 1 (a cycle); 4 is not answered here.
    graph = {1: [2, 3, 4], 2: [5], 3: [6, 1], 5: [], 6: []}
    records = {p64(o): _found(_pickle_referring_to(*map(p64, refs))) for o, refs in graph.items()}
    asked: list[list[bytes]] = []

    def load(oids: list[bytes]) -> dict[bytes, LoadResult]:
        asked.append(oids)
        return {oid: records[oid] for oid in oids if oid in records}

    taken = read_ahead.walk(records[p64(1)].record, p64(1), 1 << 20, load)  # type: ignore[arg-type]
    assert [oid for oid, _ in taken] == [p64(2), p64(3), p64(5), p64(6)]
    assert asked == [[p64(2), p64(3), p64(4)], [p64(5), p64(6)]], "one batch per level, each oid looked at once"

    sizes = [len(result.record.data) for _, result in taken]  # type: ignore[union-attr]
    budget = sizes[0] + sizes[1] + sizes[2] - 1
    within = read_ahead.walk(records[p64(1)].record, p64(1), budget, load)  # type: ignore[arg-type]
    assert [oid for oid, _ in within] == [p64(2), p64(3)], "stops before the object that passes the budget"
    assert read_ahead.walk(Record.pack(b"not a pickle"), p64(1), 1 << 20, load) == []
    with pytest.raises(errors.BadRequest):
        read_ahead.check_budget(read_ahead.MAX_BUDGET + 1)


# -- the client's cache ----------------------------------------------------------------


def test_an_invalidation_processed_while_a_read_ahead_travels_ends_what_it_brings() -> None:
    cache = ObjectCache(1 << 20)
    a, b, c = p64(1), p64(2), p64(3)
    token = cache.begin_read_ahead()
    cache.invalidate([a], p64(7))  # committed after the node read a (as current), before the answer came
    cache.end_read_ahead(token, [(a, b"a5", p64(5), None), (b, b"b5", p64(5), None), (c, b"c3", p64(3), p64(4))])
    assert cache.load_before(a, p64(9), last_seen=p64(8)) is None, "a was replaced at 7"
    assert cache.load_before(a, p64(7), last_seen=p64(8)) == (b"a5", p64(5), p64(7))
    assert cache.load_before(b, p64(9), last_seen=p64(8)) == (b"b5", p64(5), None)
    assert cache.load_before(c, p64(4), last_seen=p64(8)) == (b"c3", p64(3), p64(4))
    stats = cache.read_ahead_stats()
    assert (stats.objects, stats.used_objects, stats.bytes, stats.used_bytes) == (3, 3, 6, 6)

    token = cache.begin_read_ahead()
    cache.clear()
    cache.end_read_ahead(token, [(p64(4), b"d", p64(5), None)])
    assert cache.load_before(p64(4), p64(6), last_seen=p64(8)) is None, "a clear() drops what was in flight"

    token = cache.begin_read_ahead()
    cache.end_read_ahead(token, [(p64(5), b"e", p64(5), None)])
    assert cache.read_ahead_stats().objects - cache.read_ahead_stats().used_objects == 1, "brought, never read"


def test_a_read_ahead_cohort_hands_each_sibling_to_a_follow_up_until_what_it_refers_to_came() -> None:
    cache = ObjectCache(1 << 20)
    cohort = cache.new_cohort()
    for i in range(5):
        cache.begin_load(p64(i))
        cache.end_load(p64(i), b"d%d" % i, p64(1), None, cohort)
    first_use: list[tuple[int, int]] = []
    assert cache.load_before(p64(0), p64(9), p64(8), first_use) == (b"d0", p64(1), None)
    assert first_use == [(cohort, 0)], "read for the first time: its cohort and place"
    members = cache.cohort_members(cohort, 0, 3)
    assert [data for _, data in members] == [b"d0", b"d1", b"d2"]
    assert [data for _, data in cache.unread_ahead([p64(1), p64(3), p64(9)], p64(9), p64(8))] == [b"d1", b"d3"]
    cache.mark_followed(key for key, _ in members[:2])  # what d0 and d1 refer to came; d2's did not
    first_use.clear()
    cache.load_before(p64(1), p64(9), p64(8), first_use)
    assert first_use == [], "its references came with a sibling's follow-up: nothing to ask"
    cache.load_before(p64(2), p64(9), p64(8), first_use)
    assert first_use == [(cohort, 2)]
    assert [data for _, data in cache.cohort_members(cohort, 2, 10)] == [b"d2", b"d3", b"d4"]
    first_use.clear()
    cache.load_before(p64(2), p64(9), p64(8), first_use)
    assert first_use == [], "read before: no follow-up again"


# -- on a cluster ---------------------------------------------------------------------------

OBJECTS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadCluster]:
    root = tmp_path_factory.mktemp("read-ahead")
    with ThreadCluster(str(pathlib.Path(root)), num_storages=3, num_partitions=6, num_replicas=2) as running:
        yield running


def _populate(cluster: ThreadCluster, key: str, value: object) -> None:
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as connection:
            connection.root()[key] = value
    finally:
        db.close()


def test_a_cold_walk_of_a_mapping_costs_a_call_per_node_not_per_object(cluster: ThreadCluster) -> None:
    _populate(cluster, "flat", PersistentList(PersistentMapping(v=i) for i in range(OBJECTS)))
    for read_ahead_bytes, most_calls in ((64 * 1024, 1 + 1 + 3), (0, None)):
        storage = cluster.client(read_ahead=read_ahead_bytes)
        db = ZODB.DB(storage)
        try:
            with db.transaction() as connection:
                calls = storage.load_calls
                items = connection.root()["flat"]
                assert [item["v"] for item in items] == list(range(OBJECTS))
                made = storage.load_calls - calls
        finally:
            db.close()
        if most_calls is None:
            assert made == OBJECTS + 1, "without read-ahead: the list, then each object"
        else:
            # The list's own load (bringing what its node holds), then one
            # LoadBeforeMany per node for the rest.
            assert made <= most_calls, made
            stats = storage.read_ahead_stats()
            assert stats.objects >= stats.used_objects >= OBJECTS, stats


def test_an_oobtree_walk_reads_every_value_with_far_fewer_calls(cluster: ThreadCluster) -> None:
    tree = OOBTree()
    for i in range(3000):
        tree[f"key{i:06d}"] = PersistentMapping(v=i)
    _populate(cluster, "tree", tree)
    storage = cluster.client()
    db = ZODB.DB(storage)
    try:
        with db.transaction() as connection:
            calls = storage.load_calls
            assert sum(value["v"] for value in connection.root()["tree"].values()) == sum(range(3000))
            made = storage.load_calls - calls
    finally:
        db.close()
    assert made < 3000 / 5, made


def test_read_ahead_never_shows_a_reader_data_newer_than_its_snapshot_under_concurrent_commits(
        cluster: ThreadCluster) -> None:
    """A writer sets every object to the same new value in each of its
    transactions; readers with cold caches walk them all in each of theirs:
    each must see one value throughout (its snapshot's), never lower than
    the one it saw before."""
    count = 60
    _populate(cluster, "race", PersistentList(PersistentMapping(v=0) for _ in range(count)))
    stop = threading.Event()
    failures: list[BaseException] = []
    writer = start_writer(cluster, "race", 300, stop, failures)
    storage = cluster.client()
    db = ZODB.DB(storage, cache_size=0)  # nothing kept by the connection: every walk reads the client cache
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)

        def between(rounds: int) -> None:
            connection.cacheMinimize()
            if rounds % 5 == 0:
                storage._cache.clear()  # cold again: the next walk loads, with read-ahead

        seen = read_snapshots(tm, lambda: {item["v"] for item in connection.root()["race"]}, failures, between)
    finally:
        stop.set()
        writer.join()
        db.close()
    assert not failures, failures
    assert seen == sorted(seen), "a later snapshot never shows older values"
    assert storage.read_ahead_stats().used_objects > 0, "read-ahead took part"


def test_an_object_a_voted_transaction_may_change_never_comes_along(cluster: ThreadCluster) -> None:
    """While a transaction is voted and not decided, a read of the objects
    it changed waits on the node: read-ahead leaves them out instead."""
    from ZODB.Connection import TransactionMetaData
    from ZODB.utils import maxtid

    from neostore import rpc
    from neostore.client import prefetch
    from neostore.ids import partition_of
    from neostore.protocol import storage_pb2

    _populate(cluster, "held", PersistentList(PersistentMapping(v=i) for i in range(30)))
    reader = cluster.client(read_ahead=0)
    db = ZODB.DB(reader)
    try:
        with db.transaction() as connection:
            held = connection.root()["held"]
            parent = held._p_oid
            children = [item._p_oid for item in held]
    finally:
        db.close()

    probe = cluster.client(read_ahead=0)

    def brought() -> set[bytes]:
        table = probe._cluster.table
        request = storage_pb2.LoadBeforeRequest(oid=parent, before_tid=maxtid, read_ahead_bytes=1 << 20,
                                                table_version=table.version)
        reply = probe._cluster.read_call(partition_of(parent, table.num_partitions), "LoadBefore", request)
        return {extra.oid for extra in reply.read_ahead}

    assert brought() & set(children), "the node brings the children it holds"
    writer = cluster.client()
    metadata = TransactionMetaData()
    writer.tpc_begin(metadata)
    for oid in children:
        data, serial, _ = writer.loadBefore(oid, maxtid)
        writer.store(oid, serial, data, "", metadata)
    writer.tpc_vote(metadata)
    try:
        assert not brought() & set(children), "a child voted on, undecided, came along"
        # The follow-up of read-ahead (LoadBeforeMany with no_wait) leaves them out at once too.
        _, calls = prefetch.load_many_calls(probe._cluster, children, maxtid, 5.0, no_wait=True)
        outcomes = rpc.call_all(calls)
        assert all(isinstance(outcome, storage_pb2.LoadManyReply) for outcome in outcomes), outcomes
        assert all(reply.status == storage_pb2.LoadReply.STATUS_UNSPECIFIED
                   for outcome in outcomes for reply in outcome.replies)
    finally:
        writer.tpc_abort(metadata)
    assert brought() & set(children)


def test_a_negative_read_ahead_budget_is_refused_before_connecting() -> None:
    from neostore.client import NeoStorage

    with pytest.raises(ValueError, match="read_ahead must be 0 or more bytes, not -1"):
        NeoStorage(["127.0.0.1:1"], "nowhere", read_ahead=-1)
