"""The storage node's LMDB database: loads, undo records, 2PC steps, durability."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from neostore import errors
from neostore.ids import MAX_TID, p64
from neostore.records import Record
from neostore.storage_node import layout
from neostore.storage_node.database import (
    Database,
    LoadStatus,
    PendingMetadata,
    PendingObject,
    Stats,
)
from neostore.storage_node.layout import ReplicationPosition, StoredObject, TransactionMetadata

CLUSTER = "test-cluster"
MAP_SIZE = 16 * 2**20
OID = p64(7)
OTHER_OID = p64(8)
PARTITION = 3


def data(text: bytes) -> StoredObject:
    return StoredObject.from_record(Record.pack(text, compress=False))


@pytest.fixture
def database(tmp_path: pathlib.Path) -> Iterator[Database]:
    opened = Database(str(tmp_path / "data"), CLUSTER, map_size=MAP_SIZE)
    yield opened
    opened.close()


def commit_revision(database: Database, tid: int, stored: StoredObject, oid: bytes = OID,
                    partition: int = PARTITION) -> bytes:
    """Commit one revision under TID ``tid`` (TTID ``tid + 10**6``)."""
    ttid = p64(tid + 10**6)
    database.write_pending(ttid, [PendingObject(partition, oid, stored)])
    assert database.commit(ttid, p64(tid))
    return p64(tid)


def unpacked(record: Record | None) -> bytes:
    assert record is not None
    return record.unpack()


# -- load_before ---------------------------------------------------------------


def test_load_before_returns_the_revision_current_before_the_tid(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    second = commit_revision(database, 20, data(b"two"))

    result = database.load_before(PARTITION, OID, p64(15))
    assert (result.status, unpacked(result.record)) == (LoadStatus.FOUND, b"one")
    assert (result.serial, result.next_serial, result.data_serial) == (first, second, None)

    current = database.load_before(PARTITION, OID, MAX_TID)
    assert (unpacked(current.record), current.serial, current.next_serial) == (b"two", second, None)


def test_load_before_is_strictly_before(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    second = commit_revision(database, 20, data(b"two"))
    result = database.load_before(PARTITION, OID, second)
    assert (result.serial, result.next_serial) == (first, second)


def test_load_before_creation_is_no_revision(database: Database) -> None:
    created = commit_revision(database, 10, data(b"one"))
    for before in (p64(0), p64(5), created):
        result = database.load_before(PARTITION, OID, before)
        assert result.status is LoadStatus.NO_REVISION
        assert result.serial is None
        assert result.next_serial == created


def test_load_before_of_an_unknown_oid_is_not_found(database: Database) -> None:
    commit_revision(database, 10, data(b"one"))
    with pytest.raises(errors.NotFound):
        database.load_before(PARTITION, OTHER_OID, MAX_TID)
    with pytest.raises(errors.NotFound):
        database.load_before(PARTITION + 1, OID, MAX_TID)


def test_load_before_after_undone_creation_is_no_revision_not_an_error(database: Database) -> None:
    """ZODB issue #318: a deleted object is "no revision", not POSKeyError."""
    created = commit_revision(database, 10, data(b"one"))
    deleted = commit_revision(database, 20, StoredObject.deletion(previous_tid=created))

    result = database.load_before(PARTITION, OID, MAX_TID)
    assert result.status is LoadStatus.NO_REVISION
    assert (result.serial, result.next_serial, result.record) == (deleted, None, None)

    before_deletion = database.load_before(PARTITION, OID, deleted)
    assert before_deletion.status is LoadStatus.FOUND
    assert unpacked(before_deletion.record) == b"one"
    assert before_deletion.next_serial == deleted


