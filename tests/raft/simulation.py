"""Deterministic simulation of a neostore Raft group, checking safety after every step.

A ``Plan`` (a seed, the group size, network fault rates and a list of
scheduled ``Fault``s) fully determines a run: the simulated network, the
clients and every node's election timer draw from ``random.Random``
instances seeded from ``plan.seed``, so the same plan replays the same
run.  ``random_plan(seed)`` derives a whole plan from one integer.

What is simulated:

* nodes running ``RawNode`` with a ``MemoryLogStore`` as their disk, driven
  as the masters' driver does: persist, send, apply, advance, except that
  a leader that led at the previous Ready sends before it persists; with
  ``lazy_commit_broadcast``, a leader flushes an untold commit index every
  few steps (``broadcast_commit``), and with ``lazy_followers`` the entries
  its lazy followers lack (``flush_lazy``).  A crash may strike in the middle of
  handling a Ready (before persisting, which for such a leader is after
  sending; after persisting; after sending): the node's memory (RawNode,
  state machine, waiting reads) is dropped, its store keeps exactly what
  ``save`` wrote;
* a network that loses, duplicates, delays and reorders messages, and
  partitions that cut the group in two until healed;
* clients writing to a key-value register through the leader and reading
  through ReadIndex on any node;
* membership changes (add a new empty node, remove a voter), leadership
  transfers, snapshots with log compaction.

After every Ready of every node it checks:

* election safety: at most one leader per term;
* log matching: an (index, term) pair always names the same entry with the
  same predecessor term, whichever node's log it is in (by induction on
  the index this is the Log Matching Property);
* leader completeness: a new leader's log holds every entry applied so far;
* state machine safety: no two nodes apply different entries at one index
  (snapshots included: a restored state must equal the state at its index);
* linearizable reads: a read's index is at least every commit index any
  node had when the read was requested, and the value read is the value of
  the register at the index the node had applied.

After the scheduled part, ``run_plan`` heals everything and checks liveness:
within a bounded number of ticks a leader is elected and every entry in its
log (every pending proposal and membership change it holds) is committed and
applied on all voters.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

from neostore.raft import (
    ConfChange,
    ConfChangeRefusedError,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryLogStore,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    ReadState,
    Ready,
    Snapshot,
    StateRole,
    bootstrap,
    decode_conf_change_record,
    decode_message,
    encode_message,
)

ELECTION_TICKS = 5
HEARTBEAT_TICKS = 1
MAX_NODE_ID = 9
MAX_DELIVERIES_PER_STEP = 400
LIVENESS_TICKS = 400

FAULT_KINDS = (
    "crash",
    "crash_leader",
    "restart",
    "partition",
    "isolate_leader",
    "heal",
    "add",
    "remove",
    "transfer",
    "compact",
)
FAULT_WEIGHTS = (4, 3, 6, 3, 2, 3, 1, 1, 1, 2)

# Crash phases: where in the handling of a Ready the node dies.
CRASH_NOW = 0
CRASH_BEFORE_PERSIST = 1
CRASH_AFTER_PERSIST = 2
CRASH_AFTER_SEND = 3


class SimulationFailure(AssertionError):
    """A safety or liveness property was violated; the message says how to replay."""


@dataclass(frozen=True, order=True)
class Fault:
    """Something that happens at ``step``; ``node`` and ``arg`` pick targets and variants
    (they are taken modulo what exists at that moment, so any values are valid)."""

    step: int
    kind: str
    node: int = 0
    arg: int = 0


@dataclass(frozen=True)
class Plan:
    seed: int
    num_nodes: int = 3
    steps: int = 60
    drop_percent: int = 5
    duplicate_percent: int = 3
    delay_percent: int = 20
    max_delay: int = 2
    propose_percent: int = 35
    read_percent: int = 25
    codec_percent: int = 0
    """Share of messages sent through ``encode_message``/``decode_message``."""
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_append: int = 4
    max_inflight_appends: int = 4
    snapshot_every: int = 0
    """A node snapshots (and compacts) when it applied this many entries past its
    snapshot (0: only when a ``compact`` fault says so)."""
    faults: tuple[Fault, ...] = ()
    lazy_commit_broadcast: bool = False
    """Leaders tell a new commit index only with the next append or
    heartbeat, as the masters do."""
    lazy_followers: bool = False
    """Leaders send new entries at once only to the followers a quorum
    needs, the others when flushed, as the masters do."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        raw = json.loads(text)
        raw["faults"] = tuple(Fault(**fault) for fault in raw["faults"])
        return cls(**raw)


