"""The master's side of two-phase commit: begin, decide, apply, publish.

The client stores and votes directly on the storage nodes; the master
hands out TTIDs, decides, orders the storages to apply, and publishes.
One transaction goes through these steps (each a method below):

1. :meth:`CommitCoordinator.begin` — a TTID from the TID generator (in
   memory only: an undecided TTID dies with the master).  The generator
   starts above the state's ``last_tid``, so TTIDs and TIDs keep growing
   across restarts.
2. :meth:`CommitCoordinator.finish` — validate the request (a TTID this
   client began, 8-byte oids, partitions in range and covering every oid
   and the metadata partition ``partition(ttid)``, known voters), check the
   votes (:func:`~neostore.master_node.state.plan_decision`: every partition
   touched has a voter holding a writable cell, and marking the writable
   cells that did not vote OUT_OF_DATE leaves it a readable cell — else
   ``Unavailable`` naming the partition), then queue the transaction for
   the decider and wait.  A finish refused here or by the decider aborts
   the transaction (:meth:`_give_up`), as ZODB aborts after a failed
   tpc_finish.
3. :meth:`_decide_batch` (the Finish's own thread when no batch is being
   decided, :meth:`_decide_here`; else the decider thread, which takes
   what queued meanwhile) — take every queued finish,
   drop the votes of nodes that registered again since the transaction
   began (a registering node drops its undecided pending data, see
   :meth:`registering`), check the votes again,
   assign TIDs in order (strictly increasing, ``tid % P == ttid % P``),
   and record them all in ONE :class:`CommitDecisions` command: one log
   entry, one fsync (group commit).  Once ``submit`` returns, the
   transactions are committed; ``apply`` checks each decision again against
   the state it lands on and may still refuse one (``Unavailable``).  An
   entry not committed within the submit timeout is *in doubt*, never
   given up while it may still commit (:meth:`_settle_in_doubt`).
4. :meth:`_dispatch` — order every participant (the voters) to apply it:
   :class:`~neostore.master_node.commit_orders.CommitOrders` sends the
   orders of many transactions to a node in one ``Commit(term, decisions)``,
   retrying an unreachable node until ``commit_deadline``.  A participant that fails is dropped
   (:meth:`_participant_failed`): marked DOWN when unreachable, its cells
   of the transaction's partitions OUT_OF_DATE, out of the participants —
   unless it holds the last readable cell of one of them, in which case it
   stays a participant and gets the order again when it comes back
   (:meth:`redrive_node`).
5. :meth:`_publish_decided` — a transaction is published as soon as it is
   decided (in TID order), and the client's Finish returns its TID, before
   the participants applied it: they hold what they voted, locked, until
   their Commit order arrives, and a read that may concern it waits for
   that (``TransactionManager.settle`` on the storage nodes).  Once every
   remaining participant applied it (:meth:`_forget_applied`), those that
   did are recorded with :class:`MarkApplied`, lazily batched into the
   decider's next submit.

:meth:`abort` sends ``Abort(ttid, term)`` to the nodes the client stored
on and forgets the TTID; :meth:`client_disconnected` does the same for
every unfinished TTID of a client whose session ended (to every RUNNING
node, as the master does not know where it stored) and that was not heard
of since (a client whose stream moved to another master still begins and
finishes here).  On start,
:meth:`start` re-drives every decided-but-unapplied decision of the state
(``Commit`` is idempotent on storage nodes) and publishes them in order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from neostore import errors
from neostore.ids import TidGenerator, p64, partition_of, tid_repr, u64
from neostore.master_node.command_log import CommandLog
from neostore.master_node.commit_orders import CommitOrders
from neostore.master_node.invalidations import InvalidationPublisher
from neostore.master_node.state import (
    ClusterState,
    CommitDecisions,
    Decision,
    DropParticipants,
    MarkApplied,
    NodeVote,
    PendingDecision,
    SetNodeState,
    plan_decision,
)
from neostore.master_node.storage_links import StorageLinks
from neostore.partition_table import NodeState

log = logging.getLogger(__name__)


#: How many times an Abort order is sent to a node that does not answer.
ABORT_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class CommitConfig:
    """Timings of the commit path (seconds)."""

    commit_timeout: float = 2.0  # one Commit rpc
    commit_deadline: float = 5.0  # retrying an unreachable participant
    abort_timeout: float = 2.0  # Abort rpcs of one tpc_abort
    mark_applied_delay: float = 0.05  # how long MarkApplied may wait for company
    max_workers: int = 64  # threads sending Commit and Abort orders
    # A client whose session (Subscribe stream) ended has this long to come
    # back (a stream broken by the network or a busy machine) before its
    # unfinished transactions are aborted.
    session_grace: float = 10.0


class Phase(enum.Enum):
    """Where a transaction the master knows of stands."""

    BEGUN = "begun"  # TTID handed out: stores and votes go to the storages
    FINISHING = "finishing"  # Finish received: queued for the decider
    DECIDED = "decided"  # committed in the log: being applied, not yet published


class _Departure:
    """A client's session ended; ``heard``: it called this master since."""

    def __init__(self) -> None:
        self.heard = False


class _Transaction:
    """A TTID handed out by :meth:`CommitCoordinator.begin`."""

    def __init__(
        self, client_id: str, ttid: bytes, registrations_seen: int, requested_tid: bytes | None = None,
        spare: bool = False, restore_from: bytes | None = None,
    ) -> None:
        self.client_id = client_id
        self.ttid = ttid
        # Reserved ahead (a spare TTID): the master hears of its use only at
        # Finish, so it began for the cluster then (refused if STOPPING).
        self.spare = spare
        # The TID the client asked to commit under (restore), if any.
        self.requested_tid = requested_tid
        # The lowest TID it writes: that of the first transaction of a
        # restore batch (it carries the ones before its own), else requested_tid.
        self.lowest_tid = restore_from or requested_tid
        self.phase = Phase.BEGUN
        # Storage-node registrations counted when it began: a node that
        # registered again since then dropped its pending data (votes void).
        self.registrations_seen = registrations_seen


