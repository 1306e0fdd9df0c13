"""The invalidation publisher: order, fan-out, replay since a TID, reset."""

from __future__ import annotations

import threading

import pytest

from neostore.ids import ZERO_TID, p64
from neostore.master_node.invalidations import (
    Event,
    Invalidation,
    InvalidationPublisher,
    ResetCache,
    StartTid,
    Subscription,
    TableChanged,
)
from neostore.partition_table import PartitionTable


def tid(value: int) -> bytes:
    return p64(value)


def publish_range(publisher: InvalidationPublisher, first: int, last: int) -> None:
    for value in range(first, last + 1):
        publisher.publish(tid(value), tid(value - 1), (p64(value % 7),))


def take(subscription: Subscription, count: int) -> list[Event]:
    events = []
    for _ in range(count):
        event = subscription.next_event(timeout=5)
        assert event is not None, f"stream ended after {events}"
        events.append(event)
    return events


def invalidated_tids(events: list[Event]) -> list[int]:
    return [int.from_bytes(e.tid, "big") for e in events if isinstance(e, Invalidation)]


def test_a_new_stream_starts_with_the_last_published_tid() -> None:
    publisher = InvalidationPublisher(last_tid=tid(5))
    subscription = publisher.subscribe()
    assert take(subscription, 1) == [StartTid(tid(5))]
    assert subscription.next_event(timeout=0.01) is None
    assert not subscription.ended


def test_invalidations_arrive_in_tid_order_after_the_start() -> None:
    publisher = InvalidationPublisher()
    subscription = publisher.subscribe()
    assert take(subscription, 1) == [StartTid(ZERO_TID)]
    publish_range(publisher, 1, 5)
    events = take(subscription, 5)
    assert invalidated_tids(events) == [1, 2, 3, 4, 5]
    assert events[0] == Invalidation(tid(1), tid(0), (p64(1),))


def test_publishing_out_of_order_is_refused() -> None:
    publisher = InvalidationPublisher(last_tid=tid(10))
    with pytest.raises(ValueError, match="not after"):
        publisher.publish(tid(10), tid(9), ())


def test_the_current_table_follows_the_start_and_changes_are_streamed() -> None:
    first = PartitionTable(version=3, num_partitions=1, num_replicas=1)
    publisher = InvalidationPublisher(table=first)
    subscription = publisher.subscribe()
    assert take(subscription, 2) == [StartTid(ZERO_TID), TableChanged(first)]
    second = PartitionTable(version=4, num_partitions=1, num_replicas=1)
    publisher.publish_table(first)  # not newer: ignored
    publisher.publish_table(second)
    assert take(subscription, 1) == [TableChanged(second)]


@pytest.mark.parametrize(
    "since, expected",
    [
        pytest.param(3, [4, 5, 6], id="inside-history"),
        pytest.param(6, [], id="up-to-date"),
        pytest.param(9, [], id="ahead"),
    ],
)
def test_since_tid_replays_the_history_after_it(since: int, expected: list[int]) -> None:
    publisher = InvalidationPublisher()
    publish_range(publisher, 1, 6)
    subscription = publisher.subscribe(since_tid=tid(since))
    events = take(subscription, 1 + len(expected))
    assert events[0] == StartTid(tid(6))
    assert invalidated_tids(events) == expected
    assert subscription.next_event(timeout=0.01) is None


def test_since_tid_older_than_the_history_resets_the_cache() -> None:
    publisher = InvalidationPublisher(history_size=3)
    publish_range(publisher, 1, 6)  # keeps 4, 5, 6; floor is 3
    assert publisher.floor == tid(3)
    covered = take(publisher.subscribe(since_tid=tid(3)), 4)
    assert invalidated_tids(covered) == [4, 5, 6]
    reset = take(publisher.subscribe(since_tid=tid(2)), 2)
    assert reset == [StartTid(tid(6)), ResetCache(tid(6))]


def test_a_restarted_master_resets_clients_older_than_its_start() -> None:
    publisher = InvalidationPublisher(last_tid=tid(50))
    assert take(publisher.subscribe(since_tid=tid(49)), 2)[1] == ResetCache(tid(50))
    assert take(publisher.subscribe(since_tid=tid(50)), 1) == [StartTid(tid(50))]


def test_a_subscriber_left_behind_by_the_history_gets_a_reset_and_continues() -> None:
    publisher = InvalidationPublisher(history_size=2)
    subscription = publisher.subscribe()
    take(subscription, 1)
    publish_range(publisher, 1, 5)
    assert take(subscription, 1) == [ResetCache(tid(5))]
    publish_range(publisher, 6, 6)
    assert invalidated_tids(take(subscription, 1)) == [6]


def test_every_subscriber_gets_every_invalidation_in_order() -> None:
    publisher = InvalidationPublisher()
    subscriptions = [publisher.subscribe() for _ in range(8)]
    results: list[list[int]] = [[] for _ in subscriptions]
    for subscription in subscriptions:
        take(subscription, 1)

    def read(index: int) -> None:
        results[index] = invalidated_tids(take(subscriptions[index], 200))

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(subscriptions))]
    for reader in readers:
        reader.start()
    publish_range(publisher, 1, 200)
    for reader in readers:
        reader.join(10)
    assert results == [list(range(1, 201))] * len(subscriptions)


def test_closing_the_publisher_ends_every_stream() -> None:
    publisher = InvalidationPublisher()
    subscription = publisher.subscribe()
    take(subscription, 1)
    ended = threading.Event()

    def drain() -> None:
        for _ in subscription:
            pass
        ended.set()

    reader = threading.Thread(target=drain)
    reader.start()
    publisher.close()
    assert ended.wait(5)
    reader.join()
    assert subscription.ended


def test_closing_one_subscription_ends_only_that_stream() -> None:
    publisher = InvalidationPublisher()
    closed, open_ = publisher.subscribe(), publisher.subscribe()
    take(closed, 1)
    take(open_, 1)
    closed.close()
    assert list(closed) == []
    publish_range(publisher, 1, 1)
    assert invalidated_tids(take(open_, 1)) == [1]
