"""A follower whose state jumped over decisions (a Raft snapshot) publishes nothing after the jump before a ResetCache.

The follower's feed publishes a decision once it left ``pending_decisions``;
a snapshot can bring decisions this master never saw pending.  Their TIDs
cannot be listed, so subscribers must get a ResetCache at the end of the
jump, and before any TID published after it: an Invalidation after
skipped TIDs would let a client read stale cached objects at that TID.
"""

from __future__ import annotations

import dataclasses

from neostore.ids import p64
from neostore.master_node.invalidations import (
    Invalidation,
    InvalidationPublisher,
    ResetCache,
    StartTid,
)
from neostore.master_node.leadership import ReplicaFeed
from neostore.master_node.state import ClusterState, Outcome, PendingDecision


class RecordingPublisher(InvalidationPublisher):
    """Records what the feed does, in order (a subscriber may read in between)."""

    def __init__(self, last: int) -> None:
        super().__init__(p64(last))
        self.calls: list[tuple[str, int]] = []

    def publish(self, tid: bytes, ttid: bytes, oids: tuple[bytes, ...]) -> None:
        self.calls.append(("publish", int.from_bytes(tid, "big")))
        super().publish(tid, ttid, oids)

    def skip_to(self, tid: bytes) -> None:
        self.calls.append(("reset", int.from_bytes(tid, "big")))
        super().skip_to(tid)


def state(last: int, pending: tuple[int, ...] = (), decided: tuple[int, ...] = ()) -> ClusterState:
    """A state whose last decided TID is ``last``; ``decided`` are the recent outcomes."""
    return dataclasses.replace(
        ClusterState(),
        last_tid=p64(last),
        pending_decisions=tuple(
            PendingDecision(tid=p64(t), ttid=p64(t - 1), partitions=(0,), participants=(1,), oids=(p64(t),))
            for t in pending),
        recent_outcomes=tuple(Outcome(p64(t - 1), p64(t)) for t in decided),
    )


def events(publisher: InvalidationPublisher, since: int) -> list[object]:
    subscription = publisher.subscribe(p64(since))
    found = []
    while (event := subscription.next_event(timeout=0.1)) is not None:
        if not isinstance(event, StartTid):
            found.append(event)
    return found


def drain(subscription) -> list[object]:  # type: ignore[no-untyped-def]
    found = []
    while (event := subscription.next_event(timeout=0.1)) is not None:
        if not isinstance(event, StartTid):
            found.append(event)
    return found


def test_entries_applied_one_by_one_are_published_one_by_one() -> None:
    publisher = InvalidationPublisher(p64(5))
    before = state(5, decided=(5,))
    feed = ReplicaFeed(publisher, before)
    subscription = publisher.subscribe(p64(5))
    one = state(7, pending=(6, 7), decided=(5, 6, 7))  # one entry deciding two transactions
    feed(before, one)
    two = state(7, pending=(7,), decided=(5, 6, 7))
    feed(one, two)
    feed(two, state(7, decided=(5, 6, 7)))
    assert drain(subscription) == [
        Invalidation(p64(6), p64(5), (p64(6),)), Invalidation(p64(7), p64(6), (p64(7),))]


def test_a_snapshot_with_a_pending_decision_after_skipped_ones_resets_before_publishing_it() -> None:
    publisher = RecordingPublisher(5)
    before = state(5, decided=(5,))
    feed = ReplicaFeed(publisher, before)
    subscription = publisher.subscribe(p64(5))
    restored = state(10, pending=(8,), decided=(5, 6, 7, 8, 9, 10))  # 6, 7, 9, 10 already applied
    feed(before, restored)
    assert drain(subscription) == []  # 8 is not applied everywhere yet: nothing visible beyond 5
    feed(restored, state(10, decided=(5, 6, 7, 8, 9, 10)))
    assert drain(subscription) == [ResetCache(p64(10))]
    feed(state(10, decided=(5, 6, 7, 8, 9, 10)), state(11, pending=(11,), decided=(5, 6, 7, 8, 9, 10, 11)))
    feed(state(11, pending=(11,)), state(11))
    assert drain(subscription) == [Invalidation(p64(11), p64(10), (p64(11),))]
    assert publisher.calls == [("reset", 10), ("publish", 11)]  # never 8 alone, after skipped 6 and 7


def test_a_snapshot_whose_last_decision_is_pending_still_resets_for_the_skipped_ones() -> None:
    publisher = InvalidationPublisher(p64(5))
    before = state(5, decided=(5,))
    feed = ReplicaFeed(publisher, before)
    subscription = publisher.subscribe(p64(5))
    restored = state(10, pending=(10,), decided=(5, 6, 7, 8, 9, 10))
    feed(before, restored)
    feed(restored, state(10, decided=(5, 6, 7, 8, 9, 10)))
    assert drain(subscription) == [ResetCache(p64(10))]
    assert publisher.last_tid == p64(10)
    assert events(publisher, 5) == [ResetCache(p64(10))]
