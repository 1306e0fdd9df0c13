"""ZODB's Connection.prefetch on a cluster of threads: one call per storage
node brings many objects into the client's cache, as of the connection's
snapshot and never newer."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import transaction
import ZODB
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from neostore import rpc
from neostore.client import NeoStorage

from harness import ThreadCluster

OBJECTS = 300


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2) as running:
        yield running


def _populate(cluster: ThreadCluster, count: int) -> None:
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as connection:
            connection.root()["items"] = PersistentList(PersistentMapping(v=0) for _ in range(count))
    finally:
        db.close()


def _reads(storage: NeoStorage) -> list[str]:
    """The names of the read rpcs ``storage`` makes one object at a time from now on."""
    calls: list[str] = []
    original = storage._cluster.read_call

    def counting(partition: int, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return original(partition, method, *args, **kwargs)

    storage._cluster.read_call = counting  # type: ignore[method-assign]
    return calls


def start_writer(cluster: ThreadCluster, key: str, commits: int, stop: threading.Event,
                 failures: list[BaseException]) -> threading.Thread:
    """A thread that sets every object of the list ``root[key]`` to 1, then
    2... (one value per transaction, ``commits`` of them at most) until
    ``stop``; what it raises goes to ``failures``."""
    def write() -> None:
        db = ZODB.DB(cluster.client())
        try:
            tm = transaction.TransactionManager()
            connection = db.open(tm)
            value = 0
            while not stop.is_set() and value < commits:
                value += 1
                with tm:
                    for item in connection.root()[key]:
                        item["v"] = value
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
        finally:
            db.close()

    writer = threading.Thread(target=write)
    writer.start()
    return writer


def read_snapshots(tm: transaction.TransactionManager, read: Callable[[], set[int]],
                   failures: list[BaseException], between: Callable[[int], None] | None = None) -> list[int]:
    """The value the reader's transactions saw, one ``read()`` per
    transaction (``between(round)`` before each), for 40 rounds at least and
    until it saw a commit of the writer's (``failures``: the writer's);
    fails on a transaction that saw two values."""
    seen: list[int] = []
    rounds = 0
    while rounds < 40 or (not seen[-1] and not failures):
        rounds += 1
        assert rounds < 100_000, "the writer's commits never reached the reader"
        if between is not None:
            between(rounds)
        with tm:
            values = read()
        assert len(values) == 1, f"one snapshot shows {sorted(values)}"
        seen.append(values.pop())
    return seen


def test_prefetched_objects_are_read_without_a_call_each(
        cluster: ThreadCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(cluster, OBJECTS)
    storage = cluster.client(read_ahead=0)  # no object comes before the prefetch asks for it
    db = ZODB.DB(storage)
    try:
        connection = db.open()
        items = list(connection.root()["items"])  # ghosts: nothing of them loaded yet
        batches: list[int] = []
        call_all = rpc.call_all

        def counting(calls: list[Any]) -> list[Any]:
            batches.append(len(calls))
            return call_all(calls)

        monkeypatch.setattr(rpc, "call_all", counting)
        reads = _reads(storage)
        connection.prefetch(items)
        assert batches == [3], "one LoadBeforeMany per storage node, all at once"
        assert [item["v"] for item in items] == [0] * OBJECTS
        assert reads == [], "every object came with the prefetch"
        connection.close()
    finally:
        db.close()


def test_a_prefetch_never_brings_data_newer_than_the_snapshot_under_concurrent_commits(
        cluster: ThreadCluster) -> None:
    """A writer sets every object to the same new value in each of its
    transactions; a reader prefetches and reads them all in each of its
    own: it must see one value throughout (its snapshot's), never lower
    than the one it saw before."""
    count = 50
    _populate(cluster, count)
    stop = threading.Event()
    failures: list[BaseException] = []
    writer = start_writer(cluster, "items", 200, stop, failures)
    db = ZODB.DB(cluster.client())
    try:
        tm = transaction.TransactionManager()
        connection = db.open(tm)

        def read() -> set[int]:
            items = list(connection.root()["items"])
            connection.prefetch(items)
            return {item["v"] for item in items}

        seen = read_snapshots(tm, read, failures)
    finally:
        stop.set()
        writer.join()
        db.close()
    assert not failures, failures
    assert seen == sorted(seen), "a later snapshot never shows older values"
