"""The driver's interface: ``Config`` checks, the ``Ready``/``advance`` protocol."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from neostore.raft import (
    Config,
    ConfState,
    MemoryLogStore,
    MessageType,
    RaftError,
    RawNode,
    bootstrap,
)

from raft_network import Network


def _single_node(**options: Any) -> tuple[RawNode, MemoryLogStore]:
    store = MemoryLogStore()
    bootstrap(store, ConfState.of(1))
    node = RawNode(Config(node_id=1, rng=random.Random(1), **options), store)
    node.campaign()
    _drain(node, store)
    return node, store


def _drain(node: RawNode, store: MemoryLogStore) -> list[list[bytes]]:
    """Handle Readies until none is left; the committed data of each one."""
    batches = []
    while node.has_ready():
        ready = node.ready()
        store.save(ready.hard_state, ready.entries, ready.snapshot)
        batches.append([entry.data for entry in ready.committed_entries if entry.data])
        node.advance(ready)
    return [batch for batch in batches if batch]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"node_id": 0}, id="node id 0"),
        pytest.param({"heartbeat_ticks": 0}, id="no heartbeat"),
        pytest.param(
            {"election_ticks": 1, "heartbeat_ticks": 1}, id="election not above heartbeat"
        ),
        pytest.param({"max_inflight_appends": 0}, id="empty inflight window"),
        pytest.param({"rng": object()}, id="rng without randint"),
    ],
)
def test_invalid_configuration_is_refused(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"node_id": 1, "rng": random.Random(0)}
    arguments.update(options)
    with pytest.raises((ValueError, TypeError)):
        RawNode(Config(**arguments), MemoryLogStore())


def test_ready_must_be_advanced_before_the_next_one() -> None:
    store = MemoryLogStore()
    bootstrap(store, ConfState.of(1))
    node = RawNode(Config(node_id=1, rng=random.Random(1)), store)
    node.campaign()
    ready = node.ready()
    with pytest.raises(RaftError):
        node.ready()
    with pytest.raises(RaftError):
        node.advance(replace(ready))  # equal, but not the Ready handed out
    node.advance(ready)
    with pytest.raises(FrozenInstanceError):
        ready.entries = ()  # type: ignore[misc]


def test_messages_are_handed_out_with_what_they_depend_on() -> None:
    """The order rule: the Ready holding a candidate's vote requests also holds the
    hard state with its new term and its vote for itself, to persist first."""
    network = Network([1, 2, 3], pre_vote=False)
    node = network.nodes[1]
    node.campaign()
    ready = node.ready()
    assert {m.type for m in ready.messages} == {MessageType.VOTE}
    assert ready.hard_state is not None
    assert (ready.hard_state.term, ready.hard_state.vote) == (2, 1)
    assert ready.must_sync
    node.advance(ready)


def test_commit_alone_does_not_need_an_fsync() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"x")
    network.process(1)
    follower = network.nodes[2]
    network.deliver_matching(lambda m: m.target == 2 and m.type is MessageType.APPEND)
    network.deliver_matching(lambda m: m.target == 1)
    (commit_append,) = network.take(lambda m: m.target == 2)
    follower.step(commit_append)
    ready = follower.ready()
    assert ready.hard_state is not None and not ready.entries
    assert not ready.must_sync
    follower.advance(ready)


def test_committed_entries_come_in_batches_within_the_byte_limit() -> None:
    node, store = _single_node(max_committed_bytes_per_ready=300)
    for number in range(6):
        node.propose(bytes([65 + number]) * 100)
    batches = _drain(node, store)
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [data[:1] for batch in batches for data in batch] == [b"A", b"B", b"C", b"D", b"E", b"F"]


def test_status_reports_the_membership_applied() -> None:
    node, _ = _single_node()
    assert node.is_leader and node.leader_id == 1
    assert node.applied_conf_state == ConfState.of(1)
    assert node.applied_index == node.commit_index == node.last_index


def test_failed_snapshot_report_makes_the_leader_try_again() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(3)
    leader.propose(b"x")
    network.stabilize()
    store = network.stores[1]
    store.create_snapshot(leader.applied_index, leader.applied_conf_state, b"image")
    store.compact(leader.applied_index)
    network.heal()
    network.drop = lambda m: m.type is MessageType.SNAPSHOT
    network.tick(1)
    network.stabilize()
    leader.report_snapshot(3, success=False)
    network.heal()
    network.tick(1)
    network.stabilize()
    assert network.stores[3].snapshot().index == store.snapshot().index
    assert network.nodes[3].commit_index == leader.commit_index
