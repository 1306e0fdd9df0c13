"""Per-oid write locks owned by transactions (TTIDs), deadlock-free by wound-wait.

A store takes the oid's write lock for its TTID and keeps it until the
transaction commits or aborts (``release_all``).  Two transactions that each
hold a lock the other wants would wait forever; *wound-wait* (Rosenkrantz,
Stearns and Lewis, "System level concurrency control for distributed
database systems", ACM TODS 3(2), 1978) rules that out by ordering
transactions by age, here the TTID (smaller = older, TTIDs come from one
increasing clock), adapted to two-phase commit:

* the lock is free, or already held by the requester → granted;
* the holder is *older* than the requester → the requester *waits*
  (up to a timeout: :class:`~neostore.errors.LockTimeout`);
* the holder is *younger* than the requester:

  - if the holder is still *storing* (it has not started to vote on this
    node), the requester *wounds* it: the holder's transaction dies on this
    node (its buffer is dropped, all its locks here are released, its
    waiting and later lock requests, stores and votes fail with
    :class:`~neostore.errors.LockDied` until it is aborted and retried;
    ZODB sees a ConflictError), and the requester takes the lock;
  - if the holder is *voting* or has *voted*, it cannot be wounded any more
    (its vote may already count towards a commit decision), so the
    requester waits for it to commit or abort.

Why no deadlock.  A transaction's votes may come before all its locks
are taken (a client sends a node its stores and its vote in one request),
and a voting or voted transaction cannot be wounded, so wound-wait alone
is not enough: two transactions could each hold, voted on one node, a lock
the other waits for on another.  What rules it out is the order clients
take locks in (``neostore.client.commit``): one node at a time, in
increasing node id, never going back to an earlier node for a lock it does
not hold.  Call a transaction's *position* the node it is taking locks on
now (past its last node once done).  A transaction waits only at its
position, for a holder that is either taking locks at that same node or
has taken its locks there and moved on (voted there): the holder's
position is the same or later.  Along a cycle of the waits-for graph
positions never decrease, so they are all equal, and every transaction on
it is still taking locks at one node — where none is voting yet, and
wound-wait breaks the cycle (an older requester wounds a younger holder
that is storing; a younger one waits for an older).  A transaction that
keeps being wounded is retried with a new TTID, but the oldest transaction
in the system is never wounded, so it always makes progress.

A client may also vote on every node at once, out of node order
(``neostore.client.commit``: one round trip instead of one per node).  Such
a transaction breaks the position argument, so each of its lock requests
waits at most a short ``timeout`` (the vote's ``lock_timeout``); past it,
the client aborts the transaction and votes again, under a new TTID, one
node at a time.  A cycle of waits through such a transaction ends when its
wait does: it releases its locks, so the cycle cannot last.

Which holders can be wounded is the transaction manager's business: it
gives the lock manager a ``wound(victim, by, oid)`` function (see
:class:`LockManager`), called *without* the manager's mutex held (the
transaction manager releases locks while holding its own mutex, so the
converse would deadlock).  After a wound attempt the requester re-examines
the lock from scratch: the lock may have changed hands meanwhile.

A holder nobody will end would block its waiters until their timeout: its
client may have given it up under a master leader since gone, or the order
to commit or drop it may have been lost.  So a request that waits for one
holder longer than ``suspect_after`` seconds has it checked (``suspect``,
given by the transaction manager, asks the master leader), and again as
often: a holder that ended is ended here too, and the request goes on.

Waiters sleep on one condition variable per contended oid, all sharing the
manager's mutex; releasing an oid wakes only its own waiters.  A transaction
that dies also wakes the oids its own requests wait on, so that they fail
promptly with LockDied instead of waiting on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from neostore import errors
from neostore.ids import oid_repr, tid_repr

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 30.0
#: A request that has waited this long for one holder has it checked
#: (``suspect``), and again every as long.
SUSPECT_AFTER = 3.0

#: ``wound(victim, by, oid)``: make the younger transaction ``victim``, which
#: holds ``oid``'s lock, die on behalf of the older ``by``, if it can still be
#: wounded.  True if ``victim`` is dead now (it was, or it just died: its
#: locks are released), False if it cannot be wounded (voting, voted or
#: unknown): ``by`` then waits for it.
Wound = Callable[[bytes, bytes, bytes], bool]

#: ``suspect(holder)``: ``holder`` has kept a lock a request waits for
#: longer than expected; find out whether it ended (its client gave it up
#: and the order to drop it was lost...) and end it here if so.  True if it
#: did (its locks are gone).  Called without the manager's mutex.
Suspect = Callable[[bytes], bool]


def wound_message(victim: bytes, by: bytes, oid: bytes) -> str:
    """Why a wounded transaction's requests are refused."""
    return (
        f"transaction {tid_repr(victim)} was wounded by older transaction {tid_repr(by)} "
        f"on object {oid_repr(oid)}: abort and retry"
    )


