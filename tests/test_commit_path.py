"""The commit path end to end, on a cluster of threads: what a client sees.

The masters publish a transaction (and answer its Finish) once the
decision is durable, before the participants applied it; the participants
hold what they voted, locked, until their Commit order arrives, and reads
that may concern it wait for it there.  These tests hold the Commit orders
back to check that nobody reads around a published transaction.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.storage_node.node import StorageNode

from harness import ThreadCluster


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=3, num_replicas=2) as running:
        yield running


class HeldCommits:
    """Holds the Commit orders of storage nodes until released."""

    def __init__(self, nodes: list[StorageNode]) -> None:
        # The orders of earlier transactions are not held: they were applied.
        deadline = time.monotonic() + 30
        while any(node.manager.active_ttids() for node in nodes):
            assert time.monotonic() < deadline, "earlier transactions never applied"
            time.sleep(0.01)
        self.gate = threading.Event()
        self.arrived = threading.Event()
        self._restore: list[tuple[Any, Any]] = []
        for node in nodes:
            manager = node.manager
            original = manager.commit_many

            def held(decisions: Any, term: int = 0, _original: Any = original) -> Any:
                self.arrived.set()
                assert self.gate.wait(30), "commit orders held too long"
                return _original(decisions, term)

            manager.commit_many = held  # type: ignore[method-assign]
            self._restore.append((manager, original))

    def release(self) -> None:
        self.gate.set()
        for manager, original in self._restore:
            manager.commit_many = original


def test_a_published_transaction_is_read_by_another_client_though_not_applied_yet(cluster: ThreadCluster) -> None:
    writer = ZODB.DB(cluster.client())
    reader_storage: NeoStorage = cluster.client(server_sync=True)  # begin() learns the new TID
    reader = ZODB.DB(reader_storage)
    writer_tm, reader_tm = transaction.TransactionManager(), transaction.TransactionManager()
    with writer_tm:
        writer.open(writer_tm).root()["counter"] = PersistentMapping(value=1)
    held = HeldCommits(cluster.storages)
    try:
        connection = writer.open(writer_tm)
        writer_tm.begin()
        connection.root()["counter"]["value"] = 2
        writer_tm.commit()  # answered once decided: the participants have not applied it
        assert held.arrived.wait(10)
        reading = connection_value = None

        def read() -> None:
            nonlocal reading, connection_value
            reader_tm.begin()  # syncs: the reader learns the new TID
            connection_value = reader.open(reader_tm).root()["counter"]["value"]
            reading = True

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the read must wait for the participants to apply what it may see"
        held.release()
        thread.join(30)
        assert reading and connection_value == 2
    finally:
        held.release()
        writer.close()
        reader.close()


def test_the_next_transaction_of_the_same_client_sees_its_commit_before_it_is_applied(
        cluster: ThreadCluster) -> None:
    db = ZODB.DB(cluster.client(cache_size=0))
    with db.transaction() as connection:
        connection.root()["counter"] = PersistentMapping(value=1)
    held = HeldCommits(cluster.storages)
    done = threading.Event()
    values: list[int] = []

    def commit_twice() -> None:
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        for _ in range(2):
            tm.begin()
            connection.root()["counter"]["value"] += 1
            tm.commit()
            connection.cacheMinimize()  # the next read goes to a storage node
        tm.begin()
        values.append(connection.root()["counter"]["value"])
        done.set()

    thread = threading.Thread(target=commit_twice)
    thread.start()
    try:
        assert held.arrived.wait(10)
        assert not done.wait(0.5), "the second transaction must read what the first committed"
        held.release()
        thread.join(30)
        assert values == [3]
    finally:
        held.release()
        db.close()


def test_a_transaction_creating_thousands_of_objects_asks_for_oids_a_few_times(cluster: ThreadCluster) -> None:
    """Each NewOids is a Raft entry: oids come in growing batches (100,
    200, ... up to 1000), not one request per hundred objects; every oid
    is fresh."""
    storage: NeoStorage = cluster.client()
    asked: list[int] = []
    original = storage._cluster.master_call

    def counting(method: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        if method == "NewOids":
            asked.append(request.count)
        return original(method, request, *args, **kwargs)

    storage._cluster.master_call = counting  # type: ignore[method-assign]
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        with tm:
            root = db.open(tm).root()
            root["many"] = PersistentMapping({i: PersistentMapping() for i in range(3000)})
        assert asked[:4] == [100, 200, 400, 800], asked
        assert sum(asked) >= 3000 and len(asked) <= 6, asked
        oids = [storage.new_oid() for _ in range(2000)]
        assert len(set(oids)) == len(oids)
        assert max(asked) == 1000
        with tm:
            assert len(db.open(tm).root()["many"]) == 3000
    finally:
        db.close()


def _master_calls(storage: NeoStorage) -> list[str]:
    """The names of the master RPCs ``storage`` makes from now on."""
    calls: list[str] = []
    original = storage._cluster.master_call

    def counting(method: str, request: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return original(method, request, *args, **kwargs)

    storage._cluster.master_call = counting  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("server_sync", [False, True])
def test_a_small_transaction_asks_the_master_once_or_twice_with_server_sync(
        cluster: ThreadCluster, server_sync: bool) -> None:
    """By default (as in ZEO) a transaction's sync() sends nothing and the
    TTID comes ahead with the last Finish answer: the master hears of a
    transaction only at its Finish.  With server_sync, ZODB's sync() at
    each transaction's start is a round trip (which brings the TTID)."""
    storage: NeoStorage = cluster.client(server_sync=server_sync)
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        with tm:
            connection.root()["counter"] = PersistentMapping(value=0)
        calls = _master_calls(storage)
        for _ in range(3):
            with tm:
                connection.root()["counter"]["value"] += 1
        assert calls == (["Sync", "Finish"] if server_sync else ["Finish"]) * 3, calls
        with tm:
            assert connection.root()["counter"]["value"] == 3
    finally:
        db.close()