class _Finish:
    """A Finish request waiting for its outcome."""

    def __init__(
        self,
        transaction: _Transaction,
        oids: tuple[bytes, ...],
        partitions: tuple[int, ...],
        votes: tuple[NodeVote, ...],
        metadata_partition: int,
    ) -> None:
        self.transaction = transaction
        self.oids = oids
        self.partitions = partitions
        self.votes = votes
        self.metadata_partition = metadata_partition
        self.done = threading.Event()
        self.tid: bytes | None = None
        self.error: errors.NeoError | None = None

    def succeed(self, tid: bytes) -> None:
        self.tid = tid
        self.done.set()

    def fail(self, error: errors.NeoError) -> None:
        self.error = error
        self.done.set()


class _Applying:
    """A decided transaction on its way to the participants."""

    def __init__(self, decision: PendingDecision, finish: _Finish | None) -> None:
        self.decision = decision
        self.finish = finish
        self.remaining = set(decision.participants)  # not applied, not dropped
        self.applied: set[int] = set()
        self.published = False
        self.trying: set[int] = set()  # nodes with a Commit loop running
        self.redrive: set[int] = set()  # nodes that came back while their loop was running


def _require_running(state: ClusterState) -> None:
    if not state.running:
        raise errors.Unavailable(f"cluster {state.cluster_name!r} is not running: it has no partition table yet")


def last_published_tid(state: ClusterState) -> bytes:
    """The TID below which a starting master has nothing left to publish."""
    if state.pending_decisions:
        return p64(u64(state.pending_decisions[0].tid) - 1)
    return state.last_tid


def validate_finish(
    state: ClusterState,
    ttid: bytes,
    oids: Iterable[bytes],
    partitions: Iterable[int],
    votes: Iterable[NodeVote],
    metadata_partition: int,
) -> tuple[tuple[bytes, ...], tuple[int, ...], tuple[NodeVote, ...]]:
    """Check a Finish request's fields; the oids, partitions and votes
    normalized (duplicates merged, votes limited to the partitions written).
    Raises :class:`~neostore.errors.BadRequest` naming the bad field.
    """
    num_partitions = state.num_partitions
    if len(ttid) != 8:
        raise errors.BadRequest(f"ttid must be 8 bytes, got {len(ttid)}")
    oid_list = list(dict.fromkeys(oids))
    for oid in oid_list:
        if len(oid) != 8:
            raise errors.BadRequest(f"every oid must be 8 bytes, got one of {len(oid)}: {oid!r}")
    written = sorted(set(partitions))
    if not written:
        raise errors.BadRequest("a finish must name the partitions the transaction wrote")
    for partition in written:
        if partition >= num_partitions:
            raise errors.BadRequest(f"partition {partition} out of range: the cluster has {num_partitions}")
    if metadata_partition not in written:
        raise errors.BadRequest(
            f"partitions {written} miss partition {metadata_partition}, which holds the "
            f"metadata of transaction {tid_repr(ttid)}"
        )
    for oid in oid_list:
        if partition_of(oid, num_partitions) not in written:
            raise errors.BadRequest(
                f"oid {tid_repr(oid)} is in partition {partition_of(oid, num_partitions)}, "
                f"which is not among the partitions written {written}"
            )
    by_node: dict[int, set[int]] = collections.defaultdict(set)
    unchecked: dict[int, set[int]] = collections.defaultdict(set)
    for vote in votes:
        if state.known_node(vote.node_id) is None:
            if vote.node_id < state.next_node_id:
                continue  # dropped from the cluster since it voted: its vote does not count
            raise errors.BadRequest(f"vote from storage node {vote.node_id}, unknown to this cluster")
        for partition in vote.partitions:
            if partition >= num_partitions:
                raise errors.BadRequest(
                    f"node {vote.node_id} voted for partition {partition}, out of range"
                )
        by_node[vote.node_id].update(vote.partitions)
        unchecked[vote.node_id].update(vote.unchecked)
    normalized = tuple(
        NodeVote(node_id, tuple(sorted(by_node[node_id] & set(written))),
                 tuple(sorted(unchecked[node_id] & by_node[node_id] & set(written))))
        for node_id in sorted(by_node)
    )
    return tuple(oid_list), tuple(written), normalized


