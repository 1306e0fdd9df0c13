"""A follower's invalidation stream: decisions published once finished, in TID order."""

from __future__ import annotations

import dataclasses

from neostore.ids import p64
from neostore.master_node.invalidations import InvalidationPublisher
from neostore.master_node.leadership import ReplicaFeed
from neostore.master_node.state import ClusterState, PendingDecision


def pending(*tids: int) -> ClusterState:
    return dataclasses.replace(ClusterState(), pending_decisions=tuple(
        PendingDecision(tid=p64(tid), ttid=p64(tid - 1), partitions=(0,), participants=(1,), oids=(p64(tid),))
        for tid in tids))


def published(publisher: InvalidationPublisher) -> list[int]:
    return [int.from_bytes(invalidation.tid, "big") for invalidation in publisher._history]


def test_a_follower_publishes_a_decision_once_every_participant_applied_it() -> None:
    publisher = InvalidationPublisher()
    feed = ReplicaFeed(publisher, ClusterState())
    feed(ClusterState(), pending(10))
    assert published(publisher) == []
    feed(pending(10), pending())
    assert published(publisher) == [10]


def test_a_follower_publishes_in_tid_order_even_when_later_decisions_finish_first() -> None:
    publisher = InvalidationPublisher()
    feed = ReplicaFeed(publisher, ClusterState())
    feed(ClusterState(), pending(10, 20, 30))
    feed(pending(10, 20, 30), pending(10))  # 20 and 30 finished first
    assert published(publisher) == []
    feed(pending(10), pending())
    assert published(publisher) == [10, 20, 30]


def test_while_leading_the_feed_leaves_publishing_to_the_coordinator() -> None:
    publisher = InvalidationPublisher()
    feed = ReplicaFeed(publisher, pending(10, 20))
    feed.set_active(False)
    publisher.publish(p64(10), p64(9), (p64(10),))  # the leader's coordinator
    feed(pending(10, 20), pending(20))
    assert published(publisher) == [10]
    feed.set_active(True)  # deposed: 20 is published once finished, 10 not twice
    feed(pending(20), pending())
    assert published(publisher) == [10, 20]


def test_a_follower_that_caught_up_from_a_snapshot_resets_its_subscribers_caches() -> None:
    from neostore.master_node.invalidations import ResetCache

    publisher = InvalidationPublisher()
    feed = ReplicaFeed(publisher, ClusterState())
    subscription = publisher.subscribe(p64(0))
    assert subscription.next_event(timeout=1) is not None  # StartTid
    # The state jumps past decisions this master never saw pending.
    feed(ClusterState(), dataclasses.replace(ClusterState(), last_tid=p64(50)))
    events = []
    while (event := subscription.next_event(timeout=0.2)) is not None:
        events.append(event)
    assert ResetCache(p64(50)) in events
    assert publisher.last_tid == p64(50)
    late = publisher.subscribe(p64(10))
    first_events = [late.next_event(timeout=1), late.next_event(timeout=0.2)]
    assert ResetCache(p64(50)) in first_events