class LockManager:
    """The write locks of one storage node.

    ``wound`` decides whether a younger holder can be wounded (see
    :data:`Wound`); it can also be given later with :meth:`set_wound`, as
    the transaction manager does.  Without one, every holder can be
    wounded, and the lock manager kills it by itself (:meth:`die`): plain
    wound-wait, with no notion of voting.
    """

    def __init__(self, timeout: float = DEFAULT_LOCK_TIMEOUT, wound: Wound | None = None,
                 suspect_after: float = SUSPECT_AFTER) -> None:
        self._timeout = timeout
        self._wound = wound
        self._suspect: Suspect | None = None
        self._suspect_after = suspect_after
        self._mutex = threading.Lock()
        #: oid -> TTID holding its lock.
        self._owners: dict[bytes, bytes] = {}
        #: TTID -> oids it holds.
        self._held: dict[bytes, set[bytes]] = {}
        #: oid -> (condition its waiters sleep on, number of waiters).
        self._waiting: dict[bytes, tuple[threading.Condition, int]] = {}
        #: TTID -> {oid its requests wait for: how many requests}.
        self._waits_for: dict[bytes, dict[bytes, int]] = {}
        #: TTID -> why it died: it takes no lock until ``release_all``.
        self._dead: dict[bytes, str] = {}
        #: Bumped when a holder may have become woundable again.
        self._epoch = 0
        self._closed = False

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def suspect_after(self) -> float:
        return self._suspect_after

    def set_wound(self, wound: Wound | None) -> None:
        """Give (or replace) the function deciding whether a holder can be wounded."""
        with self._mutex:
            self._wound = wound

    def set_suspect(self, suspect: Suspect | None) -> None:
        """Give (or replace) the function checking a holder kept waiting for long."""
        with self._mutex:
            self._suspect = suspect

    def acquire(self, oid: bytes, ttid: bytes, timeout: float | None = None) -> bool:
        """Take ``oid``'s lock for ``ttid``, waiting or wounding by wound-wait.

        Returns True if newly taken, False if ``ttid`` already held it.

        Raises :class:`~neostore.errors.LockDied` when ``ttid`` was wounded
        (before or while waiting), :class:`~neostore.errors.LockTimeout` when
        the lock stayed with a transaction it must wait for longer than
        ``timeout`` seconds (the manager's default when None),
        :class:`~neostore.errors.Unavailable` once closed.
        """
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        #: (holder, epoch) found unwoundable: wait instead of asking again.
        spared: tuple[bytes, int] | None = None
        #: The holder waited for, and when it was last checked.
        waited_on: bytes | None = None
        checked = 0.0
        with self._mutex:
            while True:
                if self._closed:
                    raise errors.Unavailable("storage node is stopping: no new locks")
                died = self._dead.get(ttid)
                if died is not None:
                    raise errors.LockDied(died)
                owner = self._owners.get(oid)
                if owner == ttid:
                    return False
                if owner is None:
                    self._owners[oid] = ttid
                    self._held.setdefault(ttid, set()).add(oid)
                    return True
                if ttid < owner and spared != (owner, self._epoch):
                    epoch = self._epoch
                    if self._wound_unlocked(owner, ttid, oid):
                        # Dead, so its locks are gone: unless this oid changed
                        # hands meanwhile, it is free now.
                        spared = (owner, epoch) if self._owners.get(oid) == owner else None
                    else:
                        spared = (owner, epoch)
                    continue
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    raise errors.LockTimeout(
                        f"transaction {tid_repr(ttid)} waited too long for object {oid_repr(oid)}, "
                        f"locked by transaction {tid_repr(owner)} (wound-wait)"
                    )
                if owner != waited_on:
                    waited_on, checked = owner, now
                if self._suspect is not None:
                    if now - checked >= self._suspect_after:
                        checked = now
                        self._suspect_unlocked(owner)
                        continue  # the lock may have changed hands meanwhile
                    remaining = min(remaining, checked + self._suspect_after - now)
                self._wait(oid, ttid, max(remaining, 0.001))

    def _wound_unlocked(self, victim: bytes, by: bytes, oid: bytes) -> bool:
        """Try to wound ``victim``; mutex held on entry and exit, released
        during the call to the wound function."""
        wound = self._wound
        if wound is None:
            self._die_locked(victim, wound_message(victim, by, oid))
            return True
        self._mutex.release()
        try:
            return wound(victim, by, oid)
        finally:
            self._mutex.acquire()

    def _suspect_unlocked(self, holder: bytes) -> bool:
        """Have ``holder`` checked; mutex held on entry and exit, released
        during the call."""
        suspect = self._suspect
        if suspect is None:
            return False
        self._mutex.release()
        try:
            return suspect(holder)
        except Exception:  # noqa: BLE001 - a failed check is no verdict: wait on
            log.debug("check of lock holder %s failed", tid_repr(holder), exc_info=True)
            return False
        finally:
            self._mutex.acquire()

    def _wait(self, oid: bytes, ttid: bytes, seconds: float) -> None:
        """Sleep until ``oid`` is released, ``ttid`` dies (or ``seconds``
        pass); mutex held."""
        condition, count = self._waiting.get(oid) or (threading.Condition(self._mutex), 0)
        self._waiting[oid] = (condition, count + 1)
        waits = self._waits_for.setdefault(ttid, {})
        waits[oid] = waits.get(oid, 0) + 1
        try:
            condition.wait(seconds)
        finally:
            condition, count = self._waiting[oid]
            if count == 1:
                del self._waiting[oid]
            else:
                self._waiting[oid] = (condition, count - 1)
            waits = self._waits_for[ttid]
            if waits[oid] == 1:
                del waits[oid]
                if not waits:
                    del self._waits_for[ttid]
            else:
                waits[oid] -= 1

    def release(self, oid: bytes, ttid: bytes) -> bool:
        """Release ``oid`` if ``ttid`` holds it; whether it did."""
        with self._mutex:
            if self._owners.get(oid) != ttid:
                return False
            self._release_locked(oid)
            held = self._held.get(ttid)
            if held is not None:
                held.discard(oid)
                if not held:
                    del self._held[ttid]
            return True

    def release_all(self, ttid: bytes) -> int:
        """``ttid`` ended (committed or aborted): release every lock it
        holds, and forget that it died if it did.  How many locks there were."""
        with self._mutex:
            self._dead.pop(ttid, None)
            return self._release_all_locked(ttid)

    def die(self, ttid: bytes, reason: str) -> int:
        """``ttid`` was wounded: release every lock it holds, wake its waiting
        requests, and refuse it any lock (LockDied with ``reason``) until
        :meth:`release_all`.  Idempotent; how many locks were released."""
        with self._mutex:
            return self._die_locked(ttid, reason)

    def _die_locked(self, ttid: bytes, reason: str) -> int:
        self._dead.setdefault(ttid, reason)
        for oid in self._waits_for.get(ttid, ()):
            self._waiting[oid][0].notify_all()
        return self._release_all_locked(ttid)

    def _release_all_locked(self, ttid: bytes) -> int:
        held = self._held.pop(ttid, set())
        for oid in held:
            self._release_locked(oid)
        return len(held)

    def _release_locked(self, oid: bytes) -> None:
        del self._owners[oid]
        waiting = self._waiting.get(oid)
        if waiting is not None:
            waiting[0].notify_all()

    def reconsider(self, ttid: bytes) -> None:
        """``ttid`` may be wounded again (its vote failed and it is storing
        once more): make the older requests waiting for its locks re-apply
        the rule."""
        with self._mutex:
            self._epoch += 1
            for oid in self._held.get(ttid, ()):
                waiting = self._waiting.get(oid)
                if waiting is not None:
                    waiting[0].notify_all()

    def owner(self, oid: bytes) -> bytes | None:
        """The TTID holding ``oid``'s lock, if any."""
        with self._mutex:
            return self._owners.get(oid)

    def held_by(self, ttid: bytes) -> frozenset[bytes]:
        """The oids ``ttid`` holds."""
        with self._mutex:
            return frozenset(self._held.get(ttid, ()))

    def is_dead(self, ttid: bytes) -> bool:
        """Whether ``ttid`` died and was not released since."""
        with self._mutex:
            return ttid in self._dead

    def close(self) -> None:
        """Refuse new locks and wake every waiter (they get Unavailable)."""
        with self._mutex:
            self._closed = True
            for condition, _count in self._waiting.values():
                condition.notify_all()
