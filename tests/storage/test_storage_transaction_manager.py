"""The storage side of two-phase commit, without gRPC."""

from __future__ import annotations

import pathlib
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from neostore import errors
from neostore.ids import MAX_TID, ZERO_TID, p64
from neostore.records import Record
from neostore.storage_node.database import Database, PendingMetadata
from neostore.storage_node.layout import StoredObject, TransactionMetadata
from neostore.storage_node.locks import LockManager
from neostore.storage_node.transaction_manager import ObjectWrite, TransactionManager
from neostore.storage_node.transactions import Phase

from waiting import wait_until

PARTITION = 0
OID, OTHER_OID = p64(1), p64(2)
OLDEST, OLD, YOUNG = p64(50), p64(100), p64(200)


@pytest.fixture
def database(tmp_path: pathlib.Path) -> Iterator[Database]:
    opened = Database(str(tmp_path / "data"), "test", map_size=16 * 2**20)
    yield opened
    opened.close()


@pytest.fixture
def manager(database: Database) -> TransactionManager:
    return TransactionManager(database, LockManager(timeout=2))


def write(oid: bytes, serial: bytes, text: bytes | None, locking: bool = True) -> ObjectWrite:
    stored = None if text is None else StoredObject.from_record(Record.pack(text), previous_tid=serial)
    return ObjectWrite(PARTITION, oid, serial, stored, locking)


def committed_data(database: Database, oid: bytes = OID) -> bytes:
    record = database.load_before(PARTITION, oid, MAX_TID).record
    assert record is not None
    return record.unpack()


def test_a_vote_names_the_partitions_stored_without_conflict_check(manager: TransactionManager) -> None:
    assert manager.store(OLD, [write(OID, ZERO_TID, b"checked")]) == []
    assert manager.vote(OLD) == ()
    # A store on a cell that was not readable takes no lock and checks
    # nothing (even a stale serial passes): the vote says so.
    assert manager.store(YOUNG, [write(OTHER_OID, b"\0" * 7 + b"\x05", b"unchecked", locking=False)]) == []
    assert manager.vote(YOUNG) == (PARTITION,)
    assert manager.vote(YOUNG) == (PARTITION,)  # a repeated vote answers the same


def test_a_lock_holder_the_master_says_ended_is_dropped_or_applied(database: Database) -> None:
    manager = TransactionManager(database, LockManager(timeout=10, suspect_after=0.05))
    youngest = p64(300)
    verdicts = {OLDEST: ("aborted", None), OLD: ("committed", p64(500)), YOUNG: ("alive", None),
                youngest: ("alive", None)}
    manager.set_resolver(lambda ttid: verdicts[ttid])
    # Given up under a leader since gone: its abort order never came.
    assert manager.store(OLDEST, [write(OID, ZERO_TID, b"orphan")]) == []
    manager.vote(OLDEST)
    assert manager.store(YOUNG, [write(OID, ZERO_TID, b"young")]) == []  # waited, then dropped the orphan
    manager.abort(YOUNG)
    # Committed, but this node's commit order was lost: applied when found.
    assert manager.store(OLD, [write(OID, ZERO_TID, b"decided")]) == []
    manager.vote(OLD)
    [conflict] = manager.store(youngest, [write(OID, ZERO_TID, b"stale")])
    assert conflict.committed_serial == p64(500)
    assert committed_data(database) == b"decided"


def run_transaction(manager: TransactionManager, ttid: bytes, tid: bytes, *writes: ObjectWrite) -> None:
    assert manager.store(ttid, list(writes)) == []
    manager.vote(ttid)
    assert manager.commit(ttid, tid)


