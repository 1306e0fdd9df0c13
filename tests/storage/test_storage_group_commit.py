"""Group commit: writes that come while one is made durable share the next
transaction; each caller returns once its own changes are durable, with its
own result or error."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
from typing import Any

import pytest

from neostore import errors
from neostore.ids import MAX_TID, p64
from neostore.records import Record
from neostore.storage_node.database import Database, PendingObject
from neostore.storage_node.group_commit import GroupCommit, Job
from neostore.storage_node.layout import StoredObject

from waiting import wait_until

CLUSTER = "test-cluster"
PARTITION = 3


class _GatedWriter:
    """A ``write`` that records each group and holds the first one until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.groups: list[list[Any]] = []
        self.fail_next: BaseException | None = None

    def __call__(self, jobs: list[Job[Any]]) -> None:
        if not self.groups:
            self.entered.set()
            assert self.gate.wait(30)
        self.groups.append([job.work for job in jobs])
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        for job in jobs:
            try:
                job.result = job.work(None)
            except Exception as error:  # noqa: BLE001 - the job's own
                job.error = error


def _queued_behind_a_first_write(pool: concurrent.futures.ThreadPoolExecutor, writer: _GatedWriter,
                                 group: GroupCommit, count: int) -> tuple[Any, list[Any]]:
    """A first write held in ``writer``, then ``count`` writes queued behind
    it (each returning its number): their futures."""
    first = pool.submit(group.run, lambda txn: "first")
    assert writer.entered.wait(30)
    others = [pool.submit(group.run, lambda txn, n=n: n) for n in range(count)]
    wait_until(lambda: len(group._queue) == count, f"{count} writes queued")  # noqa: SLF001
    return first, others


def test_the_writes_that_come_during_a_write_share_the_next_one() -> None:
    writer = _GatedWriter()
    group = GroupCommit(writer)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        first, others = _queued_behind_a_first_write(pool, writer, group, 5)
        writer.gate.set()
        assert first.result(30) == "first"
        assert [future.result(30) for future in others] == list(range(5))
    assert [len(jobs) for jobs in writer.groups] == [1, 5]
    assert (group.groups, group.jobs) == (2, 6)


def test_a_lone_write_goes_at_once_and_each_caller_gets_its_own_error() -> None:
    writer = _GatedWriter()
    writer.gate.set()
    group = GroupCommit(writer)

    def refused(txn: Any) -> None:
        raise errors.BadRequest("this one only")

    assert group.run(lambda txn: 1) == 1
    with pytest.raises(errors.BadRequest, match="this one only"):
        group.run(refused)
    assert group.run(lambda txn: 2) == 2
    assert [len(jobs) for jobs in writer.groups] == [1, 1, 1]


def test_a_group_that_fails_to_commit_fails_each_of_its_writes_and_the_next_group_goes_on() -> None:
    writer = _GatedWriter()
    group = GroupCommit(writer)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first, doomed = _queued_behind_a_first_write(pool, writer, group, 3)
        writer.fail_next = OSError("disk gone")
        writer.gate.set()
        with pytest.raises(OSError, match="disk gone"):
            first.result(30)  # the first group failed
        for future in doomed:
            assert future.result(30) in range(3)  # the second group was written
    assert group.run(lambda txn: "after") == "after"


# -- on the database -------------------------------------------------------------


def _stored(text: bytes) -> StoredObject:
    return StoredObject.from_record(Record.pack(text, compress=False))


def test_votes_and_commits_written_together_each_get_their_own_outcome(tmp_path: pathlib.Path) -> None:
    """Held behind a first write, a commit, three votes and a vote too big
    for the map go in one transaction: one fsync; the big vote alone fails
    (StorageFull, rolled back), the others are durable after a reopen."""
    path = str(tmp_path / "data")
    database = Database(path, CLUSTER, map_size=2**20)
    big = StoredObject.from_record(Record.pack(bytes(range(256)) * 8192, compress=False))
    try:
        database.write_pending(p64(100), [PendingObject(PARTITION, p64(1), _stored(b"to commit"))])
        writes_before = database.durable_writes
        database._write_mutex.acquire()  # noqa: SLF001 - the write in progress
        try:
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                first = pool.submit(database.write_pending, p64(101),
                                    [PendingObject(PARTITION, p64(2), _stored(b"first"))])
                group = database._group  # noqa: SLF001
                # Taken as a group of its own, and waiting for the write mutex:
                wait_until(lambda: group._writing and not group._queue, "the first write")  # noqa: SLF001
                commit = pool.submit(database.commit_many, [(p64(100), p64(200))])
                votes = [pool.submit(database.write_pending, p64(102 + n),
                                     [PendingObject(PARTITION, p64(3 + n), _stored(b"vote %d" % n))])
                         for n in range(3)]
                too_big = pool.submit(database.write_pending, p64(110), [PendingObject(PARTITION, p64(9), big)])
                wait_until(lambda: len(group._queue) == 5, "five writes queued")  # noqa: SLF001
                database._write_mutex.release()  # noqa: SLF001
                first.result(30)
                assert commit.result(30) == [True]
                for vote in votes:
                    vote.result(30)
                with pytest.raises(errors.StorageFull, match=path):
                    too_big.result(30)
        finally:
            if database._write_mutex.locked():  # noqa: SLF001
                database._write_mutex.release()  # noqa: SLF001
        assert database.durable_writes == writes_before + 2
    finally:
        database.close()
    reopened = Database(path, CLUSTER, map_size=2**20)
    try:
        assert reopened.pending_ttids() == [p64(101), p64(102), p64(103), p64(104)]
        assert reopened.applied_tid(p64(100)) == p64(200)
        record = reopened.load_before(PARTITION, p64(1), MAX_TID).record
        assert record is not None and record.unpack() == b"to commit"
    finally:
        reopened.close()