def test_undo_back_pointer_loads_the_data_it_points_to(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    second = commit_revision(database, 20, data(b"two"))
    undo = commit_revision(database, 30, StoredObject.back_pointer(first, previous_tid=second))

    result = database.load_before(PARTITION, OID, MAX_TID)
    assert unpacked(result.record) == b"one"
    assert (result.serial, result.data_serial, result.next_serial) == (undo, first, None)

    by_serial = database.load_serial(PARTITION, OID, undo)
    assert unpacked(by_serial.record) == b"one"
    assert by_serial.data_serial == first


def test_back_pointer_chains_are_followed_to_the_data(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    commit_revision(database, 20, data(b"two"))
    undo = commit_revision(database, 30, StoredObject.back_pointer(first))
    redo_of_undo = commit_revision(database, 40, StoredObject.back_pointer(undo))
    result = database.load_serial(PARTITION, OID, redo_of_undo)
    assert unpacked(result.record) == b"one"
    assert result.data_serial == first


def test_redoing_an_undone_creation_brings_the_object_back(database: Database) -> None:
    created = commit_revision(database, 10, data(b"one"))
    commit_revision(database, 20, StoredObject.deletion(previous_tid=created))
    commit_revision(database, 30, StoredObject.back_pointer(created))
    result = database.load_before(PARTITION, OID, MAX_TID)
    assert result.status is LoadStatus.FOUND
    assert unpacked(result.record) == b"one"


def test_back_pointer_to_a_missing_revision_is_corruption(database: Database) -> None:
    commit_revision(database, 30, StoredObject.back_pointer(p64(5)))
    with pytest.raises(errors.Corrupted, match="does not hold"):
        database.load_before(PARTITION, OID, MAX_TID)


def test_checksum_failure_on_load_is_corruption(database: Database) -> None:
    commit_revision(database, 10, StoredObject(b"data", False, 12345))
    with pytest.raises(errors.Corrupted, match="checksum"):
        database.load_before(PARTITION, OID, MAX_TID)


# -- load_serial and last_serial ---------------------------------------------------


def test_load_serial_finds_exact_revisions_only(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    second = commit_revision(database, 20, data(b"two"))
    result = database.load_serial(PARTITION, OID, first)
    assert (unpacked(result.record), result.serial, result.next_serial) == (b"one", first, second)
    with pytest.raises(errors.NotFound, match="no revision"):
        database.load_serial(PARTITION, OID, p64(15))
    with pytest.raises(errors.NotFound):
        database.load_serial(PARTITION, OTHER_OID, first)


def test_load_serial_of_an_undone_creation_is_not_found(database: Database) -> None:
    """As FileStorage: loadSerial of the deleting revision raises POSKeyError."""
    created = commit_revision(database, 10, data(b"one"))
    deleted = commit_revision(database, 20, StoredObject.deletion(previous_tid=created))
    with pytest.raises(errors.NotFound, match="undid its creation"):
        database.load_serial(PARTITION, OID, deleted)


def test_last_serial_is_the_latest_revision_of_any_kind(database: Database) -> None:
    assert database.last_serial(PARTITION, OID) is None
    created = commit_revision(database, 10, data(b"one"))
    assert database.last_serial(PARTITION, OID) == created
    deleted = commit_revision(database, 20, StoredObject.deletion(previous_tid=created))
    assert database.last_serial(PARTITION, OID) == deleted
    assert database.last_serial(PARTITION, OTHER_OID) is None


# -- two-phase commit steps ----------------------------------------------------


def test_commit_moves_pending_under_the_final_tid(database: Database) -> None:
    ttid, tid = p64(500), p64(600)
    metadata = TransactionMetadata(b"alice", b"first", b"ext", (OID,))
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"one"))],
                           PendingMetadata(PARTITION, metadata))
    assert database.pending_ttids() == [ttid]
    with pytest.raises(errors.NotFound):
        database.load_before(PARTITION, OID, MAX_TID)

    assert database.commit(ttid, tid) is True
    assert database.pending_ttids() == []
    assert database.load_before(PARTITION, OID, MAX_TID).serial == tid
    [record] = database.list_transactions([PARTITION])
    assert (record.tid, record.metadata) == (tid, metadata)
    assert database.applied_tid(ttid) == tid
    assert database.last_tid() == tid
    assert database.partition_last_tids() == {PARTITION: tid}