class Background:
    """A call run in a thread: its result or its error, and when it ended."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self._call = call
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            self.error = error
        self.ended_at = time.monotonic()

    def running_after(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return self._thread.is_alive()

    def join(self, seconds: float = 2) -> None:
        self._thread.join(seconds)
        assert not self._thread.is_alive(), "still blocked"


def test_store_is_buffered_until_vote_and_applied_at_commit(manager: TransactionManager, database: Database) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"new")])
    assert manager.phase(OLD) is Phase.STORING
    assert database.pending_ttids() == []
    manager.vote(OLD, PendingMetadata(PARTITION, TransactionMetadata(b"user", oids=(OID,))))
    assert manager.phase(OLD) is Phase.VOTED
    assert database.pending_ttids() == [OLD]
    assert manager.commit(OLD, p64(150)) is True
    assert manager.phase(OLD) is None
    assert committed_data(database) == b"new"
    assert database.load_before(PARTITION, OID, MAX_TID).serial == p64(150)


def test_serial_mismatch_is_a_conflict_that_keeps_the_lock(manager: TransactionManager, database: Database) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    [conflict] = manager.store(OLD, [write(OID, ZERO_TID, b"stale")])
    assert (conflict.oid, conflict.serial, conflict.committed_serial, conflict.read_conflict) == (
        OID, ZERO_TID, p64(20), False)
    # The lock is kept: a younger store of the oid waits.
    younger = Background(lambda: manager.store(YOUNG, [write(OID, p64(20), b"younger")]))
    assert younger.running_after(0.1)
    with pytest.raises(errors.BadRequest, match="unresolved conflicts"):
        manager.vote(OLD)
    # Resolved: stored again on the committed serial, it replaces nothing and votes.
    assert manager.store(OLD, [write(OID, p64(20), b"resolved")]) == []
    manager.vote(OLD)
    manager.commit(OLD, p64(30))
    assert committed_data(database) == b"resolved"
    # The younger one then gets the lock, and a conflict: the data changed.
    younger.join()
    [conflict] = younger.result  # type: ignore[misc]
    assert (conflict.oid, conflict.committed_serial) == (OID, p64(30))


def test_check_only_conflict_is_a_read_conflict(manager: TransactionManager) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    [conflict] = manager.store(OLD, [write(OID, p64(15), None)])
    assert conflict.read_conflict
    assert manager.store(OLD, [write(OID, p64(20), None)]) == []


def test_restore_of_the_same_oid_replaces_the_buffered_one(manager: TransactionManager, database: Database) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"draft")])
    manager.store(OLD, [write(OID, ZERO_TID, b"final")])
    manager.vote(OLD)
    manager.commit(OLD, p64(150))
    assert committed_data(database) == b"final"
    assert len(database.history(PARTITION, OID)) == 1


def test_a_restore_batch_keeps_each_carried_revision_and_refuses_a_tid_not_above_them(
    manager: TransactionManager, database: Database
) -> None:
    """Restores tagged with a carried transaction's TID do not replace one
    another (the same oid in several source transactions of a batch); a
    commit under a TID not above the newest carried one is refused and
    leaves the vote in place, and the right TID then applies it."""
    first, second = p64(110), p64(120)

    def restore(text: bytes, tid: bytes | None = None) -> ObjectWrite:
        stored = StoredObject.from_record(Record.pack(text))
        return ObjectWrite(PARTITION, OID, ZERO_TID, stored, restore=True, tid=tid)

    assert manager.store(OLD, [restore(b"one", first), restore(b"two", second), restore(b"own")]) == []
    manager.vote(OLD, PendingMetadata(PARTITION, TransactionMetadata(b"user", oids=(OID,))),
                 [PendingMetadata(PARTITION, TransactionMetadata(b"user", oids=(OID,)), first)])
    with pytest.raises(errors.BadRequest, match="carries transaction"):
        manager.commit(OLD, second)
    assert manager.phase(OLD) is Phase.VOTED
    assert manager.commit(OLD, p64(130)) is True
    assert [revision.tid for revision in database.history(PARTITION, OID)] == [p64(130), second, first]
    assert committed_data(database) == b"own"


def test_out_of_date_cells_take_writes_without_lock_or_conflict_check(
    manager: TransactionManager, database: Database
) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    assert manager.store(OLD, [write(OID, p64(99), b"replicated", locking=False)]) == []
    assert manager.store(YOUNG, [write(OID, p64(20), b"other")]) == []


def test_younger_waits_for_an_older_holder_and_gets_the_lock_when_it_commits(
    manager: TransactionManager, database: Database
) -> None:
    """ZODB's BasicStorage.test_checkCurrentSerialInTransaction: the older
    checked the serial and voted; the younger stores on the current serial,
    waits, and succeeds (no conflict: the older changed nothing)."""
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    assert manager.store(OLD, [write(OID, p64(20), None)]) == []
    manager.vote(OLD)
    younger = Background(lambda: manager.store(YOUNG, [write(OID, p64(20), b"younger")]))
    assert younger.running_after(0.2)
    assert manager.phase(OLD) is Phase.VOTED
    manager.commit(OLD, p64(150))
    younger.join()
    assert younger.error is None and younger.result == []
    manager.vote(YOUNG)
    assert manager.commit(YOUNG, p64(250))
    assert committed_data(database) == b"younger"


def test_younger_waits_for_an_older_storing_holder(manager: TransactionManager) -> None:
    """A younger requester never wounds: it waits even for a holder that is
    still storing, and gets the lock when that one aborts."""
    manager.store(OLD, [write(OID, ZERO_TID, b"old")])
    younger = Background(lambda: manager.store(YOUNG, [write(OID, ZERO_TID, b"young")]))
    assert younger.running_after(0.2)
    assert manager.phase(OLD) is Phase.STORING
    manager.abort(OLD)
    younger.join()
    assert younger.error is None and younger.result == []


def test_older_wounds_a_younger_storing_holder(manager: TransactionManager) -> None:
    manager.store(YOUNG, [write(OID, ZERO_TID, b"young"), write(OTHER_OID, ZERO_TID, b"young")])
    started = time.monotonic()
    assert manager.store(OLD, [write(OID, ZERO_TID, b"old")]) == []
    assert time.monotonic() - started < 1
    assert manager.phase(YOUNG) is Phase.DIED
    # Its other lock went with it: the older one takes OTHER_OID at once.
    assert manager.store(OLD, [write(OTHER_OID, ZERO_TID, b"old")]) == []
    wounded = (r"transaction 0x00000000000000c8 was wounded by older transaction 0x0000000000000064 "
               r"on object 0x0000000000000001: abort and retry")
    with pytest.raises(errors.LockDied, match=wounded):
        manager.store(YOUNG, [write(p64(3), ZERO_TID, b"young")])
    with pytest.raises(errors.LockDied, match=wounded):
        manager.vote(YOUNG)
    manager.abort(YOUNG)
    assert manager.phase(YOUNG) is None
    with pytest.raises(errors.UnknownTransaction):
        manager.store(YOUNG, [write(p64(3), ZERO_TID, b"young")])
    manager.vote(OLD)
    assert manager.commit(OLD, p64(300))


def test_a_wounded_store_waiting_for_another_lock_fails_promptly(database: Database) -> None:
    """YOUNG holds OID and waits for OTHER_OID (held by the older OLDEST);
    OLD wounds YOUNG for OID: YOUNG's waiting store ends with LockDied at
    once, not at its lock timeout."""
    manager = TransactionManager(database, LockManager(timeout=10))
    manager.store(OLDEST, [write(OTHER_OID, ZERO_TID, b"oldest")])
    manager.store(YOUNG, [write(OID, ZERO_TID, b"young")])
    waiting = Background(lambda: manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"young")]))
    assert waiting.running_after(0.1)
    wounded_at = time.monotonic()
    assert manager.store(OLD, [write(OID, ZERO_TID, b"old")]) == []
    waiting.join()
    assert isinstance(waiting.error, errors.LockDied)
    assert "wounded by older transaction" in str(waiting.error)
    assert waiting.ended_at - wounded_at < 1
    assert manager.phase(YOUNG) is Phase.DIED
    assert manager.phase(OLDEST) is Phase.STORING  # untouched: older than YOUNG


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_older_waits_for_a_younger_voted_holder(
    manager: TransactionManager, database: Database, outcome: str
) -> None:
    manager.store(YOUNG, [write(OID, ZERO_TID, b"young")])
    manager.vote(YOUNG)
    older = Background(lambda: manager.store(OLD, [write(OID, ZERO_TID, b"old")]))
    assert older.running_after(0.2)
    assert manager.phase(YOUNG) is Phase.VOTED  # voted: not wounded
    if outcome == "commit":
        manager.commit(YOUNG, p64(300))
    else:
        manager.abort(YOUNG)
    older.join()
    assert older.error is None
    if outcome == "commit":
        # The younger committed first: the older now sees a conflict.
        [conflict] = older.result  # type: ignore[misc]
        assert conflict.committed_serial == p64(300)
    else:
        assert older.result == []
        manager.vote(OLD)
        manager.commit(OLD, p64(400))
        assert committed_data(database) == b"old"


def test_a_holder_whose_vote_failed_can_be_wounded_again(
    manager: TransactionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While YOUNG votes, OLD waits for it; the vote fails and YOUNG is
    storing again: OLD does not wait for its release but wounds it."""
    writing, fail = threading.Event(), threading.Event()

    def failing_write_pending(*args: object, **kwargs: object) -> None:
        writing.set()
        fail.wait(5)
        raise errors.StorageFull("simulated")

    manager.store(YOUNG, [write(OID, ZERO_TID, b"young")])
    monkeypatch.setattr(manager._database, "write_pending", failing_write_pending)
    vote = Background(lambda: manager.vote(YOUNG))
    assert writing.wait(2)
    assert manager.phase(YOUNG) is Phase.VOTING
    older = Background(lambda: manager.store(OLD, [write(OID, ZERO_TID, b"old")]))
    assert older.running_after(0.2)
    fail.set()
    vote.join()
    assert isinstance(vote.error, errors.StorageFull)
    older.join()
    assert older.error is None and older.result == []
    assert manager.phase(YOUNG) is Phase.DIED


