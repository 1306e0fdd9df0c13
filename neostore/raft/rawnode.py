"""``RawNode``: the driver's handle on the Raft core, and the ``Ready`` batch.

The driver (``master_node``) owns the clock, the network and the disk.  Its
loop, single-threaded::

    node.tick()                      # every tick of its clock
    node.step(message)               # every message received
    node.propose(data) / read_index(context) / ...
    while node.has_ready():
        ready = node.ready()
        store.save(ready.hard_state, ready.entries, ready.snapshot)  # 1. persist (one fsync)
        transport.send(ready.messages)                                 # 2. then send
        state_machine.restore(ready.snapshot)      # 3. then apply: snapshot (if any),
        state_machine.apply(ready.committed_entries)  #    then committed entries
        serve(ready.read_states)                   #    reads wait until applied >= index
        node.advance(ready)                        # 4. acknowledge

The order is what makes the messages safe: a vote, an acknowledgement or a
commit index never leaves a node before the hard state and entries it
depends on are on its disk.  Entries may be applied in the same round as
they are persisted (step 1 comes first).  Everything stepped and ticked
between two ``ready()`` calls lands in one Ready, so one ``save`` (one
fsync) covers all the work of a tick.

Life cycle:

* a new cluster: ``bootstrap(store, ConfState.of(1, 2, 3))`` on the empty
  store of each first member; a member added later starts empty and gets
  the log or a snapshot from the leader;
* snapshots: once the state machine applied index ``i``, the application
  calls ``store.create_snapshot(i, node.applied_conf_state, image)`` and
  ``store.compact(j)`` for some ``j <= i`` (keeping a few entries helps
  followers that are slightly behind);
* restart: restore the state machine from ``store.snapshot()``, then
  ``RawNode(Config(..., applied=snapshot.index), store)``; committed entries
  after it come again in the next Readies.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import RaftError
from .raft import Raft
from .storage import RaftLogStore
from .types import (
    NO_NODE,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    ReadState,
    Snapshot,
    SoftState,
    StateRole,
)


@dataclass(frozen=True)
class Ready:
    """One batch of output of the core.  Handle it in field order, then ``advance``.

    Order rule: persist ``hard_state``, ``snapshot`` and ``entries`` (one
    ``RaftLogStore.save``) BEFORE sending ``messages``; then apply
    ``snapshot`` and ``committed_entries`` to the state machine; serve
    ``read_states`` once the state machine has applied their index.
    """

    soft_state: SoftState | None
    """The leader and role, when they changed since the last Ready (not persisted)."""
    hard_state: HardState | None
    """Term, vote and commit to persist, when they changed (else ``None``)."""
    entries: tuple[Entry, ...]
    """Entries to persist, in order; they may overwrite a suffix of the stored log."""
    snapshot: Snapshot | None
    """A snapshot received from the leader: persist it (it replaces the log), then
    restore the state machine from it, before the committed entries."""
    committed_entries: tuple[Entry, ...]
    """Entries committed and not applied yet: apply them in order."""
    messages: tuple[Message, ...]
    """Messages to send, only after the persistence above is durable."""
    read_states: tuple[ReadState, ...]
    """Linearizable read indexes for earlier ``read_index`` requests."""
    must_sync: bool
    """Whether persisting needs an fsync: term, vote, entries or snapshot changed.
    A new commit index alone does not need one (it can be learnt again)."""


class RawNode:
    """The Raft core of one node, driven by ``tick``/``step`` and drained by ``ready``."""

    def __init__(self, config: Config, store: RaftLogStore) -> None:
        self.raft = Raft(config, store)
        self._previous_soft_state = self.raft.soft_state()
        self._previous_hard_state = store.hard_state()
        self._pending_ready: Ready | None = None

    # --- input -------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of the driver's clock (election and heartbeat timeouts count these)."""
        self.raft.tick()

    def step(self, message: Message) -> None:
        """A message received from another node."""
        self.raft.step(message)

    def campaign(self) -> None:
        """Start an election now (as if the election timeout had fired)."""
        self.raft.campaign()

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log (leader only); returns the entry's index.

        Raises ``NotLeaderError`` on a follower, ``ProposalDroppedError``
        during a leadership transfer.
        """
        return self.raft.propose(data)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose adding or removing one voter (leader only); returns the entry's index.

        Raises ``ConfChangeRefusedError`` while another change is pending.
        """
        return self.raft.propose_conf_change(change)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; the answer is a ``ReadState`` with ``context``."""
        self.raft.read_index(context)

    def transfer_leadership(self, target: int) -> None:
        """Ask the leader to hand leadership to voter ``target``."""
        self.raft.transfer_leadership(target)

    def transfer_target(self) -> int:
        """Leader: the other voter a transfer should go to, the one that
        answered lately whose log matches this leader's furthest (0: none)."""
        raft = self.raft
        candidates = [
            (progress.match, node_id) for node_id, progress in raft.progress.items()
            if node_id != raft.id and node_id in raft.voters and progress.recent_active
        ]
        return max(candidates)[1] if candidates else 0

    def commit_untold(self) -> bool:
        """Leader: some follower does not yet know that entries it holds are committed."""
        return self.raft.commit_untold()

    def broadcast_commit(self) -> None:
        """Leader: send the commit index to the followers that do not know it
        (for a driver that uses ``lazy_commit_broadcast``, after a short wait)."""
        self.raft.broadcast_commit()

    def lazy_pending(self) -> bool:
        """Leader: a lazy follower lacks entries (``lazy_followers``)."""
        return self.raft.lazy_pending()

    def flush_lazy(self) -> None:
        """Leader: send the lazy followers the entries they lack (for a
        driver that uses ``lazy_followers``, after a short wait)."""
        self.raft.flush_lazy()

    def report_unreachable(self, target: int) -> None:
        self.raft.report_unreachable(target)

    def report_snapshot(self, target: int, success: bool) -> None:
        self.raft.report_snapshot(target, success)

    # --- output ------------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        log = raft.log
        return bool(
            raft.msgs
            or raft.read_states
            or log.unstable.entries
            or log.unstable.snapshot is not None
            or log.has_next_committed_entries()
            or raft.soft_state() != self._previous_soft_state
            or raft.hard_state() != self._previous_hard_state
        )

    def ready(self) -> Ready:
        """Take the pending output.  Call ``advance`` with it before the next ``ready``."""
        if self._pending_ready is not None:
            raise RaftError("ready() called again before advance()")
        raft = self.raft
        soft_state = raft.soft_state()
        hard_state = raft.hard_state()
        ready = Ready(
            soft_state=soft_state if soft_state != self._previous_soft_state else None,
            hard_state=hard_state if hard_state != self._previous_hard_state else None,
            entries=tuple(raft.log.unstable.entries),
            snapshot=raft.log.unstable.snapshot,
            committed_entries=tuple(raft.log.next_committed_entries()),
            messages=tuple(raft.msgs),
            read_states=tuple(raft.read_states),
            must_sync=bool(raft.log.unstable.entries)
            or raft.log.unstable.snapshot is not None
            or hard_state.term != self._previous_hard_state.term
            or hard_state.vote != self._previous_hard_state.vote,
        )
        raft.msgs = []
        raft.read_states = []
        self._previous_soft_state = soft_state
        self._previous_hard_state = hard_state
        self._pending_ready = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """Report ``ready`` handled: persisted, sent and applied."""
        if ready is not self._pending_ready:
            raise RaftError("advance() needs the Ready returned by the last ready()")
        self._pending_ready = None
        raft = self.raft
        if ready.snapshot is not None:
            raft.log.stable_snapshot_to(ready.snapshot.index)
            raft.log.applied_to(ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            raft.log.stable_to(last.index, last.term)
            raft.on_persisted(last.index, last.term)
        if ready.committed_entries:
            raft.log.applied_to(ready.committed_entries[-1].index)
        raft.membership.forget_up_to(raft.log.applied)

    # --- status --------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.raft.id

    @property
    def role(self) -> StateRole:
        return self.raft.role

    @property
    def leader_id(self) -> int:
        """The leader known to this node (``NO_NODE`` if none)."""
        return self.raft.lead

    @property
    def is_leader(self) -> bool:
        return self.raft.role is StateRole.LEADER

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def commit_index(self) -> int:
        return self.raft.log.committed

    @property
    def applied_index(self) -> int:
        return self.raft.log.applied

    @property
    def last_index(self) -> int:
        return self.raft.log.last_index()

    @property
    def conf_state(self) -> ConfState:
        """The membership in force on this node (the latest in its log)."""
        return self.raft.membership.current()

    @property
    def applied_conf_state(self) -> ConfState:
        """The membership once ``applied_index`` is applied: store it with a snapshot."""
        return self.raft.membership.at(self.raft.log.applied)

    @property
    def lead_transferee(self) -> int:
        return self.raft.lead_transferee

    def has_leader(self) -> bool:
        return self.raft.lead != NO_NODE
