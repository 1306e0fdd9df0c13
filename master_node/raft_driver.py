"""The masters' replicated command log: ``neostore.raft`` driven over gRPC and LMDB.

:class:`RaftCommandLog` implements the :class:`~neostore.master_node.command_log.CommandLog`
protocol for a group of masters.  One thread (the *driver*) owns the
``RawNode``; everything else talks to it through its inbox (received
messages, proposals, unreachable reports).  Its loop runs in *rounds*, one
at a time (a lock, the *turn*): a thread that brings a peer's Step, the
answer to one of ours or a proposal while no round runs runs that round
itself (``_run_here``) instead of waking the driver and waiting to be woken
(two thread switches, about 80 us of CPU for the pair, and their latency), and
only the driver thread ticks.  Its loop:

1. wait for the inbox until the next tick is due (every ``tick_interval``,
   100 ms by default; an election timeout is ``election_ticks`` to twice
   that many ticks; a loop that stalled ticks once, not in a burst);
   step every message, propose every queued batch, tick when due;
2. while the node has a ``Ready``, handle it in the order the core
   documents:

   a. persist hard state, entries and snapshot in ONE ``LmdbLogStore.save``
      (one LMDB transaction), then fsync once — only when ``must_sync``
      (a new commit index alone may be lost: it is learnt again);
   b. messages for a peer whose ``Step`` this round handled go in that
      Step's answer (one rpc per round trip); the others to the transport,
      which sends them per peer on its own threads (a slow peer never
      blocks the loop).  A leader that already led at the previous Ready
      sends before step a, so that its fsync and the followers' overlap
      (its own copy counts towards a commit only once written);
   c. restore the state from a received snapshot, then apply the committed
      entries: each NORMAL entry holds one *batch* of encoded commands (so a
      ``CommitDecisions`` batch of one tick is one entry), applied in order
      through the same pure ``apply`` every master runs; the listeners see
      each change; the proposer waiting for that index (and term) gets the
      results;
   d. ``advance``; every ``snapshot_every`` applied entries, store
      ``encode_state(state)`` as the Raft snapshot and compact the log
      (keeping ``keep_entries`` entries for slightly late followers).

The leader does not send an append just to tell the followers a new commit
index (``lazy_commit_broadcast``): the next append carries it, or, if none
comes within ``COMMIT_FLUSH_DELAY``, the loop sends it then (an empty
append to each follower that holds entries it does not know committed:
``RawNode.commit_untold``/``broadcast_commit``).  Likewise, a new entry
goes at once only to the followers a quorum needs (``lazy_followers``:
with 3 masters, the one in step): the others get it with the next flush,
within ``COMMIT_FLUSH_DELAY`` (``RawNode.lazy_pending``/``flush_lazy``).

``submit`` on a follower raises :class:`~neostore.errors.NotLeader` naming
the leader's address (clients and storage nodes retry there).  ``term`` is
the Raft term in which this master became leader: orders to storage nodes
carry it, and storages refuse a lower one, which fences a deposed leader
(``raft_term`` is the current term, whoever leads).  ``on_leader``/``on_follower``
callbacks (run on their own thread, so they may submit) tell the master
when it becomes a leader whose state is complete — it applied an entry of
its own term, so every entry of earlier terms is applied — and when it
stops being one.

Start-up: a fresh data directory bootstraps the membership given by the
address list (node ``i`` is ``addresses[i - 1]``) as a Raft snapshot at
index 1 whose image is the blank state holding that address book; a restart
restores the state from the stored snapshot and replays the committed
entries after it.  A master *joining* a running group (``join=True``, its
id and the members' addresses as a mapping) does not bootstrap: its log
stays empty until the leader sends it the log or a snapshot.

Membership (:meth:`add_master`, :meth:`remove_master`, leader only, one
change at a time): the leader checks the change (the address is new, or a
member; no change pending; the new membership keeps a majority of masters
that answered recently), proposes a Raft ``CONF_CHANGE`` whose context is
the new master's address, and returns once it applied it.  Every master
applies a ``CONF_CHANGE`` entry as the :class:`AddMaster` /
:class:`RemoveMaster` command, so the address book is part of the
replicated state (and of every snapshot), and adds or drops the peer in
its transport.  A master that applies its own removal stops taking part
(``removed``); a leader that removes itself steps down once the removal
commits, and the others elect a leader after an election timeout.
"""