def test_concurrent_transactions_on_overlapping_oids_never_deadlock(database: Database) -> None:
    """Many transactions store random overlapping oids in random orders,
    resolve their conflicts, vote and commit, from as many threads.  All end
    well before the lock timeout: each commits or is wounded, the oldest
    commits, and every committed store is in the database."""
    manager = TransactionManager(database, LockManager(timeout=20))
    oids = [p64(n) for n in range(1, 7)]
    rng = random.Random(11)
    ttids = [p64(1000 + n) for n in range(32)]
    plans = {ttid: rng.sample(oids, rng.randint(2, 4)) for ttid in ttids}
    rng.shuffle(ttids)  # so that younger ones often start first
    results: dict[bytes, str] = {}
    tid_mutex = threading.Lock()
    next_tid = [10_000]

    def run(ttid: bytes, wanted: list[bytes]) -> None:
        try:
            for oid in wanted:
                serial = database.last_serial(PARTITION, oid) or ZERO_TID
                conflicts = manager.store(ttid, [write(oid, serial, ttid)])
                for conflict in conflicts:  # resolve: store on the committed serial
                    assert manager.store(ttid, [write(oid, conflict.committed_serial, ttid)]) == []
                time.sleep(0.001)
            manager.vote(ttid)
        except errors.LockDied:
            manager.abort(ttid)
            results[ttid] = "wounded"
            return
        except Exception as error:  # noqa: BLE001 - reported below
            manager.abort(ttid)
            results[ttid] = repr(error)
            return
        with tid_mutex:  # the master: one increasing TID per commit
            next_tid[0] += 1
            tid = p64(next_tid[0])
            manager.commit(ttid, tid)
        results[ttid] = "committed"

    threads = [threading.Thread(target=run, args=(ttid, plans[ttid])) for ttid in ttids]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert all(not thread.is_alive() for thread in threads), "deadlock"
    assert time.monotonic() - started < 15
    assert set(results) == set(plans)
    assert set(results.values()) <= {"committed", "wounded"}, results
    assert results[min(plans)] == "committed"
    assert manager.active_ttids() == []
    for oid in oids:
        writers = {ttid for ttid, wanted in plans.items() if oid in wanted and results[ttid] == "committed"}
        if not writers:  # every writer of it was wounded (it depends on the threads' timing)
            with pytest.raises(errors.NotFound):
                database.history(PARTITION, oid)  # no revision at all
            continue
        history = database.history(PARTITION, oid)
        assert len(history) == len(writers)
        last = database.load_before(PARTITION, oid, MAX_TID).record
        assert last is not None and last.unpack() in writers


