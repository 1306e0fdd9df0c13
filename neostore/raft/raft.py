"""The Raft rules for one node: elections, replication, commit, membership, reads.

``Raft`` is a state machine with no I/O.  Input: ``tick()`` (one unit of
the driver's clock) and ``step(message)``; the local requests
``propose``, ``propose_conf_change``, ``read_index``,
``transfer_leadership``, ``campaign``.  Output accumulates in its fields
(``msgs``, ``read_states``, the log's unstable part, the commit index) and
is handed to the driver by ``RawNode.ready()``.

Roles (Raft paper section 5, dissertation chapters 3, 4, 6, 9).  Each role
is a pair of handlers that ``become_*`` swaps in: ``_tick_role`` and
``_step_role``.  ``step`` first does what does not depend on the role: the
term comparison (a higher term turns any node into a follower of that
term, a lower one is answered or ignored) and vote requests; then it hands
the message to the role's handler.

* follower: answers appends, heartbeats and snapshots; after a randomized
  election timeout without a leader it campaigns.
* pre-candidate (PreVote, 9.6): asks "would you vote for me in term+1?"
  without changing anybody's term; only with a majority of yes does it
  become a candidate.  Voters say no while they hear from a leader, so a node
  coming back from a partition cannot depose a healthy leader.
* candidate: new term, votes for itself, asks for votes; a majority makes it
  leader.
* leader: appends a no-op of its term, replicates with per-follower
  progress (probe / pipelined replicate / snapshot), commits what a
  majority stored *if it is of its own term* (5.4.2), sends heartbeats,
  steps down under CheckQuorum when a majority was silent for an election
  timeout, serves ReadIndex, transfers leadership with TimeoutNow (3.10) and
  accepts one single-server membership change at a time (4.1).

The leader counts its own log in a majority only once the driver reported
it durable (``on_persisted`` from ``RawNode.advance``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import quorum
from .codec import encode_conf_change_record
from .config import Config
from .errors import (
    CompactedError,
    ConfChangeRefusedError,
    NotLeaderError,
    ProposalDroppedError,
)
from .log import RaftLog
from .membership import MembershipLog, apply_conf_change
from .progress import Progress, ProgressState
from .read_only import ReadOnly, ReadRequest
from .storage import RaftLogStore
from .types import (
    NO_NODE,
    ConfChange,
    ConfChangeRecord,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    SoftState,
    StateRole,
)

_VOTE_REQUESTS = (MessageType.VOTE, MessageType.PRE_VOTE)
_FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)


class Raft:
    """One node's Raft state; see the module docstring."""

    def __init__(self, config: Config, store: RaftLogStore) -> None:
        config.validate()
        self.id = config.node_id
        self.config = config
        self.log = RaftLog(store, config.max_committed_bytes_per_ready)
        hard_state = store.hard_state()
        snapshot = store.snapshot()
        self.membership = MembershipLog(snapshot.index, snapshot.metadata.conf_state)
        first, last = store.first_index(), store.last_index()
        if last >= first:
            self.membership.record_entries(store.entries(first, last + 1))
        if not first - 1 <= hard_state.commit <= last:
            raise AssertionError(
                f"stored commit {hard_state.commit} outside the log [{first - 1}, {last}]"
            )
        self.log.commit_to(hard_state.commit)
        applied = max(config.applied, first - 1)
        if applied > self.log.committed:
            raise ValueError(f"applied {applied} beyond the stored commit {self.log.committed}")
        self.log.applied_to(applied)
        self.membership.forget_up_to(applied)

        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NO_NODE
        self.role = StateRole.FOLLOWER
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_reads: list[ReadRequest] = []
        """Reads that wait until the leader commits an entry of its term."""
        self.lead_transferee = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self._tick_role: Callable[[], None] = self._tick_election
        self._step_role: Callable[[Message], None] = self._step_follower
        self.become_follower(self.term, NO_NODE)

    def __repr__(self) -> str:
        return (
            f"Raft(id={self.id}, role={self.role.value}, term={self.term}, lead={self.lead}, "
            f"last={self.log.last_index()}, commit={self.log.committed})"
        )

    # --- views ---------------------------------------------------------------

    @property
    def voters(self) -> frozenset[int]:
        return self.membership.current().voters

    def promotable(self) -> bool:
        """Whether this node may campaign: it is a voter of its latest membership."""
        return self.id in self.voters

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    # --- role changes ----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_NODE
        self.lead = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_ticks + self.config.rng.randint(
            0, self.config.election_ticks - 1
        )
        self.lead_transferee = NO_NODE
        self.votes = {}
        self.progress = {}
        self.read_only.reset()
        self.pending_reads = []

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._tick_role = self._tick_election
        self._step_role = self._step_follower
        self.lead = lead
        self.role = StateRole.FOLLOWER

    def become_pre_candidate(self) -> None:
        """PreVote: change role only; term and vote stay as they are."""
        if self.role is StateRole.LEADER:
            raise AssertionError("a leader cannot become a pre-candidate")
        self._tick_role = self._tick_election
        self._step_role = self._step_candidate
        self.votes = {}
        self.lead = NO_NODE
        self.role = StateRole.PRE_CANDIDATE

    def become_candidate(self) -> None:
        if self.role is StateRole.LEADER:
            raise AssertionError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self._tick_role = self._tick_election
        self._step_role = self._step_candidate
        self.vote = self.id
        self.role = StateRole.CANDIDATE

    def become_leader(self) -> None:
        if self.role is StateRole.FOLLOWER:
            raise AssertionError("a follower cannot become leader without an election")
        self._reset(self.term)
        self._tick_role = self._tick_heartbeat
        self._step_role = self._step_leader
        self.lead = self.id
        self.role = StateRole.LEADER
        self._sync_progress_with_membership()
        own = self.progress[self.id]
        own.match = self.log.stable_last_index()
        own.become_replicate()
        # A no-op of the new term: committing it commits everything before it
        # (5.4.2) and unlocks ReadIndex and membership changes.
        self._append([Entry(0, 0)])

    def _sync_progress_with_membership(self) -> None:
        """Leader: one progress per voter of the latest membership, plus itself.

        A voter being removed keeps its progress (it is replicated to, but no
        longer counted) until the removal commits, so that it learns of it
        and does not campaign.
        """
        next_index = self.log.last_index() + 1
        members = set(self.voters) | {self.id}
        members |= self.membership.at(self.log.committed).voters
        for node_id in members - self.progress.keys():
            self.progress[node_id] = Progress(
                next_index, self.config.max_inflight_appends, self.config.max_inflight_bytes
            )
        for node_id in self.progress.keys() - members:
            del self.progress[node_id]
        if self.lead_transferee not in self.voters:
            self.lead_transferee = NO_NODE

    # --- ticks -----------------------------------------------------------------

    def tick(self) -> None:
        self._tick_role()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for progress in self.progress.values():
            if progress.state is ProgressState.SNAPSHOT:
                progress.snapshot_ticks += 1
                if progress.snapshot_ticks >= self.config.election_ticks:
                    progress.become_probe()  # the snapshot was lost: try again
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self.become_follower(self.term, NO_NODE)
                return
            self.lead_transferee = NO_NODE  # a transfer gets one election timeout
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        """CheckQuorum: did a majority answer since the last check?  Clears the marks."""
        active = {node_id for node_id, pr in self.progress.items() if pr.recent_active}
        active.add(self.id)
        for node_id, progress in self.progress.items():
            if node_id != self.id:
                progress.recent_active = False
        return quorum.has_quorum(self.voters, active)

    # --- elections -------------------------------------------------------------

    def campaign(self, transfer: bool = False) -> None:
        """Start an election (a pre-vote first if configured, except for a transfer)."""
        if not self.promotable() or self.role is StateRole.LEADER:
            return
        if self.config.pre_vote and not transfer:
            self._campaign(MessageType.PRE_VOTE)
        else:
            self._campaign(MessageType.VOTE, transfer)

    def _campaign(self, request: MessageType, transfer: bool = False) -> None:
        if request is MessageType.PRE_VOTE:
            self.become_pre_candidate()
            term = self.term + 1
        else:
            self.become_candidate()
            term = self.term
        if self._record_vote(self.id, True):
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        for voter in sorted(self.voters):
            if voter != self.id:
                self._send(
                    Message(
                        request,
                        self.id,
                        voter,
                        term,
                        log_term=last_term,
                        index=last_index,
                        leader_transfer=transfer,
                    )
                )

    def _record_vote(self, voter: int, granted: bool) -> bool:
        """Count a vote (the first answer of each voter); act on the result.

        Returns True if the election is decided.
        """
        self.votes.setdefault(voter, granted)
        result = quorum.vote_result(self.voters, self.votes)
        if result is quorum.VoteResult.PENDING:
            return False
        if result is quorum.VoteResult.LOST:
            self.become_follower(self.term, NO_NODE)
        elif self.role is StateRole.PRE_CANDIDATE:
            self._campaign(MessageType.VOTE)
        else:
            self.become_leader()
            self._bcast_append()
        return True

    def _handle_vote_request(self, message: Message) -> None:
        """RequestVote receiver (Figure 3.1), for votes and pre-votes."""
        response = (
            MessageType.VOTE_RESPONSE
            if message.type is MessageType.VOTE
            else MessageType.PRE_VOTE_RESPONSE
        )
        can_vote = (
            self.vote == message.source
            or (self.vote == NO_NODE and self.lead == NO_NODE)
            or (message.type is MessageType.PRE_VOTE and message.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(message.index, message.log_term):
            # A pre-vote answer carries the term asked about, so that the
            # pre-candidate counts it; it changes nothing here.
            self._send(Message(response, self.id, message.source, message.term))
            if message.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = message.source
        else:
            self._send(Message(response, self.id, message.source, self.term, reject=True))

    # --- messages: the part common to every role ---------------------------------

    def step(self, message: Message) -> None:
        if message.target != self.id:
            raise ValueError(f"message for {message.target} stepped into {self.id}")
        if message.term > self.term:
            if message.type in _VOTE_REQUESTS and not message.leader_transfer:
                # Dissertation 4.2.3 and 9.6: while a leader is heard from, a
                # vote request is from a disruptive server (removed, or back
                # from a partition): ignore it without changing term.
                in_lease = (
                    self.lead != NO_NODE and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and (self.config.check_quorum or message.type is MessageType.PRE_VOTE):
                    return
            if message.type is MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif message.type is MessageType.PRE_VOTE_RESPONSE and not message.reject:
                pass  # the term we will campaign in, once a majority says yes
            elif message.type in _FROM_LEADER:
                self.become_follower(message.term, message.source)
            else:
                self.become_follower(message.term, NO_NODE)
        elif message.term < self.term:
            if message.type in (MessageType.APPEND, MessageType.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader: tell it our term so that it steps down.  This
                # also frees a node whose term went up during a partition but
                # that cannot win (pre-vote or check-quorum keep it from it).
                self._send(Message(MessageType.APPEND_RESPONSE, self.id, message.source, self.term))
            elif message.type is MessageType.PRE_VOTE:
                self._send(
                    Message(
                        MessageType.PRE_VOTE_RESPONSE,
                        self.id,
                        message.source,
                        self.term,
                        reject=True,
                    )
                )
            return
        if message.type in _VOTE_REQUESTS:
            self._handle_vote_request(message)
            return
        self._step_role(message)

    # --- follower ------------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        kind = message.type
        if kind in _FROM_LEADER:
            self.election_elapsed = 0
            self.lead = message.source
            self._handle_from_leader(message)
        elif kind is MessageType.TIMEOUT_NOW:
            self.campaign(transfer=True)
        elif kind is MessageType.READ_INDEX_RESPONSE:
            self.read_states.append(ReadState(message.index, message.context))
        # Anything else is stale (answers to a role we no longer have).

    def _handle_from_leader(self, message: Message) -> None:
        if message.type is MessageType.APPEND:
            self._handle_append(message)
        elif message.type is MessageType.HEARTBEAT:
            self.log.commit_to(message.commit)
            self._send(
                Message(
                    MessageType.HEARTBEAT_RESPONSE,
                    self.id,
                    message.source,
                    self.term,
                    context=message.context,
                )
            )
        else:
            self._handle_snapshot(message)

    def _handle_append(self, message: Message) -> None:
        """AppendEntries receiver (Figure 3.1)."""
        if message.index < self.log.committed:
            self._send(
                Message(
                    MessageType.APPEND_RESPONSE,
                    self.id,
                    message.source,
                    self.term,
                    index=self.log.committed,
                )
            )
            return
        result = self.log.maybe_append(
            message.index, message.log_term, message.commit, message.entries
        )
        if result is None:
            hint_index, hint_term = self.log.find_conflict_by_term(message.index, message.log_term)
            self._send(
                Message(
                    MessageType.APPEND_RESPONSE,
                    self.id,
                    message.source,
                    self.term,
                    index=message.index,
                    reject=True,
                    reject_hint=hint_index,
                    log_term=hint_term,
                )
            )
            return
        last_new, first_written = result
        if first_written:
            self.membership.truncate_from(first_written)
            self.membership.record_entries(
                list(message.entries[first_written - message.index - 1 :])
            )
        self._send(
            Message(MessageType.APPEND_RESPONSE, self.id, message.source, self.term, index=last_new)
        )

    def _handle_snapshot(self, message: Message) -> None:
        """InstallSnapshot receiver (Figure 5.3); the answer is an append response."""
        snapshot = message.snapshot
        if snapshot is None:
            return
        if snapshot.index <= self.log.committed:
            index = self.log.committed
        elif self.log.match_term(snapshot.index, snapshot.term):
            # We already have the entries the snapshot covers: just commit them.
            self.log.commit_to(snapshot.index)
            index = self.log.committed
        else:
            self.log.restore(snapshot)
            self.membership.reset(snapshot.index, snapshot.metadata.conf_state)
            index = self.log.last_index()
        self._send(
            Message(MessageType.APPEND_RESPONSE, self.id, message.source, self.term, index=index)
        )

    # --- candidate and pre-candidate ---------------------------------------------

    def _step_candidate(self, message: Message) -> None:
        expected = (
            MessageType.PRE_VOTE_RESPONSE
            if self.role is StateRole.PRE_CANDIDATE
            else MessageType.VOTE_RESPONSE
        )
        kind = message.type
        if kind in _FROM_LEADER:
            # A leader exists in our term (or a later one): follow it.
            self.become_follower(message.term, message.source)
            self._step_follower(message)
        elif kind is expected:
            if message.source in self.voters:
                self._record_vote(message.source, not message.reject)
        elif kind is MessageType.READ_INDEX_RESPONSE:
            self.read_states.append(ReadState(message.index, message.context))

    # --- leader --------------------------------------------------------------------

    def _step_leader(self, message: Message) -> None:
        kind = message.type
        if kind is MessageType.APPEND_RESPONSE:
            self._handle_append_response(message)
        elif kind is MessageType.HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(message)
        elif kind is MessageType.READ_INDEX:
            self._leader_read_index(ReadRequest(message.source, message.context))
        # Vote answers and the like from this term are stale for a leader.

    def _handle_append_response(self, message: Message) -> None:
        progress = self.progress.get(message.source)
        if progress is None:
            return
        progress.recent_active = True
        if message.reject:
            match_hint = message.reject_hint
            if message.log_term > 0:
                match_hint, _ = self.log.find_conflict_by_term(
                    message.reject_hint, message.log_term
                )
            if progress.maybe_decrease_to(message.index, match_hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(message.source)
            return
        was_paused = progress.is_paused()
        updated = progress.maybe_update(message.index)
        if not updated and not (
            progress.match == message.index and progress.state is ProgressState.PROBE
        ):
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT:
            if progress.match + 1 >= self.log.first_index():
                progress.become_probe()
                progress.become_replicate()
        else:
            progress.inflights.free_le(message.index)
        if self._maybe_commit():
            if self.role is not StateRole.LEADER:
                return
        elif was_paused:
            self._send_append(message.source)
        if message.source == self.lead_transferee or not self._waits_for_flush(message.source):
            while self._send_append(message.source, send_if_empty=False):
                pass
        if message.source == self.lead_transferee and progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, self.id, message.source, self.term))

    def _handle_heartbeat_response(self, message: Message) -> None:
        progress = self.progress.get(message.source)
        if progress is None:
            return
        progress.recent_active = True
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.inflights.full():
            # Appends may have been lost: make room so one can be retried.
            progress.inflights.free_first_one()
        if progress.match < self.log.last_index():
            self._send_append(message.source)
        if message.context:
            self.read_only.receive_ack(message.source, message.context)
            for status in self.read_only.advance(message.context, self.voters):
                self._respond_read(status.request, status.index)

    def _maybe_commit(self) -> bool:
        """Leader: commit what a majority stored, if of this term; act on it."""
        match = {node_id: pr.match for node_id, pr in self.progress.items()}
        index = quorum.committed_index(self.voters, match)
        if not self.log.maybe_commit(index, self.term):
            return False
        # Broadcast before dropping a removed voter's progress: the commit
        # index tells it that its removal committed (so it can stop).
        removed = len(self.progress) > len(self.voters | {self.id})
        if removed or not self.config.lazy_commit_broadcast:
            self._bcast_append()
        if removed:
            self._sync_progress_with_membership()  # drop the removed voters' progress
        if self.pending_reads and self.committed_in_current_term():
            pending, self.pending_reads = self.pending_reads, []
            for request in pending:
                self._leader_read_index(request)
        if self.id not in self.voters and self.membership.latest_index() <= self.log.committed:
            # The membership that removed this leader is committed (4.2.2).
            self.become_follower(self.term, NO_NODE)
        return True

    def on_persisted(self, index: int, term: int) -> None:
        """The driver made the log durable up to (``index``, ``term``)."""
        if self.role is not StateRole.LEADER or not self.log.match_term(index, term):
            return
        own = self.progress.get(self.id)
        if own is not None and own.maybe_update(index):
            self._maybe_commit()

    # --- sending ---------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self.msgs.append(message)

    def _send_append(self, target: int, send_if_empty: bool = True) -> bool:
        """Send the next append (or the snapshot) to ``target``; False if nothing was sent."""
        progress = self.progress.get(target)
        if progress is None or progress.is_paused():
            return False
        previous = progress.next - 1
        try:
            previous_term = self.log.term(previous)
            entries = self.log.entries_from(
                progress.next,
                self.config.max_bytes_per_append,
                self.config.max_entries_per_append,
            )
        except CompactedError:
            return self._send_snapshot(target, progress)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MessageType.APPEND,
                self.id,
                target,
                self.term,
                log_term=previous_term,
                index=previous,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        last = entries[-1].index if entries else previous
        progress.sent_append(last, len(entries), sum(entry.size() for entry in entries))
        progress.commit_sent = max(progress.commit_sent, self.log.committed)
        return True

    def _send_snapshot(self, target: int, progress: Progress) -> bool:
        if not progress.recent_active:
            return False
        snapshot = self.log.snapshot()
        if snapshot.is_empty():
            raise AssertionError("the log is compacted but the store has no snapshot")
        self._send(Message(MessageType.SNAPSHOT, self.id, target, self.term, snapshot=snapshot))
        progress.become_snapshot(snapshot.index)
        return True

    def _bcast_append(self) -> None:
        lazy = self._lazy_followers()
        for node_id in sorted(self.progress):
            if node_id == self.id or node_id in lazy:
                continue
            if self._send_append(node_id):
                while self._send_append(node_id, send_if_empty=False):
                    pass

    def _lazy_followers(self) -> frozenset[int]:
        """Leader, with ``lazy_followers``: the voters beyond the eager ones
        a quorum needs (in step first, then the most up to date, then by
        node id), which get new entries only when flushed."""
        if not self.config.lazy_followers:
            return frozenset()
        followers = [node_id for node_id in self.voters if node_id != self.id and node_id in self.progress]
        needed = quorum.majority(len(self.voters)) - (1 if self.id in self.voters else 0)
        followers.sort(key=lambda node_id: (self.progress[node_id].state is not ProgressState.REPLICATE,
                                            -self.progress[node_id].match, node_id))
        return frozenset(followers[needed:])

    def _waits_for_flush(self, node_id: int) -> bool:
        """A lazy follower missing fewer entries than one append carries:
        it gets them at the next flush, not now."""
        return (node_id in self._lazy_followers()
                and self.log.last_index() - self.progress[node_id].match < self.config.max_entries_per_append)

    def lazy_pending(self) -> bool:
        """Leader: a lazy follower lacks entries (see :meth:`flush_lazy`)."""
        if self.role is not StateRole.LEADER:
            return False
        last = self.log.last_index()
        return any(self.progress[node_id].next <= last for node_id in self._lazy_followers())

    def flush_lazy(self) -> None:
        """Leader: send every lazy follower the entries it lacks."""
        if self.role is not StateRole.LEADER:
            return
        for node_id in sorted(self._lazy_followers()):
            while self._send_append(node_id, send_if_empty=False):
                pass

    def _bcast_heartbeat(self) -> None:
        """Heartbeats; they carry the newest pending ReadIndex context, so lost rounds retry."""
        context = self.read_only.last_pending_context() or b""
        for node_id in sorted(self.progress):
            if node_id == self.id:
                continue
            progress = self.progress[node_id]
            commit = min(progress.match, self.log.committed)
            progress.commit_sent = max(progress.commit_sent, commit)
            self._send(
                Message(
                    MessageType.HEARTBEAT,
                    self.id,
                    node_id,
                    self.term,
                    commit=commit,
                    context=context,
                )
            )

    def _followers_lacking_commit(self) -> list[int]:
        """Leader: the followers holding entries they do not know are committed
        (with ``lazy_commit_broadcast``, until an append or heartbeat tells them)."""
        if self.role is not StateRole.LEADER:
            return []
        committed = self.log.committed
        return [node_id for node_id in sorted(self.progress)
                if node_id != self.id
                and self.progress[node_id].commit_sent < min(self.progress[node_id].match, committed)]

    def commit_untold(self) -> bool:
        """Leader: some follower holds entries it does not know are committed."""
        return bool(self._followers_lacking_commit())

    def broadcast_commit(self) -> None:
        """Leader: tell the commit index now to every follower that holds
        entries it does not know are committed (an append, empty if need be)."""
        for node_id in self._followers_lacking_commit():
            self._send_append(node_id)

    # --- local requests --------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role is not StateRole.LEADER:
            raise NotLeaderError(self.lead)
        if self.lead_transferee != NO_NODE:
            raise ProposalDroppedError(f"leadership is being transferred to {self.lead_transferee}")
        if self.id not in self.voters:
            raise ProposalDroppedError("this leader is being removed from the cluster")

    def _append(self, entries: Sequence[Entry]) -> int:
        """Leader: give ``entries`` this term and the next indexes, append them."""
        last = self.log.last_index()
        stamped = [
            Entry(self.term, last + offset, entry.type, entry.data)
            for offset, entry in enumerate(entries, start=1)
        ]
        self.log.append(stamped)
        self.membership.record_entries(stamped)
        if any(entry.type is EntryType.CONF_CHANGE for entry in stamped):
            self._sync_progress_with_membership()
        return self.log.last_index()

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index.  It is committed when it shows up
        in ``Ready.committed_entries`` (a leader change may drop it: retry then)."""
        self._check_can_propose()
        index = self._append([Entry(0, 0, EntryType.NORMAL, data)])
        self._bcast_append()
        return index

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a single-server membership change; returns its index.

        Refused (``ConfChangeRefusedError``) while another change is not
        committed, before the leader committed an entry of its term, or when
        the change changes nothing.  The new membership is used as soon as
        it is appended (dissertation 4.1).
        """
        self._check_can_propose()
        pending = self.membership.latest_index()
        if pending > self.log.committed:
            raise ConfChangeRefusedError(
                f"the membership change at index {pending} is not committed yet"
            )
        if not self.committed_in_current_term():
            raise ConfChangeRefusedError("the leader has not committed an entry of its term yet")
        conf_state = apply_conf_change(self.membership.current(), change)
        data = encode_conf_change_record(ConfChangeRecord(conf_state, change))
        index = self._append([Entry(0, 0, EntryType.CONF_CHANGE, data)])
        # A removal shrinks the majority: earlier entries may commit now.
        if not self._maybe_commit():
            self._bcast_append()
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read index; it arrives as a ``ReadState`` with ``context``.

        On a follower the request goes to the leader.  Requests are lost if
        the leader changes: the caller retries after a timeout.
        """
        if not context:
            raise ValueError("a read index request needs a non-empty context")
        if self.role is StateRole.LEADER:
            self._leader_read_index(ReadRequest(self.id, context))
        elif self.lead != NO_NODE:
            self._send(
                Message(MessageType.READ_INDEX, self.id, self.lead, self.term, context=context)
            )
        else:
            raise NotLeaderError(NO_NODE)

    def _leader_read_index(self, request: ReadRequest) -> None:
        if not self.committed_in_current_term():
            self.pending_reads.append(request)
            return
        index = self.log.committed
        if quorum.has_quorum(self.voters, {self.id}):
            self._respond_read(request, index)
            return
        if self.read_only.add_request(index, request):
            self.read_only.receive_ack(self.id, request.context)
            self._bcast_heartbeat()

    def _respond_read(self, request: ReadRequest, index: int) -> None:
        if request.source == self.id:
            self.read_states.append(ReadState(index, request.context))
        else:
            self._send(
                Message(
                    MessageType.READ_INDEX_RESPONSE,
                    self.id,
                    request.source,
                    self.term,
                    index=index,
                    context=request.context,
                )
            )

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to ``target`` (dissertation 3.10): bring its log up to
        date, then tell it to campaign at once.  Proposals are refused meanwhile;
        the transfer is abandoned after an election timeout."""
        if self.role is not StateRole.LEADER:
            raise NotLeaderError(self.lead)
        if target == self.id:
            self.lead_transferee = NO_NODE
            return
        if target not in self.voters:
            raise ProposalDroppedError(f"node {target} is not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        progress = self.progress[target]
        if progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target)

    def report_unreachable(self, target: int) -> None:
        """The transport could not deliver to ``target``: stop streaming, probe again."""
        progress = self.progress.get(target)
        if (
            self.role is StateRole.LEADER
            and progress is not None
            and progress.state is ProgressState.REPLICATE
        ):
            progress.become_probe()

    def report_snapshot(self, target: int, success: bool) -> None:
        """The transport finished sending a snapshot to ``target``."""
        progress = self.progress.get(target)
        if self.role is not StateRole.LEADER or progress is None:
            return
        if progress.state is ProgressState.SNAPSHOT:
            if not success:
                progress.pending_snapshot = 0
            progress.become_probe()
            progress.probe_sent = True  # wait for the follower's answer or a heartbeat