from __future__ import annotations

import logging
import os
import pathlib
import queue
import random
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from neostore import errors, rpc
from neostore.master_node.codec import decode_command, decode_state, encode_command, encode_state
from neostore.master_node.command_log import StateListener, lock_directory
from neostore.master_node.raft_log import LmdbLogStore
from neostore.master_node.raft_transport import REPLY_WAIT, RaftTransport, ReplyBox
from neostore.master_node.state import (
    AddMaster,
    ClusterState,
    Command,
    RemoveMaster,
    apply,
    initial_state,
)
from neostore.protocol import common_pb2, master_pb2_grpc
from neostore.raft import (
    NO_NODE,
    ConfChange,
    ConfChangeRefusedError,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    Ready,
    decode_conf_change_record,
)
from neostore.raft.quorum import has_quorum
from neostore.raft.types import HardState, Snapshot, SnapshotMetadata

log = logging.getLogger(__name__)

DEFAULT_TICK_INTERVAL = 0.1  # with 10 election ticks: a leader is suspected after 1 to 2 s
DEFAULT_ELECTION_TICKS = 10
DEFAULT_SUBMIT_TIMEOUT = 10.0
DEFAULT_KEEP_ENTRIES = 100
#: A new commit index that no append carried to the followers within this
#: long (seconds) is sent on its own: under load the next append carries it,
#: which saves a message per follower and round (lazy_commit_broadcast).
#: The followers beyond a quorum get new entries that late at most
#: (lazy_followers): one message per such follower per flush instead of
#: one per round.
COMMIT_FLUSH_DELAY = 0.02
#: Messages not meant for this master are logged at most this often.
DROPPED_LOG_INTERVAL = 10.0

_LENGTH = struct.Struct(">I")
NODE_ID_FILE = "node-id"


def stored_node_id(path: str | os.PathLike[str]) -> int | None:
    """The Raft node id a data directory was created for (``None``: a new directory)."""
    try:
        return int((pathlib.Path(path) / NODE_ID_FILE).read_text().strip())
    except FileNotFoundError:
        return None


def encode_batch(commands: Sequence[Command]) -> bytes:
    """One log entry's data: each encoded command, length-prefixed (u32, big-endian)."""
    parts: list[bytes] = []
    for command in commands:
        data = encode_command(command)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Command]:
    """The commands of one entry (``ValueError`` when malformed)."""
    commands: list[Command] = []
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise ValueError("truncated command batch")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ValueError("truncated command in batch")
        commands.append(decode_command(data[offset:offset + length]))
        offset += length
    return commands


class _Proposal:
    """A submitted batch waiting to be applied (or refused)."""

    def __init__(self, data: bytes, membership: tuple[ConfChangeType, str] | None = None,
                 commands: Sequence[Command] = ()) -> None:
        self.data = data
        self.commands = commands  # what ``data`` encodes: the leader applies them without decoding
        self.membership = membership  # a membership change to propose instead of data
        self.index = 0
        self.term = 0
        self.done = threading.Event()
        self.results: list[Any] = []
        self.error: errors.NeoError | None = None

    def fail(self, error: errors.NeoError) -> None:
        self.error = error
        self.done.set()


