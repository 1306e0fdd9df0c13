"""Leader election (Raft 5.2, 5.4.1), PreVote (dissertation 9.6), CheckQuorum (6.2, 4.2.3)."""

from __future__ import annotations

import pytest

from neostore.raft import NO_NODE, Message, MessageType, StateRole

from raft_network import ELECTION_TICKS, Network, of_type


def test_follower_campaigns_only_after_its_randomized_election_timeout() -> None:
    """5.2: "If a follower receives no communication over a period of time called the
    election timeout, then it assumes there is no viable leader"; timeouts are
    chosen randomly from [T, 2T)."""
    network = Network([1, 2, 3])
    node = network.nodes[1]
    timeout = node.raft.randomized_election_timeout
    assert ELECTION_TICKS <= timeout < 2 * ELECTION_TICKS
    network.tick(1, timeout - 1)
    assert node.role is StateRole.FOLLOWER
    network.tick(1)
    assert node.role is StateRole.PRE_CANDIDATE
    pre_votes = network.take(of_type(MessageType.PRE_VOTE))
    assert sorted(m.target for m in pre_votes) == [2, 3]
    assert all(m.term == node.term + 1 for m in pre_votes)


def test_randomized_election_timeouts_differ_between_nodes() -> None:
    network = Network([1, 2, 3, 4, 5])
    timeouts = {network.nodes[i].raft.randomized_election_timeout for i in network.ids}
    assert len(timeouts) > 1


@pytest.mark.parametrize(
    ("num_voters", "answers", "expected"),
    [
        pytest.param(3, {2: True}, StateRole.LEADER, id="3 voters, 1 grant -> leader"),
        pytest.param(3, {2: False}, StateRole.CANDIDATE, id="3 voters, 1 reject -> still waiting"),
        pytest.param(3, {2: False, 3: False}, StateRole.FOLLOWER, id="3 voters, 2 rejects -> lost"),
        pytest.param(5, {2: True}, StateRole.CANDIDATE, id="5 voters, 1 grant -> still waiting"),
        pytest.param(5, {2: True, 3: True}, StateRole.LEADER, id="5 voters, 2 grants -> leader"),
        pytest.param(
            5, {2: False, 3: False, 4: False}, StateRole.FOLLOWER, id="5 voters, 3 rejects -> lost"
        ),
    ],
)
def test_candidate_needs_votes_from_a_majority(
    num_voters: int, answers: dict[int, bool], expected: StateRole
) -> None:
    """5.2: "A candidate wins an election if it receives votes from a majority of the
    servers in the full cluster for the same term"."""
    network = Network(range(1, num_voters + 1), pre_vote=False)
    candidate = network.nodes[1]
    candidate.campaign()
    network.process(1)
    assert candidate.role is StateRole.CANDIDATE
    for voter, granted in answers.items():
        candidate.step(
            Message(MessageType.VOTE_RESPONSE, voter, 1, candidate.term, reject=not granted)
        )
    assert candidate.role is expected


def test_voter_grants_at_most_one_vote_per_term() -> None:
    """5.2: "each server will vote for at most one candidate in a given term"."""
    network = Network([1, 2, 3], pre_vote=False)
    voter = network.nodes[3]
    for candidate in (1, 2):
        voter.step(Message(MessageType.VOTE, candidate, 3, 2, log_term=1, index=1))
    network.process(3)
    answers = network.take(of_type(MessageType.VOTE_RESPONSE))
    assert [(m.target, m.reject) for m in answers] == [(1, False), (2, True)]
    assert network.stores[3].hard_state().vote == 1


def test_vote_is_persisted_in_the_same_ready_as_the_answer() -> None:
    """Figure 3.1: votedFor is persistent state, updated before responding."""
    network = Network([1, 2, 3], pre_vote=False)
    voter = network.nodes[2]
    voter.step(Message(MessageType.VOTE, 1, 2, 2, log_term=1, index=1))
    ready = voter.ready()
    assert any(m.type is MessageType.VOTE_RESPONSE and not m.reject for m in ready.messages)
    assert ready.hard_state is not None and ready.hard_state.vote == 1
    assert ready.must_sync


@pytest.mark.parametrize(
    ("candidate_last", "granted"),
    [
        pytest.param((2, 2), False, id="shorter log, same last term -> reject"),
        pytest.param((3, 2), True, id="same last index and term -> grant"),
        pytest.param((5, 2), True, id="longer log, same last term -> grant"),
        pytest.param((2, 3), True, id="higher last term, shorter log -> grant"),
        pytest.param((9, 1), False, id="lower last term, longer log -> reject"),
    ],
)
def test_voter_rejects_a_candidate_whose_log_is_less_up_to_date(
    candidate_last: tuple[int, int], granted: bool
) -> None:
    """5.4.1: "the voter denies its vote if its own log is more up-to-date than that of
    the candidate" (compare last terms, then lengths)."""
    network = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    leader = network.elect(1)
    leader.propose(b"x")  # voter 3's log: [1: t1 bootstrap, 2: t2 no-op, 3: t2 x]
    network.stabilize()
    voter = network.nodes[3]
    assert (voter.last_index, voter.raft.log.last_term()) == (3, 2)
    index, last_term = candidate_last
    # A term higher than anybody's, so that only the log comparison decides.
    voter.step(Message(MessageType.VOTE, 2, 3, 10, log_term=last_term, index=index))
    network.process(3)
    answer = network.take(of_type(MessageType.VOTE_RESPONSE))[-1]
    assert answer.reject is not granted


