"""Per-oid write locks with wound-wait ordered by TTID."""

from __future__ import annotations

import random
import threading
import time

import pytest

from neostore import errors
from neostore.ids import p64
from neostore.storage_node.locks import LockManager

OLDEST, OLD, MIDDLE, YOUNG = p64(50), p64(100), p64(200), p64(300)
OID_A, OID_B = p64(1), p64(2)


def acquire_in_thread(locks: LockManager, oid: bytes, ttid: bytes) -> tuple[threading.Thread, dict[str, object]]:
    """Start ``locks.acquire(oid, ttid)`` in a thread; its outcome lands in
    the dict ("granted": True, or "error": the exception, and "at": when)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            locks.acquire(oid, ttid)
            outcome["granted"] = True
        except errors.NeoError as error:
            outcome["error"] = error
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_free_lock_is_granted_and_reacquiring_is_fine() -> None:
    locks = LockManager(timeout=1)
    assert locks.acquire(OID_A, OLD) is True
    assert locks.acquire(OID_A, OLD) is False
    assert locks.owner(OID_A) == OLD
    assert locks.held_by(OLD) == {OID_A}


def test_younger_requester_waits_for_an_older_holder_until_release() -> None:
    locks = LockManager(timeout=5)
    locks.acquire(OID_A, OLD)
    thread, outcome = acquire_in_thread(locks, OID_A, YOUNG)
    thread.join(0.2)
    assert thread.is_alive()
    assert locks.owner(OID_A) == OLD and not locks.is_dead(OLD)
    assert locks.release_all(OLD) == 1
    thread.join(2)
    assert outcome.get("granted") is True
    assert locks.owner(OID_A) == YOUNG


def test_younger_requester_times_out_when_the_older_holds_on() -> None:
    locks = LockManager(timeout=0.1)
    locks.acquire(OID_A, OLD)
    with pytest.raises(errors.LockTimeout, match="waited too long"):
        locks.acquire(OID_A, YOUNG)
    assert locks.owner(OID_A) == OLD


def test_a_holder_kept_waiting_for_long_is_checked_and_ended_if_gone() -> None:
    locks = LockManager(timeout=10, suspect_after=0.1)
    checked: list[bytes] = []

    def suspect(holder: bytes) -> bool:
        checked.append(holder)
        if len(checked) < 2:
            return False  # still alive: the request waits on, and asks again later
        locks.release_all(holder)  # what the transaction manager does for a holder gone
        return True

    locks.set_suspect(suspect)
    locks.acquire(OID_A, OLD)
    started = time.monotonic()
    assert locks.acquire(OID_A, YOUNG) is True
    assert checked == [OLD, OLD]
    assert 0.2 <= time.monotonic() - started < 5  # long before the 10 s timeout


def test_a_failing_check_is_no_verdict() -> None:
    locks = LockManager(timeout=0.5, suspect_after=0.1)

    def suspect(holder: bytes) -> bool:
        raise errors.Unavailable("no master")

    locks.set_suspect(suspect)
    locks.acquire(OID_A, OLD)
    with pytest.raises(errors.LockTimeout):
        locks.acquire(OID_A, YOUNG)
    assert locks.owner(OID_A) == OLD


def test_older_requester_wounds_a_younger_holder() -> None:
    """Without a wound function every holder can be wounded: plain wound-wait."""
    locks = LockManager(timeout=5)
    locks.acquire(OID_A, YOUNG)
    locks.acquire(OID_B, YOUNG)
    started = time.monotonic()
    assert locks.acquire(OID_A, OLD) is True
    assert time.monotonic() - started < 1
    assert locks.owner(OID_A) == OLD
    # All its locks went with it, and it takes no more until it ends.
    assert locks.owner(OID_B) is None and locks.held_by(YOUNG) == frozenset()
    assert locks.is_dead(YOUNG)
    with pytest.raises(errors.LockDied, match=r"0x000000000000012c was wounded by older transaction "
                                              r"0x0000000000000064 on object 0x0000000000000001"):
        locks.acquire(OID_B, YOUNG)
    assert locks.owner(OID_B) is None
    # Once it ended (aborted), its TTID is forgotten.
    assert locks.release_all(YOUNG) == 0
    assert not locks.is_dead(YOUNG)


def test_a_wounded_waiter_stops_waiting_at_once() -> None:
    """YOUNG holds A and waits for B, held by the older OLDEST.  OLD (older
    than YOUNG) wants A and wounds YOUNG: YOUNG's wait ends with LockDied
    long before its timeout."""
    locks = LockManager(timeout=10)
    locks.acquire(OID_B, OLDEST)
    locks.acquire(OID_A, YOUNG)
    thread, outcome = acquire_in_thread(locks, OID_B, YOUNG)
    thread.join(0.1)
    assert thread.is_alive()
    wounded_at = time.monotonic()
    assert locks.acquire(OID_A, OLD) is True
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], errors.LockDied)
    assert "wounded by older transaction" in str(outcome["error"])
    assert outcome["at"] - wounded_at < 1  # type: ignore[operator]
    assert locks.owner(OID_B) == OLDEST


def test_a_holder_that_cannot_be_wounded_is_waited_for() -> None:
    """The wound function says no (the holder voted): the older waits, and
    gets the lock once the holder ends."""
    asked: list[tuple[bytes, bytes, bytes]] = []

    def wound(victim: bytes, by: bytes, oid: bytes) -> bool:
        asked.append((victim, by, oid))
        return False

    locks = LockManager(timeout=5, wound=wound)
    locks.acquire(OID_A, YOUNG)
    thread, outcome = acquire_in_thread(locks, OID_A, OLD)
    deadline = time.monotonic() + 10
    while not asked and time.monotonic() < deadline:
        time.sleep(0.01)
    thread.join(0.2)
    assert thread.is_alive()
    # Asked once, not again on every wake-up while nothing changed.
    assert asked == [(YOUNG, OLD, OID_A)]
    locks.release_all(YOUNG)
    thread.join(2)
    assert outcome.get("granted") is True
    assert locks.owner(OID_A) == OLD


def test_the_wound_function_runs_without_the_manager_mutex() -> None:
    """The transaction manager's wound releases the victim's locks itself
    (through the lock manager): that must not deadlock."""
    locks = LockManager(timeout=5)

    def wound(victim: bytes, by: bytes, oid: bytes) -> bool:
        locks.die(victim, f"{victim!r} wounded by {by!r}")
        assert locks.owner(oid) is None
        return True

    locks.set_wound(wound)
    locks.acquire(OID_A, YOUNG)
    assert locks.acquire(OID_A, OLD) is True
    with pytest.raises(errors.LockDied, match="wounded by"):
        locks.acquire(OID_A, YOUNG)


def test_reconsider_lets_waiters_wound_a_holder_that_became_woundable() -> None:
    """A holder whose vote failed is storing again: older waiters must
    re-apply the rule instead of waiting for its release."""
    woundable = threading.Event()
    locks = LockManager(timeout=5)

    def wound(victim: bytes, by: bytes, oid: bytes) -> bool:
        if not woundable.is_set():
            return False
        locks.die(victim, "wounded")
        return True

    locks.set_wound(wound)
    locks.acquire(OID_A, YOUNG)
    thread, outcome = acquire_in_thread(locks, OID_A, OLD)
    thread.join(0.2)
    assert thread.is_alive()
    woundable.set()
    locks.reconsider(YOUNG)
    thread.join(2)
    assert outcome.get("granted") is True
    assert locks.is_dead(YOUNG)


def test_waiters_reapply_the_rule_when_the_lock_changes_hands() -> None:
    """OLDEST holds; YOUNG and MIDDLE wait (both younger).  On release,
    whoever wins: if YOUNG got the lock, MIDDLE (older) wounds it; so MIDDLE
    always ends up with the lock, and YOUNG either got it first and was
    wounded, or waits on behind MIDDLE."""
    locks = LockManager(timeout=5)
    locks.acquire(OID_A, OLDEST)
    young_thread, young = acquire_in_thread(locks, OID_A, YOUNG)
    time.sleep(0.05)
    middle_thread, middle = acquire_in_thread(locks, OID_A, MIDDLE)
    time.sleep(0.05)
    locks.release_all(OLDEST)
    middle_thread.join(2)
    assert middle.get("granted") is True
    assert locks.owner(OID_A) == MIDDLE
    if locks.is_dead(YOUNG):
        young_thread.join(2)  # it was wounded holding A (or waiting after)
        locks.release_all(YOUNG)
    else:
        assert young_thread.is_alive()
        locks.release_all(MIDDLE)
        young_thread.join(2)
        assert young.get("granted") is True
    assert not young_thread.is_alive()


def test_release_only_by_owner() -> None:
    locks = LockManager()
    locks.acquire(OID_A, OLD)
    assert locks.release(OID_A, YOUNG) is False
    assert locks.release(OID_A, OLD) is True
    assert locks.owner(OID_A) is None
    assert locks.held_by(OLD) == frozenset()


def test_release_all_frees_every_lock_of_a_transaction() -> None:
    locks = LockManager()
    locks.acquire(OID_A, OLD)
    locks.acquire(OID_B, OLD)
    assert locks.release_all(OLD) == 2
    assert locks.owner(OID_A) is None and locks.owner(OID_B) is None
    assert locks.release_all(OLD) == 0


def test_close_wakes_waiters_with_unavailable() -> None:
    locks = LockManager(timeout=10)
    locks.acquire(OID_A, OLD)
    thread, outcome = acquire_in_thread(locks, OID_A, YOUNG)
    time.sleep(0.05)
    locks.close()
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], errors.Unavailable)


def test_crossed_lock_orders_never_deadlock() -> None:
    """Many transactions lock random triples of few oids in random orders.

    Without wound-wait, T1 holding A wanting B and T2 holding B wanting A
    would wait forever; with it every transaction ends (commits or is
    wounded) well before the lock timeout.
    """
    locks = LockManager(timeout=20)
    oids = [p64(n) for n in range(4)]
    results: dict[bytes, str] = {}
    results_mutex = threading.Lock()
    rng = random.Random(7)
    ttids = [p64(1000 + n) for n in range(24)]
    plans = {ttid: rng.sample(oids, 3) for ttid in ttids}
    rng.shuffle(ttids)  # young ones do not all start last

    def run(ttid: bytes, wanted: list[bytes]) -> None:
        outcome = "committed"
        try:
            for oid in wanted:
                locks.acquire(oid, ttid)
                time.sleep(0.002)
        except errors.LockDied:
            outcome = "wounded"
        except errors.NeoError as error:
            outcome = repr(error)
        finally:
            locks.release_all(ttid)
        with results_mutex:
            results[ttid] = outcome

    threads = [threading.Thread(target=run, args=(ttid, plans[ttid])) for ttid in ttids]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert all(not thread.is_alive() for thread in threads)
    assert time.monotonic() - started < 10
    assert set(results) == set(plans)
    assert set(results.values()) <= {"committed", "wounded"}, results
    # The oldest transaction is never wounded: it only ever waits.
    assert results[min(plans)] == "committed"
    assert all(locks.owner(oid) is None for oid in oids)
    assert not any(locks.is_dead(ttid) for ttid in ttids)
