"""Votes sent to every node at once, on a cluster of threads.

A client first sends its votes to every node at once, each lock wait
bounded (``AT_ONCE_LOCK_WAIT``); a lock busy for longer makes it abort the
transaction and vote again under a new TTID, node by node (the deadlock-free
order of ``storage_node/locks.py``), and then vote node by node for its next
few transactions.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
import ZODB
from BTrees.Length import Length
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import ConflictError

from neostore.client import NeoStorage
from neostore.client import commit as client_commit

from harness import ThreadCluster


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2) as running:
        yield running


def test_a_vote_at_once_that_finds_a_lock_busy_starts_over_node_by_node(
        cluster: ThreadCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    storage: NeoStorage = cluster.client()
    db = ZODB.DB(storage)
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        with tm:
            connection.root()["counter"] = PersistentMapping(value=0)
        oid = connection.root()["counter"]._p_oid

        # Another client voted a change of the object: its cells hold the
        # lock, and nobody can wound a voted transaction.
        holder = cluster.client()
        held = TransactionMetaData()
        holder.tpc_begin(held)
        data, serial = holder.load(oid)
        holder.store(oid, serial, data, "", held)
        holder.tpc_vote(held)

        ttids: list[bytes] = []  # before and after starting over
        started_over = threading.Event()
        start_over = client_commit._start_over

        def recording(cluster_: Any, context: Any) -> None:
            ttids.append(context.ttid)
            start_over(cluster_, context)
            ttids.append(context.ttid)
            started_over.set()

        monkeypatch.setattr(client_commit, "_start_over", recording)

        def release_once_started_over() -> None:
            if started_over.wait(120):
                holder.tpc_abort(held)

        releaser = threading.Thread(target=release_once_started_over)
        releaser.start()
        try:
            with tm:  # waits node by node, then commits once the holder aborted
                connection.root()["counter"]["value"] = 1
        finally:
            started_over.set()
            releaser.join()
        first, second = ttids
        assert second > first
        for node in cluster.storages:
            assert node.manager.phase(first) is None, "the first TTID was dropped everywhere"

        # The next AT_ONCE_FIRST_PAUSE votes go node by node, then at once again.
        at_once: list[bytes] = []
        vote_at_once = client_commit._vote_at_once

        def counting(cluster_: Any, context: Any, *args: Any) -> bool:
            at_once.append(context.ttid)
            return vote_at_once(cluster_, context, *args)

        monkeypatch.setattr(client_commit, "_vote_at_once", counting)
        for _ in range(client_commit.AT_ONCE_FIRST_PAUSE):
            with tm:
                connection.root()["counter"]["value"] += 1
        assert at_once == []
        with tm:
            connection.root()["counter"]["value"] += 1
        assert len(at_once) == 1
    finally:
        db.close()
    fresh = ZODB.DB(cluster.client())
    try:
        with fresh.transaction() as other:
            assert other.root()["counter"]["value"] == 1 + client_commit.AT_ONCE_FIRST_PAUSE + 1
    finally:
        fresh.close()


def test_clients_voting_at_once_on_the_same_objects_never_wait_for_a_lock_timeout(cluster: ThreadCluster) -> None:
    """Votes at once cross on the nodes (one client's lock on one replica,
    another's on the other): bounded waits break every such cycle, so no
    transaction fails after the nodes' own lock timeout (30 s), and every
    increment lands (Length resolves the conflicts)."""
    setup = ZODB.DB(cluster.client())
    try:
        with setup.transaction() as connection:
            connection.root()["a"] = Length()
            connection.root()["b"] = Length()
    finally:
        setup.close()
    clients, rounds = 4, 8
    retried: list[str] = []
    failures: list[BaseException] = []

    def increments() -> None:
        db = ZODB.DB(cluster.client())
        try:
            tm = transaction.TransactionManager()
            connection = db.open(tm)
            for _ in range(rounds):
                for attempt in tm.attempts(20):
                    try:
                        with attempt:
                            connection.root()["a"].change(1)
                            connection.root()["b"].change(1)
                    except ConflictError as error:
                        retried.append(str(error))
                        raise
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=increments) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert not [reason for reason in retried if "waited too long" in reason], retried
    check = ZODB.DB(cluster.client())
    try:
        with check.transaction() as connection:
            assert connection.root()["a"]() == clients * rounds
            assert connection.root()["b"]() == clients * rounds
    finally:
        check.close()


def test_a_transaction_too_big_for_one_message_votes_node_by_node_without_starting_over(
        cluster: ThreadCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_commit, "MAX_REQUEST_BYTES", 2000)
    calls: list[str] = []
    for name in ("_vote_at_once", "_start_over"):
        original = getattr(client_commit, name)

        def counting(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(client_commit, name, counting)
    db = ZODB.DB(cluster.client())
    try:
        del calls[:]  # the root's creation
        with db.transaction() as connection:
            connection.root()["big"] = PersistentMapping({i: os.urandom(500) for i in range(20)})
        assert calls == []
        with db.transaction() as connection:
            connection.root()["small"] = 1
        assert calls == ["_vote_at_once"]
        with db.transaction() as connection:
            assert len(connection.root()["big"]) == 20
    finally:
        db.close()