def test_without_server_sync_another_clients_commit_arrives_with_the_stream(cluster: ThreadCluster) -> None:
    """The default: a transaction that begins sees what the invalidation
    stream delivered; another client's commit is there once it arrives."""
    writer = ZODB.DB(cluster.client())
    reader_storage: NeoStorage = cluster.client()
    reader = ZODB.DB(reader_storage)
    try:
        with writer.transaction() as connection:
            connection.root()["shared"] = PersistentMapping(value=1)
        tid = writer.lastTransaction()
        deadline = time.monotonic() + 30
        while reader_storage.lastTransaction() < tid:  # the event: the stream brought it
            assert time.monotonic() < deadline, "the invalidation stream never brought the commit"
            time.sleep(0.005)
        with reader.transaction() as connection:
            assert connection.root()["shared"]["value"] == 1
    finally:
        writer.close()
        reader.close()


def test_a_transaction_begun_under_a_replaced_leader_commits_once_under_the_new_one(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Its TTID (the spare of the last Finish) is unknown to the new leader:
    its votes are released and it is voted and finished again, once."""
    from neostore.client import commit as client_commit

    monkeypatch.setattr(client_commit, "SPARE_LIFETIME", 600.0)  # whatever the election takes
    with ThreadCluster(str(tmp_path), num_masters=3, num_storages=2, num_partitions=3, num_replicas=2) as running:
        storage = running.client()
        db = ZODB.DB(storage)
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        with tm:
            connection.root()["counter"] = PersistentMapping(value=1)
        spare = storage._spare._ttid
        assert spare is not None, "the Finish answer brought no spare TTID"
        old = running.wait_for_leader()
        old.stop()
        running.wait_for_leader(other_than=old)
        with caplog.at_level("INFO", logger="neostore.client.commit"):
            with tm:
                connection.root()["counter"]["value"] = 2
        assert any("committing it again" in r.getMessage() for r in caplog.records), caplog.text
        tid = db.lastTransaction()
        counter_history = storage.history(connection.root()["counter"]._p_oid, size=10)
        assert [h["tid"] for h in counter_history][0] == tid
        assert len(counter_history) == 2, counter_history  # committed once, not twice
        fresh = ZODB.DB(running.client(server_sync=True))
        with fresh.transaction() as other:
            assert other.root()["counter"]["value"] == 2
        fresh.close()
        db.close()


class _HeldStream:
    """Holds the invalidations a client's stream brings until released
    (its Finish and Sync answers still get through)."""

    def __init__(self, storage: NeoStorage) -> None:
        self._listener = storage._cluster._listener  # noqa: SLF001 - test hook
        self.gate = threading.Event()
        storage._cluster._listener = self  # noqa: SLF001

    def on_invalidation(self, tid: bytes, ttid: bytes, oids: list[bytes]) -> None:
        assert self.gate.wait(60), "stream held too long"
        self._listener.on_invalidation(tid, ttid, oids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


def test_after_a_conflict_the_next_transaction_sees_what_it_conflicted_with(cluster: ThreadCluster) -> None:
    """The default (no server_sync): a client whose stream lags conflicts
    once; the sync of its next transaction asks the master, so the retry
    sees the other commit and succeeds."""
    from ZODB.POSException import ConflictError

    writer = ZODB.DB(cluster.client())
    storage: NeoStorage = cluster.client()
    db = ZODB.DB(storage)
    held = None
    try:
        with writer.transaction() as connection:
            connection.root()["x"] = PersistentMapping(n=0)
        deadline = time.monotonic() + 30
        while storage.lastTransaction() < writer.lastTransaction():
            assert time.monotonic() < deadline, "the stream never brought the first commit"
            time.sleep(0.005)
        held = _HeldStream(storage)
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        tm.begin()
        assert connection.root()["x"]["n"] == 0
        with writer.transaction() as other:
            other.root()["x"]["n"] = 1
        connection.root()["x"]["n"] = 10
        with pytest.raises(ConflictError):
            tm.commit()
        tm.abort()
        calls = _master_calls(storage)
        tm.begin()
        assert calls == ["Sync"], calls
        assert storage.lastTransaction() == writer.lastTransaction()
        assert connection.root()["x"]["n"] == 1
        connection.root()["x"]["n"] += 10
        tm.commit()
        assert calls == ["Sync", "Finish"], calls
        held.gate.set()
        with tm:
            assert connection.root()["x"]["n"] == 11
    finally:
        if held is not None:
            held.gate.set()
        writer.close()
        db.close()


def test_a_new_clients_first_transaction_asks_the_leader_then_no_more(cluster: ThreadCluster) -> None:
    """Without server_sync, the first sync of a client is still a round
    trip (its stream may have started behind the leader); later ones are not."""
    storage: NeoStorage = cluster.client()
    calls = _master_calls(storage)
    db = ZODB.DB(storage)  # opens the root: the first transaction
    try:
        assert calls.count("Sync") == 1, calls
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        with tm:
            connection.root()["first"] = 1
        with tm:
            assert connection.root()["first"] == 1
        assert calls.count("Sync") == 1, calls
    finally:
        db.close()


def test_a_transaction_the_cluster_aborted_while_it_voted_fails_as_a_conflict_and_runs_again(
        cluster: ThreadCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage nodes dropped the TTID before its vote reached them, as
    they do on the leader's order when the leader that handed it out was
    replaced or took the client for gone: tpc_vote fails with a
    ConflictError (nothing of it commits), and ZODB's retry commits."""
    from ZODB.POSException import ConflictError

    from neostore.client import commit as client_commit
    from neostore.client.exceptions import TransactionNotCommittedError

    storage: NeoStorage = cluster.client()
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        with tm:
            connection.root()["counter"] = PersistentMapping(value=1)
        oid = connection.root()["counter"]._p_oid
        dropped: list[bytes] = []
        vote = client_commit.vote

        def dropped_first(cluster_: Any, context: Any, *args: Any) -> Any:
            if not dropped:
                dropped.append(context.ttid)
                for node in cluster.storages:
                    node.manager.abort(context.ttid)
            return vote(cluster_, context, *args)

        monkeypatch.setattr(client_commit, "vote", dropped_first)
        tm.begin()
        connection.root()["counter"]["value"] = 2
        with pytest.raises(TransactionNotCommittedError, match="aborted by the cluster") as raised:
            tm.commit()
        assert isinstance(raised.value, ConflictError)
        tm.abort()
        assert len(storage.history(oid, size=10)) == 1, "nothing of it committed"
        for attempt in tm.attempts():
            with attempt:
                connection.root()["counter"]["value"] = 2
        assert len(dropped) == 1
        assert len(storage.history(oid, size=10)) == 2
    finally:
        db.close()
    fresh = ZODB.DB(cluster.client())
    try:
        with fresh.transaction() as other:
            assert other.root()["counter"]["value"] == 2
    finally:
        fresh.close()
