"""Snapshots and log compaction (dissertation chapter 5, InstallSnapshot)."""

from __future__ import annotations

from neostore.raft import (
    ConfState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateRole,
)

from raft_network import ELECTION_TICKS, Network, of_type


def _snapshot_and_compact(network: Network, node_id: int) -> Snapshot:
    node = network.nodes[node_id]
    store = network.stores[node_id]
    data = b"|".join(network.applied_data(node_id))
    snapshot = store.create_snapshot(node.applied_index, node.applied_conf_state, data)
    store.compact(node.applied_index)
    return snapshot


def test_lagging_follower_receives_the_snapshot_and_catches_up() -> None:
    """5.1: "the leader must occasionally send snapshots to followers that lag
    behind" when the entries they need were discarded."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(3)
    for number in range(10):
        leader.propose(f"{number}".encode())
    network.stabilize()
    snapshot = _snapshot_and_compact(network, 1)
    assert network.stores[1].first_index() == snapshot.index + 1
    leader.propose(b"after the snapshot")
    network.stabilize()
    network.heal()
    start = len(network.delivered)
    network.tick(1)
    network.stabilize()
    installed = [m for m in network.delivered_since(start) if m.type is MessageType.SNAPSHOT]
    assert [m.snapshot.index for m in installed if m.snapshot] == [snapshot.index]
    follower_store = network.stores[3]
    assert follower_store.snapshot() == snapshot
    assert follower_store.last_index() == leader.last_index
    assert network.nodes[3].commit_index == leader.commit_index
    assert network.applied_data(3) == [b"after the snapshot"]  # the rest came in the snapshot


def test_snapshot_older_than_the_commit_index_is_ignored() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"x")
    network.stabilize()
    follower = network.nodes[2]
    old = Snapshot(SnapshotMetadata(1, 1, ConfState.of(1, 2, 3)), b"old")
    follower.step(Message(MessageType.SNAPSHOT, 1, 2, leader.term, snapshot=old))
    ready = follower.ready()
    assert ready.snapshot is None
    (answer,) = [m for m in ready.messages if m.type is MessageType.APPEND_RESPONSE]
    assert answer.index == follower.commit_index
    follower.advance(ready)


def test_snapshot_of_entries_the_follower_has_only_moves_its_commit_index() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.drop = of_type(MessageType.HEARTBEAT)
    leader.propose(b"x")
    network.process(1)
    network.deliver_matching(
        of_type(MessageType.APPEND)
    )  # followers have it, do not know it committed
    follower = network.nodes[2]
    assert follower.commit_index < follower.last_index
    snapshot = Snapshot(
        SnapshotMetadata(follower.last_index, follower.term, ConfState.of(1, 2, 3)), b"image"
    )
    follower.step(Message(MessageType.SNAPSHOT, 1, 2, leader.term, snapshot=snapshot))
    ready = follower.ready()
    assert ready.snapshot is None
    assert follower.commit_index == follower.last_index
    follower.advance(ready)


def test_lost_snapshot_is_sent_again() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(3)
    for number in range(5):
        leader.propose(f"{number}".encode())
    network.stabilize()
    _snapshot_and_compact(network, 1)
    network.heal()
    network.drop = of_type(MessageType.SNAPSHOT)
    network.tick(1)
    network.stabilize()
    assert network.nodes[3].commit_index < leader.commit_index
    network.heal()
    network.tick_all(ELECTION_TICKS + 1)
    assert network.nodes[3].commit_index == leader.commit_index
    assert network.leaders() == [1]


def test_node_restarts_from_a_compacted_store_with_the_snapshots_membership() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"a")
    network.stabilize()
    network.tick(1)
    network.stabilize()
    snapshot = _snapshot_and_compact(network, 2)
    restarted = network.start(2)
    assert restarted.conf_state == ConfState.of(1, 2, 3)
    assert restarted.applied_index == snapshot.index
    assert restarted.role is StateRole.FOLLOWER
    network.tick_all(ELECTION_TICKS)
    assert network.leaders() == [1]
