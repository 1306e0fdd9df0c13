"""ZODB's own storage conformance suites, run against a real neostore cluster.

Each test gets a fresh cluster: one master and three storage nodes (R=2, so
every store reaches two replicas), with real gRPC servers on 127.0.0.1 and
real LMDB files, running as threads of the test process so that hundreds of
clusters start quickly (as processes for ZODB's race tests, whose 64 client
threads would otherwise share one GIL with the cluster).  ``tests/test_process_cluster.py`` runs ZODB over a
cluster of separate processes.

ZODB 6 names the inherited tests ``test*`` (they were ``check*``):
:func:`test_every_suite_contributes_tests` guards against collecting none.
"""

from __future__ import annotations

import os
import unittest

import transaction
import ZODB
import ZODB.tests.util
from ZODB.tests import (
    BasicStorage,
    ConflictResolution,
    HistoryStorage,
    IteratorStorage,
    MTStorage,
    PersistentStorage,
    ReadOnlyStorage,
    RecoveryStorage,
    RevisionStorage,
    StorageTestBase,
    Synchronization,
    TransactionalUndoStorage,
    testZODB,
)

from harness import ProcessCluster, ThreadCluster

SUITES = (
    BasicStorage.BasicStorage,
    MTStorage.MTStorage,
    Synchronization.SynchronizedStorage,
    ConflictResolution.ConflictResolvingStorage,
    ConflictResolution.ConflictResolvingTransUndoStorage,
    HistoryStorage.HistoryStorage,
    IteratorStorage.IteratorStorage,
    IteratorStorage.ExtendedIteratorStorage,
    RevisionStorage.RevisionStorage,
    TransactionalUndoStorage.TransactionalUndoStorage,
    ReadOnlyStorage.ReadOnlyStorage,
    PersistentStorage.PersistentStorage,
)

#: Tests that pack the storage: pack is the subject of a later issue.
NEEDS_PACK = (
    "testTransactionalUndoAfterPack",
    "testTransactionalUndoAfterPackWithObjectUnlinkFromRoot",
    "testPackAfterUndoDeletion",
    "testPackAfterUndoManyTimes",
)


class _ClusterTestCase:
    """Starts a cluster in the test's temporary directory."""

    cluster: ThreadCluster

    def start_cluster(self) -> None:
        if self._testMethodName.startswith("test_race"):  # type: ignore[attr-defined]
            # 64 client threads: the cluster runs as processes, so that the
            # test's 120 s limit measures the storage, not one GIL shared
            # with the whole cluster.
            self.cluster = ProcessCluster(os.path.abspath("cluster"))  # type: ignore[assignment]
        else:
            self.cluster = ThreadCluster(os.path.abspath("cluster"))
        self.cluster.start()

    def stop_cluster(self) -> None:
        self.cluster.stop()


class NeoStorageTests(
    _ClusterTestCase,
    StorageTestBase.StorageTestBase,
    *SUITES,
):
    # Transaction extensions are stored as the bytes ZODB gave (IteratorStorage).
    use_extension_bytes = True

    def setUp(self) -> None:
        StorageTestBase.StorageTestBase.setUp(self)
        self.start_cluster()
        self.open()

    def open(self, read_only: bool = False) -> None:
        self._storage = self.cluster.client(read_only=read_only)

    def _new_storage_client(self):  # noqa: ANN202 - ZODB's racetest hook
        return self.cluster.client()

    def tearDown(self) -> None:
        self._close()
        self.stop_cluster()
        StorageTestBase.StorageTestBase.tearDown(self)


def _expected_failure(name: str, reason: str) -> None:
    """Mark one inherited test as an expected failure, for ``reason``."""
    inherited = getattr(NeoStorageTests, name)

    @unittest.expectedFailure
    def test(self: NeoStorageTests) -> None:
        inherited(self)

    test.__name__ = name
    test.__doc__ = reason
    setattr(NeoStorageTests, name, test)


for _name in NEEDS_PACK:
    _expected_failure(_name, "Needs pack, which neostore does not implement yet.")