def test_a_restore_batch_commits_what_it_carries_under_each_tid(database: Database) -> None:
    """A restore batch (an import): revisions and metadata of earlier
    transactions ride with the vote and land under their own TIDs, in the
    one write of the commit; the object counts follow every revision."""
    ttid, first, second, tid = p64(500), p64(610), p64(620), p64(630)
    database.write_pending(
        ttid,
        [PendingObject(PARTITION, OID, data(b"one"), first), PendingObject(PARTITION, OID, data(b"two"), second),
         PendingObject(PARTITION, OTHER_OID, StoredObject.deletion(), second),
         PendingObject(PARTITION, OTHER_OID, data(b"back"), first), PendingObject(PARTITION, OID, data(b"three"))],
        PendingMetadata(PARTITION, TransactionMetadata(b"u", b"own", oids=(OID,))),
        [PendingMetadata(PARTITION, TransactionMetadata(b"u", b"first", oids=(OID, OTHER_OID)), first),
         PendingMetadata(PARTITION, TransactionMetadata(b"u", b"second", oids=(OID, OTHER_OID)), second)])
    assert database.commit(ttid, tid) is True
    assert [revision.tid for revision in database.history(PARTITION, OID)] == [tid, second, first]
    assert unpacked(database.load_serial(PARTITION, OID, second).record) == b"two"
    assert database.load_before(PARTITION, OTHER_OID, tid).status is LoadStatus.NO_REVISION  # deleted at second
    assert unpacked(database.load_before(PARTITION, OTHER_OID, second).record) == b"back"
    assert [(r.tid, r.metadata.description) for r in database.list_transactions([PARTITION])] == [
        (first, b"first"), (second, b"second"), (tid, b"own")]
    assert database.stats([PARTITION]).object_count == 1  # OTHER_OID deleted
    assert database.partition_last_tids() == {PARTITION: tid} and database.last_tid() == tid
    assert database.pending_ttids() == []


def test_commit_is_idempotent(database: Database) -> None:
    ttid, tid = p64(500), p64(600)
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"one"))])
    assert database.commit(ttid, tid) is True
    assert database.commit(ttid, tid) is False
    assert database.history(PARTITION, OID) == [database.history(PARTITION, OID)[0]]
    assert database.stats([PARTITION]).object_count == 1


def test_commit_of_nothing_pending_changes_nothing(database: Database) -> None:
    assert database.commit(p64(1), p64(2)) is False
    assert database.last_tid() is None
    assert database.applied_tid(p64(1)) is None


def test_abort_drops_pending(database: Database) -> None:
    ttid = p64(500)
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"one"))])
    assert database.has_pending(ttid)
    assert database.abort(ttid) is True
    assert database.abort(ttid) is False
    assert database.pending_ttids() == []
    assert database.commit(ttid, p64(600)) is False


def test_write_pending_replaces_an_earlier_vote(database: Database) -> None:
    ttid = p64(500)
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"one")),
                                  PendingObject(PARTITION, OTHER_OID, data(b"x"))])
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"two"))])
    database.commit(ttid, p64(600))
    assert unpacked(database.load_before(PARTITION, OID, MAX_TID).record) == b"two"
    with pytest.raises(errors.NotFound):
        database.load_before(PARTITION, OTHER_OID, MAX_TID)


def test_pending_ttids_lists_each_transaction_once_in_order(database: Database) -> None:
    for ttid in (p64(9), p64(3), p64(5)):
        database.write_pending(ttid, [PendingObject(0, OID, data(b"a")), PendingObject(1, OTHER_OID, data(b"b"))],
                               PendingMetadata(2, TransactionMetadata()))
    assert database.pending_ttids() == [p64(3), p64(5), p64(9)]


def test_votes_and_commits_survive_reopening(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "data")
    ttid, tid = p64(500), p64(600)
    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    database.write_pending(ttid, [PendingObject(PARTITION, OID, data(b"durable"))],
                           PendingMetadata(PARTITION, TransactionMetadata(b"u")))
    database.close()

    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    assert database.pending_ttids() == [ttid]
    assert database.commit(ttid, tid)
    database.close()

    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    try:
        assert database.pending_ttids() == []
        assert unpacked(database.load_before(PARTITION, OID, MAX_TID).record) == b"durable"
        assert database.applied_tid(ttid) == tid
        assert database.last_tid() == tid
    finally:
        database.close()


# -- history, transactions, stats ------------------------------------------------


