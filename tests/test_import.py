"""Bringing an existing database in: ``copyTransactionsFrom`` (IStorageRestoreable).

A FileStorage is built with the history real databases have: BTrees
buckets splitting, several users, descriptions and extensions, an undo, an
undone creation, an object deleted by ``deleteObject`` (what zc.zodbdgc
does), and a pack (its transactions get status "p").  It is copied into a
real cluster (one master, three storage nodes, two replicas) with ZODB's
own ``copyTransactionsFrom``, which calls ``tpc_begin(txn, tid, status)``
and ``restore`` for every record.  Then every transaction's TID, status and
metadata, and every record's data (``loadSerial``, or its absence for a
deletion), are checked against the source, and new objects committed to
the imported database must not collide with imported ones (the masters'
oid counter follows the restored oids).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
import ZODB
import ZODB.BaseStorage
import ZODB.FileStorage
from BTrees.OOBTree import OOBTree
from persistent import Persistent
from persistent.mapping import PersistentMapping
from ZODB import POSException
from ZODB.Connection import TransactionMetaData
from ZODB.serialize import referencesf
from ZODB.utils import get_pickle_metadata, p64, u64

from neostore.ids import ZERO_TID

from harness import ThreadCluster

NUM_TRANSACTIONS = 300


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path / "cluster")) as running:
        yield running


def _commit(db: ZODB.DB, change: Any, user: str = "", note: str = "", **extension: Any) -> None:
    tm = transaction.TransactionManager()
    connection = db.open(tm)
    try:
        with tm as txn:
            if user:
                txn.setUser(user)
            if note:
                txn.note(note)
            for key, value in extension.items():
                txn.setExtendedInfo(key, value)
            change(connection.root())
    finally:
        connection.close()


def _undo_last(storage: ZODB.FileStorage.FileStorage, db: ZODB.DB) -> None:
    tm = transaction.TransactionManager()
    with tm:
        db.undo(storage.undoInfo()[0]["id"], tm.get())


def _build_source(path: str) -> ZODB.FileStorage.FileStorage:
    storage = ZODB.FileStorage.FileStorage(path, create=True)
    db = ZODB.DB(storage)

    def setup(root: Any) -> None:
        root["tree"] = OOBTree()
        root["docs"] = PersistentMapping()

    _commit(db, setup, user="admin", note="initial setup", origin="test")
    for i in range(NUM_TRANSACTIONS // 2):
        def change(root: Any, i: int = i) -> None:
            for j in range(20):  # buckets split: many records per transaction
                root["tree"][f"key-{i:04d}-{j:02d}"] = i * j
            root["docs"][f"doc-{i % 25}"] = PersistentMapping(version=i)
        _commit(db, change, user=f"user{i % 3}", note=f"edit {i}", request=f"/doc/{i}", count=i)

    # A pack: earlier transactions get status "p" (history kept, gc off).
    time.sleep(0.01)
    storage.pack(time.time(), referencesf, gc=False)
    time.sleep(0.01)
    for i in range(NUM_TRANSACTIONS // 2, NUM_TRANSACTIONS):
        _commit(db, lambda root, i=i: root["tree"].__setitem__(f"late-{i}", i), user="late", note=f"late {i}")
    # An undone creation: the object exists in one transaction, not after.
    _commit(db, lambda root: root.__setitem__("short-lived", PersistentMapping(x=1)), note="create")
    _undo_last(storage, db)
    # An undo of a change (a back-pointer record in the FileStorage).
    _commit(db, lambda root: root["docs"].__setitem__("doc-0", PersistentMapping(version=-1)), note="mistake")
    _undo_last(storage, db)
    # deleteObject, as a garbage collector does it.
    connection = db.open()
    doomed = connection.root()["docs"]["doc-1"]
    doomed_oid, doomed_serial = doomed._p_oid, doomed._p_serial
    connection.close()
    _commit(db, lambda root: root["docs"].__delitem__("doc-1"), note="unlink doc-1")
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.deleteObject(doomed_oid, doomed_serial, txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)

    db.close()
    return ZODB.FileStorage.FileStorage(path, read_only=True)


def _transactions(storage: Any) -> list[tuple[Any, list[Any]]]:
    return [(txn, list(txn)) for txn in storage.iterator()]


def _copy_in_small_batches(source: Any, destination: Any) -> None:
    """Restore batches of at most 7 records: many batches, most carrying
    several transactions that write the same objects."""
    from neostore import importer

    batches = []
    importer.restore_all(destination, importer.read_transactions(source, None), batch_records=7,
                         done=batches.append)
    assert len(batches) > NUM_TRANSACTIONS // 10
    assert sum(len(batch) > 1 for batch in batches) > NUM_TRANSACTIONS // 10, "few batches carry transactions"


COPIES = {
    # What zodbconvert calls: restore batches of the default size.
    "copyTransactionsFrom": lambda source, destination: destination.copyTransactionsFrom(source),
    # IStorageRestoreable one transaction at a time (tpc_begin(txn, tid, status), restore).
    "restore": lambda source, destination: ZODB.BaseStorage.copy(source, destination),
    "small restore batches": _copy_in_small_batches,
}


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_copy_transactions_from_a_filestorage_keeps_every_transaction_and_record(
    cluster: ThreadCluster, tmp_path: pathlib.Path, copy: str
) -> None:
    source = _build_source(str(tmp_path / "source.fs"))
    destination = cluster.client()
    try:
        expected = _transactions(source)
        assert {txn.status for txn, _ in expected} == {" ", "p"}, "the source should hold packed transactions"
        assert any(r.data is None for _, records in expected for r in records), "no deletion in the source"

        COPIES[copy](source, destination)

        copied = _transactions(destination)
        assert len(copied) == len(expected)
        record_count = 0
        for (want, want_records), (got, got_records) in zip(expected, copied, strict=True):
            assert got.tid == want.tid
            assert got.status == want.status, f"status of {want.tid.hex()}"
            assert got.user == want.user
            assert got.description == want.description
            assert got.extension == want.extension
            assert sorted((r.oid, r.data) for r in got_records) == sorted((r.oid, r.data) for r in want_records)
            for record in want_records:
                record_count += 1
                after = p64(u64(want.tid) + 1)
                if record.data is None:
                    assert destination.loadBefore(record.oid, after) is None, "a deletion came back"
                else:
                    assert destination.loadSerial(record.oid, want.tid) == record.data
                    assert destination.loadBefore(record.oid, after)[:2] == (record.data, want.tid)
        assert record_count > NUM_TRANSACTIONS  # the checks above ran on every record
        assert destination.lastTransaction() == source.lastTransaction()
        last_records: dict[bytes, Any] = {}
        for _, records in expected:
            last_records.update((r.oid, r.data) for r in records)
        assert len(destination) == sum(data is not None for data in last_records.values())  # live objects

        # The imported database is usable: the current state reads as in
        # the source, and new objects get oids nobody holds.
        imported_oids = {r.oid for _, records in expected for r in records}
        db = ZODB.DB(destination)
        tm = transaction.TransactionManager()
        with tm:
            root = db.open(tm).root()
            assert root["tree"]["key-0003-04"] == 12
            assert root["docs"]["doc-0"]["version"] != -1  # the undo was imported
            assert "doc-1" not in root["docs"] and "short-lived" not in root
            for i in range(50):
                root[f"new-{i}"] = PersistentMapping(i=i)
        with tm:
            root = db.open(tm).root()
            new_oids = {root[f"new-{i}"]._p_oid for i in range(50)}
            assert not new_oids & imported_oids
            assert all(root[f"new-{i}"]["i"] == i for i in range(50))
        db.close()
    finally:
        source.close()


def test_restore_refuses_a_status_it_cannot_keep(cluster: ThreadCluster) -> None:
    storage = cluster.client()
    txn = TransactionMetaData()
    with pytest.raises(POSException.StorageError, match="status 'u'"):
        storage.tpc_begin(txn, p64(1 << 60), "u")


def test_restore_needs_a_transaction_begun_with_its_tid(cluster: ThreadCluster) -> None:
    """restore skips the conflict check: only a copy of a history, under its
    own TIDs, may use it."""
    storage = cluster.client()
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    with pytest.raises(POSException.StorageTransactionError, match="begun with its TID"):
        storage.restore(p64(1), p64(1), b"data", "", None, txn)
    storage.tpc_abort(txn)


def test_history_of_any_size(cluster: ThreadCluster) -> None:
    """zodbbrowser asks history(oid, 10**12): every revision, no overflow."""
    db = ZODB.DB(cluster.client())
    tm = transaction.TransactionManager()
    with tm:
        db.open(tm).root()["counter"] = PersistentMapping(n=0)
    for n in range(1, 5):
        with tm:
            db.open(tm).root()["counter"]["n"] = n
    with tm:
        oid = db.open(tm).root()["counter"]._p_oid
    storage = db.storage
    assert len(storage.history(oid, size=10**12)) == 5
    assert len(storage.history(oid, size=None)) == 5
    assert len(storage.history(oid, size=2)) == 2
    assert storage.history(oid, size=0) == []
    db.close()


def test_delete_object_as_an_external_garbage_collector_does(cluster: ThreadCluster) -> None:
    """ZODB's IExternalGC.test, but for its blob and pack steps (neither
    exists yet): deleted objects no longer load, their past does, and a
    stale serial is a conflict."""
    storage = cluster.client()
    db = ZODB.DB(storage)
    tm = transaction.TransactionManager()
    connection = db.open(tm)
    root = connection.root()
    with tm:
        root[0], root[1] = PersistentMapping(a=1), PersistentMapping(b=2)
    oids = [root[0]._p_oid, root[1]._p_oid]
    with tm:
        del root[0], root[1]
    before = [storage.load(oid) for oid in oids]

    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    for oid, (_, serial) in zip(oids, before, strict=True):
        storage.deleteObject(oid, serial, txn)
    storage.tpc_vote(txn)
    tid = storage.tpc_finish(txn)
    assert tid == storage.lastTransaction()

    for oid, (data, serial) in zip(oids, before, strict=True):
        with pytest.raises(POSException.POSKeyError):
            storage.load(oid)
        assert storage.loadBefore(oid, root._p_serial) == (data, serial, tid)

    with tm:
        root[2] = PersistentMapping()
    oid, stale = root[2]._p_oid, root[2]._p_serial
    with tm:
        root[2]["x"] = 1
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.deleteObject(oid, stale, txn)
    with pytest.raises(POSException.ConflictError, match="^database conflict error"):
        storage.tpc_vote(txn)
    storage.tpc_abort(txn)
    with tm:
        assert connection.root()[2]["x"] == 1
    db.close()


def test_record_iternext_lists_every_live_object_once(cluster: ThreadCluster) -> None:
    """What zodbupdate does: every live object's current record, deleted
    ones left out, back-pointers resolved, across batches and partitions."""
    import neostore.client.record_iteration as record_iteration

    db = ZODB.DB(cluster.client())
    tm = transaction.TransactionManager()
    connection = db.open(tm)
    root = connection.root()
    with tm:
        for i in range(120):
            root[i] = PersistentMapping(i=i)
    with tm:
        root[7]["i"] = -7  # a second revision: the current one is listed
        root["gone"] = PersistentMapping()
    gone = root["gone"]._p_oid
    with tm:
        del root["gone"]
    storage = db.storage
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.deleteObject(gone, storage.load(gone)[1], txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)

    import neostore.storage_node.servicer as servicer

    def walk() -> dict[bytes, tuple[bytes, bytes]]:
        listed = {}
        next_oid = None
        while True:
            oid, tid, data, next_oid = storage.record_iternext(next_oid)
            assert oid not in listed, "listed twice"
            listed[oid] = (tid, data)
            if next_oid is None:
                return listed

    expected = {root._p_oid} | {root[i]._p_oid for i in range(120)}
    original = record_iteration.BATCH, record_iteration.MAX_BATCH_BYTES, servicer.LIST_OBJECTS_MAX_BYTES
    try:
        record_iteration.BATCH = 7  # many batches, some spanning partitions
        listed = walk()
        assert set(listed) == expected
        # Answers and batches cut by size: one object per answer, two per batch.
        record_iteration.BATCH, record_iteration.MAX_BATCH_BYTES, servicer.LIST_OBJECTS_MAX_BYTES = 500, 1, 1
        assert walk() == listed
    finally:
        record_iteration.BATCH, record_iteration.MAX_BATCH_BYTES, servicer.LIST_OBJECTS_MAX_BYTES = original
    for oid, (tid, data) in listed.items():
        assert storage.load(oid) == (data, tid)
    db.close()



class Current(Persistent):
    """A class whose records zodbupdate rewrites to name ``Moved``."""


class Moved(Persistent):
    """Where ``Current`` moved (a class of its own: pickles name a class by
    its own name, whatever name it was found under)."""


def _class_names(storage: Any) -> dict[bytes, str]:
    """oid -> "module.class" of every live record, through record_iternext."""
    names = {}
    next_oid = None
    while True:
        oid, _, data, next_oid = storage.record_iternext(next_oid)
        names[oid] = ".".join(get_pickle_metadata(data))
        if next_oid is None:
            return names


def test_zodbupdate_renames_a_class_in_every_record(cluster: ThreadCluster) -> None:
    """zodbupdate, for real: it walks the database with record_iternext
    (from oid 0) and rewrites the records that name a moved class."""
    import zodbupdate.update

    db = ZODB.DB(cluster.client())
    tm = transaction.TransactionManager()
    with tm:
        root = db.open(tm).root()
        for i in range(30):
            root[i] = Current()
    with tm:
        oids = {db.open(tm).root()[i]._p_oid for i in range(30)}
    db.close()
    storage = cluster.client()
    before = _class_names(storage)
    assert {before[oid] for oid in oids} == {"test_import.Current"}

    zodbupdate.update.Updater(storage, renames={("test_import", "Current"): ("test_import", "Moved")})()

    after = _class_names(storage)
    assert {after[oid] for oid in oids} == {"test_import.Moved"}
    assert {oid: name for oid, name in after.items() if oid not in oids} == {
        oid: name for oid, name in before.items() if oid not in oids}
    storage.close()


def _source_config(tmp_path: pathlib.Path, fs_path: str) -> str:
    config = tmp_path / "source.conf"
    config.write_text(f"<filestorage>\n  path {fs_path}\n  read-only true\n</filestorage>\n")
    return str(config)


def _neoctl(cluster: ThreadCluster, *args: str) -> int:
    from neostore import neoctl

    return neoctl.main(["--masters", ",".join(cluster.masters), "--cluster", cluster.name, *args])


def _add_transactions(fs_path: str, count: int) -> None:
    storage = ZODB.FileStorage.FileStorage(fs_path)
    db = ZODB.DB(storage)
    for i in range(count):
        _commit(db, lambda root, i=i: root["tree"].__setitem__(f"added-{i}", i), user="after", note=f"after {i}")
    db.close()


def test_neoctl_import_then_incremental_then_verify(
    cluster: ThreadCluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an operator runs: import, a refused second import, a source that
    moved on caught up with --incremental, and --verify of the whole."""
    fs_path = str(tmp_path / "source.fs")
    _build_source(fs_path).close()
    config = _source_config(tmp_path, fs_path)

    assert _neoctl(cluster, "import", config, "--quiet") == 0
    out = capsys.readouterr().out
    assert "imported" in out and "transactions" in out

    assert _neoctl(cluster, "import", config) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--incremental" in err and "0x" in err

    _add_transactions(fs_path, 25)
    assert _neoctl(cluster, "--json", "import", config, "--incremental", "--verify") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["import"]["transactions"] == 25
    assert summary["verify"]["differences"] == 0
    assert summary["verify"]["transactions"] > NUM_TRANSACTIONS and summary["verify"]["records"] > NUM_TRANSACTIONS

    assert _neoctl(cluster, "import", config, "--incremental", "--quiet") == 0
    assert "nothing to import" in capsys.readouterr().out


