"""A hand-driven network of ``RawNode``s for the behaviour tests.

Unlike ``simulation.py`` nothing here is random except the election timers
(seeded): tests decide which messages are delivered, dropped or held, and
call ``stabilize()`` to deliver everything until the group is quiet.
Drivers follow the ``Ready`` contract: persist, queue the messages, apply,
advance.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from neostore.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryLogStore,
    Message,
    MessageType,
    RawNode,
    ReadState,
    StateRole,
    bootstrap,
)

ELECTION_TICKS = 10


class Network:
    """Nodes by id, an outbox of sent messages and rules for dropping them."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_entries_per_append: int = 64,
        max_inflight_appends: int = 64,
        max_bytes_per_append: int = 1 << 20,
        bootstrap_voters: Iterable[int] | None = None,
        lazy_commit_broadcast: bool = False,
        lazy_followers: bool = False,
    ) -> None:
        self.ids = sorted(ids)
        self.options = dict(
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_entries_per_append=max_entries_per_append,
            max_inflight_appends=max_inflight_appends,
            max_bytes_per_append=max_bytes_per_append,
            lazy_commit_broadcast=lazy_commit_broadcast,
            lazy_followers=lazy_followers,
        )
        voters = ConfState(
            frozenset(bootstrap_voters if bootstrap_voters is not None else self.ids)
        )
        self.stores: dict[int, MemoryLogStore] = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.outbox: list[Message] = []
        self.cut: set[frozenset[int]] = set()
        self.drop: Callable[[Message], bool] = lambda message: False
        self.delivered: list[tuple[Message, bool]] = []
        """Every message offered for delivery, with whether it was blocked."""
        for node_id in self.ids:
            store = MemoryLogStore()
            if node_id in voters.voters:
                bootstrap(store, voters)
            self.stores[node_id] = store
            self.start(node_id)

    def config(self, node_id: int) -> Config:
        return Config(
            node_id=node_id,
            rng=random.Random(node_id),
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=1,
            **self.options,  # type: ignore[arg-type]
        )

    def start(self, node_id: int) -> RawNode:
        """(Re)start a node from its store: what a crash leaves."""
        if node_id not in self.stores:
            self.stores[node_id] = MemoryLogStore()
            self.ids = sorted(set(self.ids) | {node_id})
        node = RawNode(self.config(node_id), self.stores[node_id])
        self.nodes[node_id] = node
        self.applied[node_id] = []
        self.read_states[node_id] = []
        self.outbox = [m for m in self.outbox if m.target != node_id]
        return node

    # --- driving ----------------------------------------------------------------

    def process(self, node_id: int) -> None:
        """Handle every pending Ready of a node, in the documented order."""
        node = self.nodes[node_id]
        while node.has_ready():
            ready = node.ready()
            self.stores[node_id].save(ready.hard_state, ready.entries, ready.snapshot)
            self.outbox.extend(ready.messages)
            if ready.snapshot is not None:
                self.applied[node_id] = []
            self.applied[node_id].extend(ready.committed_entries)
            self.read_states[node_id].extend(ready.read_states)
            node.advance(ready)

    def process_all(self) -> None:
        for node_id in self.ids:
            self.process(node_id)

    def blocked(self, message: Message) -> bool:
        return frozenset((message.source, message.target)) in self.cut or self.drop(message)

    def deliver(self, message: Message) -> None:
        blocked = self.blocked(message)
        self.delivered.append((message, blocked))
        if message.target in self.nodes and not blocked:
            self.nodes[message.target].step(message)
            self.process(message.target)

    def delivered_since(self, start: int) -> list[Message]:
        """Messages that reached their node, from position ``start`` of ``delivered``."""
        return [message for message, blocked in self.delivered[start:] if not blocked]

    def take(self, predicate: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Remove and return the queued messages matching ``predicate``."""
        taken = [m for m in self.outbox if predicate(m)]
        self.outbox = [m for m in self.outbox if not predicate(m)]
        return taken

    def deliver_matching(self, predicate: Callable[[Message], bool]) -> int:
        messages = self.take(predicate)
        for message in messages:
            self.deliver(message)
        return len(messages)

    def stabilize(self, max_messages: int = 100_000) -> None:
        """Deliver messages (and their consequences) until none is left."""
        self.process_all()
        delivered = 0
        while self.outbox:
            message = self.outbox.pop(0)
            self.deliver(message)
            delivered += 1
            if delivered > max_messages:
                raise AssertionError("the network does not settle")

    def tick(self, node_id: int, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node_id].tick()
            self.process(node_id)

    def tick_all(self, times: int = 1, settle: bool = True) -> None:
        for _ in range(times):
            for node_id in self.ids:
                self.nodes[node_id].tick()
            if settle:
                self.stabilize()
            else:
                self.process_all()

    # --- scenarios --------------------------------------------------------------------

    def elect(self, node_id: int) -> RawNode:
        node = self.nodes[node_id]
        node.campaign()
        self.stabilize()
        assert node.role is StateRole.LEADER, f"{node_id} is {node.role}"
        return node

    def isolate(self, node_id: int) -> None:
        for other in self.ids:
            if other != node_id:
                self.cut.add(frozenset((node_id, other)))

    def heal(self) -> None:
        self.cut.clear()
        self.drop = lambda message: False

    def leaders(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i].role is StateRole.LEADER]

    def applied_data(self, node_id: int) -> list[bytes]:
        """The application commands a node applied (no-ops and membership entries left out)."""
        return [
            entry.data
            for entry in self.applied[node_id]
            if entry.type is EntryType.NORMAL and entry.data
        ]


def of_type(*types: MessageType) -> Callable[[Message], bool]:
    return lambda message: message.type in types