def test_store_after_vote_is_refused(manager: TransactionManager) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    manager.vote(OLD)
    with pytest.raises(errors.BadRequest, match="after its vote"):
        manager.store(OLD, [write(OTHER_OID, ZERO_TID, b"y")])


def test_store_after_abort_is_refused_and_takes_no_lock(manager: TransactionManager) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    manager.abort(OLD)
    with pytest.raises(errors.UnknownTransaction, match="aborted"):
        manager.store(OLD, [write(OTHER_OID, ZERO_TID, b"late")])
    assert manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"y")]) == []


def test_empty_vote_is_a_no_op(manager: TransactionManager, database: Database) -> None:
    manager.vote(OLD)
    assert manager.phase(OLD) is None
    assert database.pending_ttids() == []


def test_check_only_transaction_votes_and_commits_without_data(manager: TransactionManager) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    manager.store(OLD, [write(OID, p64(20), None)])
    manager.vote(OLD)
    assert manager.commit(OLD, p64(150)) is False
    assert manager.commit(OLD, p64(150)) is False
    assert manager.store(YOUNG, [write(OID, p64(20), b"free again")]) == []


def test_commit_is_idempotent_and_refuses_another_tid(manager: TransactionManager) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    manager.vote(OLD)
    assert manager.commit(OLD, p64(150)) is True
    assert manager.commit(OLD, p64(150)) is False
    with pytest.raises(errors.BadRequest, match="was committed as"):
        manager.commit(OLD, p64(151))


