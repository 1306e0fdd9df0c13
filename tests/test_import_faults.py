"""kill -9 in the middle of an import (restore batches), on a real cluster.

Three ``neo-master`` processes (Raft), three storage nodes, two replicas
(:class:`~neostore.launcher.LocalCluster`).  A FileStorage with a few
thousand transactions is imported in restore batches of a few hundred
records, each batch many source transactions committed as one:

1. a storage node is killed while batches are being voted and committed:
   the import goes on with the other replicas (the node's cells are marked
   OUT_OF_DATE), and the node, restarted, catches up;
2. the source grows, and an incremental import loses its master leader in
   the middle: a batch in flight that did not commit is tried again (one
   that did is not copied twice), and the import goes on.

Then the cluster's own tools: ``neoctl import --verify-only`` finds every
transaction and record of the source exactly once, ``neoctl wait`` sees
every cell caught up and ``neoctl check`` finds the replicas identical.
"""

from __future__ import annotations

import json
import pathlib
import threading
from typing import Any

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from BTrees.OOBTree import OOBTree
from test_commit_faults import check_replicas
from test_master_faults import _leader, _master

from neostore import importer
from neostore.client import NeoStorage
from neostore.launcher import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.process]

BATCH_RECORDS = 200


def _grow(path: str, count: int, start: int) -> None:
    """``count`` transactions, each changing the same tree and mapping."""
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    tm = transaction.TransactionManager()
    root = db.open(tm).root()
    with tm:
        if "tree" not in root:
            root["tree"], root["log"] = OOBTree(), []
    for i in range(start, start + count):
        with tm as txn:
            txn.note(f"change {i}")
            for j in range(5):
                root["tree"][f"{i:05d}-{j}"] = "x" * (i % 300)
            root["log"] = root["log"][-20:] + [i]
    db.close()


def _count(path: str) -> int:
    storage = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        return sum(1 for _ in storage.iterator())
    finally:
        storage.close()


class _Import:
    """An Importer run on a thread; ``reached`` is set once ``transactions``
    source transactions are in the cluster.  With ``pause``, the import
    then waits for ``resume`` before its next batch."""

    def __init__(self, cluster: LocalCluster, source_path: str, transactions: int, incremental: bool,
                 pause: bool = False) -> None:
        self.reached = threading.Event()
        self.resume = threading.Event()
        self.error: BaseException | None = None
        self.progress: importer.Progress | None = None
        self._source = ZODB.FileStorage.FileStorage(source_path, read_only=True)

        def report(progress: importer.Progress) -> None:
            if progress.transactions >= transactions and not self.reached.is_set():
                self.reached.set()
                if pause:
                    assert self.resume.wait(60), "the test never resumed the import"

        def run() -> None:
            try:
                self.progress = importer.Importer(
                    self._source, lambda: NeoStorage(cluster.masters, cluster.name), batch_records=BATCH_RECORDS,
                    report=report, report_every=0.0).run(incremental)
            except BaseException as error:  # noqa: BLE001 - checked by the test
                self.error = error
            finally:
                self.reached.set()
                self._source.close()

        self.thread = threading.Thread(target=run, name="test-import", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(600)
        assert not self.thread.is_alive(), "the import is stuck"


def _verify(cluster: LocalCluster, source_path: str) -> dict[str, Any]:
    config = pathlib.Path(source_path + ".conf")
    config.write_text(f"<filestorage>\n  path {source_path}\n  read-only true\n</filestorage>\n")
    return json.loads(cluster._neoctl("import", str(config), "--verify-only"))["verify"]


def test_kill_9_of_a_storage_node_and_of_the_leader_during_an_import(tmp_path: pathlib.Path) -> None:
    source_path = str(tmp_path / "source.fs")
    _grow(source_path, 1500, 0)
    cluster = LocalCluster(str(tmp_path / "cluster"), name="import-faults", num_masters=3,
                           num_storages=3, num_replicas=2)
    cluster.start()
    try:
        # 1. A storage node dies mid-import: the import goes on without it.
        running = _Import(cluster, source_path, 300, incremental=False, pause=True)
        assert running.reached.wait(300), "the import did not start"
        assert running.error is None, running.error
        cluster.storages[0].kill()
        print("\nkill -9 storage node process 0")
        running.resume.set()  # the next batches meet a dead node the masters may not know dead yet
        running.join()
        assert running.error is None, f"the import failed when a storage node died: {running.error!r}"
        assert running.progress is not None and running.progress.transactions == _count(source_path)
        cluster.restart_storage(0)

        # 2. The source grows; the leader dies mid-import.
        _grow(source_path, 1500, 1500)
        leader = cluster.master_addresses.index(_leader(cluster))
        running = _Import(cluster, source_path, 300, incremental=True)
        assert running.reached.wait(300), "the incremental import did not start"
        _master(cluster, leader).kill()
        print(f"kill -9 the leader (master {leader + 1})")
        running.join()
        assert running.error is None, f"the import failed when the leader died: {running.error!r}"
        cluster.restart_master(index=leader)

        verification = _verify(cluster, source_path)
        assert verification["differences"] == 0, verification["first_differences"]
        assert verification["transactions"] == _count(source_path)
        check_replicas(cluster)
    finally:
        cluster.stop()
