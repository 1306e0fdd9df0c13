"""A client streaming invalidations from a follower that catches up from a Raft snapshot.

Three masters in this process.  A client follows the invalidation stream of
a follower F while F is cut off from the other masters' Raft messages; the
client commits (the leader and the third master are a majority), more
commits make the leader compact its log past F's, and F, healed, catches up
from a snapshot.  F cannot list the transactions the snapshot skipped, so
its stream resets the client's cache at the snapshot's last TID — which
covers the client's own commit.  That reset must let the client's
``tpc_finish`` return (its TID is known from Finish), not make it wait for
an invalidation that never comes and fail although the commit went through.
"""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.client import invalidations as client_invalidations
from neostore.master_node import node as master_node_module
from neostore.master_node.raft_driver import RaftCommandLog

from harness import ThreadCluster
from waiting import wait_until

# Instead of 60 s: the bug shows as tpc_finish failing after this.  Not
# tight: the scenario's own commits and catch-up must fit in it on a loaded
# machine, and no wall-clock bound stands for the bug.
FINISH_LIMIT = 30.0


class _ShortLog(RaftCommandLog):
    """Keeps one entry behind each snapshot: a lagging follower needs a snapshot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["keep_entries"] = 1
        super().__init__(*args, **kwargs)


def _isolate(cluster: ThreadCluster, index: int) -> list[tuple[Any, Any]]:
    """Drop every Raft message to and from master ``index``; the undo list."""
    undo: list[tuple[Any, Any]] = []
    node_id = index + 1
    for position, master in enumerate(cluster.master_nodes):
        senders = master._parts.command_log._transport._senders
        for peer_id, sender in senders.items():
            if position == index or peer_id == node_id:
                undo.append((sender, sender.enqueue))
                sender.enqueue = lambda messages: None
    return undo


def test_a_reset_from_a_follower_caught_up_by_snapshot_completes_the_clients_own_commit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(master_node_module, "RaftCommandLog", _ShortLog)
    monkeypatch.setattr(client_invalidations, "FINISH_STREAM_TIMEOUT", FINISH_LIMIT)
    cluster = ThreadCluster(str(tmp_path), num_masters=3, snapshot_every=3)
    cluster.start()
    try:
        leader = cluster.wait_for_leader(timeout=20)
        index = next(i for i, m in enumerate(cluster.master_nodes) if m is not leader)
        follower = cluster.master_nodes[index]
        other = next(m for m in cluster.master_nodes if m is not leader and m is not follower)
        # After the leader, the follower: where the stream goes once it breaks.
        storage = NeoStorage([leader.address, follower.address, other.address], cluster.name)
        db = ZODB.DB(storage)
        helper = cluster.client(server_sync=True)  # writes the root right after the other client
        helper_db = ZODB.DB(helper)
        try:
            with db.transaction() as connection:
                connection.root()["mine"] = PersistentMapping(n=0)
            with helper_db.transaction() as connection:
                connection.root.other = PersistentMapping(n=0)

            undo = _isolate(cluster, index)
            # Move the client's stream to the follower.
            connection_to_cluster = storage._cluster
            streaming_from: list[str] = []
            follow = connection_to_cluster._follow_stream

            def follow_and_note(address: str) -> None:
                streaming_from.append(address)
                follow(address)

            connection_to_cluster._follow_stream = follow_and_note
            connection_to_cluster._stream_call.cancel()
            wait_until(lambda: streaming_from and streaming_from[-1] == follower.address, "the stream on F")
            time.sleep(0.3)  # subscribed
            print(f"\nisolated master {index + 1} ({follower.address}) from Raft; client streams from it")

            outcome: dict[str, Any] = {}

            def commit_mine() -> None:
                manager = transaction.TransactionManager()
                conn = db.open(manager)
                try:
                    conn.root()["mine"]["n"] = 1
                    started = time.monotonic()
                    try:
                        manager.commit()
                        outcome["tid"] = conn.root()["mine"]._p_serial
                    except Exception as error:  # noqa: BLE001 - reported below
                        outcome["error"] = error
                        manager.abort()
                    outcome["seconds"] = time.monotonic() - started
                finally:
                    conn.close()

            committer = threading.Thread(target=commit_mine, daemon=True)
            committer.start()
            # More entries than the leader keeps behind its snapshots.
            for n in range(1, 8):
                with helper_db.transaction() as connection:
                    connection.root.other["n"] = n
            leader_log = leader._parts.command_log
            assert leader_log._store.first_index() > follower._parts.command_log._node.applied_index + 1, \
                "the leader did not compact past the follower's log"
            last_tid = leader.state.last_tid
            for sender, enqueue in undo:
                sender.enqueue = enqueue
            print("healed: the follower catches up from a snapshot")
            wait_until(lambda: follower.state.last_tid >= last_tid, "the follower to catch up")
            committer.join(FINISH_LIMIT + 10)
            assert "seconds" in outcome, "tpc_finish did not return"
            assert "error" not in outcome, f"tpc_finish failed after {outcome['seconds']:.1f}s: {outcome['error']}"
            tid = outcome["tid"]
            assert tid <= follower.state.last_tid
            assert storage.lastTransaction() >= tid
            with db.transaction() as connection:
                assert connection.root()["mine"]["n"] == 1
            # The stream goes on after the reset: the helper's next commit reaches this client.
            with helper_db.transaction() as connection:
                connection.root.other["n"] = 100
            expected = helper.lastTransaction()
            wait_until(lambda: storage.lastTransaction() >= expected, "the next invalidation")
            with db.transaction() as connection:
                assert connection.root()["other"]["n"] == 100
        finally:
            db.close()
            helper_db.close()
    finally:
        cluster.stop()
