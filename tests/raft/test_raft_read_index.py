"""Linearizable reads with ReadIndex (dissertation 6.4)."""

from __future__ import annotations

import pytest

from neostore.raft import MessageType, NotLeaderError, ReadState

from raft_network import ELECTION_TICKS, Network, of_type


def test_read_index_waits_for_heartbeat_quorum() -> None:
    """6.4 step 3: "the leader sends heartbeats ... once it receives acknowledgments
    from a majority of the cluster, [it knows] it was still the leader"."""
    network = Network([1, 2, 3, 4, 5])
    leader = network.elect(1)
    leader.propose(b"w")
    network.stabilize()
    leader.read_index(b"read-1")
    network.process(1)
    assert network.read_states[1] == []
    heartbeats = network.take(of_type(MessageType.HEARTBEAT))
    assert {m.context for m in heartbeats} == {b"read-1"}
    for heartbeat in heartbeats:
        if heartbeat.target == 2:
            network.deliver(heartbeat)
    network.deliver_matching(of_type(MessageType.HEARTBEAT_RESPONSE))
    assert network.read_states[1] == []  # the leader and one follower: 2 of 5
    for heartbeat in heartbeats:
        if heartbeat.target == 3:
            network.deliver(heartbeat)
    network.deliver_matching(of_type(MessageType.HEARTBEAT_RESPONSE))
    assert network.read_states[1] == [ReadState(leader.commit_index, b"read-1")]


def test_read_index_waits_for_the_leader_to_commit_an_entry_of_its_term() -> None:
    """6.4 step 1: a new leader does not know the commit index of its predecessor
    until an entry of its own term commits."""
    network = Network([1, 2, 3])
    leader = network.nodes[1]
    leader.campaign()
    network.process_all()
    network.drop = of_type(MessageType.APPEND)
    network.stabilize()
    leader.read_index(b"early")
    network.process(1)
    assert not network.take(lambda m: m.context == b"early")
    network.heal()
    network.tick(1)
    network.stabilize()
    assert network.read_states[1] == [ReadState(leader.commit_index, b"early")]
    assert leader.raft.committed_in_current_term()


def test_follower_read_index_is_answered_by_the_leader() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"w")
    network.stabilize()
    follower = network.nodes[3]
    follower.read_index(b"on-follower")
    network.stabilize()
    assert network.read_states[3] == [ReadState(leader.commit_index, b"on-follower")]
    assert network.read_states[1] == []


def test_read_index_on_a_single_voter_needs_no_heartbeat() -> None:
    network = Network([1])
    leader = network.elect(1)
    leader.read_index(b"alone")
    network.process(1)
    assert network.read_states[1] == [ReadState(leader.commit_index, b"alone")]


def test_partitioned_leader_cannot_serve_reads() -> None:
    """A deposed leader that does not know it yet must not answer reads."""
    network = Network([1, 2, 3], check_quorum=False)
    old = network.elect(1)
    network.isolate(1)
    network.tick_all(3 * ELECTION_TICKS)  # 2 and 3 elect a new leader and write
    (new,) = [leader for leader in network.leaders() if leader != 1]
    network.nodes[new].propose(b"newer")
    network.stabilize()
    old.read_index(b"stale?")
    network.tick(1, 3)
    network.stabilize()
    assert network.read_states[1] == []


def test_read_index_is_retried_by_later_heartbeats_when_a_round_is_lost() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.read_index(b"lossy")
    network.process(1)
    network.take(of_type(MessageType.HEARTBEAT))  # lost
    network.tick(1)  # the periodic heartbeat carries the pending context
    network.stabilize()
    assert network.read_states[1] == [ReadState(leader.commit_index, b"lossy")]


def test_read_index_needs_a_context_and_a_known_leader() -> None:
    network = Network([1, 2, 3])
    with pytest.raises(ValueError):
        network.nodes[1].read_index(b"")
    with pytest.raises(NotLeaderError):
        network.nodes[1].read_index(b"no leader yet")
