"""tpc_finish across a leader change: the client gets the true outcome.

Three in-process masters (Raft).  The leader is stopped while a client's
Finish is in flight, at a chosen point of the commit path (a hook on the
leader's coordinator):

* after the decision is in the replicated log, before the answer: the
  client asks ``GetTransactionOutcome``, learns its TID, and tpc_finish
  returns it as if the Finish had answered; the data is there;
* before any decision: the new leader answers ABORTED (the old TTID never
  commits); the client releases the votes and commits the transaction
  once more under the new leader, with a new TTID: it is committed once;
  unless one of its objects changed meanwhile: then tpc_finish raises a
  ConflictError (conflicts can no longer be resolved) and nothing of it
  is committed.
"""

from __future__ import annotations

import pathlib
import threading
from typing import Any

import pytest
import transaction
import ZODB

from neostore import errors
from neostore.master_node.commit import CommitCoordinator
from neostore.master_node.node import MasterNode

from harness import ThreadCluster


def _coordinator(master: MasterNode) -> CommitCoordinator:
    parts = master._parts  # noqa: SLF001 - test hook
    assert parts is not None
    return parts.leadership.coordinator()


def _stop_when(reached: threading.Event, master: MasterNode) -> threading.Thread:
    """Stop ``master`` from another thread once the hook was reached."""

    def run() -> None:
        if reached.wait(30):
            master.stop()

    thread = threading.Thread(target=run, name="stop-leader", daemon=True)
    thread.start()
    return thread


def _read(cluster: ThreadCluster, key: str) -> Any:
    db = ZODB.DB(cluster.client(server_sync=True))
    try:
        with db.transaction() as connection:
            return connection.root().get(key)
    finally:
        db.close()


def test_a_finish_decided_before_the_leader_died_returns_its_tid(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path / "cluster"), num_masters=3) as cluster:
        db = ZODB.DB(cluster.client())
        try:
            leader = cluster.leader()
            assert leader is not None
            coordinator = _coordinator(leader)
            reached = threading.Event()
            start_applying = coordinator._start_applying  # noqa: SLF001

            def decided_then_die(decision: Any, finish: Any) -> None:
                if finish is None:
                    start_applying(decision, finish)
                    return
                # Committed in the replicated log; the leader dies before
                # applying, publishing or answering.
                reached.set()
                coordinator._stopping.wait(30)  # noqa: SLF001
                finish.fail(errors.Unavailable("the leader died before answering"))

            coordinator._start_applying = decided_then_die  # type: ignore[method-assign]  # noqa: SLF001
            stopper = _stop_when(reached, leader)
            manager = transaction.TransactionManager()
            connection = db.open(manager)
            connection.root()["answer"] = 42
            manager.commit()
            tid = connection.root()._p_serial
            connection.close()
            stopper.join(30)
            assert reached.is_set()
            assert db.storage.lastTransaction() == tid
            new_leader = cluster.wait_for_leader(other_than=leader)
            assert [o.tid for o in new_leader.state.recent_outcomes].count(tid) == 1
            assert _read(cluster, "answer") == 42
            # Commits go on, after that TID.
            with db.transaction() as connection:
                connection.root()["after"] = 1
            assert db.storage.lastTransaction() > tid
        finally:
            db.close()


def _die_before_deciding(leader: MasterNode) -> threading.Event:
    """From now on, ``leader`` stops as it is about to decide a transaction
    (the Finish fails, nothing decided); set once that happened."""
    coordinator = _coordinator(leader)
    reached = threading.Event()
    decide_batch = coordinator._decide_batch  # noqa: SLF001

    def die_before_deciding(batch: list[Any], marks: Any, may_block: bool = True) -> None:
        if not batch:
            decide_batch(batch, marks, may_block)
            return
        reached.set()
        coordinator._stopping.wait(30)  # noqa: SLF001
        for finish in batch:
            finish.fail(errors.Unavailable("the leader died before deciding"))

    coordinator._decide_batch = die_before_deciding  # type: ignore[method-assign]  # noqa: SLF001
    return reached


def test_a_finish_not_decided_when_the_leader_died_commits_again_once(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path / "cluster"), num_masters=3) as cluster:
        db = ZODB.DB(cluster.client())
        try:
            leader = cluster.leader()
            assert leader is not None
            last_tid = leader.state.last_tid
            reached = _die_before_deciding(leader)
            stopper = _stop_when(reached, leader)
            manager = transaction.TransactionManager()
            connection = db.open(manager)
            connection.root()["lost"] = 1
            manager.commit()  # under the new leader
            tid = connection.root()._p_serial
            connection.close()
            stopper.join(30)
            assert reached.is_set()
            new_leader = cluster.wait_for_leader(other_than=leader)
            assert tid > last_tid and db.storage.lastTransaction() == tid
            assert [o.tid for o in new_leader.state.recent_outcomes].count(tid) == 1
            assert _read(cluster, "lost") == 1
            history = db.storage.history(db.open().root()._p_oid, size=10)
            assert [h["tid"] for h in history].count(tid) == 1
            with db.transaction() as connection:
                connection.root()["after"] = 1
            assert _read(cluster, "after") == 1
        finally:
            db.close()


def test_a_finish_not_decided_when_the_leader_died_raises_if_its_objects_changed_meanwhile(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neostore.client import commit as client_commit

    with ThreadCluster(str(tmp_path / "cluster"), num_masters=3) as cluster:
        db = ZODB.DB(cluster.client())
        other = ZODB.DB(cluster.client(server_sync=True))
        try:
            with db.transaction() as connection:
                connection.root()["value"] = 0
            leader = cluster.leader()
            assert leader is not None
            reached = _die_before_deciding(leader)
            stopper = _stop_when(reached, leader)
            vote = client_commit.vote
            votes: list[bytes] = []

            def another_commit_first(cluster_: Any, context: Any, *args: Any) -> list[bytes]:
                if cluster_ is db.storage._cluster:  # noqa: SLF001 - ours, not the other client's
                    votes.append(context.ttid)
                    if len(votes) == 2:  # the vote again: another client changes the object first
                        with other.transaction() as connection:
                            connection.root()["value"] = 2
                return vote(cluster_, context, *args)

            monkeypatch.setattr(client_commit, "vote", another_commit_first)
            manager = transaction.TransactionManager()
            connection = db.open(manager)
            connection.root()["value"] = 1
            with pytest.raises(client_commit.TransactionNotCommittedError, match="could not be committed again"):
                manager.commit()
            manager.abort()
            connection.close()
            stopper.join(30)
            assert len(votes) == 2
            cluster.wait_for_leader(other_than=leader)
            assert _read(cluster, "value") == 2
            # The conflict it met is known: the next transaction sees that commit.
            assert db.storage._dispatcher._known_tid == other.lastTransaction()  # noqa: SLF001
            with db.transaction() as connection:
                assert connection.root()["value"] == 2
        finally:
            other.close()
            db.close()