def test_commit_of_unknown_transaction(manager: TransactionManager) -> None:
    with pytest.raises(errors.UnknownTransaction):
        manager.commit(OLD, p64(150))


def test_commit_of_an_unvoted_transaction_is_refused(manager: TransactionManager) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    with pytest.raises(errors.BadRequest, match="not voted"):
        manager.commit(OLD, p64(150))


def test_commit_after_restart_applies_pending_and_stays_idempotent(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "data")
    database = Database(path, "test", map_size=16 * 2**20)
    manager = TransactionManager(database, LockManager())
    manager.store(OLD, [write(OID, ZERO_TID, b"voted")])
    manager.vote(OLD)
    database.close()

    database = Database(path, "test", map_size=16 * 2**20)
    try:
        restarted = TransactionManager(database, LockManager())
        assert restarted.commit(OLD, p64(150)) is True
        database.close()
        database = Database(path, "test", map_size=16 * 2**20)
        again = TransactionManager(database, LockManager())
        assert again.commit(OLD, p64(150)) is False
        assert committed_data(database) == b"voted"
    finally:
        database.close()


def test_abort_drops_buffer_pending_and_locks_and_is_idempotent(
    manager: TransactionManager, database: Database
) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    manager.vote(OLD)
    manager.abort(OLD)
    manager.abort(OLD)
    assert database.pending_ttids() == []
    assert manager.store(YOUNG, [write(OID, ZERO_TID, b"y")]) == []
    with pytest.raises(errors.UnknownTransaction):
        manager.commit(OLD, p64(150))


def test_abort_of_a_committed_transaction_changes_nothing(manager: TransactionManager, database: Database) -> None:
    run_transaction(manager, OLD, p64(150), write(OID, ZERO_TID, b"kept"))
    manager.abort(OLD)
    assert committed_data(database) == b"kept"
    assert manager.commit(OLD, p64(150)) is False


def test_recover_commits_decided_and_aborts_the_rest(manager: TransactionManager, database: Database) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"decided")])
    manager.vote(OLD)
    manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"undecided")])
    manager.vote(YOUNG)
    committed, aborted = manager.recover({OLD: p64(150)}, database.pending_ttids())
    assert (committed, aborted) == ([OLD], [YOUNG])
    assert database.pending_ttids() == []
    assert committed_data(database) == b"decided"
    with pytest.raises(errors.NotFound):
        database.load_before(PARTITION, OTHER_OID, MAX_TID)