class RaftCommandLog:
    """A ``CommandLog`` replicated among masters by Raft (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        node_id: int,
        addresses: Sequence[str] | Mapping[int, str],
        rpc_config: rpc.RpcConfig,
        snapshot_every: int = 1000,
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        election_ticks: int = DEFAULT_ELECTION_TICKS,
        submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT,
        keep_entries: int = DEFAULT_KEEP_ENTRIES,
        join: bool = False,
    ) -> None:
        if isinstance(addresses, Mapping):
            initial = dict(addresses)
        else:
            initial = {index + 1: address for index, address in enumerate(addresses)}
        if node_id not in initial:
            raise ValueError(f"node id {node_id} not in {sorted(initial)}")
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.node_id = node_id
        self._own_address = initial[node_id]
        self.addresses = initial
        """The address book (node id -> address): the applied membership."""
        self._reach_window = max(1.0, 2 * election_ticks * tick_interval)
        self._removed = threading.Event()
        self._snapshot_every = snapshot_every
        self._tick_interval = tick_interval
        self._submit_timeout = submit_timeout
        self._keep_entries = keep_entries
        self._lock = threading.Lock()
        self._listeners: list[StateListener] = []
        self._leader_callbacks: list[Callable[[int], None]] = []
        self._follower_callbacks: list[Callable[[], None]] = []
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._waiting: dict[int, _Proposal] = {}
        self._closed = False
        self._stopping = threading.Event()
        self.dropped_messages = 0  # not meant for this master (see _addressed)
        self._dropped_logged = float("-inf")
        directory = pathlib.Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_directory(directory)  # one master process per data directory
        try:
            self._store = LmdbLogStore(directory, sync=False)
        except BaseException:
            self._lock_file.close()
            raise
        try:
            self._check_node_id(directory)
            if self._store.last_index() == 0 and self._store.snapshot().is_empty() and not join:
                self._bootstrap(initial)
            snapshot = self._store.snapshot()
            self._state = decode_state(snapshot.data) if not snapshot.is_empty() else initial_state()
            self._snapshot_index = snapshot.index
            self._node = RawNode(
                Config(node_id=node_id, rng=random.Random(), election_ticks=election_ticks,
                       applied=snapshot.index, lazy_commit_broadcast=True, lazy_followers=True),
                self._store,
            )
        except BaseException:
            self._store.close()
            self._lock_file.close()
            raise
        self._term = self._node.term
        self._leader_id = NO_NODE
        self._ready_term = 0  # the term of the current complete leadership (0: none)
        self._leader_term = 0  # the term in which this node last became a complete leader
        if self._state.masters:
            self.addresses = {member.node_id: member.address for member in self._state.masters}
        peers = {peer: address for peer, address in self.addresses.items() if peer != node_id}
        self._transport = RaftTransport(rpc_config, peers, self.receive, self._report_unreachable)
        # Rounds (see _round) run one at a time, holding _turn: in the
        # driver thread, or in the thread that brings an input while none
        # runs (_run_here).  What follows is theirs only.
        self._turn = threading.Lock()
        # The Steps handled in this round, by sender, that answer with the
        # messages produced for it.
        self._reply_boxes: dict[int, ReplyBox] = {}
        self._next_tick = 0.0
        self._flush_at: float | None = None  # when to tell the followers a commit no append told them
        self._wake_at = 0.0  # when the driver thread, waiting for its inbox, wakes anyway (0: it is awake)
        self._rpc_config = rpc_config
        if self._was_removed(self._state):
            self._removed.set()
        self._callbacks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._callback_thread = threading.Thread(target=self._run_callbacks, name="raft-callbacks", daemon=True)
        self._callback_thread.start()
        self._thread = threading.Thread(target=self._run, name=f"raft-{node_id}", daemon=True)

    def _check_node_id(self, directory: pathlib.Path) -> None:
        stored = stored_node_id(directory)
        if stored is None:
            (directory / NODE_ID_FILE).write_text(f"{self.node_id}\n")
        elif stored != self.node_id:
            raise errors.WrongCluster(f"data directory {directory} belongs to master {stored}, not {self.node_id}")

    def _bootstrap(self, initial: dict[int, str]) -> None:
        """A new group: a snapshot at index 1 holding the membership and the blank
        state with its address book, so that it survives compaction and reaches
        every master that joins later."""
        if sorted(initial) != list(range(1, len(initial) + 1)):
            raise ValueError(f"a new group numbers its masters from 1: {sorted(initial)}")
        image = encode_state(initial_state([initial[node] for node in sorted(initial)]))
        snapshot = Snapshot(SnapshotMetadata(1, 1, ConfState(frozenset(initial))), image)
        self._store.save(HardState(term=1, vote=NO_NODE, commit=1), [], snapshot)
        self._store.sync()

    def start(self) -> None:
        """Start the driver (add listeners and callbacks first: replay goes through them)."""
        self._thread.start()
        threading.Thread(target=self._watch_removal, name="raft-removal-watch", daemon=True).start()

    def _watch_removal(self, interval: float = 0.1, timeout: float = 2.0) -> None:
        """A follower whose log removes it may never hear that the removal
        committed (the leader stops talking to it at once), nor even receive
        the entry that removes it (the leader may commit it with the others
        first): while its latest membership excludes it, or while it knows no
        leader, ask the other masters; once the leader names a membership
        without it (applied, so committed), it is removed.  It looks every
        ``interval`` (it asks only in those states): until it knows, the
        invalidation streams of its clients wait for commits it no longer
        receives."""
        while not self._stopping.wait(interval):
            if self._removed.is_set():
                return
            if self.is_leader or (self.node_id in self._node.conf_state.voters
                                  and self._leader_id != NO_NODE):
                continue
            for peer, address in list(self.addresses.items()):
                if peer == self.node_id:
                    continue
                channel = rpc.make_channel(self._rpc_config, address)
                try:
                    info = rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(),
                                    timeout=timeout, peer=f"master {address}")
                except errors.NeoError:
                    continue
                finally:
                    channel.close()
                if info.leader == address and info.members and all(
                        member.node_id != self.node_id for member in info.members):
                    log.warning("raft: the leader %s no longer lists this master (%d at %s): it was removed",
                                address, self.node_id, self._own_address)
                    self._removed.set()
                    return

    # --- the CommandLog protocol -----------------------------------------------------

    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def term(self) -> int:
        """The fencing term: the Raft term in which this master last became leader.

        A deposed leader keeps its old term (its late orders are refused by
        storage nodes that saw the new leader's), never the newer term it
        learnt as a follower.
        """
        return self._leader_term

    @property
    def raft_term(self) -> int:
        """The current Raft term as this master knows it."""
        return self._term

    @property
    def address(self) -> str:
        return self._own_address

    def raft_indexes(self) -> dict[str, int]:
        """Last, committed and applied log index as this master knows them
        (read without the driver's lock: for metrics, each value is current)."""
        raft_log = self._node.raft.log
        return {"last": raft_log.last_index(), "committed": raft_log.committed, "applied": raft_log.applied,
                "snapshot": self._snapshot_index}

    def lmdb_metrics(self) -> tuple[Any, str, int]:
        """The Raft log's environment, directory and durable writes (:mod:`neostore.metrics`)."""
        return self._store.lmdb_metrics()

    @property
    def removed(self) -> bool:
        """Whether this master applied its own removal from the group."""
        return self._removed.is_set()

    def members(self) -> list[tuple[int, str]]:
        """The applied membership: (node id, address), by id."""
        return sorted(self.addresses.items())

    def add_master(self, address: str) -> int:
        """Leader: add the master serving at ``address``; its node id once applied."""
        if not address or address.rsplit(":", 1)[-1] in ("", "0"):
            raise errors.BadRequest(f"a master address needs a host and a port, got {address!r}")
        result = self._submit_proposal(_Proposal(b"", (ConfChangeType.ADD_VOTER, address)))
        return int(result)

    def remove_master(self, address: str) -> int:
        """Leader: remove the master serving at ``address``; its node id once applied."""
        return int(self._submit_proposal(_Proposal(b"", (ConfChangeType.REMOVE_VOTER, address))))

    def transfer_leadership(self) -> str | None:
        """Leader: hand leadership to the most up-to-date other master that
        answered lately (Raft's TimeoutNow: it campaigns at once, without
        waiting an election timeout).  The new leader's address, or None if
        none took over within twice an election timeout (then this master
        leads again: the core abandons a transfer after one)."""
        if not self.is_leader:
            raise self.not_leader()
        started: queue.SimpleQueue[int] = queue.SimpleQueue()  # the target, or 0: none to hand over to
        self._inbox.put(("transfer", started))
        deadline = time.monotonic() + self._reach_window
        try:
            if not started.get(timeout=self._reach_window):
                return None
        except queue.Empty:
            return None
        while time.monotonic() < deadline and not self._stopping.is_set():
            leader = self._leader_id
            if leader not in (NO_NODE, self.node_id):
                return self.addresses.get(leader)
            time.sleep(0.02)
        return None

    @property
    def is_leader(self) -> bool:
        return self._leader_id == self.node_id

    @property
    def leader_address(self) -> str | None:
        """The leader's address as this node knows it (``None``: no leader known)."""
        return self.addresses.get(self._leader_id)

    def add_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def on_leader(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(term)`` each time this node becomes a complete leader."""
        self._leader_callbacks.append(callback)

    def on_follower(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time this node stops being the leader."""
        self._follower_callbacks.append(callback)

    def submit(self, commands: Sequence[Command]) -> list[Any]:
        """Propose the batch as one entry; its results once this node applied it."""
        if self._closed:
            raise errors.Unavailable("the master is stopping: its command log is closed")
        if not commands:
            return []
        return self._submit_proposal(_Proposal(encode_batch(commands), commands=tuple(commands)))

    def _submit_proposal(self, proposal: _Proposal) -> Any:
        if self._closed:
            raise errors.Unavailable("the master is stopping: its command log is closed")
        self._run_here(("propose", proposal))
        if not proposal.done.wait(self._submit_timeout):
            # Proposed, perhaps appended: it may commit later (a quorum
            # back), or never (another leader's entry replaces it).
            def pending(timeout: float) -> list[Any] | None:
                if not proposal.done.wait(timeout):
                    return None
                if proposal.error is not None:
                    raise proposal.error
                return proposal.results

            raise errors.InDoubt(f"no Raft commit within {self._submit_timeout:.0f} s (no quorum?)",
                                 pending if proposal.membership is None else None)
        if proposal.error is not None:
            raise proposal.error
        if proposal.membership is not None:
            (result,) = proposal.results
            if isinstance(result, errors.NeoError):
                raise result
            return result
        return proposal.results

    def not_leader(self) -> errors.NotLeader:
        """The error a follower answers writes with, naming the leader if known."""
        if self.removed:
            members = ", ".join(address for _, address in self.members())
            return errors.NotLeader(f"this master was removed from the cluster; members: {members}")
        leader = self.leader_address
        if leader is None:
            return errors.NotLeader("this master is not the leader; no leader known yet")
        # The leader's address is the only one in the message: peers follow it.
        return errors.NotLeader(f"this master is not the leader; leader is {leader}")

    def receive(self, messages: list[Message]) -> None:
        """Messages from peers (answers to our Steps)."""
        messages = self._addressed(messages)
        if messages:
            self._run_here(("messages", (messages, None)))

    def exchange(self, messages: list[Message],
                 answer: Callable[[list[Message]], None] | None = None) -> list[Message]:
        """Messages of a peer's Step (the Raft servicer calls this); the
        messages this master produces for that peer while handling them,
        once persisted (the Step's answer).  ``answer`` (frames) sends them
        as soon as they are, when this thread runs the round: the peer need
        not wait for the committed entries to be applied here."""
        messages = self._addressed(messages)
        if not messages:
            return []
        box = ReplyBox(messages[0].source, answer)
        self._run_here(("messages", (messages, box)))
        return box.take(REPLY_WAIT)

    def _addressed(self, messages: list[Message]) -> list[Message]:
        """The messages for this master from another one; the rest (a
        forged or misrouted Step: the core refuses to step them, which
        would stop the driver) are dropped, counted and logged (at most
        every ``DROPPED_LOG_INTERVAL`` seconds)."""
        kept: list[Message] = []
        dropped: list[Message] = []
        for message in messages:
            meant = message.target == self.node_id and 0 < message.source != self.node_id
            (kept if meant else dropped).append(message)
        if dropped:
            self.dropped_messages += len(dropped)
            now = time.monotonic()
            if now - self._dropped_logged >= DROPPED_LOG_INTERVAL:
                self._dropped_logged = now
                log.warning("raft: master %d dropped %d message(s) not meant for it (from %d to %d; %d so far)",
                            self.node_id, len(dropped), dropped[0].source, dropped[0].target,
                            self.dropped_messages)
        return kept

    def campaign(self) -> None:
        """Start an election now (tests and leadership tools)."""
        self._inbox.put(("campaign", None))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._inbox.put(("wake", None))
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self._turn.acquire(timeout=5.0):  # a round another thread runs ends first; none starts after
            self._turn.release()
        self._transport.close()
        self._callbacks.put(None)
        self._callback_thread.join(5.0)
        stranded = list(self._waiting.values())
        self._waiting.clear()
        while True:  # proposals queued after the driver's last round
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "propose":
                stranded.append(value)
        for proposal in stranded:
            proposal.fail(errors.Unavailable("the master is stopping: its command log is closed"))
        self._store.close()
        self._lock_file.close()

    # --- the driver loop ---------------------------------------------------------------

    def _report_unreachable(self, peer_id: int) -> None:
        self._inbox.put(("unreachable", peer_id))

    def _run(self) -> None:
        self._next_tick = time.monotonic() + self._tick_interval
        while not self._stopping.is_set():
            wake = self._wake_time()
            self._wake_at = wake
            wake = min(wake, self._wake_time())  # a round elsewhere may have set a flush meanwhile
            self._wake_at = wake
            try:
                item: tuple[str, Any] | None = self._inbox.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                item = None
            self._wake_at = 0.0  # awake: it looks at the timers in its round
            with self._turn:
                self._round(item, timers=True)

    def _wake_time(self) -> float:
        flush_at = self._flush_at
        return self._next_tick if flush_at is None else min(self._next_tick, flush_at)

    def _run_here(self, item: tuple[str, Any]) -> None:
        """Handle ``item`` in a round of the calling thread if no round is
        running (a peer's Step, the answer to ours, a proposal: the driver
        thread need not be woken, nor wake the caller), else queue it for
        the round running or the next.  The turn is only ever *tried* here,
        so no thread waits for it while holding another lock."""
        if self._turn.acquire(blocking=False):
            try:
                if not self._stopping.is_set():
                    self._round(item, timers=False)
                    return
            finally:
                self._turn.release()
        self._inbox.put(item)

    def _round(self, item: tuple[str, Any] | None, timers: bool) -> None:
        """One round, ``_turn`` held: every queued input, the timers (the
        driver thread's rounds only: tick, flush), every Ready; the Steps
        handled answer at its end."""
        try:
            while item is not None:
                self._handle_input(*item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if timers:
                if now >= self._next_tick:
                    self._node.tick()
                    self._next_tick = max(self._next_tick + self._tick_interval, now)
                if self._flush_at is not None and now >= self._flush_at:
                    self._flush_at = None
                    self._node.flush_lazy()  # its appends carry the commit index too
                    self._node.broadcast_commit()
            while self._node.has_ready() and not self._stopping.is_set():
                self._handle_ready(self._node.ready())
            if self._flush_at is None and (self._node.commit_untold() or self._node.lazy_pending()):
                self._flush_at = time.monotonic() + COMMIT_FLUSH_DELAY
                if not timers and self._flush_at < self._wake_at:
                    self._inbox.put(("wake", None))  # the driver thread sleeps past the flush
        except Exception:  # noqa: BLE001 - a broken loop must stop loudly, not spin
            log.exception("raft driver of node %d failed: stopping it", self.node_id)
            self._stopping.set()
            self._inbox.put(("wake", None))
        finally:
            self._answer_steps()

    def _answer_steps(self) -> None:
        """End of a round: the Steps handled in it answer with what they got."""
        boxes, self._reply_boxes = self._reply_boxes, {}
        for box in boxes.values():
            box.close()

    def _send(self, messages: Sequence[Message]) -> None:
        """To the answer of the peer's Step handled in this round if any,
        else through the transport."""
        others = [message for message in messages
                  if (box := self._reply_boxes.get(message.target)) is None or not box.offer(message)]
        if others:
            self._transport.send(others)

    def _handle_input(self, kind: str, value: Any) -> None:
        if kind == "messages":
            messages, box = value
            if box is not None:
                earlier = self._reply_boxes.get(box.peer_id)
                if earlier is not None:
                    earlier.close()  # what follows goes in the later Step's answer
                self._reply_boxes[box.peer_id] = box
            for message in messages:
                self._node.step(message)
        elif kind == "propose":
            self._propose(value)
        elif kind == "unreachable":
            self._node.report_unreachable(value)
        elif kind == "campaign":
            self._node.campaign()
        elif kind == "transfer":
            target = self._node.transfer_target() if self._node.is_leader else 0
            if target:
                log.info("raft: handing leadership over to master %d (%s)", target, self.addresses.get(target))
                self._node.transfer_leadership(target)
            value.put(target)

    def _propose(self, proposal: _Proposal) -> None:
        if self._closed:
            proposal.fail(errors.Unavailable("the master is stopping: its command log is closed"))
            return
        if not self._node.is_leader:
            proposal.fail(self.not_leader())
            return
        try:
            if proposal.membership is not None:
                proposal.index = self._node.propose_conf_change(self._conf_change(*proposal.membership))
            else:
                proposal.index = self._node.propose(proposal.data)
        except (NotLeaderError, ProposalDroppedError):
            proposal.fail(self.not_leader())
            return
        except ConfChangeRefusedError as error:
            proposal.fail(errors.MembershipRefused(str(error)))
            return
        except errors.NeoError as error:
            proposal.fail(error)
            return
        proposal.term = self._node.term
        self._waiting[proposal.index] = proposal

    def _conf_change(self, kind: ConfChangeType, address: str) -> ConfChange:
        """The change the leader proposes for ``address``, checked (driver thread)."""
        node = self._node
        voters = node.conf_state.voters
        if voters != node.applied_conf_state.voters:
            raise errors.MembershipRefused("a membership change is pending; try again once it is applied")
        members = ", ".join(f"{node_id}={member}" for node_id, member in self.members())
        if kind is ConfChangeType.ADD_VOTER:
            for node_id, member in self.addresses.items():
                if member == address:
                    raise errors.MembershipRefused(f"master {address} is already a member (node {node_id})")
            node_id = max(self._state.next_master_id, max(voters, default=0) + 1)
            new_voters = voters | {node_id}
        else:
            found = [node_id for node_id, member in self.addresses.items() if member == address]
            if not found:
                raise errors.MembershipRefused(f"no master {address} in the membership ({members})")
            node_id = found[0]
            if voters == {node_id}:
                raise errors.MembershipRefused(f"master {address} is the last one: it cannot be removed")
            new_voters = voters - {node_id}
        reachable = {self.node_id} | {
            peer for peer in voters if self._transport.answered_within(peer, self._reach_window)}
        if not has_quorum(new_voters, reachable):
            down = ", ".join(self.addresses.get(peer, str(peer)) for peer in sorted(new_voters - reachable))
            raise errors.MembershipRefused(
                f"refused: the new membership of {len(new_voters)} masters would have only "
                f"{len(new_voters & reachable)} reachable (not answering: {down}); no majority")
        return ConfChange(kind, node_id, address.encode() if kind is ConfChangeType.ADD_VOTER else b"")

    def _handle_ready(self, ready: Ready) -> None:
        # A leader that led at the last Ready too (its term and vote are
        # durable) sends its appends while it writes them (Raft thesis,
        # 10.2.1): it counts its own copy only once written (``advance``).
        send_first = ready.soft_state is None and self._node.is_leader
        if send_first and ready.messages:
            self._send(ready.messages)
        # 1. persist: one LMDB transaction, one fsync when it matters.
        if ready.hard_state is not None or ready.entries or ready.snapshot is not None:
            self._store.save(ready.hard_state, ready.entries, ready.snapshot)
            if ready.must_sync:
                self._store.sync()
        # 2. send: in the answer of a Step being handled, or asynchronously per peer.
        if ready.messages and not send_first:
            self._send(ready.messages)
        # The Steps handled answer now, before applying (what follows for
        # their peers goes through the transport).
        self._answer_steps()
        # 3. apply: the snapshot, then the committed entries.
        if ready.snapshot is not None and not ready.snapshot.is_empty():
            self._restore(ready.snapshot.data, ready.snapshot.index)
        for entry in ready.committed_entries:
            self._note_complete_leader(entry)
            self._apply_entry(entry)
        was_leader = self._leader_id == self.node_id
        if ready.soft_state is not None:
            self._leader_id = ready.soft_state.leader_id
        self._term = self._node.term
        # 4. acknowledge, then snapshot if due.
        self._node.advance(ready)
        self._note_leadership(was_leader)
        if self._node.applied_index - self._snapshot_index >= self._snapshot_every:
            self._take_snapshot()

    def _note_leadership(self, was_leader: bool) -> None:
        if was_leader and not self._node.is_leader:
            # Proposals still waiting may yet commit under the next leader:
            # they are resolved (or failed) when their index is applied.
            self._ready_term = 0
            for callback in self._follower_callbacks:
                self._callbacks.put(callback)

    def _note_complete_leader(self, entry: Entry) -> None:
        """Before applying ``entry``: a leader applying an entry of its own term is complete."""
        term = self._node.term
        if entry.term != term or self._ready_term == term or not self._node.is_leader:
            return
        self._ready_term = self._leader_term = term
        log.info("raft: master %s leads in term %d", self.address, term)
        for leader_callback in self._leader_callbacks:
            self._callbacks.put(lambda cb=leader_callback, t=term: cb(t))  # type: ignore[misc]

    def _apply_entry(self, entry: Entry) -> None:
        proposal = self._waiting.pop(entry.index, None)
        if proposal is not None and proposal.term != entry.term:
            proposal.fail(errors.NotLeader(f"leadership changed before entry {entry.index} committed"))
            proposal = None
        if entry.type is EntryType.CONF_CHANGE:
            commands = self._membership_commands(entry)
        elif proposal is not None and proposal.commands and proposal.data == entry.data:
            commands = list(proposal.commands)  # our own entry: the commands it encodes, not decoded again
        elif entry.data:
            try:
                commands = decode_batch(entry.data)
            except ValueError as error:
                raise errors.Corrupted(f"raft entry {entry.index} does not decode: {error}") from None
        else:
            commands = []
        if not commands:
            if proposal is not None:
                proposal.done.set()
            return
        with self._lock:
            old = state = self._state
            results: list[Any] = []
            for command in commands:
                try:
                    state, result = apply(state, command)
                except errors.NeoError as refused:
                    results.append(refused)
                    continue
                results.append(result)
            self._state = state
            if state is not old:
                for listener in self._listeners:
                    try:
                        listener(old, state)
                    except Exception:  # noqa: BLE001 - a listener must not break the log
                        log.exception("state listener failed")
        if state.masters != old.masters:
            self._follow_address_book()
        for result in results:
            if isinstance(result, errors.NeoError) and entry.type is EntryType.CONF_CHANGE:
                log.error("raft: membership entry %d not recorded: %s", entry.index, result)
        if proposal is not None:
            proposal.results = results
            proposal.done.set()

    def _membership_commands(self, entry: Entry) -> list[Command]:
        """A ``CONF_CHANGE`` entry as the command recording it in the address book."""
        try:
            change = decode_conf_change_record(entry.data).change
        except Exception as error:  # noqa: BLE001 - the core's DecodeError or worse
            raise errors.Corrupted(f"raft entry {entry.index} does not decode: {error}") from None
        if change is None:  # the bootstrap entry of a group created before address books
            return []
        if change.type is ConfChangeType.ADD_VOTER:
            return [AddMaster(change.node_id, change.context.decode())]
        return [RemoveMaster(change.node_id)]

    def _was_removed(self, state: ClusterState) -> bool:
        """Added, then removed (a joining master restoring a snapshot older than
        its addition is not in the book yet, but its id is not given out yet either)."""
        return self.node_id < state.next_master_id and all(m.node_id != self.node_id for m in state.masters)

    def _follow_address_book(self) -> None:
        """Driver thread: take the applied state's address book; add and drop transport peers."""
        book = {member.node_id: member.address for member in self._state.masters}
        if not book:
            return
        old, self.addresses = self.addresses, book
        for peer, address in book.items():
            if peer != self.node_id and old.get(peer) != address:
                log.info("raft: master %d at %s joined the group", peer, address)
                self._transport.add_peer(peer, address)
        for peer in old.keys() - book.keys():
            if peer != self.node_id:
                log.info("raft: master %d at %s left the group", peer, old[peer])
                self._transport.remove_peer(peer)
        if self._was_removed(self._state) and not self._removed.is_set():
            log.warning("raft: this master (%d at %s) was removed from the group: it stops taking part",
                        self.node_id, self._own_address)
            self._removed.set()

    def _restore(self, data: bytes, index: int) -> None:
        state = decode_state(data)
        with self._lock:
            old, self._state = self._state, state
            self._snapshot_index = index
            for listener in self._listeners:
                try:
                    listener(old, state)
                except Exception:  # noqa: BLE001
                    log.exception("state listener failed")
        self._follow_address_book()

    def _take_snapshot(self) -> None:
        applied = self._node.applied_index
        self._store.create_snapshot(applied, self._node.applied_conf_state, encode_state(self._state))
        self._snapshot_index = applied
        compact_to = applied - self._keep_entries
        if compact_to >= self._store.first_index():
            self._store.compact(compact_to)
        self._store.sync()

    def _run_callbacks(self) -> None:
        while True:
            callback = self._callbacks.get()
            if callback is None:
                return
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("raft leadership callback failed")
