"""The storage node's side of two-phase commit: store, vote, commit, abort.

1. **store** (``Store`` rpc, ZODB ``store``/``checkCurrentSerialInTransaction``
   /``undo``): for each object in order, take its write lock for the TTID
   (wound-wait, :mod:`~neostore.storage_node.locks`: a younger transaction
   waits for an older holder; an older one wounds a younger holder that is
   still storing here, and waits for one that is voting or voted), then
   compare the serial the client based its change on with the last
   committed revision (a new object's serial is 8 zero bytes).  A mismatch
   is a conflict: it is answered, the lock is kept, nothing is buffered for
   that oid (the client resolves and stores again, or aborts).  Otherwise
   the change is buffered in memory
   (:mod:`~neostore.storage_node.transactions`); a check-only store buffers
   nothing.  Cells being replicated (OUT_OF_DATE) take the write without
   lock or conflict check, as NEO does: their copy may lag, so their view
   of "last committed" would report false conflicts, and the readable
   replicas already order the writers.
2. **vote** (``Vote``, ``tpc_vote``; a small transaction's stores travel in
   the same rpc and are taken first, as in step 1): the buffered objects,
   and the transaction's metadata on the cells of its metadata partition,
   become *pending* in one fsynced LMDB write before the answer.  A vote
   with unresolved conflicts is refused.  Clients visit nodes in
   increasing node id, which keeps these early votes free of deadlocks
   (:mod:`~neostore.storage_node.locks`).
3. **commit** (``Commit``, from the master once the decision is in its Raft
   log; many transactions per rpc): pending → committed under the final
   TID, many transactions in one fsynced write (:meth:`commit_many`).  The
   locks are released as the order arrives, before that write: the decision
   is durable in the masters' log and the data durable as pending, so
   nothing can undo it.  Until the write is done the transaction is
   *decided* here: a store of one of its objects checks conflicts against
   its TID (the next transaction of the same client usually comes now), a
   read of one of them waits for the write.  And the write lingers briefly
   (``COMMIT_LINGER``) when it would be alone, so that such a store's vote
   shares its fsync.  The order is answered once the write is durable, so
   the master's MarkApplied still means durable.  Idempotent: a repeated
   commit (a new leader re-driving its decisions, even after this node
   restarted) is recognised through ``applied`` and answers without
   change.  The masters publish a decision before this order arrives, so a
   read that may concern a voted transaction waits for its commit or abort
   first (:meth:`settle`).
4. **abort** (``Abort``, client or master): drop buffer and pending, release
   the locks.  Idempotent; aborting a committed TTID changes nothing.

Master orders (commit, abort) carry the master's Raft term; the highest
term seen is kept durably, and an order from a lower term is refused (a
deposed leader must not commit or abort anything).  Term 0 means an order
that is not fenced: a client's abort.

Finished TTIDs are remembered (bounded) so that a store arriving after its
transaction's abort cannot take locks that nobody would ever release.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from neostore import errors
from neostore.ids import ZERO_TID, oid_repr, tid_repr
from neostore.storage_node.database import Database, PendingMetadata
from neostore.storage_node.layout import StoredObject
from neostore.storage_node.locks import LockManager, wound_message
from neostore.storage_node.transactions import Phase, TransactionBuffer

log = logging.getLogger(__name__)

#: How many finished TTIDs are remembered in memory.
FINISHED_MEMORY = 100_000
#: How long a Commit order's write that would be alone waits for a vote to
#: share its fsync (see step 3 of the module docstring).
COMMIT_LINGER = 0.002


@dataclasses.dataclass(frozen=True)
class ObjectWrite:
    """One object of a store.

    ``stored`` is None for a check-only store.  ``locking`` is False on a
    cell being replicated: no lock, no conflict check.  ``restore``
    (IStorageRestoreable, an import): locked, but no conflict check — the
    revision is written as given; ``tid`` (restore only): the revision
    belongs to that carried transaction of a restore batch.
    """

    partition: int
    oid: bytes
    serial: bytes
    stored: StoredObject | None
    locking: bool = True
    restore: bool = False
    tid: bytes | None = None

    @property
    def check_only(self) -> bool:
        return self.stored is None


@dataclasses.dataclass(frozen=True)
class Conflict:
    oid: bytes
    serial: bytes
    committed_serial: bytes
    read_conflict: bool


class TransactionManager:
    """Buffers, locks and the two-phase commit of one storage node.

    It takes charge of ``locks``: it gives them its wound function
    (:meth:`LockManager.set_wound`), so that an older transaction wounds a
    younger lock holder only while that one is still storing here.
    """

    def __init__(self, database: Database, locks: LockManager, finished_memory: int = FINISHED_MEMORY) -> None:
        self._database = database
        self._locks = locks
        self._finished_memory = finished_memory
        self._mutex = threading.Lock()
        #: Notified (with ``_mutex``) whenever a transaction ends here.
        self._ended = threading.Condition(self._mutex)
        self._buffers: dict[bytes, TransactionBuffer] = {}
        #: oid -> (tid, ttid) of the newest transaction whose Commit order
        #: released its locks and whose write is not done yet (step 3).
        self._decided: dict[bytes, tuple[bytes, bytes]] = {}
        #: ttid -> final TID (committed) or None (aborted), oldest first.
        self._finished: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._term_mutex = threading.Lock()
        self._term = database.term()
        locks.set_wound(self._wound)
        locks.set_suspect(self._suspect)
        #: ``resolver(ttid)`` -> ("alive" | "committed" | "aborted", tid or None):
        #: the master leader's word on a TTID (``GetTransactionState``).
        self._resolver: Callable[[bytes], tuple[str, bytes | None]] | None = None
        self._term_check: Callable[[int], bool] | None = None

    def set_resolver(self, resolver: Callable[[bytes], tuple[str, bytes | None]] | None) -> None:
        """How to ask the master leader what became of a TTID (a storage node
        gives it once it has masters)."""
        self._resolver = resolver

    def _suspect(self, holder: bytes) -> bool:
        """A lock holder kept a request waiting for long: ask the master
        whether it ended; a TTID the leader says aborted is dropped here,
        one it says committed is applied (its order was lost)."""
        resolver = self._resolver
        if resolver is None:
            return False
        status, tid = resolver(holder)
        if status == "aborted":
            log.warning("transaction %s holds locks here but the master says it ended uncommitted: "
                        "dropping it", tid_repr(holder))
            self.abort(holder)
            return True
        if status == "committed" and tid is not None:
            with self._mutex:
                buffer = self._buffers.get(holder)
                voted = buffer is not None and buffer.phase is Phase.VOTED
            if voted:
                log.warning("transaction %s holds locks here, committed as %s: applying it (its order "
                            "was lost)", tid_repr(holder), tid_repr(tid))
                self.commit(holder, tid)
            else:  # committed without this node's vote: what it buffered here is void
                log.warning("transaction %s holds locks here, committed as %s without this node's vote: "
                            "dropping what it stored here", tid_repr(holder), tid_repr(tid))
                self.abort(holder)
            return True
        return False

    # -- observation ---------------------------------------------------------

    def phase(self, ttid: bytes) -> Phase | None:
        """The phase of a TTID in progress here, None if none."""
        with self._mutex:
            buffer = self._buffers.get(ttid)
            return buffer.phase if buffer is not None else None

    def active_ttids(self) -> list[bytes]:
        with self._mutex:
            return sorted(self._buffers)

    @property
    def term(self) -> int:
        with self._term_mutex:
            return self._term

    # -- store ---------------------------------------------------------------

    def store(self, ttid: bytes, writes: Sequence[ObjectWrite], lock_timeout: float | None = None) -> list[Conflict]:
        """Lock, check and buffer ``writes`` in order; the conflicts found.
        ``lock_timeout``: at most this long waiting for each lock (capped
        by the lock manager's own timeout, the default)."""
        if lock_timeout is not None:
            lock_timeout = min(lock_timeout, self._locks.timeout)
        conflicts = []
        for write in writes:
            conflict = self._store_one(ttid, write, lock_timeout)
            if conflict is not None:
                conflicts.append(conflict)
        return conflicts

    def _store_one(self, ttid: bytes, write: ObjectWrite, lock_timeout: float | None = None) -> Conflict | None:
        with self._mutex:
            self._storing_buffer(ttid)
        newly_locked = False
        if write.locking:
            # LockDied if wounded (before or while waiting): the buffer is
            # already DIED and the locks released, by the wound.
            newly_locked = self._locks.acquire(write.oid, ttid, lock_timeout)
        committed = None
        if write.locking:
            # A transaction that wrote this oid while the cell was not
            # readable took no lock: once voted, wait for its decision too.
            # One decided here whose write is not done (it released the
            # lock) gives its TID instead: no wait, unless this store points
            # back to a revision, which must be written.
            back_pointer = write.stored is not None and write.stored.data_tid is not None
            self.settle(write.oid, lock_timeout, ignore=(ttid,), decided_too=back_pointer)
            # Stable while we hold the lock: a commit of this oid is decided
            # here (first) or written (then) before it releases the lock.
            with self._mutex:
                decided = self._decided.get(write.oid)
            committed = self._database.last_serial(write.partition, write.oid) or ZERO_TID
            if decided is not None and decided[0] > committed:
                committed = decided[0]
            self._check_back_pointer(ttid, write)
        with self._mutex:
            buffer = self._buffers.get(ttid)
            if buffer is not None and not write.locking:
                buffer.unchecked.add(write.partition)
            if buffer is None or buffer.phase is not Phase.STORING:
                # Aborted, died or voted while we waited for the lock.
                if buffer is None:
                    self._locks.release_all(ttid)
                elif buffer.phase is Phase.DIED:
                    # Its death released its locks and refuses new ones:
                    # this changes nothing, but states it.
                    self._locks.die(ttid, buffer.died_reason)
                elif newly_locked:
                    self._locks.release(write.oid, ttid)
                if buffer is None:
                    self._refuse_finished(ttid, "store")
                    raise errors.UnknownTransaction(
                        f"transaction {tid_repr(ttid)} ended while its store waited for a lock"
                    )
                self._storing_buffer(ttid)  # raises: died or voted
            if committed is not None and committed != write.serial and not write.restore:
                buffer.conflicted(write.oid)
                return Conflict(write.oid, write.serial, committed, read_conflict=write.check_only)
            if write.stored is None:
                buffer.checked(write.oid)
            else:
                buffer.buffer(write.partition, write.oid, write.stored, write.tid)
        return None

    def _check_back_pointer(self, ttid: bytes, write: ObjectWrite) -> None:
        """An undo must point to a revision that exists (on readable cells,
        which hold every committed revision)."""
        data_tid = write.stored.data_tid if write.stored is not None else None
        if data_tid is not None and not self._database.has_revision(write.partition, write.oid, data_tid):
            raise errors.BadRequest(
                f"undo by transaction {tid_repr(ttid)} points object {oid_repr(write.oid)} "
                f"to revision {tid_repr(data_tid)}, which does not exist"
            )

    def _storing_buffer(self, ttid: bytes) -> TransactionBuffer:
        """The TTID's buffer, created if new; raises if it takes no stores."""
        buffer = self._buffers.get(ttid)
        if buffer is None:
            self._refuse_finished(ttid, "store")
            buffer = self._buffers[ttid] = TransactionBuffer(ttid)
        if buffer.phase is Phase.DIED:
            raise errors.LockDied(buffer.died_reason)
        if buffer.phase is not Phase.STORING:
            raise errors.BadRequest(
                f"store for transaction {tid_repr(ttid)} after its vote ({buffer.phase.value})"
            )
        return buffer

    def _refuse_finished(self, ttid: bytes, what: str) -> None:
        if ttid in self._finished:
            tid = self._finished[ttid]
            outcome = f"committed as {tid_repr(tid)}" if tid is not None else "aborted"
            raise errors.UnknownTransaction(
                f"{what} for transaction {tid_repr(ttid)}, already {outcome} on this node"
            )

    def _wound(self, victim: bytes, by: bytes, oid: bytes) -> bool:
        """The lock manager's wound function (:data:`~neostore.storage_node.locks.Wound`).

        The older ``by`` wants ``oid``, which the younger ``victim`` holds.
        While ``victim`` is storing here, it dies: its buffer is dropped,
        its locks are released, its waiting stores wake up and every later
        store or vote fails with LockDied until it is aborted.  Once it votes
        it cannot be wounded: False, ``by`` waits.  Called by the lock
        manager without its mutex held; takes ours, then the lock manager's
        (the one order used everywhere).
        """
        with self._mutex:
            buffer = self._buffers.get(victim)
            if buffer is None:
                return False  # ending (or ended) on its own: wait for its release
            if buffer.phase is Phase.DIED:
                return True
            if buffer.phase is not Phase.STORING:
                return False
            reason = wound_message(victim, by, oid)
            buffer.die(reason)
            # Under our mutex, so that an abort (which forgets the death in
            # the lock manager) cannot come in between.
            released = self._locks.die(victim, reason)
        log.info(
            "transaction %s wounded by older %s on %s (wound-wait), %d locks released",
            tid_repr(victim), tid_repr(by), oid_repr(oid), released,
        )
        return True

    # -- vote ----------------------------------------------------------------

    def vote(self, ttid: bytes, metadata: PendingMetadata | None = None,
             carried: Sequence[PendingMetadata] = ()) -> tuple[int, ...]:
        """Make ``ttid``'s stores (and metadata, and that of the
        transactions a restore batch carries) durable as pending; the
        partitions some store of which was not checked for conflicts (its
        cell was not readable then)."""
        with self._mutex:
            buffer = self._buffers.get(ttid)
            if buffer is None:
                self._refuse_finished(ttid, "vote")
                if metadata is None and not carried:
                    return ()
                buffer = self._buffers[ttid] = TransactionBuffer(ttid)
        with buffer.vote_mutex:
            with self._mutex:
                if self._buffers.get(ttid) is not buffer:
                    self._refuse_finished(ttid, "vote")
                    raise errors.UnknownTransaction(f"transaction {tid_repr(ttid)} ended during its vote")
                if buffer.phase is Phase.DIED:
                    raise errors.LockDied(buffer.died_reason)
                if buffer.phase is Phase.VOTED:
                    return tuple(sorted(buffer.unchecked))
                if buffer.conflicts:
                    listed = ", ".join(oid_repr(oid) for oid in sorted(buffer.conflicts))
                    raise errors.BadRequest(
                        f"vote for transaction {tid_repr(ttid)} with unresolved conflicts on {listed}"
                    )
                # From now on it cannot be wounded: older transactions wait.
                buffer.phase = Phase.VOTING
                objects = buffer.pending_objects()
                for entry in carried:
                    if entry.tid is not None:
                        buffer.carried(entry.tid)
            try:
                if objects or metadata is not None or carried:
                    self._database.write_pending(ttid, objects, metadata, carried)
            except BaseException:
                with self._mutex:
                    buffer.phase = Phase.STORING
                # Woundable again: older waiters may wound it now.
                self._locks.reconsider(ttid)
                raise
            with self._mutex:
                buffer.phase = Phase.VOTED
                buffer.has_pending = bool(objects) or metadata is not None or bool(carried)
                return tuple(sorted(buffer.unchecked))

    # -- reads wait for what may be decided ------------------------------------

    def settle(self, oid: bytes | None = None, timeout: float | None = None, ignore: Collection[bytes] = (),
               decided_too: bool = True) -> None:
        """Before a read: wait until no transaction that voted here — on
        ``oid``'s lock, or any at all when ``oid`` is None — is still
        undecided here.

        The masters publish a transaction (clients may read it) as soon as
        its decision is durable, before their Commit orders reach the
        participants; a participant holds what it voted, locked, until
        then.  So a read that could concern such a transaction waits for
        it to be applied (or aborted) here — except the reading client's
        own transactions whose Finish has not answered (``ignore``): they
        cannot be in what it reads.  A transaction left voted for
        ``SUSPECT_AFTER`` seconds is checked with the master leader (its
        order may have been lost); past ``timeout`` (the lock timeout by
        default) the read fails with LockTimeout: the client reads
        elsewhere or again.  ``decided_too`` False: not for a transaction
        whose Commit order came and whose write is not done (a conflict
        check uses its TID instead).
        """
        deadline = time.monotonic() + (self._locks.timeout if timeout is None else timeout)
        with self._mutex:
            waiting = self._undecided(oid, decided_too) - set(ignore)
            if not waiting:
                return
            checked = time.monotonic()
            while True:
                waiting = {ttid for ttid in waiting if self._is_voted(ttid)}
                if not waiting:
                    return
                now = time.monotonic()
                if now >= deadline:
                    raise errors.LockTimeout(
                        f"transaction(s) {', '.join(tid_repr(t) for t in sorted(waiting))} voted on this node "
                        "are still undecided: the read cannot tell whether they committed")
                if now - checked >= self._locks.suspect_after:
                    checked = now
                    self._mutex.release()
                    try:
                        for ttid in sorted(waiting):
                            try:
                                self._suspect(ttid)
                            except Exception:  # noqa: BLE001 - a failed check is no verdict: wait on
                                log.debug("check of voted transaction %s failed", tid_repr(ttid), exc_info=True)
                    finally:
                        self._mutex.acquire()
                    continue
                self._ended.wait(min(deadline, checked + self._locks.suspect_after) - now)

    def unsettled(self, oids: Iterable[bytes], ignore: Collection[bytes] = ()) -> set[bytes]:
        """Those of ``oids`` that a read would wait for now (:meth:`settle`
        with ``decided_too``, ``ignore`` aside), without waiting."""
        with self._mutex:
            unchecked = [buffer for ttid, buffer in self._buffers.items()
                         if buffer.unchecked and buffer.phase is Phase.VOTED and ttid not in ignore]
            waiting = set()
            for oid in oids:
                holder = self._locks.owner(oid)
                decided = self._decided.get(oid)
                if (holder is not None and holder not in ignore and self._is_voted(holder)) or (
                        decided is not None and decided[1] not in ignore and self._is_voted(decided[1])) or any(
                        oid in buffer.objects for buffer in unchecked):
                    waiting.add(oid)
            return waiting

    def _undecided(self, oid: bytes | None, decided_too: bool = True) -> set[bytes]:
        """The voted transactions a read of ``oid`` (or of anything) must wait for (mutex held)."""
        if oid is None:
            return {ttid for ttid, buffer in self._buffers.items() if buffer.phase is Phase.VOTED}
        holder = self._locks.owner(oid)
        waiting = {holder} if holder is not None and self._is_voted(holder) else set()
        decided = self._decided.get(oid)
        if decided_too and decided is not None and self._is_voted(decided[1]):
            waiting.add(decided[1])
        # A write to a cell that was not readable then took no lock; the cell
        # may have become readable since (caught up) while that transaction
        # is voted, and a read or a conflict check must not see past it.
        waiting.update(ttid for ttid, buffer in self._buffers.items()
                       if buffer.unchecked and buffer.phase is Phase.VOTED and oid in buffer.objects)
        return waiting

    def _is_voted(self, ttid: bytes) -> bool:
        buffer = self._buffers.get(ttid)
        return buffer is not None and buffer.phase is Phase.VOTED

    # -- commit and abort ------------------------------------------------------

    def commit(self, ttid: bytes, tid: bytes, term: int = 0) -> bool:
        """Apply ``ttid``'s vote under ``tid``; whether anything was applied
        now (False: already applied, or an empty vote).  Raises the error
        that refused it."""
        self.observe_term(term, f"commit of {tid_repr(ttid)}")
        outcome = self._commit_batch([(ttid, tid)])[0]
        if isinstance(outcome, errors.NeoError):
            raise outcome
        return outcome

    def commit_many(self, decisions: Sequence[tuple[bytes, bytes]], term: int = 0) -> list[errors.NeoError | None]:
        """Apply each ``(ttid, tid)`` (the master's orders, in TID order) in
        ONE fsynced write; for each, None (applied, now or before) or the
        error that refused it.  A stale ``term`` refuses them all (raised)."""
        self.observe_term(term, f"commit of {len(decisions)} transaction(s)")
        return [outcome if isinstance(outcome, errors.NeoError) else None
                for outcome in self._commit_batch(decisions)]

    def _commit_batch(self, decisions: Sequence[tuple[bytes, bytes]]) -> list[bool | errors.NeoError]:
        """Check each decision, apply those that can be in ONE database
        write, then drop their buffers and release their locks; for each,
        whether it was applied now, or the error that refused it.

        Each voted buffer's ``vote_mutex`` is held from the check to the
        release (taken in TTID order, so that two batches never wait for
        each other), as vote and abort hold it.
        """
        outcomes: list[bool | errors.NeoError] = [False] * len(decisions)
        buffers: dict[bytes, TransactionBuffer] = {}
        with self._mutex:
            for ttid, _ in decisions:
                buffer = self._buffers.get(ttid)
                if buffer is not None:
                    buffers[ttid] = buffer
        held = [buffers[ttid] for ttid in sorted(buffers)]
        for buffer in held:
            buffer.vote_mutex.acquire()
        try:
            todo: list[tuple[int, bytes, bytes, TransactionBuffer | None]] = []
            for index, (ttid, tid) in enumerate(decisions):
                try:
                    if self._already_committed(ttid, tid):
                        continue
                    buffer = buffers.get(ttid)
                    if buffer is not None:
                        self._check_voted(ttid, tid, buffer)
                    todo.append((index, ttid, tid, buffer))
                except errors.NeoError as error:
                    outcomes[index] = error
            early = self._release_decided([(ttid, tid, buffer) for _, ttid, tid, buffer in todo])
            applied = (self._database.commit_many([(ttid, tid) for _, ttid, tid, _ in todo], COMMIT_LINGER)
                       if todo else [])
            self._forget_decided(early)
            for (index, ttid, tid, buffer), done in zip(todo, applied, strict=True):
                if buffer is None and not done:
                    # No buffer (pending data from before a restart) and nothing pending.
                    outcomes[index] = self._nothing_to_commit(ttid, tid)
                    continue
                outcomes[index] = done
                with self._mutex:
                    if buffer is not None and self._buffers.get(ttid) is buffer:
                        del self._buffers[ttid]
                    self._remember(ttid, tid)
                self._locks.release_all(ttid)
        finally:
            for buffer in held:
                buffer.vote_mutex.release()
        return outcomes

    def _release_decided(
        self, decided: Sequence[tuple[bytes, bytes, TransactionBuffer | None]]
    ) -> list[tuple[bytes, bytes, TransactionBuffer]]:
        """Step 3: release the locks of these transactions (their vote_mutex
        held, checked) before their write; those released.  Not for a
        buffer that took unchecked stores or carries restored transactions
        (their revisions are not all under the decision's TID): they keep
        their locks until written, as before."""
        early = [(ttid, tid, buffer) for ttid, tid, buffer in decided
                 if buffer is not None and not buffer.unchecked and buffer.newest_carried is None]
        with self._mutex:
            for ttid, tid, buffer in early:
                for oid in buffer.objects:
                    self._decided[oid] = (tid, ttid)
        for ttid, _, _ in early:
            self._locks.release_all(ttid)
        return early

    def _forget_decided(self, early: Sequence[tuple[bytes, bytes, TransactionBuffer]]) -> None:
        """Their write is done: their objects are read from the database again."""
        with self._mutex:
            for ttid, tid, buffer in early:
                for oid in buffer.objects:
                    if self._decided.get(oid) == (tid, ttid):
                        del self._decided[oid]

    def _check_voted(self, ttid: bytes, tid: bytes, buffer: TransactionBuffer) -> None:
        """Raise unless ``buffer`` (its vote_mutex held) is ``ttid``'s, voted."""
        with self._mutex:
            current = self._buffers.get(ttid)
            phase = buffer.phase
        if current is not buffer:
            if self._already_committed(ttid, tid):
                return
            raise errors.UnknownTransaction(f"commit of transaction {tid_repr(ttid)}: it was aborted on this node")
        if phase is not Phase.VOTED:
            raise errors.BadRequest(
                f"commit of transaction {tid_repr(ttid)}, which this node has not voted ({phase.value})")
        if buffer.newest_carried is not None and buffer.newest_carried >= tid:
            raise errors.BadRequest(
                f"commit of restore batch {tid_repr(ttid)} under {tid_repr(tid)}: it carries transaction "
                f"{tid_repr(buffer.newest_carried)}, which is not below it")

    def _nothing_to_commit(self, ttid: bytes, tid: bytes) -> bool | errors.NeoError:
        """A commit that found neither buffer nor pending data: False if it
        was committed before, else the error."""
        try:
            if self._already_committed(ttid, tid):
                return False
            with self._mutex:
                self._refuse_finished(ttid, "commit")
        except errors.NeoError as error:
            return error
        return errors.UnknownTransaction(f"commit of transaction {tid_repr(ttid)}: nothing voted on this node")

    def _already_committed(self, ttid: bytes, tid: bytes) -> bool:
        with self._mutex:
            committed = self._finished.get(ttid)
        if committed is None:
            committed = self._database.applied_tid(ttid)
        if committed is None:
            return False
        if committed != tid:
            raise errors.BadRequest(
                f"transaction {tid_repr(ttid)} was committed as {tid_repr(committed)}, not {tid_repr(tid)}"
            )
        return True

    def abort(self, ttid: bytes, term: int = 0) -> None:
        """Drop ``ttid``'s buffer and pending data, release its locks."""
        self.observe_term(term, f"abort of {tid_repr(ttid)}")
        with self._mutex:
            buffer = self._buffers.get(ttid)
        if buffer is None:
            if self._database.applied_tid(ttid) is not None:
                return
            self._database.abort(ttid)
            with self._mutex:
                self._remember(ttid, None)
            self._locks.release_all(ttid)
            return
        with buffer.vote_mutex:
            with self._mutex:
                if self._buffers.get(ttid) is buffer:
                    del self._buffers[ttid]
                if self._finished.get(ttid) is not None:
                    return  # committed meanwhile
                self._remember(ttid, None)
            self._database.abort(ttid)
            self._locks.release_all(ttid)

    def _remember(self, ttid: bytes, tid: bytes | None) -> None:
        """Record how ``ttid`` ended (mutex held); never forget a commit for an abort."""
        self._ended.notify_all()
        if tid is None and self._finished.get(ttid) is not None:
            return
        self._finished[ttid] = tid
        self._finished.move_to_end(ttid)
        while len(self._finished) > self._finished_memory:
            self._finished.popitem(last=False)

    # -- recovery and fencing --------------------------------------------------

    def recover(self, decided: Mapping[bytes, bytes], listed: Collection[bytes]) -> tuple[list[bytes], list[bytes]]:
        """At (re)registration: of the pending TTIDs the registration
        ``listed``, commit those the master decided and abort the others.
        Returns (committed, aborted) TTIDs.

        A TTID voted since the request was built is left alone: the master
        did not answer about it, and its transaction may have begun after
        the master registered this node, so its vote counts (a vote from
        before the registration does not: the master's rule, and the
        master or the client orders such a transaction dropped)."""
        committed, aborted = [], []
        listed = set(listed)
        for ttid in self._database.pending_ttids():
            if ttid not in listed:
                continue
            tid = decided.get(ttid)
            if tid is not None:
                self.commit(ttid, tid)
                committed.append(ttid)
            else:
                self.abort(ttid)
                aborted.append(ttid)
        return committed, aborted

    def set_term_check(self, check: Callable[[int], bool] | None) -> None:
        """Give the function that confirms a master term higher than any
        seen (``check(term)``: True if the masters are at that term or
        beyond; raises Unavailable when it cannot tell)."""
        self._term_check = check

    def observe_term(self, term: int, what: str = "order", trusted: bool = False) -> None:
        """Refuse an order from a term below the highest seen; keep a new one.

        Term 0 is an unfenced order (a client's abort).  Anyone can send an
        order, so a term higher than any seen is kept only once the masters
        confirm it (``set_term_check``), unless ``trusted`` (the answer of
        the master this node registered with): a forged huge term stored
        here would make the node refuse the real master for good.
        """
        if term == 0 or not self._above_seen(term, what):
            return
        check = None if trusted else self._term_check
        if check is not None and not check(term):
            raise errors.BadRequest(
                f"master term {term} for {what} is not a term of this cluster's masters: refused")
        with self._term_mutex:
            if self._above_seen_locked(term, what):  # not raised meanwhile
                self._database.set_term(term)
                self._term = term

    def _above_seen(self, term: int, what: str) -> bool:
        with self._term_mutex:
            return self._above_seen_locked(term, what)

    def _above_seen_locked(self, term: int, what: str) -> bool:
        """Whether ``term`` is above the highest seen; BadRequest if below."""
        if term < self._term:
            raise errors.BadRequest(f"stale master term {term} for {what}: this node has seen term {self._term}")
        return term > self._term

    def close(self) -> None:
        """Wake and refuse every lock waiter (the node is stopping)."""
        self._locks.close()
