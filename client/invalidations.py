"""Invalidations: from the master to the cache and to ZODB, in order.

The master streams every committed TID, in TID order, with the oids it
changed (several per message when they come fast), and a client's own
``tpc_finish`` gets in its Finish answer every TID committed since the last
one it handed to ZODB, up to its own.  Whichever comes first,
:class:`InvalidationDispatcher` handles each TID once, in TID order (a TID
at or below ``lastTransaction()`` was handled already and is skipped):

1. invalidates the client's object cache;
2. if the TID is one of this client's own commits (recognised by its TTID),
   calls ZODB's callback from the thread in ``tpc_finish`` (that is how
   ZODB invalidates its other connections for a local commit): the stream,
   if it gets there first, hands over to that thread and waits; otherwise
   calls the registered DB's ``invalidate(tid, oids)``;
3. only then advances ``lastTransaction()``.

A cache reset (``ResetCache`` at TID X: the master cannot list what changed
up to X) drops the whole cache, calls ZODB's ``invalidateCache()`` and
advances ``lastTransaction()`` to X; a local ``tpc_finish`` waiting for a
TID up to X then completes without its invalidation, which will never come.

So ZODB always receives a TID's invalidations before ``lastTransaction()``
reports that TID (ZODB 5.6 contract), in TID order, whichever thread commits.
``lastTransaction()`` also waits while a local ``tpc_finish`` callback runs,
as FileStorage's lock makes it do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from neostore import errors
from neostore.client.cache import ObjectCache
from neostore.ids import ZERO_TID

#: How long tpc_finish waits for the stream to deliver its own TID.
FINISH_STREAM_TIMEOUT = 60.0


class _OwnCommit:
    """The meeting point of the stream thread and one ``tpc_finish``."""

    def __init__(self) -> None:
        self.reached = threading.Event()  # the stream delivered our TID
        self.released = threading.Event()  # tpc_finish is done with it
        self.tid: bytes = b""
        self.oids: list[bytes] = []


class InvalidationDispatcher:
    """The stream listener of one client (see the module docstring)."""

    def __init__(self, cache: ObjectCache) -> None:
        self._cache = cache
        self._db: Any = None
        # Held while ZODB is told of a TID and lastTransaction advances.
        self._order_lock = threading.RLock()
        self._progress = threading.Condition(threading.Lock())
        self._last_tid: bytes = ZERO_TID  # last TID handed to ZODB
        self._known_tid: bytes = ZERO_TID  # a TID known committed (a conflict named it)
        self._started = False
        self._resumed = False  # the cache came from a file: the stream starts after its TID
        self._own: dict[bytes, _OwnCommit] = {}

    def register_db(self, db: Any) -> None:
        self._db = db

    def detach_db(self) -> None:
        """Deliver nothing more to ZODB: waits for a delivery in progress
        (the storage is closing, the DB goes next)."""
        with self._order_lock:
            self._db = None

    # -- StreamListener -------------------------------------------------------

    def on_stream_start(self, tid: bytes) -> None:
        with self._order_lock, self._progress:
            if not self._started:
                self._started = True
                if not self._resumed:  # else the stream brings what came after the cache file's TID
                    self._last_tid = max(self._last_tid, tid)
            self._progress.notify_all()

    def on_invalidation(self, tid: bytes, ttid: bytes, oids: list[bytes]) -> None:
        with self._progress:
            own = self._own.get(ttid)
            if own is not None:
                own.tid = tid
                own.oids = oids
                own.reached.set()
                self._progress.notify_all()
        if own is not None:
            # tpc_finish calls ZODB's callback and advances lastTransaction.
            own.released.wait()
            return
        with self._order_lock:
            self._deliver(tid, oids)

    def catch_up(self, entries: list[tuple[bytes, bytes, list[bytes]]]) -> None:
        """Commits ``(tid, ttid, oids)`` a Finish or Sync answer brought, in
        order: each as if the stream delivered it (skipped if handled
        already; one of this client's own commits in progress is left to
        its ``tpc_finish``, as the stream does)."""
        for tid, ttid, oids in entries:
            self.on_invalidation(tid, ttid, oids)

    def _deliver(self, tid: bytes, oids: list[bytes]) -> None:
        """Another client's commit (order lock held): once, in order."""
        if tid <= self._last_tid:
            return  # handled already (replayed after a reconnection, or from a Finish answer)
        self._cache.invalidate(oids, tid)
        if self._db is not None:
            self._db.invalidate(tid, oids)
        self._advance(tid)

    def on_reset_cache(self, tid: bytes) -> None:
        self._cache.clear()
        with self._order_lock:
            if self._db is not None:
                self._db.invalidateCache()
            self._advance(tid)

    def _advance(self, tid: bytes) -> None:
        with self._progress:
            if tid > self._last_tid:
                self._last_tid = tid
            self._progress.notify_all()

    # -- used by the storage ---------------------------------------------------

    def resume(self, tid: bytes) -> None:
        """The cache was loaded from a file whose entries were current as of
        ``tid``: start there, before the stream starts, which then brings
        every commit after ``tid`` (or a cache reset)."""
        with self._order_lock, self._progress:
            if self._started:
                raise RuntimeError("resume() after the invalidation stream started")
            self._resumed = True
            self._last_tid = tid

    def consistent(self, use: Callable[[bytes], Any]) -> Any:
        """``use(last_tid)`` while no invalidation is handled: the cache
        then reflects every one up to ``last_tid``."""
        with self._order_lock:
            return use(self._last_tid)

    def last_transaction(self) -> bytes:
        with self._order_lock:
            return self._last_tid

    def learn_committed(self, tid: bytes) -> None:
        """``tid`` is committed (a vote's conflict named it): until it is
        handed to ZODB, :meth:`behind` says so."""
        with self._progress:
            self._known_tid = max(self._known_tid, tid)

    def behind(self) -> bool:
        """Whether a TID :meth:`learn_committed` named is not handed to ZODB
        yet (a transaction that begins now would conflict the same way)."""
        with self._order_lock:
            return self._known_tid > self._last_tid

    def wait_for(self, tid: bytes, timeout: float) -> bool:
        """Wait until every invalidation up to ``tid`` was handed to ZODB."""
        with self._progress:
            return self._progress.wait_for(lambda: self._last_tid >= tid, timeout)

    def expect_own(self, ttid: bytes) -> None:
        """Before asking the master to finish ``ttid``."""
        with self._progress:
            self._own[ttid] = _OwnCommit()

    def finish_own(self, ttid: bytes, tid: bytes, callback: Callable[[bytes], Any],
                   since_last: list[tuple[bytes, bytes, list[bytes]]] | None = None) -> None:
        """After the master answered ``tid``: call ZODB's callback, advance
        ``lastTransaction`` and let the stream on.

        ``since_last`` (the Finish answer's, when complete): every commit
        ``(tid, ttid, oids)`` after ``lastTransaction()`` up to ours, in
        order; they are handled here at once.  Without it, wait for the
        stream to bring our TID.
        """
        with self._progress:
            own = self._own[ttid]
        try:
            if since_last and since_last[-1][0] == tid:
                self.catch_up(since_last[:-1])
                with self._order_lock:
                    self._deliver_own(tid, since_last[-1][2], callback)
                return
            # Either the stream delivers our TID, or it resets the cache at a
            # TID at or past ours (a master that caught up from a snapshot
            # cannot list the TIDs it skipped): ZODB dropped every cached
            # object then, our commit included, and the stream will never
            # deliver our TID; only the callback is left to call.
            with self._progress:
                arrived = self._progress.wait_for(
                    lambda: own.reached.is_set() or self._last_tid >= tid, FINISH_STREAM_TIMEOUT)
            if not arrived:
                raise errors.Unavailable(
                    f"transaction {tid.hex()} committed, but its invalidation did not arrive "
                    f"within {FINISH_STREAM_TIMEOUT:.0f}s"
                )
            with self._order_lock:
                self._deliver_own(tid, own.oids, callback)
        finally:
            self.forget_own(ttid)

    def _deliver_own(self, tid: bytes, oids: list[bytes], callback: Callable[[bytes], Any]) -> None:
        """Our own commit (order lock held)."""
        if tid > self._last_tid:
            self._cache.invalidate(oids, tid)
        callback(tid)
        self._advance(tid)

    def forget_own(self, ttid: bytes) -> None:
        """Release the stream if it is waiting for ``ttid`` (finish failed)."""
        with self._progress:
            own = self._own.pop(ttid, None)
        if own is not None:
            if own.reached.is_set() and own.tid > self.last_transaction():
                # Committed after all: ZODB must still hear of it.
                with self._order_lock:
                    if self._db is not None:
                        self._db.invalidateCache()
                    self._advance(own.tid)
            own.released.set()


def catch_up(cluster: Any, dispatcher: InvalidationDispatcher, message: Any) -> None:
    """Hand ZODB what a master's ``CatchUp`` (Sync answer) brought; the
    table first (``cluster``: the ClusterConnection)."""
    if message.HasField("partition_table"):
        cluster.learn_table(message.partition_table)
    if message.complete:
        dispatcher.catch_up([(i.tid, i.ttid, list(i.oids)) for i in message.invalidations])