def test_recover_leaves_a_transaction_voted_after_the_registration_request(
        manager: TransactionManager, database: Database) -> None:
    # Its transaction may have begun after the master registered this node:
    # its vote counts, and the master answered nothing about it.
    manager.store(OLD, [write(OID, ZERO_TID, b"undecided")])
    manager.vote(OLD)
    listed = database.pending_ttids()
    manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"voted meanwhile")])
    manager.vote(YOUNG)
    committed, aborted = manager.recover({}, listed)
    assert (committed, aborted) == ([], [OLD])
    assert database.pending_ttids() == [YOUNG]
    assert manager.commit(YOUNG, p64(160)) is True
    assert database.load_before(PARTITION, OTHER_OID, MAX_TID).serial == p64(160)


def test_orders_from_a_stale_master_term_are_refused(manager: TransactionManager, database: Database) -> None:
    manager.store(OLD, [write(OID, ZERO_TID, b"x")])
    manager.vote(OLD)
    manager.observe_term(5)
    with pytest.raises(errors.BadRequest, match="stale master term 4"):
        manager.commit(OLD, p64(150), term=4)
    with pytest.raises(errors.BadRequest, match="stale master term"):
        manager.abort(OLD, term=3)
    assert manager.commit(OLD, p64(150), term=6)
    assert database.term() == 6
    assert TransactionManager(database, LockManager()).term == 6


def test_vote_failure_leaves_the_transaction_storing(tmp_path: pathlib.Path) -> None:
    database = Database(str(tmp_path / "small"), "test", map_size=2**20)
    try:
        manager = TransactionManager(database, LockManager())
        huge = ObjectWrite(PARTITION, OID, ZERO_TID,
                           StoredObject.from_record(Record.pack(bytes(range(256)) * 8192, compress=False)))
        manager.store(OLD, [huge])
        with pytest.raises(errors.StorageFull):
            manager.vote(OLD)
        assert manager.phase(OLD) is Phase.STORING
        manager.abort(OLD)
        assert database.pending_ttids() == []
    finally:
        database.close()


def test_undo_must_point_to_an_existing_revision(manager: TransactionManager, database: Database) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    run_transaction(manager, p64(30), p64(40), write(OID, p64(20), b"second"))
    missing = ObjectWrite(PARTITION, OID, p64(40), StoredObject.back_pointer(p64(25), previous_tid=p64(40)))
    with pytest.raises(errors.BadRequest, match="does not exist"):
        manager.store(OLD, [missing])
    undo = ObjectWrite(PARTITION, OID, p64(40), StoredObject.back_pointer(p64(20), previous_tid=p64(40)))
    assert manager.store(OLD, [undo]) == []
    manager.vote(OLD)
    manager.commit(OLD, p64(150))
    assert committed_data(database) == b"first"


# -- reads wait for what may be decided (the masters publish before applying) --


def test_a_read_of_an_object_waits_for_the_transaction_voted_on_it(
        manager: TransactionManager, database: Database) -> None:
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"old"))
    assert manager.store(OLD, [write(OID, p64(20), b"new")]) == []
    manager.settle(OID)  # storing only: it cannot be decided, the read goes on
    manager.vote(OLD)
    reading = Background(lambda: manager.settle(OID))
    assert reading.running_after(0.2), "a voted transaction may be decided: the read waits"
    manager.settle(OTHER_OID)  # another object's read does not wait
    manager.commit(OLD, p64(150))
    reading.join()
    assert reading.error is None
    assert committed_data(database) == b"new"


def test_a_read_of_many_objects_waits_for_the_transactions_voted_before_it(manager: TransactionManager) -> None:
    assert manager.store(OLD, [write(OID, ZERO_TID, b"first")]) == []
    manager.vote(OLD)
    reading = Background(lambda: manager.settle())
    assert reading.running_after(0.2)
    assert manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"later")]) == []
    manager.vote(YOUNG)  # voted after the read began: not waited for
    manager.abort(OLD)
    reading.join()
    assert reading.error is None
    assert manager.phase(YOUNG) is Phase.VOTED


