"""Which master serves writes: the leader's components, built and dropped with leadership.

Every master holds its command log, its invalidation publisher and its
links to storage nodes.  The components that *write* — the
:class:`~neostore.master_node.cluster.ClusterManager` (registrations, oids,
administration) and the :class:`~neostore.master_node.commit.CommitCoordinator`
(two-phase commit) — exist only while this master leads:

* one master alone (:class:`~neostore.master_node.command_log.LmdbCommandLog`):
  :meth:`Leadership.become_leader` runs once at start, and the master leads
  until it stops;
* masters under Raft (:class:`~neostore.master_node.raft_driver.RaftCommandLog`):
  the log calls :meth:`become_leader` each time this master becomes a
  leader whose state is complete (it applied an entry of its own term).
  It creates the cluster if the replicated state has none yet, then builds
  a new coordinator — whose ``start`` re-drives every decided-but-unapplied
  decision of the state (``Commit`` is idempotent on storage nodes) — and a
  new cluster manager.  Transactions begun under the previous leader are
  unknown here: their Finish fails (a client that lost a Finish's answer
  asks ``GetTransactionOutcome``: decided TTIDs are in the replicated
  state's recent outcomes, any other is ABORTED), and the storage nodes, whose sessions
  with the previous leader ended, register again and drop every pending
  TTID that was not decided (that is how undecided TTIDs are aborted).
  :meth:`become_follower` stops both: storage sessions end, the nodes
  register again and follow the ``NotLeader`` hint to the new leader.

Servicers ask :meth:`cluster` and :meth:`coordinator` for every write; on a
follower they raise :class:`~neostore.errors.NotLeader` naming the leader.

Every master serves the invalidation stream.  The leader's coordinator
publishes as it commits; a follower's publisher is fed by :class:`ReplicaFeed`,
a listener on the replicated state: a decision is published once it left
``pending_decisions`` (every participant applied it: the leader already
published it) and every smaller decided TID is published — the same TIDs,
in the same order, a little later than on the leader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from neostore import errors
from neostore.ids import ZERO_TID
from neostore.master_node.cluster import ClusterManager
from neostore.master_node.command_log import CommandLog, submit_one
from neostore.master_node.commit import CommitCoordinator
from neostore.master_node.invalidations import InvalidationPublisher
from neostore.master_node.state import MAX_RECENT_OUTCOMES, ClusterState, Command, PendingDecision

log = logging.getLogger(__name__)


class ReplicaFeed:
    """Publishes, on a follower, the decisions the leader finished (see the module docstring).

    Register it as a state listener; while this master leads (``active``
    False) it only keeps track of what is pending, as the coordinator
    publishes itself.
    """

    def __init__(self, publisher: InvalidationPublisher, state: ClusterState) -> None:
        self._publisher = publisher
        self._lock = threading.Lock()
        self._known: dict[bytes, PendingDecision] = {d.tid: d for d in state.pending_decisions}
        self._pending: frozenset[bytes] = frozenset(self._known)
        self._last_decided = state.last_tid
        # Decisions up to this TID were never seen pending here (a snapshot
        # jumped over them): one ResetCache covers them, once none is pending.
        self._gap_end = ZERO_TID
        self.active = True

    def __call__(self, old: ClusterState, new: ClusterState) -> None:
        with self._lock:
            if _skipped_decisions(old, new):
                self._gap_end = max(self._gap_end, new.last_tid)
            self._last_decided = new.last_tid
            self._pending = frozenset(d.tid for d in new.pending_decisions)
            for decision in new.pending_decisions:
                self._known.setdefault(decision.tid, decision)
            self._publish_finished()

    def set_active(self, active: bool) -> None:
        """Start (follower) or stop (leader) publishing; starting catches up at once."""
        with self._lock:
            self.active = active
            self._publish_finished()

    def _publish_finished(self) -> None:
        if not self.active:
            self._known = {tid: d for tid, d in self._known.items() if tid in self._pending}
            return
        for tid in sorted(self._known):
            if tid in self._pending:
                return  # every later TID waits for this one
            decision = self._known.pop(tid)
            if tid <= self._gap_end:
                continue  # covered by the ResetCache at the gap's end
            self._skip_gap()
            if tid > self._publisher.last_tid:
                self._publisher.publish(tid, decision.ttid, decision.oids)
        self._skip_gap()
        if self._last_decided > self._publisher.last_tid:
            # Decisions this master never saw pending (it caught up from a
            # snapshot): clients must drop their caches rather than miss them.
            self._publisher.skip_to(self._last_decided)

    def _skip_gap(self) -> None:
        """Reset the subscribers' caches at the end of the gap, if not done yet:
        no TID after a gap may be published before it (a client would miss
        the invalidations of the TIDs in the gap)."""
        if self._gap_end > self._publisher.last_tid:
            self._publisher.skip_to(self._gap_end)


def _skipped_decisions(old: ClusterState, new: ClusterState) -> bool:
    """Whether ``new`` holds decisions after ``old`` that it does not list as
    pending: a snapshot jumped over them.  (Applying entries never does: a
    decision is pending in the state its entry makes, and leaves
    ``pending_decisions`` only in a later entry.)  The recent outcomes name
    the decided TIDs; when they do not reach back to ``old.last_tid``, assume
    a jump."""
    if new.last_tid <= old.last_tid:
        return False
    pending = {decision.tid for decision in new.pending_decisions}
    if new.last_tid not in pending:
        return True
    for outcome in reversed(new.recent_outcomes):
        if outcome.tid <= old.last_tid:
            return False
        if outcome.tid not in pending:
            return True
    return len(new.recent_outcomes) >= MAX_RECENT_OUTCOMES


class Leadership:
    """The writing components while this master leads; ``NotLeader`` otherwise."""

    def __init__(
        self,
        command_log: CommandLog,
        build: Callable[[], tuple[ClusterManager, CommitCoordinator]],
        not_leader: Callable[[], errors.NotLeader],
        create_cluster: Command | None = None,
        feed: ReplicaFeed | None = None,
    ) -> None:
        self._log = command_log
        self._build = build
        self._not_leader = not_leader
        self._create_cluster = create_cluster
        self._feed = feed
        self._lock = threading.Lock()  # serializes leadership changes
        self._cluster: ClusterManager | None = None
        self._coordinator: CommitCoordinator | None = None
        self._stopped = False

    @property
    def state(self) -> ClusterState:
        """The replicated state (any master serves reads from it)."""
        return self._log.state

    @property
    def is_leader(self) -> bool:
        return self._coordinator is not None

    def cluster(self) -> ClusterManager:
        cluster = self._cluster
        if cluster is None:
            raise self._not_leader()
        return cluster

    def coordinator(self) -> CommitCoordinator:
        coordinator = self._coordinator
        if coordinator is None:
            raise self._not_leader()
        return coordinator

    def coordinator_if_leader(self) -> CommitCoordinator | None:
        return self._coordinator

    def become_leader(self, term: int = 0) -> None:
        """Create the cluster if needed, build and start the writing components."""
        with self._lock:
            if self._stopped or self._coordinator is not None:
                return
            if self._create_cluster is not None and not self._log.state.created:
                try:
                    submit_one(self._log, self._create_cluster)
                except errors.NeoError as error:
                    log.warning("cannot create the cluster (leadership lost?): %s", error)
                    return
                log.info("created cluster: %s", self._create_cluster)
            if self._feed is not None:
                self._feed.set_active(False)
            cluster, coordinator = self._build()
            coordinator.start()
            self._cluster, self._coordinator = cluster, coordinator
        log.info("this master now serves writes (term %d)", self._log.term)

    def become_follower(self) -> None:
        """Stop the writing components; the follower's feed publishes from now on."""
        with self._lock:
            self._stop_components()
            if self._feed is not None and not self._stopped:
                self._feed.set_active(True)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._stop_components()

    def _stop_components(self) -> None:
        cluster, coordinator = self._cluster, self._coordinator
        self._cluster = self._coordinator = None
        if cluster is not None:
            cluster.stop()
        if coordinator is not None:
            coordinator.stop()
            log.info("this master no longer serves writes")