class CommitCoordinator:
    """Transactions from TTID to published TID (see the module docstring)."""

    def __init__(
        self,
        command_log: CommandLog,
        storages: StorageLinks,
        publisher: InvalidationPublisher,
        config: CommitConfig = CommitConfig(),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` gives the TIDs their time; ``monotonic`` measures the
        delays of :class:`CommitConfig` that tests advance instead of
        sleeping (today: ``mark_applied_delay``)."""
        self._log = command_log
        self._monotonic = monotonic
        self._storages = storages
        self._publisher = publisher
        self._config = config
        self._tid_lock = threading.Lock()
        self._generator = TidGenerator(command_log.state.last_tid, clock)
        self._decide_lock = threading.Lock()  # a batch's vote check and submit; registrations
        self._condition = threading.Condition()  # guards every attribute below
        self._transactions: dict[bytes, _Transaction] = {}
        self._queue: list[_Finish] = []
        self._deciding = False  # a batch is being taken and decided (by a Finish's thread or the decider)
        self._applying: dict[bytes, _Applying] = {}  # by tid, in increasing order
        self._applied_marks: dict[bytes, set[int]] = {}
        # When _applied_marks last went from empty to not (monotonic), None
        # while empty: a MarkApplied waits for a decision to carry it this long.
        self._marks_since: float | None = None
        self._client_sessions: collections.Counter[str] = collections.Counter()
        #: client id -> its departure (session ended, grace running)
        self._departed: dict[str, _Departure] = {}
        self._registrations = 0
        self._registered_at: dict[int, int] = {}  # node id -> its last registration's number
        self._stopping = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="commit"
        )
        self._orders = CommitOrders(
            storages, self._address_of, lambda: self._log.term,
            lambda applying, node_id: self._participant_applied(applying, node_id),
            lambda applying, node_id, error, unreachable: self._participant_failed(
                applying, node_id, error, unreachable),
            self._run_elsewhere,
            rpc_timeout=config.commit_timeout, deadline=config.commit_deadline)
        self._decider = threading.Thread(target=self._decide_loop, name="decider", daemon=True)

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Re-drive the state's decided-but-unapplied decisions, start deciding."""
        state = self._log.state
        with self._condition:
            for decision in state.pending_decisions:
                self._applying[decision.tid] = _Applying(decision, None)
            self._publish_decided()
        if state.pending_decisions:
            log.info("re-driving %d decided transactions", len(state.pending_decisions))
        for applying in list(self._applying.values()):
            self._dispatch(applying, applying.decision.participants)
        self._decider.start()

    def stop(self) -> None:
        """Stop deciding; fail waiting Finish calls; flush MarkApplied."""
        with self._condition:
            self._stopping.set()
            self._condition.notify_all()
        if self._decider.is_alive():
            self._decider.join()
        with self._decide_lock:  # a batch a Finish's thread (or an in-doubt settler) decides ends first
            pass
        with self._condition:
            for applying in self._applying.values():
                if applying.finish is not None and not applying.published:
                    decision = applying.decision
                    applying.finish.fail(errors.Unavailable(
                        f"the master stopped before transaction {tid_repr(decision.ttid)}, "
                        f"committed as {tid_repr(decision.tid)}, was published"
                    ))
        for applying, node_id in self._orders.close():
            with self._condition:
                applying.trying.discard(node_id)
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- step 1: begin ------------------------------------------------------------

    def begin(self, client_id: str, requested_tid: bytes | None = None, spare: bool = False,
              restore_from: bytes | None = None) -> bytes:
        """A fresh TTID for ``client_id``.

        With ``requested_tid`` (restore), the transaction will commit under
        that TID, which must stay above every committed one; its TTID falls
        in the same partition, as every final TID does.  With
        ``restore_from`` too (a restore batch), it carries the source's
        transactions from that TID up to its own: that TID too must stay
        above every committed one.
        """
        if not client_id:
            raise errors.BadRequest("client_id is required")
        state = self._log.state
        _require_running(state)
        if state.stopping:
            raise errors.ReadOnly(f"cluster {state.cluster_name!r} is STOPPING: it takes no new transaction "
                                  "until an administrator runs `neoctl set cluster RUNNING`")
        if requested_tid is not None:
            if len(requested_tid) != 8:
                raise errors.BadRequest(f"requested TID must be 8 bytes, got {len(requested_tid)}")
            _check_requested_tid(requested_tid, state.last_tid)
        if restore_from is not None:
            if requested_tid is None or len(restore_from) != 8 or restore_from > requested_tid:
                raise errors.BadRequest("a restore batch needs a TID to commit under, and 8 bytes of restore_from "
                                        "not above it")
            _check_requested_tid(restore_from, state.last_tid)
        with self._tid_lock:
            if requested_tid is None:
                ttid = self._generator.next()
            else:
                ttid = self._generator.next(state.num_partitions, same_partition_as=requested_tid)
        with self._condition:
            self._check_not_stopping()
            if self._log.state.stopping:  # again, atomically with quiesce()
                raise errors.ReadOnly(f"cluster {state.cluster_name!r} is STOPPING")
            self._transactions[ttid] = _Transaction(
                client_id, ttid, self._registrations, requested_tid, spare, restore_from)
            self._heard_from(client_id)
        return ttid

    def reserve(self, client_id: str) -> bytes | None:
        """A TTID handed out ahead of ``client_id``'s next tpc_begin (in a
        Sync or Finish answer), begun as by :meth:`begin`; None when no transaction
        may begin (cluster not RUNNING, or STOPPING)."""
        try:
            return self.begin(client_id, spare=True)
        except (errors.Unavailable, errors.ReadOnly, errors.BadRequest):
            return None

    def release_spare(self, client_id: str, ttid: bytes) -> None:
        """``client_id`` did not use the TTID reserved for it (it stored
        nothing with it): forget it."""
        with self._condition:
            self._heard_from(client_id)
            transaction = self._transactions.get(ttid)
            if transaction is not None and transaction.client_id == client_id and transaction.phase is Phase.BEGUN:
                del self._transactions[ttid]
                self._condition.notify_all()  # quiesce() may be waiting

    def quiesce(self, timeout: float) -> bytes:
        """For a truncation of a STOPPING cluster (no transaction begins):
        wait until no transaction is in flight and every decision is
        applied, then a fresh TID above every one given out."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._transactions or self._log.state.pending_decisions:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Refused(
                        f"{len(self._transactions)} transaction(s) still in flight and "
                        f"{len(self._log.state.pending_decisions)} decision(s) not applied after "
                        f"{timeout:g}s: retry once they end")
                self._condition.wait(min(remaining, 0.1))
        with self._tid_lock:
            return self._generator.next()

    # -- step 2: finish -----------------------------------------------------------

    def finish(
        self,
        client_id: str,
        ttid: bytes,
        oids: Sequence[bytes],
        partitions: Sequence[int],
        votes: Sequence[NodeVote],
        metadata_partition: int | None = None,
    ) -> bytes:
        """Commit the transaction; its TID once published.

        ``metadata_partition`` (one of ``partitions``; by default the TTID's)
        is where the client voted the transaction's metadata: its TID falls
        in that partition.

        Raises BadRequest or UnknownTransaction when ``ttid`` is not a TTID
        this client began (nothing done), or BadRequest / Unavailable about
        the rest of the request or the votes: then nothing is committed and
        the transaction is aborted (every RUNNING storage node is ordered to
        drop it), as ZODB aborts a transaction whose tpc_finish failed.
        """
        state = self._log.state
        _require_running(state)
        if len(ttid) != 8:
            raise errors.BadRequest(f"ttid must be 8 bytes, got {len(ttid)}")
        with self._condition:
            self._check_not_stopping()
            self._heard_from(client_id)
            transaction = self._transaction_of(client_id, ttid)
            if transaction.phase is not Phase.BEGUN:
                raise errors.BadRequest(f"transaction {tid_repr(ttid)} is already being finished")
            transaction.phase = Phase.FINISHING
        if metadata_partition is None:
            metadata_partition = partition_of(ttid, state.num_partitions)
        try:
            if transaction.spare and self._log.state.stopping:
                # The client did not know yet: to the cluster, it begins now.
                raise errors.ReadOnly(f"cluster {state.cluster_name!r} is STOPPING: it takes no new transaction "
                                      "until an administrator runs `neoctl set cluster RUNNING`")
            oid_tuple, written, vote_tuple = validate_finish(
                state, ttid, oids, partitions, votes, metadata_partition)
            requested = transaction.requested_tid
            if requested is not None and partition_of(requested, state.num_partitions) != metadata_partition:
                raise errors.BadRequest(
                    f"the metadata of a transaction committing under TID {tid_repr(requested)} belongs in "
                    f"partition {partition_of(requested, state.num_partitions)}, not {metadata_partition}")
            plan_decision(state, written, self._valid_votes(transaction, vote_tuple))
        except errors.NeoError:
            self._give_up(transaction)
            raise
        finish = _Finish(transaction, oid_tuple, written, vote_tuple, metadata_partition)
        with self._condition:
            if self._stopping.is_set():
                transaction.phase = Phase.BEGUN
                raise errors.Unavailable("the master is stopping")
            self._queue.append(finish)
            lead = not self._deciding
            if lead:
                self._deciding = True
            else:
                self._condition.notify_all()
        if lead:
            self._decide_here()
        finish.done.wait()
        if finish.error is not None:
            raise finish.error
        assert finish.tid is not None
        return finish.tid

    def _transaction_of(self, client_id: str, ttid: bytes) -> _Transaction:
        transaction = self._transactions.get(ttid)
        if transaction is None or transaction.client_id != client_id:
            raise errors.UnknownTransaction(
                f"transaction {tid_repr(ttid)} of client {client_id!r} is unknown to this master "
                "(never begun, aborted, finished, or begun before a master restart)"
            )
        return transaction

    def _valid_votes(self, transaction: _Transaction, votes: tuple[NodeVote, ...]) -> tuple[NodeVote, ...]:
        """The votes of nodes that did not register again since the
        transaction began (a registering node drops undecided pending data)
        and are still in the cluster."""
        state = self._log.state
        with self._condition:
            return tuple(vote for vote in votes
                         if self._registered_at.get(vote.node_id, 0) <= transaction.registrations_seen
                         and state.known_node(vote.node_id) is not None)  # not dropped meanwhile

    @contextlib.contextmanager
    def registering(self) -> Iterator[Callable[[int], None]]:
        """Hold the decider while a storage node registers.

        Use as ``with coordinator.registering() as registered: ...;
        registered(node_id); ...`` around the registration, up to reading
        which of its pending TTIDs are decided.  Every batch is decided
        either before (its decisions are in that answer: the node applies
        them) or after (the node's earlier votes no longer count: it drops
        its undecided pending data), never in between.
        """
        with self._decide_lock:
            yield self._note_registration

    def _note_registration(self, node_id: int) -> None:
        with self._condition:
            self._registrations += 1
            self._registered_at[node_id] = self._registrations

    def _check_not_stopping(self) -> None:
        if self._stopping.is_set():
            raise errors.Unavailable("the master is stopping")

    # -- step 3: decide (decider thread) -----------------------------------------

    def _decide_here(self) -> None:
        """A Finish's thread, while no batch is being decided, decides the
        queue (its own transaction, and any that came with it) itself: the
        decider thread need not be woken, nor wake it (two thread switches
        per batch).  What queues meanwhile is left to the decider thread.
        It never blocks past the submit timeout: a batch in doubt is
        settled by a thread of its own (:meth:`_decide_locked`)."""
        try:
            with self._condition:
                batch, self._queue = self._queue, []
                marks, self._applied_marks, self._marks_since = self._applied_marks, {}, None
            self._decide_guarded(batch, marks, may_block=False)
        finally:
            with self._condition:
                self._deciding = False
                if self._queue or self._applied_marks or self._stopping.is_set():
                    self._condition.notify_all()

    def _decide_guarded(self, batch: list[_Finish], marks: dict[bytes, set[int]], may_block: bool = True) -> None:
        try:
            self._decide_batch(batch, marks, may_block)
        except Exception:  # noqa: BLE001 - the decider must survive
            log.exception("decider failed on a batch")
            state = self._log.state
            for finish in batch:
                decided = state.decision_of_ttid(finish.transaction.ttid) is not None
                if not finish.done.is_set() and not decided:
                    self._undecided(finish, errors.Unavailable("internal error while deciding"))

    def _decide_loop(self) -> None:
        while True:
            with self._condition:
                while (not self._queue or self._deciding) and not self._stopping.is_set():
                    if self._deciding:  # a Finish's thread decides; it wakes us when done
                        self._condition.wait()
                        continue
                    if self._marks_since is None:
                        self._condition.wait()
                        continue
                    # MarkApplied alone: only once no decision carried the
                    # marks for mark_applied_delay (a busy cluster never
                    # spends a Raft round on them alone).
                    wait = self._marks_since + self._config.mark_applied_delay - self._monotonic()
                    if wait <= 0:
                        break
                    self._condition.wait(wait)
                batch, self._queue = self._queue, []
                marks, self._applied_marks, self._marks_since = self._applied_marks, {}, None
                stopping = self._stopping.is_set()
                self._deciding = not stopping
            if stopping:
                for finish in batch:
                    self._undecided(finish, errors.Unavailable("the master is stopping"))
                self._decide_batch([], marks)
                return
            try:
                self._decide_guarded(batch, marks)
            finally:
                with self._condition:
                    self._deciding = False

    def _decide_batch(self, batch: list[_Finish], marks: dict[bytes, set[int]], may_block: bool = True) -> None:
        self._decide_lock.acquire()
        handed_over = False
        try:
            handed_over = self._decide_locked(batch, marks, may_block)
        finally:
            if not handed_over:
                self._decide_lock.release()

    def _decide_locked(self, batch: list[_Finish], marks: dict[bytes, set[int]], may_block: bool = True) -> bool:
        """Decide ``batch`` (``_decide_lock`` held).  True when the lock was
        handed over to a thread that settles the batch in doubt (``may_block``
        False: the caller is a Finish's thread, which must answer now); that
        thread releases it."""
        state = self._log.state
        planned: list[tuple[_Finish, Decision]] = []
        for finish in batch:
            votes = self._valid_votes(finish.transaction, finish.votes)
            try:
                out_of_date = plan_decision(state, finish.partitions, votes)
            except errors.NeoError as error:
                self._undecided(finish, error)
                continue
            ttid = finish.transaction.ttid
            requested = finish.transaction.requested_tid
            if requested is not None:
                last = max([state.last_tid] + [d.tid for _, d in planned])
                try:
                    _check_requested_tid(finish.transaction.lowest_tid or requested, last)
                except errors.NeoError as error:
                    self._undecided(finish, error)
                    continue
                with self._tid_lock:
                    self._generator.observe(requested)
                tid = requested
            else:
                with self._tid_lock:
                    tid = self._generator.next(state.num_partitions, partition=finish.metadata_partition)
            planned.append((finish, Decision(
                tid=tid, ttid=ttid, partitions=finish.partitions, votes=votes,
                oids=finish.oids, out_of_date=out_of_date,
                client_id=finish.transaction.client_id,
            )))
        commands: list = []
        if planned:
            commands.append(CommitDecisions(tuple(decision for _, decision in planned)))
        commands.extend(MarkApplied(tid, tuple(sorted(nodes))) for tid, nodes in sorted(marks.items()))
        if not commands:
            return False
        try:
            results = self._log.submit(commands)
        except errors.InDoubt as error:
            if not planned or error.pending is None:
                return False  # only MarkApplied: recorded again by the next leader if lost
            if not may_block:
                for finish, _ in planned:  # their clients are told now; the wait goes on elsewhere
                    finish.fail(errors.Unavailable(
                        f"the commit decision is not recorded yet ({error}): ask for the outcome"))
                threading.Thread(target=self._settle_then_release, args=(planned, error),
                                 name="decider-in-doubt", daemon=True).start()
                return True
            settled = self._settle_in_doubt(planned, error)
            if settled is None:
                return False
            results = settled
        except errors.NeoError as error:
            log.error("cannot record %d commit decisions: %s", len(planned), error)
            for finish, _ in planned:
                self._undecided(finish, errors.Unavailable(f"cannot record the commit decision: {error}"))
            return False
        self._conclude(planned, results)
        return False

    def _settle_then_release(self, planned: list[tuple[_Finish, Decision]], error: errors.InDoubt) -> None:
        """A batch in doubt that a Finish's thread submitted: wait for its
        entry as the decider would, holding the ``_decide_lock`` that thread
        handed over, then release it."""
        try:
            settled = self._settle_in_doubt(planned, error)
            if settled is not None:
                self._conclude(planned, settled)
        except Exception:  # noqa: BLE001 - logged: the lock must be released
            log.exception("settling %d in-doubt commit decisions failed", len(planned))
        finally:
            self._decide_lock.release()

    def _conclude(self, planned: list[tuple[_Finish, Decision]], results: list[Any]) -> None:
        """The batch's entry committed with ``results``: apply and publish
        each decision ``apply`` accepted, give up the others."""
        if not planned:
            return
        outcome = results[0]
        outcomes = [outcome] * len(planned) if isinstance(outcome, errors.NeoError) else list(outcome)
        if len(planned) > 1:
            log.debug("decided %d transactions in one entry", len(planned))
        for (finish, decision), error in zip(planned, outcomes, strict=True):
            if error is not None:
                self._undecided(finish, error)
            else:
                self._start_applying(decision.pending(), finish)
                self._release_non_voters(decision)

    def _settle_in_doubt(self, planned: list[tuple[_Finish, Decision]], error: errors.InDoubt) -> list[Any] | None:
        """The entry holding these decisions did not commit in time, but may
        still: giving up now (ordering the voters to drop what the entry may
        yet commit) could lose a committed transaction.  Their clients are
        told to ask for the outcome (``GetTransactionOutcome`` waits while
        the transaction is FINISHING, and Abort refuses it); the decider
        waits for the entry, holding ``_decide_lock`` so that no later
        decision is started before these (publication in TID order), until
        it commits (the results), is replaced (it raises: given up), or this
        coordinator stops (None: the next leader decides from its log)."""
        assert error.pending is not None
        log.error("%d commit decisions not recorded yet (%s): in doubt until their entry commits or is replaced",
                  len(planned), error)
        for finish, _ in planned:
            finish.fail(errors.Unavailable(f"the commit decision is not recorded yet ({error}): ask for the outcome"))
        while not self._stopping.is_set():
            try:
                results = error.pending(1.0)
            except errors.NeoError as refused:
                log.error("%d in-doubt commit decisions will never commit: %s", len(planned), refused)
                for finish, _ in planned:
                    self._undecided(finish, errors.Unavailable(f"cannot record the commit decision: {refused}"))
                return None
            if results is not None:
                log.info("%d in-doubt commit decisions committed", len(planned))
                return results
        return None

    def _release_non_voters(self, decision: Decision) -> None:
        """Order the nodes whose cells the decision marked OUT_OF_DATE, and
        that voted nothing, to drop the transaction: they may hold its
        stores and their locks (a store reached them, their vote did not),
        which no Commit order will ever release; their cells catch up by
        replication.  A node that voted for another partition is a
        participant: its Commit applies what it holds.  A node that is not
        RUNNING is left alone (it drops undecided TTIDs when it registers
        again): every decision while it is away names its cells, and asking
        an unreachable node each time would tie up the order threads."""
        voters = {vote.node_id for vote in decision.votes}
        state = self._log.state
        addresses = sorted({
            info.address for cell in decision.out_of_date if cell.node_id not in voters
            for info in [state.known_node(cell.node_id)]
            if info is not None and info.address and info.state == NodeState.RUNNING})
        if addresses:
            self._abort_on(addresses, decision.ttid, wait=False)

    def _undecided(self, finish: _Finish, error: errors.NeoError) -> None:
        """Not committed: the transaction is aborted, the client told why."""
        if self._stopping.is_set():
            with self._condition:
                finish.transaction.phase = Phase.BEGUN
        else:
            self._give_up(finish.transaction)
        finish.fail(error)

    def _give_up(self, transaction: _Transaction) -> None:
        """Abort a transaction whose finish was refused: forget it, and order
        every node to drop it (the master does not know every node the
        client stored on; a node marked DOWN may still hold its locks: its
        session broke, its server did not)."""
        with self._condition:
            if self._transactions.get(transaction.ttid) is transaction:
                del self._transactions[transaction.ttid]
            self._condition.notify_all()  # outcome() may be waiting
        self._abort_on(self._known_addresses(), transaction.ttid, wait=False)

    def _known_addresses(self) -> list[str]:
        return [n.address for n in self._log.state.table.nodes if n.address]

    # -- step 4: apply on the participants ---------------------------------------

    def _start_applying(self, decision: PendingDecision, finish: _Finish | None) -> None:
        applying = _Applying(decision, finish)
        with self._condition:
            if finish is not None:
                finish.transaction.phase = Phase.DECIDED
            self._applying[decision.tid] = applying
        self._dispatch(applying, decision.participants)
        with self._condition:
            self._publish_decided()

    def _dispatch(self, applying: _Applying, node_ids: Iterable[int]) -> None:
        with self._condition:
            wanted = [n for n in node_ids if n in applying.remaining]
            nodes = [n for n in wanted if n not in applying.trying]
            # An order being tried may be about to give up on a node that
            # just came back: it is sent again when it ends (_loop_ended).
            applying.redrive.update(n for n in wanted if n in applying.trying)
            applying.trying.update(nodes)
        decision = applying.decision
        for node_id in nodes:
            if not self._orders.send(node_id, decision.ttid, decision.tid, applying):
                with self._condition:  # the master is stopping
                    applying.trying.discard(node_id)

    def redrive_node(self, node_id: int) -> None:
        """Send Commit again for every decision ``node_id`` still has to apply
        (after it registered again)."""
        with self._condition:
            waiting = [a for a in self._applying.values() if node_id in a.remaining]
        for applying in waiting:
            self._dispatch(applying, [node_id])

    def _address_of(self, node_id: int) -> str | None:
        info = self._log.state.known_node(node_id)
        return info.address if info is not None else None

    def _run_elsewhere(self, work: Callable[[], None]) -> None:
        try:
            self._executor.submit(work)
        except RuntimeError:  # executor shut down: the master is stopping
            pass

    def _participant_applied(self, applying: _Applying, node_id: int) -> None:
        with self._condition:
            applying.trying.discard(node_id)
            applying.redrive.discard(node_id)
            applying.remaining.discard(node_id)
            applying.applied.add(node_id)
            self._forget_applied()

    def _participant_failed(
        self, applying: _Applying, node_id: int, error: errors.NeoError, unreachable: bool
    ) -> None:
        if self._stopping.is_set():
            with self._condition:
                applying.trying.discard(node_id)
            return
        tid = applying.decision.tid
        log.warning("storage node %d failed to apply %s: %s", node_id, tid_repr(tid), error)
        commands: list = [DropParticipants(tid, (node_id,))]
        if unreachable:
            commands.insert(0, SetNodeState(node_id, NodeState.DOWN))
        try:
            results = self._log.submit(commands)
        except errors.NeoError as failure:
            log.error("cannot record the failure of node %d: %s", node_id, failure)
            self._loop_ended(applying, node_id)
            return
        dropped = results[-1]
        with self._condition:
            if isinstance(dropped, tuple) and node_id in dropped:
                applying.remaining.discard(node_id)
                self._forget_applied()
            elif not isinstance(dropped, errors.NeoError) and node_id in applying.remaining:
                log.warning(
                    "storage node %d holds the last readable cell of a partition of %s: "
                    "it gets the order again when it comes back", node_id, tid_repr(tid),
                )
        self._loop_ended(applying, node_id)

    def _loop_ended(self, applying: _Applying, node_id: int) -> None:
        """The Commit loop on ``node_id`` gave up; start another if the node
        registered again while it ran (redrive_node skipped it then)."""
        with self._condition:
            applying.trying.discard(node_id)
            again = node_id in applying.redrive and node_id in applying.remaining
            applying.redrive.discard(node_id)
        if again and not self._stopping.is_set():
            self._dispatch(applying, [node_id])

    # -- step 5: publish ------------------------------------------------------------

    def _publish_decided(self) -> None:
        """Publish every decided transaction not published yet, in TID order,
        and answer its Finish (called with the condition held, as decisions
        are made: every earlier TID is published already).

        A decision is published once durable, before the participants
        applied it: they hold what they voted, locked, until their Commit
        order arrives, and a read that may concern it waits for it there
        (``TransactionManager.settle`` on the storage nodes).
        """
        for tid, applying in self._applying.items():
            if applying.published:
                continue
            applying.published = True
            decision = applying.decision
            self._publisher.publish(tid, decision.ttid, decision.oids)
            if applying.finish is not None:
                self._transactions.pop(decision.ttid, None)
                applying.finish.succeed(tid)
                self._condition.notify_all()  # outcome() may be waiting
        self._forget_applied()

    def _forget_applied(self) -> None:
        """Forget, in TID order, every published decision that every
        remaining participant applied, and have :class:`MarkApplied`
        record who applied it (called with the condition held)."""
        while self._applying:
            tid, first = next(iter(self._applying.items()))
            if first.remaining or not first.published:
                return
            del self._applying[tid]
            if first.applied:
                if self._marks_since is None:
                    self._marks_since = self._monotonic()
                self._applied_marks.setdefault(tid, set()).update(first.applied)
                self._condition.notify_all()

    # -- outcome of a finish the client lost track of ----------------------------------

    def outcome(self, client_id: str, ttid: bytes, timeout: float = 10.0) -> bytes | None:
        """The TID ``client_id``'s ``ttid`` committed as, or None: it never will.

        Called (``GetTransactionOutcome``) by a client whose Finish failed
        without a definite answer (the master died, leadership changed).
        The answer is final, as this master leads with a complete state (the
        log applied an entry of its term, so every decision of an older
        leader is in the state or can never commit) and only this
        coordinator decides from now on:

        * recorded in the state's recent outcomes: committed;
        * FINISHING or DECIDED here: wait (at most ``timeout``, then
          Unavailable: the client asks again) for the finish to end;
        * BEGUN here: aborted now (forgotten, so a late Finish fails with
          UnknownTransaction; the storage nodes drop it);
        * unknown here (begun under an older leader, or already given up):
          no Finish can succeed, as a Finish needs a TTID this coordinator
          began; the storage nodes are ordered to drop it.
        """
        if len(ttid) != 8:
            raise errors.BadRequest(f"ttid must be 8 bytes, got {len(ttid)}")
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                self._check_not_stopping()
                tid = self._log.state.outcome_of(ttid, client_id)
                if tid is not None:
                    return tid
                transaction = self._transactions.get(ttid)
                if transaction is None:
                    break  # unknown, given up, or published (then recorded: checked below)
                if transaction.client_id != client_id:
                    return None  # another client's TTID: the one asked about is not known here
                if transaction.phase is Phase.BEGUN:
                    del self._transactions[ttid]
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.Unavailable(
                        f"transaction {tid_repr(ttid)} is still being finished: ask again")
                # The decision lands in the state without a notification: poll it.
                self._condition.wait(min(remaining, 0.05))
        tid = self._log.state.outcome_of(ttid, client_id)
        if tid is not None:
            return tid
        log.info("transaction %s of client %s: not committed, aborted", tid_repr(ttid), client_id)
        self._abort_on(self._known_addresses(), ttid, wait=False)
        return None

    def state_of(self, ttid: bytes) -> tuple[str, bytes | None]:
        """What a storage node holding a lock of ``ttid`` for long is told
        (``GetTransactionState``), changing nothing: ``("committed", tid)``
        if decided; ``("alive", None)`` while this coordinator knows it;
        else ``("aborted", None)``: unknown to the leader, it can never
        commit (see :meth:`outcome`)."""
        if len(ttid) != 8:
            raise errors.BadRequest(f"ttid must be 8 bytes, got {len(ttid)}")
        with self._condition:
            self._check_not_stopping()
            state = self._log.state
            decision = state.decision_of_ttid(ttid)
            tid = decision.tid if decision is not None else state.outcome_of(ttid, None)
            if tid is not None:
                return "committed", tid
            if ttid in self._transactions:
                return "alive", None
        return "aborted", None

    # -- aborts -----------------------------------------------------------------------

    def abort(self, client_id: str, ttid: bytes, node_ids: Sequence[int]) -> None:
        """Forget ``ttid`` and order the nodes it stored on to drop it."""
        if len(ttid) != 8:
            raise errors.BadRequest(f"ttid must be 8 bytes, got {len(ttid)}")
        state = self._log.state
        addresses = []
        for node_id in sorted(set(node_ids)):
            info = state.known_node(node_id)
            if info is None:  # gone from the cluster: nothing to release there
                log.warning("abort of %s: storage node %d is unknown, skipped", tid_repr(ttid), node_id)
            else:
                addresses.append(info.address)
        with self._condition:
            self._heard_from(client_id)
            if state.decision_of_ttid(ttid) is not None or any(
                    a.decision.ttid == ttid for a in self._applying.values()):
                raise errors.BadRequest(f"transaction {tid_repr(ttid)} is committed: too late to abort")
            transaction = self._transactions.get(ttid)
            if transaction is not None:
                if transaction.client_id != client_id:
                    raise errors.UnknownTransaction(
                        f"transaction {tid_repr(ttid)} does not belong to client {client_id!r}"
                    )
                if transaction.phase is not Phase.BEGUN:
                    raise errors.BadRequest(
                        f"transaction {tid_repr(ttid)} is being finished: too late to abort"
                    )
                del self._transactions[ttid]
        self._abort_on(addresses, ttid)

    def _abort_on(self, addresses: Sequence[str], ttid: bytes, wait: bool = True) -> None:
        """Order every address to drop ``ttid``, in parallel.  A node that
        does not answer in time (a busy machine) is asked again, a few times:
        until it drops the TTID, its locks stay held.  A node still
        unreachable after that is marked DOWN: it registers again when it
        answers (a paused process keeps its connections), dropping every
        undecided TTID, and its locks with them."""
        term = self._log.term
        timeout = self._config.abort_timeout

        def abort(address: str) -> None:
            for attempt in range(ABORT_ATTEMPTS):
                try:
                    self._storages.abort(address, ttid, term, timeout)
                    return
                except errors.Unavailable:
                    if attempt + 1 == ABORT_ATTEMPTS or self._stopping.wait(min(0.5 * 2**attempt, 4.0)):
                        raise

        def report(future: concurrent.futures.Future[None], address: str) -> None:
            failure = future.exception()
            if failure is None:
                return
            log.warning("abort of %s on %s failed: %s", tid_repr(ttid), address, failure)
            if not isinstance(failure, errors.Unavailable) or self._stopping.is_set():
                return
            for node in self._log.state.table.nodes:
                if node.address == address and node.state == NodeState.RUNNING:
                    try:
                        self._log.submit([SetNodeState(node.node_id, NodeState.DOWN)])
                    except errors.NeoError as error:
                        log.error("cannot mark storage node %d down: %s", node.node_id, error)

        futures = []
        for address in addresses:
            try:
                future = self._executor.submit(abort, address)
            except RuntimeError:  # executor shut down: the master is stopping
                return
            future.add_done_callback(lambda done, address=address: report(done, address))  # type: ignore[misc]
            futures.append(future)
        if wait:
            # Bounded: the executor may be shut down (master or interpreter
            # stopping) with these never run.
            concurrent.futures.wait(futures, timeout=timeout + 1.0)

    def client_connected(self, client_id: str) -> None:
        """A client's session (its Subscribe stream) began."""
        with self._condition:
            self._client_sessions[client_id] += 1
            self._departed.pop(client_id, None)

    def client_disconnected(self, client_id: str) -> None:
        """A client's session ended: once it has neither opened a new one
        nor called this master (Begin, Finish, Abort) for ``session_grace``
        seconds, abort its transactions not being finished.  A call is
        enough: a client whose stream broke and came back on another master
        (as a busy leader's may) still begins and finishes here, and the
        TTID its last Finish reserved is one of its transactions."""
        with self._condition:
            self._client_sessions[client_id] -= 1
            if self._client_sessions[client_id] > 0:
                return
            del self._client_sessions[client_id]
            if self._stopping.is_set():
                return
            departure = self._departed[client_id] = _Departure()
        self._check_departed_later(client_id, departure)

    def _check_departed_later(self, client_id: str, departure: _Departure) -> None:
        if self._config.session_grace <= 0:
            self._client_gone(client_id, departure)
            return
        timer = threading.Timer(self._config.session_grace, self._client_gone, args=(client_id, departure))
        timer.daemon = True
        timer.start()

    def _heard_from(self, client_id: str) -> None:
        """``client_id`` called this master (condition held): if its
        session ended, it is not gone."""
        departure = self._departed.get(client_id)
        if departure is not None:
            departure.heard = True

    def _client_gone(self, client_id: str, departure: _Departure) -> None:
        """A grace after a client's session ended is over: abort its
        unfinished transactions, unless it was heard of meanwhile (then
        look again after another grace)."""
        with self._condition:
            if self._departed.get(client_id) is not departure or self._stopping.is_set():
                return  # it came back (and maybe left again: a later timer decides)
            if departure.heard:
                departure.heard = False
                orphans = None
            else:
                del self._departed[client_id]
                orphans = [ttid for ttid, transaction in self._transactions.items()
                           if transaction.client_id == client_id and transaction.phase is Phase.BEGUN]
                for ttid in orphans:
                    del self._transactions[ttid]
        if orphans is None:  # alive, its stream on another master
            self._check_departed_later(client_id, departure)
            return
        if not orphans:
            return
        log.info("client %s left: aborting %d transactions", client_id, len(orphans))
        addresses = self._known_addresses()
        for ttid in orphans:
            self._abort_on(addresses, ttid, wait=False)

    # -- introspection (servicers, tests) --------------------------------------------

    def phase_of(self, ttid: bytes) -> Phase | None:
        with self._condition:
            transaction = self._transactions.get(ttid)
            return transaction.phase if transaction is not None else None

    def decided_unpublished(self) -> list[bytes]:
        """TIDs decided but not yet published, in order."""
        with self._condition:
            return list(self._applying)


def _check_requested_tid(requested: bytes, last_tid: bytes) -> None:
    """A restore writes under ``requested`` (the lowest TID it writes)."""
    if requested <= last_tid:
        raise errors.BadRequest(
            f"cannot commit under TID {tid_repr(requested)}: it must be above the last "
            f"committed TID {tid_repr(last_tid)}")
