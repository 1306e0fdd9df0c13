"""The masters' replicated command log: ``neostore.raft`` driven over gRPC and LMDB.

:class:`RaftCommandLog` implements the :class:`~neostore.master_node.command_log.CommandLog`
protocol for a group of masters.  One thread (the *driver*) owns the
``RawNode``; everything else talks to it through its inbox (received
messages, proposals, unreachable reports).  Its loop:

1. wait for the inbox until the next tick is due (every ``tick_interval``,
   100 ms by default; an election timeout is ``election_ticks`` to twice
   that many ticks; a loop that stalled ticks once, not in a burst);
   step every message, propose every queued batch, tick when due;
2. while the node has a ``Ready``, handle it in the order the core
   documents:

   a. persist hard state, entries and snapshot in ONE ``LmdbLogStore.save``
      (one LMDB transaction), then fsync once — only when ``must_sync``
      (a new commit index alone may be lost: it is learnt again);
   b. hand the messages to the transport, which sends them per peer on
      its own threads (a slow peer never blocks the loop);
   c. restore the state from a received snapshot, then apply the committed
      entries: each NORMAL entry holds one *batch* of encoded commands (so a
      ``CommitDecisions`` batch of one tick is one entry), applied in order
      through the same pure ``apply`` every master runs; the listeners see
      each change; the proposer waiting for that index (and term) gets the
      results;
   d. ``advance``; every ``snapshot_every`` applied entries, store
      ``encode_state(state)`` as the Raft snapshot and compact the log
      (keeping ``keep_entries`` entries for slightly late followers).

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
address list (node ``i`` is ``addresses[i - 1]``); a restart restores the
state from the stored snapshot and replays the committed entries after it.
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
from collections.abc import Callable, Sequence
from typing import Any

from neostore import errors, rpc
from neostore.master_node.command_log import StateListener, lock_directory
from neostore.master_node.raft_log import LmdbLogStore
from neostore.master_node.raft_transport import RaftTransport
from neostore.master_node.state import (
    ClusterState,
    Command,
    apply,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
    initial_state,
)
from neostore.raft import (
    NO_NODE,
    Config,
    ConfState,
    Entry,
    EntryType,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    Ready,
    bootstrap,
)

log = logging.getLogger(__name__)

DEFAULT_TICK_INTERVAL = 0.1  # with 10 election ticks: a leader is suspected after 1 to 2 s
DEFAULT_ELECTION_TICKS = 10
DEFAULT_SUBMIT_TIMEOUT = 10.0
DEFAULT_KEEP_ENTRIES = 100

_LENGTH = struct.Struct(">I")


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

    def __init__(self, data: bytes) -> None:
        self.data = data
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
        addresses: Sequence[str],
        rpc_config: rpc.RpcConfig,
        snapshot_every: int = 1000,
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        election_ticks: int = DEFAULT_ELECTION_TICKS,
        submit_timeout: float = DEFAULT_SUBMIT_TIMEOUT,
        keep_entries: int = DEFAULT_KEEP_ENTRIES,
    ) -> None:
        if not 1 <= node_id <= len(addresses):
            raise ValueError(f"node id {node_id} not in 1..{len(addresses)}")
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.node_id = node_id
        self.addresses = {index + 1: address for index, address in enumerate(addresses)}
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
        directory = pathlib.Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_directory(directory)  # one master process per data directory
        try:
            self._store = LmdbLogStore(directory, sync=False)
        except BaseException:
            self._lock_file.close()
            raise
        try:
            if self._store.last_index() == 0 and self._store.snapshot().is_empty():
                bootstrap(self._store, ConfState.of(*self.addresses))
                self._store.sync()
            snapshot = self._store.snapshot()
            self._state = decode_state(snapshot.data) if not snapshot.is_empty() else initial_state()
            self._snapshot_index = snapshot.index
            self._node = RawNode(
                Config(node_id=node_id, rng=random.Random(), election_ticks=election_ticks,
                       applied=snapshot.index),
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
        peers = {peer: address for peer, address in self.addresses.items() if peer != node_id}
        self._transport = RaftTransport(rpc_config, peers, self._report_unreachable)
        self._callbacks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._callback_thread = threading.Thread(target=self._run_callbacks, name="raft-callbacks", daemon=True)
        self._callback_thread.start()
        self._thread = threading.Thread(target=self._run, name=f"raft-{node_id}", daemon=True)

    def start(self) -> None:
        """Start the driver (add listeners and callbacks first: replay goes through them)."""
        self._thread.start()

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
        return self.addresses[self.node_id]

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
        proposal = _Proposal(encode_batch(commands))
        self._inbox.put(("propose", proposal))
        if not proposal.done.wait(self._submit_timeout):
            raise errors.Unavailable(f"no Raft commit within {self._submit_timeout:.0f} s (no quorum?)")
        if proposal.error is not None:
            raise proposal.error
        return proposal.results

    def not_leader(self) -> errors.NotLeader:
        """The error a follower answers writes with, naming the leader if known."""
        leader = self.leader_address
        if leader is None:
            return errors.NotLeader("this master is not the leader; no leader known yet")
        # The leader's address is the only one in the message: peers follow it.
        return errors.NotLeader(f"this master is not the leader; leader is {leader}")

    def receive(self, messages: list[Message]) -> None:
        """Messages from peers (the Raft servicer calls this)."""
        self._inbox.put(("messages", messages))

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
        next_tick = time.monotonic() + self._tick_interval
        while not self._stopping.is_set():
            try:
                item: tuple[str, Any] | None = self._inbox.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            try:
                while item is not None:
                    self._handle_input(*item)
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        item = None
                now = time.monotonic()
                if now >= next_tick:
                    self._node.tick()
                    next_tick = max(next_tick + self._tick_interval, now)
                while self._node.has_ready() and not self._stopping.is_set():
                    self._handle_ready(self._node.ready())
            except Exception:  # noqa: BLE001 - a broken loop must stop loudly, not spin
                log.exception("raft driver of node %d failed: stopping it", self.node_id)
                self._stopping.set()

    def _handle_input(self, kind: str, value: Any) -> None:
        if kind == "messages":
            for message in value:
                self._node.step(message)
        elif kind == "propose":
            self._propose(value)
        elif kind == "unreachable":
            self._node.report_unreachable(value)
        elif kind == "campaign":
            self._node.campaign()

    def _propose(self, proposal: _Proposal) -> None:
        if self._closed:
            proposal.fail(errors.Unavailable("the master is stopping: its command log is closed"))
            return
        if not self._node.is_leader:
            proposal.fail(self.not_leader())
            return
        try:
            proposal.index = self._node.propose(proposal.data)
        except (NotLeaderError, ProposalDroppedError):
            proposal.fail(self.not_leader())
            return
        proposal.term = self._node.term
        self._waiting[proposal.index] = proposal

    def _handle_ready(self, ready: Ready) -> None:
        # 1. persist: one LMDB transaction, one fsync when it matters.
        if ready.hard_state is not None or ready.entries or ready.snapshot is not None:
            self._store.save(ready.hard_state, ready.entries, ready.snapshot)
            if ready.must_sync:
                self._store.sync()
        # 2. send, asynchronously per peer.
        if ready.messages:
            self._transport.send(ready.messages)
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
        if entry.type is not EntryType.NORMAL or not entry.data:
            return
        try:
            commands = decode_batch(entry.data)
        except ValueError as error:
            raise errors.Corrupted(f"raft entry {entry.index} does not decode: {error}") from None
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
        if proposal is not None:
            proposal.results = results
            proposal.done.set()

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