def test_an_interrupted_import_resumes_without_copying_a_transaction_twice(
    cluster: ThreadCluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from neostore import importer

    fs_path = str(tmp_path / "source.fs")
    _build_source(fs_path).close()
    config = _source_config(tmp_path, fs_path)

    class Interrupted(Exception):
        pass

    def interrupt(progress: importer.Progress) -> None:
        if progress.transactions >= 40:
            raise Interrupted

    source = importer.open_source(config)
    try:
        with pytest.raises(Interrupted):
            importer.Importer(source, cluster.client, batch_records=50, report=interrupt, report_every=0.0).run()
    finally:
        source.close()
    partial = cluster.client()
    assert partial.lastTransaction() != ZERO_TID
    copied_before = sum(1 for _ in partial.iterator())
    partial.close()
    source = ZODB.FileStorage.FileStorage(fs_path, read_only=True)
    total = sum(1 for _ in source.iterator())
    source.close()

    assert _neoctl(cluster, "--json", "import", config, "--incremental", "--verify") == 0
    summary = json.loads(capsys.readouterr().out)
    assert copied_before >= 40 and summary["import"]["transactions"] == total - copied_before
    assert summary["verify"]["differences"] == 0  # every TID once, in order, each record as in the source


def test_neoctl_import_refuses_what_is_not_a_zodb_configuration(
    cluster: ThreadCluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.conf"
    bogus.write_text("this is not a storage\n")
    assert _neoctl(cluster, "import", str(bogus)) == 1
    assert "not a ZODB storage configuration" in capsys.readouterr().err
    assert _neoctl(cluster, "import", str(tmp_path / "missing.conf")) == 1
    assert "cannot read source configuration" in capsys.readouterr().err


def test_zodbconvert_into_a_cluster(cluster: ThreadCluster, tmp_path: pathlib.Path) -> None:
    """RelStorage's zodbconvert, unchanged, with a <neostore destination>
    section: ZODB's copyTransactionsFrom, then the histories compared."""
    import relstorage.zodbconvert

    from neostore import importer

    fs_path = str(tmp_path / "source.fs")
    _build_source(fs_path).close()
    config = tmp_path / "convert.conf"
    config.write_text(
        f"<filestorage source>\n  path {fs_path}\n  read-only true\n</filestorage>\n"
        "%import neostore\n"
        f"<neostore destination>\n  master-nodes {' '.join(cluster.masters)}\n  name {cluster.name}\n</neostore>\n")
    relstorage.zodbconvert.main(["zodbconvert", str(config)])

    source = ZODB.FileStorage.FileStorage(fs_path, read_only=True)
    destination = cluster.client()
    try:
        result = importer.verify(source, destination)
    finally:
        source.close()
        destination.close()
    assert result.differences == []
    assert result.transactions > NUM_TRANSACTIONS


def test_an_import_refuses_a_source_whose_timestamps_go_back(cluster: ThreadCluster) -> None:
    """An old FileStorage may hold TIDs out of order; an import keeps every
    TID, so it stops there and says so (zodbconvert would renumber)."""
    from ZODB.BaseStorage import DataRecord, TransactionRecord

    from neostore import errors, importer

    class Transaction(TransactionRecord):
        def __iter__(self) -> Iterator[DataRecord]:
            return iter([DataRecord(p64(1), self.tid, b"data", None)])

    class Source:
        """A source whose second transaction is older than its first."""

        tids = [p64(5 << 32), p64(4 << 32)]

        def iterator(self, start: bytes | None = None) -> Iterator[Any]:
            # As a FileStorage: from the first transaction at or after start, in file order.
            first = next((i for i, tid in enumerate(self.tids) if start is None or tid >= start), len(self.tids))
            for tid in self.tids[first:]:
                yield Transaction(tid, " ", b"", b"", {})

        def lastTransaction(self) -> bytes:
            return self.tids[-1]

    with pytest.raises(errors.BadRequest, match="out of order"):
        importer.Importer(Source(), cluster.client).run()
    check = cluster.client()
    assert check.lastTransaction() in (ZERO_TID, p64(5 << 32))  # at most the prefix before it
    check.close()


def test_a_restore_batch_must_lie_above_the_last_tid_whole(cluster: ThreadCluster) -> None:
    """The masters refuse a batch whose first transaction is not above the
    cluster's last TID, even when its own (last) TID is: it would write
    history under snapshots clients may already read.  Nothing of it is
    written; a batch above commits whole."""
    from neostore.client.restore_batch import RestoredTransaction

    storage = cluster.client()
    oid = p64(1)

    def restored(tid: int, data: bytes) -> RestoredTransaction:
        return RestoredTransaction(p64(tid << 32), " ", TransactionMetaData("u", f"t{tid}"), [(oid, data)])

    assert storage.restore_batch([restored(10, b"a"), restored(11, b"b")]) == p64(11 << 32)
    with pytest.raises(POSException.StorageError, match="above the last"):
        storage.restore_batch([restored(11, b"again"), restored(12, b"c")])
    with pytest.raises(POSException.StorageError, match="TID order"):
        storage.restore_batch([restored(13, b"c"), restored(12, b"d")])
    assert storage.lastTransaction() == p64(11 << 32)
    assert [revision["tid"] for revision in storage.history(oid, 10)] == [p64(11 << 32), p64(10 << 32)]
    assert storage.restore_batch([restored(12, b"c"), restored(13, b"d"), restored(14, b"e")]) == p64(14 << 32)
    assert storage.loadBefore(oid, p64(13 << 32)) == (b"c", p64(12 << 32), p64(13 << 32))
    assert [txn.description for txn in storage.iterator()] == [f"t{n}".encode() for n in range(10, 15)]
    storage.close()


def test_a_batch_that_failed_is_tried_again_and_one_that_committed_is_not_copied_twice(
    cluster: ThreadCluster, tmp_path: pathlib.Path
) -> None:
    """restore_all tries a failed batch again: one that did not commit (its
    TTID lost with a leader) is committed by the next try; one whose answer
    was lost after it committed is found in the cluster and not sent again
    (the masters would refuse it: its TIDs are no longer above the last)."""
    from neostore import importer
    from neostore.client.exceptions import ClusterUnavailableError, TransactionNotCommittedError

    source = _build_source(str(tmp_path / "source.fs"))
    storage = cluster.client()
    failures = iter(["before", None, "after", None, "before", "after"])
    calls = []

    class Flaky:
        """The real client, whose answers are lost now and then."""

        def restore_batch(self, batch: Any) -> bytes:
            failure = next(failures, None)
            calls.append(failure)
            if failure == "before":
                raise TransactionNotCommittedError("lost with its leader")
            tid = storage.restore_batch(batch)
            if failure == "after":
                raise ClusterUnavailableError("the answer was lost")
            return tid

        def __getattr__(self, name: str) -> Any:
            return getattr(storage, name)

    try:
        importer.restore_all(Flaky(), importer.read_transactions(source, None), batch_records=50)
        assert calls[:6] == ["before", None, "after", None, "before", "after"]
        result = importer.verify(source, storage)
        assert result.differences == [] and result.transactions > NUM_TRANSACTIONS
    finally:
        source.close()
        storage.close()


def _load_before(storage: Any, oid: bytes, tid: bytes) -> Any:
    """loadBefore, None for an object that does not exist yet (with no
    revision at all, some storages raise POSKeyError)."""
    try:
        return storage.loadBefore(oid, tid)
    except POSException.POSKeyError:
        return None


def test_the_cluster_serves_consistent_reads_while_an_import_runs(
    cluster: ThreadCluster, tmp_path: pathlib.Path
) -> None:
    """A reader polls the cluster during an import in small batches: every
    snapshot it gets is one of the source's TIDs (the end of a batch), and
    what it reads there is what the source held at that TID, never a batch
    half in."""
    import threading

    from neostore import importer

    source = _build_source(str(tmp_path / "source.fs"))
    oids = sorted({bytes(r.oid) for txn in source.iterator() for r in txn})[:20]
    source_tids = {bytes(txn.tid) for txn in source.iterator()}
    done = threading.Event()
    reads: list[tuple[bytes, bytes, Any]] = []
    failures: list[BaseException] = []
    read_up_to = threading.Condition()  # notified after each round of reads

    def read() -> None:
        reader = cluster.client()
        try:
            while not done.is_set():
                reader.sync()
                snapshot = reader.lastTransaction()
                if snapshot == ZERO_TID:
                    continue
                after = p64(u64(snapshot) + 1)
                for oid in oids:
                    reads.append((snapshot, oid, _load_before(reader, oid, after)))
                with read_up_to:
                    read_up_to.notify_all()
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
        finally:
            reader.close()

    def after_batch(progress: importer.Progress) -> None:
        """The first batches wait until the reader read them."""
        if progress.transactions <= 30:
            with read_up_to:
                assert read_up_to.wait_for(
                    lambda: failures or any(snapshot >= progress.last_tid for snapshot, _, _ in reads[-1:]), 60)

    reader_thread = threading.Thread(target=read, daemon=True)
    reader_thread.start()
    try:
        importer.Importer(source, cluster.client, batch_records=20, report=after_batch, report_every=0.0).run()
    finally:
        done.set()
        reader_thread.join(60)
    try:
        assert not failures, failures
        snapshots = {snapshot for snapshot, _, _ in reads}
        assert len(snapshots) > 5, "the reader saw too few snapshots during the import"
        assert snapshots <= source_tids
        for snapshot, oid, got in reads:
            want = _load_before(source, oid, p64(u64(snapshot) + 1))
            assert (got[:2] if got else None) == (want[:2] if want else None), \
                f"object {oid.hex()} at {snapshot.hex()}"
    finally:
        source.close()
