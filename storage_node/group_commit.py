"""Group commit: the writes that arrive while one is being made durable
share the next write transaction, and its one fsync.

A storage node makes every vote and every Commit order durable before it
answers (one LMDB write transaction, fsynced: :mod:`.database`).  With
many clients, votes and orders arrive while another write is being
fsynced; each used to wait for it, then pay an fsync of its own.  Here the
thread that finds no write in progress writes everything queued so far in
one transaction (:class:`Job` by :class:`Job`, in arrival order); the
threads that arrive meanwhile queue and wait.  When that write is durable,
each waiter whose job it held returns its result; the first of those
queued since is woken to write the next group.  No thread is added, no
write waits for company (a lone write goes at once, as before), and a
caller returns only once its own changes are durable, as before.

``write(jobs)`` (the database's) runs the jobs in one transaction and sets
each one's ``result`` or ``error``: a job that raises is rolled back alone
(a nested transaction), and a transaction that fails to commit fails all
of its jobs, none of which is then written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class Job(Generic[R]):
    """One caller's writes: ``work(txn)`` and, once written, its outcome."""

    __slots__ = ("work", "result", "error", "finished", "wake")

    def __init__(self, work: Callable[[Any], R]) -> None:
        self.work = work
        self.result: R | None = None
        self.error: BaseException | None = None
        self.finished = False  # written (or failed): result or error is set
        self.wake = threading.Event()  # finished, or this caller writes the next group


class GroupCommit:
    """Runs works in shared write transactions; see the module docstring."""

    def __init__(self, write: Callable[[list[Job[Any]]], None]) -> None:
        self._write = write
        self._mutex = threading.Lock()
        #: Notified (with ``_mutex``) when a job is queued: a lingering writer wakes.
        self._queued = threading.Condition(self._mutex)
        self._queue: list[Job[Any]] = []
        self._writing = False  # a caller is writing a group
        self.groups = 0  # transactions written
        self.jobs = 0  # works written in them

    def run(self, work: Callable[[Any], R], linger: float = 0.0) -> R:
        """``work(txn)`` written and durable; its result, or what it raised.

        ``linger``: a job that would be written alone waits up to that many
        seconds for another one to share its write (the first to come ends
        the wait).  For a write nobody waits on but the caller: a Commit
        order, whose client's next vote usually comes right after it."""
        job: Job[R] = Job(work)
        with self._mutex:
            self._queue.append(job)
            self._queued.notify_all()
            lead = not self._writing
            self._writing = True
            if lead and linger > 0 and len(self._queue) == 1:
                self._queued.wait_for(lambda: len(self._queue) > 1, linger)
        if not lead:
            job.wake.wait()
            lead = not job.finished
        if lead:
            self._write_next_group()
        assert job.finished
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set by write when no error

    def _write_next_group(self) -> None:
        """Write the queue (it holds the caller's job), then hand over."""
        with self._mutex:
            group, self._queue = self._queue, []
        try:
            self._write(group)
        except BaseException as error:  # noqa: BLE001 - the group's jobs learn it
            for job in group:  # not written: each fails with its own error, or this one
                if job.error is None:
                    job.result = None
                    job.error = error
        finally:
            self.groups += 1
            self.jobs += len(group)
            for job in group:
                job.finished = True
                job.wake.set()
            with self._mutex:
                if self._queue:
                    self._queue[0].wake.set()  # not finished: it writes the next group
                else:
                    self._writing = False