def random_plan(seed: int, steps: int = 60) -> Plan:
    """A whole plan derived from one integer (what ``NEOSTORE_RAFT_SEED`` replays)."""
    rng = random.Random(seed)
    faults = []
    for _ in range(rng.randint(0, 24)):
        faults.append(
            Fault(
                step=rng.randrange(steps),
                kind=rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0],
                node=rng.randrange(16),
                arg=rng.randrange(64),
            )
        )
    return Plan(
        seed=seed,
        num_nodes=rng.choice((3, 5)),
        steps=steps,
        drop_percent=rng.choice((0, 2, 5, 10, 20)),
        duplicate_percent=rng.choice((0, 2, 5)),
        delay_percent=rng.choice((0, 10, 30)),
        max_delay=rng.randint(1, 3),
        propose_percent=rng.choice((20, 40, 60)),
        read_percent=rng.choice((10, 30)),
        codec_percent=rng.choice((0, 0, 0, 10)),
        max_entries_per_append=rng.randint(1, 4),
        max_inflight_appends=rng.randint(1, 4),
        snapshot_every=rng.choice((0, 4, 8, 16)),
        pre_vote=rng.random() < 0.8,
        check_quorum=rng.random() < 0.8,
        faults=tuple(sorted(faults)),
        lazy_commit_broadcast=rng.random() < 0.5,
        lazy_followers=rng.random() < 0.5,
    )


def replay_hint(plan: Plan) -> str:
    return (
        f"replay: NEOSTORE_RAFT_SEED={plan.seed} pytest tests/raft/test_raft_simulation.py -k replay"
        f"  (if this plan did not come from that seed: NEOSTORE_RAFT_PLAN='{plan.to_json()}')"
    )


# --- the state machine: a key-value register ------------------------------------


def encode_write(key: str, value: str) -> bytes:
    return f"{key}={value}".encode()


def decode_write(data: bytes) -> tuple[str, str]:
    key, _, value = data.decode().partition("=")
    return key, value


KEYS = ("a", "b", "c")


@dataclass
class PendingRead:
    key: str
    min_index: int
    """The largest commit index any node had when the read was requested."""
    read_index: int = -1


@dataclass
class SimNode:
    node_id: int
    store: MemoryLogStore
    raw: RawNode | None = None
    kv: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    commit: int = 0
    """The commit index of the last Ready (volatile, like the RawNode)."""
    crash_phase: int | None = None
    restarts: int = 0
    reads: dict[bytes, PendingRead] = field(default_factory=dict)
    """Reads requested on this node, by context."""

    @property
    def alive(self) -> bool:
        return self.raw is not None