# ZODB's interface says loadBefore returns None when the object does not
# exist as of the TID, and raises POSKeyError only for an oid the storage
# never held (ZODB issue #318).  testUndoCreationBranch1 asserts
# FileStorage's behaviour instead: POSKeyError once the creation is undone.
# neostore follows the interface, so that one assertion cannot hold; the
# test below runs the same scenario and asserts None there.
_expected_failure(
    "testUndoCreationBranch1",
    "Asserts POSKeyError from loadBefore of a deleted object; the interface wants None.")


def _undo_creation_branch_1_returns_none(self: NeoStorageTests) -> None:
    from ZODB.tests.MinPO import MinPO
    from ZODB.tests.StorageTestBase import zodb_unpickle
    from ZODB.utils import load_current, maxtid

    oid = self._storage.new_oid()
    revid = self._dostore(oid, data=MinPO(11))
    revid = self._dostore(oid, revid=revid, data=MinPO(12))
    info = self._storage.undoInfo()
    self._undo(info[0]["id"], [oid])
    data, revid = load_current(self._storage, oid)
    self.assertEqual(zodb_unpickle(data), MinPO(11))
    info = self._storage.undoInfo()
    self._undo(info[2]["id"], [oid])
    self.assertRaises(KeyError, load_current, self._storage, oid)
    self.assertIsNone(self._storage.loadBefore(oid, maxtid))
    self._iterate()


NeoStorageTests.testUndoCreationBranch1ReturnsNone = _undo_creation_branch_1_returns_none  # type: ignore[attr-defined]


class NeoRecoveryTests(_ClusterTestCase, StorageTestBase.StorageTestBase, RecoveryStorage.RecoveryStorage):
    """IStorageRestoreable: ``copyTransactionsFrom`` (through ``restore``)
    from one cluster into a second, empty one; ZODB compares every
    transaction and record of both."""

    use_extension_bytes = True

    def setUp(self) -> None:
        StorageTestBase.StorageTestBase.setUp(self)
        self.start_cluster()
        self._storage = self.cluster.client()
        self.destination = ThreadCluster(os.path.abspath("destination"), name="destination")
        self.destination.start()
        self._dst = self.destination.client()

    def new_dest(self):  # noqa: ANN201 - ZODB's hook: the destination, opened again
        return self.destination.client()

    def tearDown(self) -> None:
        self._dst.close()
        self.destination.stop()
        self._close()
        self.stop_cluster()
        StorageTestBase.StorageTestBase.tearDown(self)


for _name in ("testRestoreAcrossPack", "testPackWithGCOnDestinationAfterRestore"):
    _inherited = getattr(NeoRecoveryTests, _name)
    setattr(NeoRecoveryTests, _name, unittest.expectedFailure(
        lambda self, _inherited=_inherited: _inherited(self)))
    getattr(NeoRecoveryTests, _name).__doc__ = "Needs pack, which neostore does not implement yet."


class NeoZODBTests(_ClusterTestCase, testZODB.ZODBTests):
    def setUp(self) -> None:
        ZODB.tests.util.TestCase.setUp(self)
        self.start_cluster()
        self._storage = self.cluster.client()
        self._db = ZODB.DB(self._storage)

    def tearDown(self) -> None:
        self._db.close()
        transaction.abort()
        self.stop_cluster()
        ZODB.tests.util.TestCase.tearDown(self)


def test_every_suite_contributes_tests() -> None:
    """ZODB 6 renamed check* to test*: make sure each suite adds tests."""
    loader = unittest.TestLoader()
    names = set(loader.getTestCaseNames(NeoStorageTests))
    for suite in SUITES:
        own = {n for n in vars(suite) if n.startswith("test")}
        assert own, f"{suite.__name__} contributes no test* methods"
        assert own <= names, f"{suite.__name__}: not collected: {sorted(own - names)}"
    recovery = {n for n in vars(RecoveryStorage.RecoveryStorage) if n.startswith("test")}
    assert recovery and recovery <= set(loader.getTestCaseNames(NeoRecoveryTests))
    assert len(loader.getTestCaseNames(NeoZODBTests)) == len(
        [n for n in vars(testZODB.ZODBTests) if n.startswith("test")])
    assert "test_tid_ordering_w_commit" in names
    assert "test_race_load_vs_external_invalidate" in names