def test_history_is_newest_first_with_data_sizes(database: Database) -> None:
    first = commit_revision(database, 10, data(b"one"))
    second = commit_revision(database, 20, data(b"three"))
    undo = commit_revision(database, 30, StoredObject.back_pointer(first))
    deleted = commit_revision(database, 40, StoredObject.deletion())
    history = database.history(PARTITION, OID)
    assert [(r.tid, r.size) for r in history] == [(deleted, 0), (undo, 3), (second, 5), (first, 3)]
    assert [r.tid for r in database.history(PARTITION, OID, 2)] == [deleted, undo]
    with pytest.raises(errors.NotFound):
        database.history(PARTITION, OTHER_OID)


def test_list_transactions_merges_partitions_in_tid_order(database: Database) -> None:
    for tid in range(1, 9):
        ttid = p64(1000 + tid)
        database.write_pending(ttid, [], PendingMetadata(tid % 3, TransactionMetadata(b"user%d" % tid)))
        database.commit(ttid, p64(tid))

    def tids(**arguments: object) -> list[int]:
        records = database.list_transactions(**arguments)  # type: ignore[arg-type]
        return [int.from_bytes(r.tid, "big") for r in records]

    assert tids(partitions=[0, 1, 2]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert tids(partitions=[1, 2]) == [1, 2, 4, 5, 7, 8]
    assert tids(partitions=[0, 1, 2], descending=True) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert tids(partitions=[0, 1, 2], min_tid=p64(3), max_tid=p64(6)) == [3, 4, 5, 6]
    assert tids(partitions=[0, 1, 2], min_tid=p64(3), max_tid=p64(6), descending=True) == [6, 5, 4, 3]
    assert tids(partitions=[0, 1, 2], limit=3, descending=True) == [8, 7, 6]
    assert tids(partitions=[0, 1, 2], min_tid=p64(5), limit=2) == [5, 6]
    assert tids(partitions=[]) == []


def test_stats_count_objects_whose_current_revision_has_data(database: Database) -> None:
    created = commit_revision(database, 10, data(b"one"))
    commit_revision(database, 11, data(b"other"), oid=OTHER_OID)
    commit_revision(database, 12, data(b"elsewhere"), oid=OID, partition=PARTITION + 1)
    stats = database.stats([PARTITION])
    assert (stats.object_count, stats.size, stats.last_tid) == (2, 8, p64(11))

    deleted = commit_revision(database, 20, StoredObject.deletion(previous_tid=created))
    assert database.stats([PARTITION]).object_count == 1
    commit_revision(database, 30, StoredObject.back_pointer(created, previous_tid=deleted))
    assert database.stats([PARTITION]).object_count == 2
    both = database.stats([PARTITION, PARTITION + 1])
    assert (both.object_count, both.size, both.last_tid) == (3, 17, p64(30))
    assert database.stats([]).last_tid is None


# -- dropping a partition -----------------------------------------------------------


def _partition_records(database: Database, partition: int) -> int:
    return sum(len(database.scan_range(partition, kind)[0])
               for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS))


def _fill_partition(database: Database) -> None:
    for index in range(5):
        ttid = p64(1000 + index)
        database.write_pending(ttid, [PendingObject(PARTITION, p64(100 + index), data(b"x" * 10))],
                               PendingMetadata(PARTITION, TransactionMetadata(b"", b"", b"", (p64(100 + index),))))
        assert database.commit(ttid, p64(10 + index))
    commit_revision(database, 50, data(b"elsewhere"), partition=PARTITION + 1)


def test_drop_partition_deletes_its_records_statistics_and_position(database: Database) -> None:
    _fill_partition(database)
    database.set_replication_position(PARTITION, ReplicationPosition(p64(12), layout.RANGE_OBJECTS, b""))
    assert database.drop_partition(PARTITION, batch=3) == 10  # 5 transactions, 5 objects, 4 batches
    assert not database.holds_partition(PARTITION) and _partition_records(database, PARTITION) == 0
    assert database.stats([PARTITION]) == Stats(0, 0, None)
    assert database.replication_position(PARTITION) is None
    assert database.stats([PARTITION + 1]).object_count == 1  # other partitions untouched