def test_leader_appends_a_no_op_entry_of_its_term() -> None:
    """8: "each leader commit a blank no-op entry into the log at the start of its term"."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    entry = leader.raft.log.slice(leader.last_index, leader.last_index + 1)[0]
    assert (entry.term, entry.data) == (leader.term, b"")
    assert leader.commit_index == leader.last_index


def test_prevote_does_not_increase_the_term() -> None:
    """9.6: a pre-candidate asks whether it could win before incrementing its term."""
    network = Network([1, 2, 3])
    network.elect(1)
    term = network.nodes[1].term
    network.isolate(3)
    network.tick(3, 5 * ELECTION_TICKS)
    assert network.nodes[3].term == term
    assert network.nodes[3].role is StateRole.PRE_CANDIDATE


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum", "leader_kept"),
    [
        pytest.param(True, True, True, id="pre-vote and check-quorum: leader kept"),
        pytest.param(True, False, True, id="pre-vote alone: leader kept"),
        pytest.param(False, False, False, id="neither: rejoining node deposes the leader"),
    ],
)
def test_prevote_does_not_disrupt_a_stable_leader(
    pre_vote: bool, check_quorum: bool, leader_kept: bool
) -> None:
    """9.6: a server rejoining after a partition must not depose a leader that a
    majority still follows."""
    network = Network([1, 2, 3], pre_vote=pre_vote, check_quorum=check_quorum)
    network.elect(1)
    term = network.nodes[1].term
    network.isolate(3)
    network.tick(3, 3 * ELECTION_TICKS)  # node 3 keeps trying on its own
    network.take(lambda m: m.source == 3 or m.target == 3)
    network.heal()
    # Node 3's next attempt reaches everybody, while the leader heartbeats.
    for _ in range(3 * ELECTION_TICKS):
        network.tick_all()
    if leader_kept:
        assert network.leaders() == [1]
        assert network.nodes[1].term == term
    else:
        assert network.nodes[1].term > term


@pytest.mark.parametrize(
    ("check_quorum", "steps_down"),
    [
        pytest.param(True, True, id="check-quorum: isolated leader steps down"),
        pytest.param(False, False, id="no check-quorum: isolated leader stays"),
    ],
)
def test_check_quorum_leader_steps_down(check_quorum: bool, steps_down: bool) -> None:
    """6.2: "a leader steps down if an election timeout elapses without a successful
    round of heartbeats to a majority of its cluster"."""
    network = Network([1, 2, 3], check_quorum=check_quorum)
    leader = network.elect(1)
    network.isolate(1)
    network.tick(1, ELECTION_TICKS)
    network.tick(1, ELECTION_TICKS)
    assert (leader.role is StateRole.FOLLOWER) is steps_down
    if steps_down:
        assert leader.leader_id == NO_NODE


def test_leader_that_hears_from_a_majority_keeps_leading() -> None:
    network = Network([1, 2, 3, 4, 5])
    network.elect(1)
    network.isolate(4)
    network.isolate(5)
    network.tick_all(4 * ELECTION_TICKS)
    assert network.leaders() == [1]


def test_voters_ignore_vote_requests_while_they_hear_from_a_leader() -> None:
    """4.2.3: "if a server receives a RequestVote request within the minimum election
    timeout of hearing from a current leader, it does not update its term or grant
    its vote"."""
    network = Network([1, 2, 3], pre_vote=False, check_quorum=True)
    network.elect(1)
    follower = network.nodes[2]
    term = follower.term
    follower.step(Message(MessageType.VOTE, 3, 2, term + 5, log_term=99, index=99))
    network.process(2)
    assert follower.term == term
    assert network.take(of_type(MessageType.VOTE_RESPONSE)) == []


def test_stale_leader_learns_the_new_term_and_steps_down() -> None:
    """5.1: "If a candidate or leader discovers that its term is out of date, it
    immediately reverts to follower state"."""
    network = Network([1, 2, 3], check_quorum=False)
    old = network.elect(1)
    network.isolate(1)
    network.tick_all(3 * ELECTION_TICKS)  # 2 and 3 elect a leader among themselves
    (new,) = [leader for leader in network.leaders() if leader != 1]
    assert old.role is StateRole.LEADER  # without check-quorum it does not know yet
    network.heal()
    network.tick(1)  # its heartbeats are answered with the new term
    network.stabilize()
    assert old.role is StateRole.FOLLOWER
    assert network.leaders() == [new]


@pytest.mark.parametrize("size", [3, 5], ids=["3 nodes", "5 nodes"])
def test_randomized_timeouts_elect_exactly_one_leader(size: int) -> None:
    """5.2: randomized election timeouts make split votes rare and resolve them."""
    network = Network(range(1, size + 1))
    for _ in range(4 * ELECTION_TICKS):
        network.tick_all()
        if network.leaders():
            break
    assert len(network.leaders()) == 1
    leader = network.nodes[network.leaders()[0]]
    assert all(network.nodes[i].leader_id == leader.node_id for i in network.ids)
