"""kill -9 of the leading master under load: no acknowledged commit is lost.

Three master processes (Raft), three storage nodes, several client threads
committing continuously, each on its own object, each recording every TID
tpc_finish acknowledged.  The leading master is killed (SIGKILL) mid-load;
clients keep committing.  At the end every acknowledged commit is there
(its data, read back with loadSerial at its TID), no TID was acknowledged
twice, each client's TIDs strictly increase, and commits resumed after the
kill.  Commits in flight at the kill get their true outcome (a Finish whose
answer was lost is resolved with GetTransactionOutcome): acknowledged, or an
error that the client retries as a new transaction.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import threading
import time
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster

pytestmark = pytest.mark.slow

NUM_CLIENTS = 4
LOAD_BEFORE_KILL = 3.0  # seconds
LOAD_AFTER_RECOVERY = 3.0  # seconds of commits after the first one following the kill
RECOVERY_LIMIT = 30.0  # seconds


class Writer:
    """One client committing ``obj["n"] = 1, 2, ...`` on its own object."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.name = name
        self.db = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
        self.acknowledged: list[tuple[bytes, int, float]] = []  # (tid, value, when)
        self.failures = 0
        self.oid = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def setup(self) -> None:
        for _ in range(50):
            try:
                with self.db.transaction() as connection:
                    connection.root()[self.name] = PersistentMapping(n=0)
                break
            except Exception:  # noqa: BLE001 - another writer touched the root: retry
                time.sleep(0.05)
        with self.db.transaction() as connection:
            self.oid = connection.root()[self.name]._p_oid

    def run(self) -> None:
        manager = transaction.TransactionManager()
        connection = self.db.open(manager)
        value = 0
        try:
            while not self.stop.is_set():
                value += 1
                try:
                    manager.begin()
                    obj = connection.root()[self.name]
                    obj["n"] = value
                    manager.commit()
                except Exception:  # noqa: BLE001 - failover: retry as a new transaction
                    manager.abort()
                    self.failures += 1
                    time.sleep(0.05)
                    continue
                self.acknowledged.append((obj._p_serial, value, time.monotonic()))
        finally:
            connection.close()


def _value_at(storage: Any, oid: bytes, tid: bytes) -> int:
    """The writer's counter in the revision of ``oid`` written by ``tid``."""
    unpickler = pickle.Unpickler(io.BytesIO(storage.loadSerial(oid, tid)))
    unpickler.load()  # the class
    state = unpickler.load()
    data = state.get("data", state.get("_container", state))
    return int(data["n"])


def _leader_process(cluster: LocalCluster, leader: str) -> Any:
    index = cluster.master_addresses.index(leader)
    return cluster.master if index == 0 else cluster.other_masters[index - 1]


def test_killing_the_leader_loses_no_acknowledged_commit(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="failover", num_masters=3)
    cluster.start()
    writers: list[Writer] = []
    try:
        writers = [Writer(cluster, f"writer-{i}") for i in range(NUM_CLIENTS)]
        for writer in writers:
            writer.setup()
        for writer in writers:
            writer.thread.start()
        time.sleep(LOAD_BEFORE_KILL)
        leader = cluster.cluster_info().leader
        assert leader in cluster.master_addresses
        killed_at = time.monotonic()
        _leader_process(cluster, leader).kill()
        deadline = killed_at + RECOVERY_LIMIT
        first_after: float | None = None
        while time.monotonic() < deadline:
            after = [when for w in writers for _, _, when in w.acknowledged if when > killed_at]
            if after:
                first_after = min(after)
                break
            time.sleep(0.05)
        assert first_after is not None, f"no commit acknowledged within {RECOVERY_LIMIT:.0f}s of the kill"
        print(f"\nkill -9 of the leader -> first acknowledged commit: {first_after - killed_at:.2f}s")
        time.sleep(LOAD_AFTER_RECOVERY)
        # Every writer resumes (one may have been finding the new leader or
        # asking an outcome for a while): wait for each, within the limit.
        while time.monotonic() < deadline and not all(
                any(when > killed_at for _, _, when in w.acknowledged) for w in writers):
            time.sleep(0.05)
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.thread.join(60)
    try:
        all_tids: list[bytes] = []
        for writer in writers:
            tids = [tid for tid, _, _ in writer.acknowledged]
            assert tids == sorted(tids) and len(set(tids)) == len(tids), f"{writer.name}: TIDs not increasing"
            all_tids.extend(tids)
            assert any(when > killed_at for _, _, when in writer.acknowledged), f"{writer.name} never resumed"
            storage = writer.db.storage
            for tid, value, _ in writer.acknowledged:
                assert _value_at(storage, writer.oid, tid) == value, f"{writer.name}: commit {tid.hex()} lost"
        assert len(set(all_tids)) == len(all_tids), "a TID was acknowledged twice"
        print(f"{len(all_tids)} commits acknowledged "
              f"({sum(w.failures for w in writers)} retried after an error)")
    finally:
        for writer in writers:
            writer.db.close()
        cluster.stop()
