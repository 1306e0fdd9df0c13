"""Single-server membership changes (dissertation chapter 4) and leadership transfer (3.10)."""

from __future__ import annotations

import pytest

from neostore.raft import (
    ConfChange,
    ConfChangeRefusedError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    StateRole,
    apply_conf_change,
    encode_conf_change_record,
)
from neostore.raft.membership import MembershipLog
from neostore.raft.types import ConfChangeRecord

from raft_network import ELECTION_TICKS, Network, of_type

ADD = ConfChangeType.ADD_VOTER
REMOVE = ConfChangeType.REMOVE_VOTER


@pytest.mark.parametrize(
    ("voters", "change", "expected"),
    [
        pytest.param({1, 2, 3}, ConfChange(ADD, 4), {1, 2, 3, 4}, id="add a fourth voter"),
        pytest.param({1, 2, 3}, ConfChange(REMOVE, 2), {1, 3}, id="remove a voter"),
        pytest.param({1, 2, 3}, ConfChange(ADD, 2), None, id="adding a voter twice is refused"),
        pytest.param({1, 2, 3}, ConfChange(REMOVE, 9), None, id="removing a stranger is refused"),
        pytest.param({1}, ConfChange(REMOVE, 1), None, id="removing the last voter is refused"),
        pytest.param({1}, ConfChange(ADD, 0), None, id="node id 0 is refused"),
    ],
)
def test_apply_conf_change(voters: set[int], change: ConfChange, expected: set[int] | None) -> None:
    before = ConfState(frozenset(voters))
    if expected is None:
        with pytest.raises(ConfChangeRefusedError):
            apply_conf_change(before, change)
    else:
        assert apply_conf_change(before, change).voters == frozenset(expected)


def _conf_entry(index: int, *voters: int) -> Entry:
    data = encode_conf_change_record(ConfChangeRecord(ConfState.of(*voters)))
    return Entry(term=1, index=index, type=EntryType.CONF_CHANGE, data=data)


def test_latest_membership_in_the_log_is_in_force_and_reverts_when_truncated() -> None:
    """4.1: "a server always uses the latest configuration in its log, regardless of
    whether the entry is committed"; removed entries take it back."""
    membership = MembershipLog(0, ConfState.of(1, 2, 3))
    membership.record_entries([_conf_entry(5, 1, 2, 3, 4), Entry(1, 6), _conf_entry(7, 1, 2, 4)])
    assert membership.current() == ConfState.of(1, 2, 4)
    assert membership.at(6) == ConfState.of(1, 2, 3, 4)
    assert membership.at(4) == ConfState.of(1, 2, 3)
    membership.truncate_from(7)
    assert membership.current() == ConfState.of(1, 2, 3, 4)
    membership.forget_up_to(6)
    assert membership.changes == [] and membership.base_index == 5
    assert membership.current() == ConfState.of(1, 2, 3, 4)


def test_second_membership_change_is_refused_while_one_is_pending() -> None:
    """4.1: "the leader does not begin a new configuration change until the previous
    one has committed" — here enforced by the core, not left to the caller."""
    network = Network([1, 2, 3, 4, 5])
    leader = network.elect(1)
    network.isolate(2)
    network.isolate(3)
    network.isolate(4)  # no majority: the first change cannot commit
    leader.propose_conf_change(ConfChange(REMOVE, 5))
    with pytest.raises(ConfChangeRefusedError, match="not committed"):
        leader.propose_conf_change(ConfChange(REMOVE, 4))
    network.heal()
    network.stabilize()
    assert leader.conf_state == ConfState.of(1, 2, 3, 4)
    leader.propose_conf_change(ConfChange(REMOVE, 4))  # accepted once the first committed
    network.stabilize()
    assert leader.conf_state == ConfState.of(1, 2, 3)