class Simulation:
    """One run of a plan; see the module docstring."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.now = 0
        self.nodes: dict[int, SimNode] = {}
        self.pool: list[Message] = []
        """Messages due now; delivered in random order."""
        self.later: dict[int, list[Message]] = {}
        self.partition: frozenset[int] | None = None
        """One side of the cut; messages between the sides are lost."""
        self.lossy = True
        self.trace: deque[str] = deque(maxlen=60)
        self.counts: Counter[str] = Counter()
        """How many events of each kind happened (to see what a plan exercised)."""
        self.next_value = 0
        self.next_context = 0
        # Checker state.
        self.leaders: dict[int, int] = {}
        self.entries_seen: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.applied_log: dict[int, tuple[int, bytes]] = {}
        self.committed_terms: dict[int, int] = {}
        """Index -> term of every entry some node knew committed."""
        self.register_history: dict[str, list[tuple[int, str]]] = {key: [] for key in KEYS}
        self.max_commit_seen = 0
        self.reads_checked = 0
        self.writes_proposed = 0
        for node_id in range(1, plan.num_nodes + 1):
            store = MemoryLogStore()
            bootstrap(store, ConfState(frozenset(range(1, plan.num_nodes + 1))))
            node = SimNode(node_id, store)
            self.nodes[node_id] = node
            self._start(node)

    # --- failure reporting ------------------------------------------------------

    def fail(self, message: str) -> None:
        trace = "\n  ".join(self.trace)
        raise SimulationFailure(
            f"{message}\n  at step time {self.now}, plan seed {self.plan.seed}\n"
            f"{replay_hint(self.plan)}\nlast events:\n  {trace}"
        )

    def note(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        self.trace.append(f"t={self.now} {text}")

    # --- nodes -------------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        snapshot = node.store.snapshot()
        config = Config(
            node_id=node.node_id,
            rng=random.Random(self.plan.seed * 7919 + node.node_id * 104729 + node.restarts),
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
            max_entries_per_append=self.plan.max_entries_per_append,
            max_inflight_appends=self.plan.max_inflight_appends,
            pre_vote=self.plan.pre_vote,
            check_quorum=self.plan.check_quorum,
            lazy_commit_broadcast=self.plan.lazy_commit_broadcast,
            lazy_followers=self.plan.lazy_followers,
            applied=snapshot.index,
        )
        node.raw = RawNode(config, node.store)
        node.kv = self._restore_kv(snapshot) if not snapshot.is_empty() else {}
        node.applied = snapshot.index
        node.commit = node.store.hard_state().commit
        node.crash_phase = None
        node.reads = {}

    def _restore_kv(self, snapshot: Snapshot) -> dict[str, str]:
        kv: dict[str, str] = json.loads(snapshot.data.decode())
        # State machine safety for snapshots: the image must be the state at its index.
        expected = self._register_at(snapshot.index)
        if kv != expected:
            self.fail(f"snapshot at {snapshot.index} holds {kv}, expected {expected}")
        return kv

    def _register_at(self, index: int) -> dict[str, str]:
        state = {}
        for key, history in self.register_history.items():
            value = None
            for write_index, write_value in history:
                if write_index > index:
                    break
                value = write_value
            if value is not None:
                state[key] = value
        return state

    def crash(self, node: SimNode, why: str) -> None:
        self.note("crash", f"crash {node.node_id} ({why})")
        node.raw = None
        node.kv = {}
        node.reads = {}
        node.crash_phase = None

    def restart(self, node: SimNode) -> None:
        node.restarts += 1
        self.note("restart", f"restart {node.node_id}")
        self._start(node)
        self.drive(node)

    def alive_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.raw is not None]

    def leaders_now(self) -> list[SimNode]:
        return [
            node
            for node in self.nodes.values()
            if node.raw is not None and node.raw.role is StateRole.LEADER
        ]

    def current_leader(self) -> SimNode | None:
        leaders = self.leaders_now()
        if not leaders:
            return None
        return max(leaders, key=lambda node: node.raw.term if node.raw else 0)

    # --- network -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        if self.lossy and self.rng.randrange(100) < self.plan.drop_percent:
            return
        copies = 1
        if self.lossy and self.rng.randrange(100) < self.plan.duplicate_percent:
            copies = 2
        for _ in range(copies):
            if self.plan.codec_percent and self.rng.randrange(100) < self.plan.codec_percent:
                message = decode_message(encode_message(message))
            if self.rng.randrange(100) < self.plan.delay_percent:
                when = self.now + self.rng.randint(1, self.plan.max_delay)
                self.later.setdefault(when, []).append(message)
            else:
                self.pool.append(message)

    def deliver_due(self) -> None:
        due = self.later.pop(self.now, None)
        if due:
            self.pool.extend(due)
        deliveries = 0
        while self.pool and deliveries < MAX_DELIVERIES_PER_STEP:
            position = self.rng.randrange(len(self.pool))
            message = self.pool[position]
            self.pool[position] = self.pool[-1]
            self.pool.pop()
            deliveries += 1
            self.deliver(message)
        if self.pool:  # what is left waits for the next step
            self.later.setdefault(self.now + 1, []).extend(self.pool)
            self.pool = []

    def deliver(self, message: Message) -> None:
        node = self.nodes.get(message.target)
        if node is None or node.raw is None:
            return
        if self.partition is not None and (
            (message.source in self.partition) != (message.target in self.partition)
        ):
            return
        node.raw.step(message)
        self.drive(node)

    # --- the driver loop: persist, send, apply, advance ------------------------------------

    def drive(self, node: SimNode) -> None:
        while node.raw is not None and node.raw.has_ready():
            raw = node.raw
            ready = raw.ready()
            self.check_ready(node, ready)
            send_first = ready.soft_state is None and raw.is_leader  # as master_node/raft_driver.py
            if send_first:
                for message in ready.messages:
                    self.send(message)
            if node.crash_phase == CRASH_BEFORE_PERSIST:
                self.crash(node, "before persisting a Ready" + (" (its messages sent)" if send_first else ""))
                return
            node.store.save(ready.hard_state, ready.entries, ready.snapshot)
            if node.crash_phase == CRASH_AFTER_PERSIST:
                self.crash(node, "after persisting" + ("" if send_first else ", before sending"))
                return
            if not send_first:
                for message in ready.messages:
                    self.send(message)
            if node.crash_phase == CRASH_AFTER_SEND:
                self.crash(node, "after sending, before applying")
                return
            if ready.snapshot is not None:
                self.note(
                    "install_snapshot", f"{node.node_id} restores snapshot {ready.snapshot.index}"
                )
                node.kv = self._restore_kv(ready.snapshot)
                node.applied = ready.snapshot.index
            for entry in ready.committed_entries:
                self.apply(node, entry)
            for read_state in ready.read_states:
                self.read_index_known(node, read_state)
            raw.advance(ready)
            if node.reads:
                self.serve_reads(node)
            every = self.plan.snapshot_every
            if every and node.applied - node.store.snapshot().index >= every:
                self.compact(node, keep=every // 4)

    def apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied + 1:
            self.fail(f"node {node.node_id} applies {entry.index} after {node.applied}")
        known = self.applied_log.get(entry.index)
        if known is None:
            self.applied_log[entry.index] = (entry.term, entry.data)
            if entry.type is EntryType.NORMAL and entry.data:
                key, value = decode_write(entry.data)
                self.register_history[key].append((entry.index, value))
        elif known != (entry.term, entry.data):
            self.fail(
                f"state machine safety: node {node.node_id} applies {entry} at {entry.index}, "
                f"another node applied term {known[0]} data {known[1]!r}"
            )
        if entry.type is EntryType.NORMAL and entry.data:
            key, value = decode_write(entry.data)
            node.kv[key] = value
        elif entry.type is EntryType.CONF_CHANGE:
            record = decode_conf_change_record(entry.data)
            self.note(
                "apply_membership",
                f"{node.node_id} applies membership {sorted(record.conf_state.voters)}",
            )
        node.applied = entry.index

    # --- invariants ---------------------------------------------------------------------

    def check_ready(self, node: SimNode, ready: Ready) -> None:
        raw = node.raw
        assert raw is not None
        if ready.soft_state is not None and ready.soft_state.role is StateRole.LEADER:
            term = raw.term
            self.note("elected", f"{node.node_id} leads term {term}")
            other = self.leaders.setdefault(term, node.node_id)
            if other != node.node_id:
                self.fail(
                    f"election safety: nodes {other} and {node.node_id} both lead term {term}"
                )
            self.check_leader_completeness(node)
        if ready.entries:
            log = raw.raft.log
            previous_term = log.term(ready.entries[0].index - 1)
            for entry in ready.entries:
                key = (entry.index, entry.term)
                value = (entry.type, entry.data, previous_term)
                seen = self.entries_seen.setdefault(key, value)
                if seen != value:
                    self.fail(
                        f"log matching: node {node.node_id} has {entry} after term {previous_term}, "
                        f"elsewhere the same index and term hold {seen}"
                    )
                previous_term = entry.term
        hard_state = ready.hard_state
        if hard_state is not None and hard_state.commit > node.commit:
            if raw.role is StateRole.LEADER and raw.raft.log.term(hard_state.commit) != raw.term:
                self.fail(
                    f"leader {node.node_id} of term {raw.term} committed index "
                    f"{hard_state.commit} of term {raw.raft.log.term(hard_state.commit)} (5.4.2)"
                )
            self.record_committed(node, node.commit + 1, hard_state.commit)
            node.commit = hard_state.commit
            self.max_commit_seen = max(self.max_commit_seen, hard_state.commit)

    def record_committed(self, node: SimNode, low: int, high: int) -> None:
        """Remember the terms of the entries ``low..high`` that ``node`` now knows committed;
        two nodes must never disagree about a committed entry."""
        assert node.raw is not None
        log = node.raw.raft.log
        for index in range(max(low, log.first_index() - 1), high + 1):
            term = log.term(index)
            known = self.committed_terms.setdefault(index, term)
            if known != term:
                self.fail(
                    f"node {node.node_id} committed index {index} of term {term}, "
                    f"another node committed term {known} there"
                )

    def check_leader_completeness(self, node: SimNode) -> None:
        assert node.raw is not None
        log = node.raw.raft.log
        first = log.first_index() - 1  # the snapshot's last entry is known by its term
        last = log.last_index()
        for index, term in self.committed_terms.items():
            if index < first:
                continue
            if index > last or log.term(index) != term:
                self.fail(
                    f"leader completeness: new leader {node.node_id} (term {node.raw.term}) "
                    f"lacks committed entry {index} of term {term}"
                )

    # --- clients --------------------------------------------------------------------------

    def propose_write(self) -> None:
        # Clients do not know which leader is current: a deposed leader cut
        # off by a partition takes writes too (they will never commit).
        leaders = self.leaders_now()
        if not leaders:
            return
        leader = leaders[self.rng.randrange(len(leaders))]
        if leader.raw is None:
            return
        self.next_value += 1
        key = KEYS[self.rng.randrange(len(KEYS))]
        try:
            index = leader.raw.propose(encode_write(key, f"v{self.next_value}"))
        except (NotLeaderError, ProposalDroppedError):
            return
        self.writes_proposed += 1
        self.note("propose", f"propose {key}=v{self.next_value} at {leader.node_id} index {index}")
        self.drive(leader)

    def request_read(self) -> None:
        alive = self.alive_nodes()
        if not alive:
            return
        node = alive[self.rng.randrange(len(alive))]
        assert node.raw is not None
        self.next_context += 1
        context = f"read-{self.next_context}".encode()
        key = KEYS[self.rng.randrange(len(KEYS))]
        try:
            node.raw.read_index(context)
        except NotLeaderError:
            return
        node.reads[context] = PendingRead(key, self.max_commit_seen)
        self.drive(node)

    def read_index_known(self, node: SimNode, read_state: ReadState) -> None:
        read = node.reads.get(read_state.context)
        if read is None:
            return  # a duplicate answer, or a request from before a crash
        if read_state.index < read.min_index:
            self.fail(
                f"linearizability: read {read_state.context!r} on {node.node_id} got read index "
                f"{read_state.index}, but {read.min_index} was committed before it was requested"
            )
        read.read_index = read_state.index

    def serve_reads(self, node: SimNode) -> None:
        for context, read in list(node.reads.items()):
            if 0 <= read.read_index <= node.applied:
                del node.reads[context]
                expected = self._register_at(node.applied).get(read.key)
                value = node.kv.get(read.key)
                if value != expected:
                    self.fail(
                        f"linearizability: read of {read.key} on {node.node_id} at applied "
                        f"{node.applied} returned {value}, the register holds {expected}"
                    )
                self.reads_checked += 1

    # --- faults ------------------------------------------------------------------------------

    def _pick(self, candidates: list[int], selector: int) -> int | None:
        if not candidates:
            return None
        return sorted(candidates)[selector % len(candidates)]

    def apply_fault(self, fault: Fault) -> None:
        kind = fault.kind
        if kind in ("crash", "crash_leader"):
            if kind == "crash_leader":
                leader = self.current_leader()
                node_id = leader.node_id if leader is not None else None
            else:
                node_id = self._pick([n.node_id for n in self.alive_nodes()], fault.node)
            if node_id is None:
                return
            node = self.nodes[node_id]
            phase = fault.arg % 4
            if phase == CRASH_NOW:
                self.crash(node, "between Readies")
            else:
                node.crash_phase = phase
                self.note("crash_armed", f"{node_id} will crash in phase {phase}")
        elif kind == "isolate_leader":
            leader = self.current_leader()
            if leader is None:
                return
            isolated = {leader.node_id}
            others = sorted(set(self.nodes) - isolated)
            if len(self.nodes) >= 5 and fault.arg % 2:
                isolated.add(others[fault.node % len(others)])
            self.partition = frozenset(isolated)
            self.note(
                "partition", f"partition {sorted(isolated)} | {sorted(set(self.nodes) - isolated)}"
            )
        elif kind == "restart":
            dead = [n.node_id for n in self.nodes.values() if n.raw is None]
            node_id = self._pick(dead, fault.node)
            if node_id is not None:
                self.restart(self.nodes[node_id])
        elif kind == "partition":
            ids = sorted(self.nodes)
            side = frozenset(
                node_id for position, node_id in enumerate(ids) if fault.arg >> position & 1
            )
            self.partition = side
            self.note("partition", f"partition {sorted(side)} | {sorted(set(ids) - side)}")
        elif kind == "heal":
            self.partition = None
            self.note("heal", "heal")
        elif kind == "add":
            self.add_node()
        elif kind == "remove":
            self.remove_node(fault.node)
        elif kind == "transfer":
            leader = self.current_leader()
            if leader is None or leader.raw is None:
                return
            others = [v for v in leader.raw.conf_state.voters if v != leader.node_id]
            target = self._pick(others, fault.node)
            if target is not None:
                self.note("transfer", f"transfer {leader.node_id} -> {target}")
                leader.raw.transfer_leadership(target)
                self.drive(leader)
        elif kind == "compact":
            node_id = self._pick([n.node_id for n in self.alive_nodes()], fault.node)
            if node_id is not None:
                self.compact(self.nodes[node_id], keep=fault.arg % 4)

    def add_node(self) -> None:
        leader = self.current_leader()
        if leader is None or leader.raw is None or len(self.nodes) >= MAX_NODE_ID:
            return
        if len(leader.raw.conf_state.voters) >= 6:
            return
        node_id = max(self.nodes) + 1
        try:
            leader.raw.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, node_id))
        except (ConfChangeRefusedError, ProposalDroppedError, NotLeaderError) as refused:
            self.note("membership_refused", f"add {node_id} refused: {refused}")
            return
        self.note("add", f"add {node_id} proposed at {leader.node_id}")
        node = SimNode(node_id, MemoryLogStore())
        self.nodes[node_id] = node
        self._start(node)
        self.drive(leader)

    def remove_node(self, selector: int) -> None:
        leader = self.current_leader()
        if leader is None or leader.raw is None:
            return
        voters = sorted(leader.raw.conf_state.voters)
        if len(voters) <= 3:
            return
        target = self._pick(voters, selector)
        assert target is not None
        try:
            leader.raw.propose_conf_change(ConfChange(ConfChangeType.REMOVE_VOTER, target))
        except (ConfChangeRefusedError, ProposalDroppedError, NotLeaderError) as refused:
            self.note("membership_refused", f"remove {target} refused: {refused}")
            return
        self.note("remove", f"remove {target} proposed at {leader.node_id}")
        self.drive(leader)

    def compact(self, node: SimNode, keep: int) -> None:
        raw = node.raw
        assert raw is not None
        store = node.store
        index = node.applied
        if index <= store.snapshot().index:
            return
        data = json.dumps(node.kv, sort_keys=True).encode()
        store.create_snapshot(index, raw.applied_conf_state, data)
        compact_to = index - keep
        if compact_to >= store.first_index():
            store.compact(compact_to)
        self.note("compact", f"{node.node_id} snapshots at {index}, compacts to {compact_to}")

    # --- the run --------------------------------------------------------------------------------

    def step_once(self) -> None:
        self.deliver_due()
        for node in list(self.nodes.values()):
            if node.raw is not None:
                node.raw.tick()
                if self.plan.lazy_followers and self.now % 3 == 0 and node.raw.lazy_pending():
                    node.raw.flush_lazy()
                if self.plan.lazy_commit_broadcast and self.now % 3 == 0 and node.raw.commit_untold():
                    node.raw.broadcast_commit()
                self.drive(node)
        self.now += 1

    def run_scheduled(self) -> None:
        faults = sorted(self.plan.faults)
        position = 0
        for step in range(self.plan.steps):
            while position < len(faults) and faults[position].step <= step:
                self.apply_fault(faults[position])
                position += 1
            if self.rng.randrange(100) < self.plan.propose_percent:
                self.propose_write()
            if self.rng.randrange(100) < self.plan.read_percent:
                self.request_read()
            self.step_once()

    def heal_all(self) -> None:
        self.partition = None
        self.lossy = False
        for node in self.nodes.values():
            node.crash_phase = None
        for node in list(self.nodes.values()):
            if node.raw is None:
                self.restart(node)
        self.note("heal_all", "healed: network reliable, every node up")

    def check_liveness(self) -> int:
        """Run until a leader has every entry of its log applied on all its voters.

        Returns the ticks it took; fails after ``LIVENESS_TICKS``.
        """
        marker_index = 0
        marker = b""
        marker_owner: tuple[int, int] = (0, 0)
        """The (leader, term) that took the marker: a new one takes a new marker."""
        for tick in range(LIVENESS_TICKS):
            self.step_once()
            leader = self.current_leader()
            if leader is None or leader.raw is None:
                continue
            raw = leader.raw
            if marker_owner != (leader.node_id, raw.term):
                self.next_value += 1
                marker = encode_write("a", f"v{self.next_value}")
                try:
                    marker_index = raw.propose(marker)
                except (NotLeaderError, ProposalDroppedError):
                    continue
                marker_owner = (leader.node_id, raw.term)
                self.drive(leader)
            if raw.commit_index < max(raw.last_index, marker_index):
                continue
            voters = raw.conf_state.voters
            if all(
                self.nodes[voter].raw is not None and self.nodes[voter].applied >= raw.last_index
                for voter in voters
            ):
                if self.applied_log[marker_index][1] != marker:
                    self.fail(f"liveness: the marker write at {marker_index} was lost")
                return tick + 1
        leaders = [(node.node_id, node.raw.term) for node in self.leaders_now() if node.raw]
        states = ", ".join(
            f"{n.node_id}:{n.raw.role.value}/t{n.raw.term}/c{n.raw.commit_index}/l{n.raw.last_index}"
            f"/a{n.applied}/voters{sorted(n.raw.conf_state.voters)}"
            for n in self.nodes.values()
            if n.raw is not None
        )
        self.fail(
            f"liveness: no progress {LIVENESS_TICKS} ticks after healing; leaders {leaders}; {states}"
        )
        return LIVENESS_TICKS


@dataclass(frozen=True)
class RunSummary:
    plan: Plan
    writes_proposed: int
    entries_applied: int
    reads_checked: int
    leaders_elected: int
    liveness_ticks: int
    digest: str
    """A fingerprint of the run (replays must reproduce it exactly)."""


def run_plan(plan: Plan) -> RunSummary:
    """Run ``plan``; raise ``SimulationFailure`` on any violated property."""
    simulation = Simulation(plan)
    try:
        simulation.run_scheduled()
        simulation.heal_all()
        liveness_ticks = simulation.check_liveness()
    except SimulationFailure:
        raise
    except Exception as error:  # a crash of the core is a failure too: say how to replay
        trace = "\n  ".join(simulation.trace)
        raise SimulationFailure(
            f"{type(error).__name__}: {error}\n{replay_hint(plan)}\nlast events:\n  {trace}"
        ) from error
    digest = hashlib.sha256(
        repr(
            (
                sorted(simulation.applied_log.items()),
                sorted(simulation.leaders.items()),
                simulation.reads_checked,
                simulation.now,
            )
        ).encode()
    ).hexdigest()
    return RunSummary(
        plan=plan,
        writes_proposed=simulation.writes_proposed,
        entries_applied=len(simulation.applied_log),
        reads_checked=simulation.reads_checked,
        leaders_elected=len(simulation.leaders),
        liveness_ticks=liveness_ticks,
        digest=digest,
    )