def test_drop_partition_stops_once_the_partition_may_not_be_dropped_any_more(database: Database) -> None:
    """The partition came back to the node between two batches: what is left
    stays, the statistics describe it, and the catch-up position is gone (it
    may point past records deleted)."""
    _fill_partition(database)
    database.set_replication_position(PARTITION, ReplicationPosition(p64(12), layout.RANGE_OBJECTS, b""))
    answers = iter([True, False])
    assert database.drop_partition(PARTITION, batch=3, may_drop=lambda: next(answers)) == 3
    assert _partition_records(database, PARTITION) == 7
    objects, _ = database.scan_range(PARTITION, layout.RANGE_OBJECTS)
    assert database.stats([PARTITION]) == Stats(5, 50, p64(14))
    assert len(objects) == 5
    assert database.replication_position(PARTITION) is None


def test_drop_partition_asked_not_to_drop_changes_nothing(database: Database) -> None:
    _fill_partition(database)
    position = ReplicationPosition(p64(12), layout.RANGE_OBJECTS, b"")
    database.set_replication_position(PARTITION, position)
    assert database.drop_partition(PARTITION, may_drop=lambda: False) == 0
    assert _partition_records(database, PARTITION) == 10
    assert database.replication_position(PARTITION) == position


# -- failures --------------------------------------------------------------------


def test_full_map_raises_storage_full_and_keeps_what_was_committed(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "small")
    database = Database(path, CLUSTER, map_size=2**20)
    try:
        commit_revision(database, 10, data(b"kept"))
        big = StoredObject.from_record(Record.pack(bytes(range(256)) * 8192, compress=False))
        with pytest.raises(errors.StorageFull, match=path):
            database.write_pending(p64(99), [PendingObject(PARTITION, OTHER_OID, big)])
        assert database.pending_ttids() == []
        assert unpacked(database.load_before(PARTITION, OID, MAX_TID).record) == b"kept"
        commit_revision(database, 20, data(b"still writable"))
    finally:
        database.close()
    reopened = Database(path, CLUSTER, map_size=2**20)
    try:
        assert unpacked(reopened.load_before(PARTITION, OID, MAX_TID).record) == b"still writable"
    finally:
        reopened.close()


def test_data_directory_of_another_cluster_is_refused(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "data")
    Database(path, "first", map_size=MAP_SIZE).close()
    with pytest.raises(errors.WrongCluster) as raised:
        Database(path, "second", map_size=MAP_SIZE)
    message = str(raised.value)
    assert "'first'" in message and "'second'" in message and path in message
    Database(path, "first", map_size=MAP_SIZE).close()


def test_data_directory_in_use_is_refused(database: Database) -> None:
    with pytest.raises(errors.Unavailable, match="in use"):
        Database(database.path, CLUSTER, map_size=MAP_SIZE)


def test_meta_values_persist(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "data")
    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    assert (database.node_id(), database.term()) == (0, 0)
    database.set_node_id(4)
    database.set_term(9)
    database.close()
    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    try:
        assert (database.node_id(), database.term()) == (4, 9)
    finally:
        database.close()


def test_closed_database_answers_unavailable(tmp_path: pathlib.Path) -> None:
    database = Database(str(tmp_path / "data"), CLUSTER, map_size=MAP_SIZE)
    database.close()
    database.close()
    with pytest.raises(errors.Unavailable):
        database.last_tid()


def test_a_truncated_data_file_is_refused_with_a_clear_error_instead_of_a_crash(tmp_path: pathlib.Path) -> None:
    """LMDB maps the file: a read past the end of a file cut short kills the
    process with SIGBUS.  The file is checked against LMDB's meta pages first."""
    import os

    path = str(tmp_path / "data")
    database = Database(path, CLUSTER, map_size=MAP_SIZE)
    for tid in range(1, 200):
        commit_revision(database, tid, data(b"x" * 2000), oid=p64(tid))
    database.close()
    Database(path, CLUSTER, map_size=MAP_SIZE).close()  # whole: it opens
    file = os.path.join(path, "data.mdb")
    os.truncate(file, os.path.getsize(file) // 2)
    with pytest.raises(errors.Corrupted, match=r"data.mdb is truncated: \d+ bytes, but its pages in use need \d+"):
        Database(path, CLUSTER, map_size=MAP_SIZE)
    os.truncate(file, 100)  # not even a meta page
    with pytest.raises(errors.Corrupted, match="is not an LMDB data file"):
        Database(path, CLUSTER, map_size=MAP_SIZE)