def test_membership_change_is_refused_until_the_leader_commits_an_entry_of_its_term() -> None:
    """Ongaro's 2015 correction to single-server changes: a new leader first commits
    an entry of its own term."""
    network = Network([1, 2, 3])
    leader = network.nodes[1]
    leader.campaign()
    network.process_all()
    network.drop = of_type(MessageType.APPEND)
    network.stabilize()
    assert leader.role is StateRole.LEADER
    with pytest.raises(ConfChangeRefusedError, match="its term"):
        leader.propose_conf_change(ConfChange(ADD, 4))


def test_added_voter_catches_up_and_counts_in_the_majority() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"before")
    network.stabilize()
    network.start(4)  # a new, empty node
    leader.propose_conf_change(ConfChange(ADD, 4))
    network.stabilize()
    assert network.nodes[4].conf_state == ConfState.of(1, 2, 3, 4)
    assert network.applied_data(4) == [b"before"]
    # With 4 voters a majority is 3: the leader and one follower are no longer enough.
    network.isolate(3)
    network.isolate(4)
    index = leader.propose(b"after")
    network.stabilize()
    assert leader.commit_index < index


def test_new_membership_is_used_from_the_moment_it_is_appended() -> None:
    """4.1: the leader counts the new membership's majority before the entry commits."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(2)
    network.isolate(3)
    leader.propose_conf_change(ConfChange(ADD, 4))
    assert leader.conf_state == ConfState.of(1, 2, 3, 4)
    assert sorted(leader.raft.progress) == [1, 2, 3, 4]


def test_removed_leader_steps_down_once_its_removal_commits() -> None:
    """4.2.2: the leader "steps down once the Cnew entry is committed"; until then it
    manages a cluster that it is not part of."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose_conf_change(ConfChange(REMOVE, 1))
    assert leader.role is StateRole.LEADER
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"not a member any more")
    network.stabilize()
    assert leader.role is StateRole.FOLLOWER
    assert network.nodes[2].conf_state == ConfState.of(2, 3)
    network.tick_all(4 * ELECTION_TICKS)
    (new_leader,) = network.leaders()
    assert new_leader in (2, 3)
    assert leader.raft.promotable() is False


def test_removed_node_does_not_campaign() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose_conf_change(ConfChange(REMOVE, 3))
    network.stabilize()
    removed = network.nodes[3]
    assert removed.conf_state == ConfState.of(1, 2)
    network.tick(3, 5 * ELECTION_TICKS)
    assert removed.role is StateRole.FOLLOWER
    assert not network.take(lambda m: m.source == 3)


def test_leadership_transfer_elects_the_target() -> None:
    """3.10: the leader brings the target's log up to date, then sends TimeoutNow; the
    target campaigns at once, and voters do not wait for the old leader's lease."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(3)
    leader.propose(b"x")
    network.stabilize()
    network.heal()
    leader.transfer_leadership(3)  # 3 lacks "x": it is caught up first
    network.stabilize()
    assert network.leaders() == [3]
    assert network.nodes[3].term == leader.term
    assert leader.role is StateRole.FOLLOWER


def test_proposals_are_refused_during_a_transfer_and_it_is_abandoned_after_a_timeout() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    network.isolate(2)
    leader.transfer_leadership(2)
    assert leader.lead_transferee == 2
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"during transfer")
    network.tick(1, ELECTION_TICKS)
    assert leader.lead_transferee == 0
    assert leader.role is StateRole.LEADER
    leader.propose(b"after")


def test_only_a_leader_transfers_or_proposes() -> None:
    network = Network([1, 2, 3])
    network.elect(1)
    follower = network.nodes[2]
    with pytest.raises(NotLeaderError) as refused:
        follower.propose(b"x")
    assert refused.value.leader_id == 1
    with pytest.raises(NotLeaderError):
        follower.transfer_leadership(3)
    with pytest.raises(NotLeaderError):
        follower.propose_conf_change(ConfChange(ADD, 4))