def test_a_voted_transaction_left_undecided_is_checked_then_the_read_gives_up(database: Database) -> None:
    manager = TransactionManager(database, LockManager(timeout=10, suspect_after=0.05))
    verdicts = {OLD: ("committed", p64(500)), YOUNG: ("alive", None)}
    manager.set_resolver(lambda ttid: verdicts[ttid])
    assert manager.store(OLD, [write(OID, ZERO_TID, b"decided")]) == []
    manager.vote(OLD)
    manager.settle(OID)  # the master says committed: its lost order is applied, the read goes on
    assert committed_data(database) == b"decided"
    assert manager.store(YOUNG, [write(OTHER_OID, ZERO_TID, b"pending")]) == []
    manager.vote(YOUNG)
    started = time.monotonic()
    with pytest.raises(errors.LockTimeout, match="still undecided"):
        manager.settle(OTHER_OID, timeout=0.3)
    assert time.monotonic() - started >= 0.3


def test_a_voted_write_made_without_lock_holds_reads_and_conflict_checks_until_it_is_decided(
        manager: TransactionManager, database: Database) -> None:
    """A cell OUT_OF_DATE takes a write without lock; it may become readable
    (caught up) before that transaction's commit order arrives.  Until then,
    a read and a conflict check of the object wait: the previous revision is
    no longer the current one."""
    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    assert manager.store(OLD, [write(OID, p64(20), b"second", locking=False)]) == []
    assert manager.vote(OLD) == (PARTITION,)
    reading = Background(lambda: manager.settle(OID))
    stale = Background(lambda: manager.store(YOUNG, [write(OID, p64(20), b"stale")]))
    assert reading.running_after(0.2), "the read waits for the voted write"
    assert stale.running_after(0.0), "the conflict check waits for it too"
    manager.settle(OTHER_OID)  # another object's read does not wait
    manager.commit(OLD, p64(150))
    reading.join()
    stale.join()
    assert reading.error is None
    [conflict] = stale.result
    assert conflict.committed_serial == p64(150)  # not the revision the write replaced


def test_a_commit_order_releases_the_locks_before_its_write_which_the_next_vote_shares(
        manager: TransactionManager, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision is durable (masters) and the data too (pending): the
    locks go as the order arrives.  Until the write is done, a store of the
    object checks its conflict against the decided TID, a read waits, and
    the write waits (lingers) for a vote to share its fsync."""
    from neostore.storage_node import transaction_manager

    run_transaction(manager, p64(10), p64(20), write(OID, ZERO_TID, b"first"))
    monkeypatch.setattr(transaction_manager, "COMMIT_LINGER", 60.0)  # until the vote below comes
    assert manager.store(OLD, [write(OID, p64(20), b"second")]) == []
    manager.vote(OLD)
    committing = Background(lambda: manager.commit(OLD, p64(150)))
    wait_until(lambda: manager._locks.owner(OID) is None, "the commit order to release the lock")
    assert committing.running_after(0.0), "its write lingers for company"
    # No wait for the write: the check uses the decided TID.
    [conflict] = manager.store(YOUNG, [write(OID, p64(20), b"stale")])
    assert conflict.committed_serial == p64(150)
    assert manager.store(YOUNG, [write(OID, p64(150), b"third")]) == []
    reading = Background(lambda: manager.settle(OID))
    assert reading.running_after(0.2), "a read waits for the write"
    writes = database.durable_writes
    manager.vote(YOUNG)  # shares the commit's write
    committing.join(30)
    reading.join(30)
    assert committing.error is None and reading.error is None
    assert database.durable_writes == writes + 1
    assert committed_data(database) == b"second"
    monkeypatch.undo()
    manager.commit(YOUNG, p64(250))
    assert committed_data(database) == b"third"


def test_a_commit_order_alone_is_written_after_the_linger(manager: TransactionManager, database: Database) -> None:
    writes = database.durable_writes
    run_transaction(manager, OLD, p64(150), write(OID, ZERO_TID, b"alone"))
    assert database.durable_writes == writes + 2  # the vote, then the commit once nothing came
    assert committed_data(database) == b"alone"
    assert manager._decided == {}
