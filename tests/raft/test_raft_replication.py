"""Log replication and commitment (Raft 5.3, 5.4.2), pipelining and batching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from neostore.raft import Entry, HardState, Message, MessageType, StateRole

from raft_network import Network, of_type


def test_leader_commits_an_entry_once_a_majority_stored_it() -> None:
    """5.3: "A log entry is committed once the leader that created the entry has
    replicated it on a majority of the servers"."""
    network = Network([1, 2, 3, 4, 5])
    leader = network.elect(1)
    network.isolate(4)
    network.isolate(5)
    index = leader.propose(b"with three of five")
    network.stabilize()
    assert leader.commit_index == index
    assert network.applied_data(2) == [b"with three of five"]

    network.isolate(3)
    index = leader.propose(b"with two of five")
    network.stabilize()
    assert leader.commit_index == index - 1


def test_leader_commits_only_entries_of_its_own_term() -> None:
    """5.4.2 and Figure 8: "Raft never commits log entries from previous terms by
    counting replicas"; they commit when an entry of the current term does."""
    network = Network([1, 2, 3], pre_vote=False, max_entries_per_append=1)
    # Node 1 holds entry 2 of term 2 that nobody else has; everybody is at term 3.
    network.stores[1].save(HardState(term=3, commit=1), [Entry(term=2, index=2, data=b"old")])
    for node_id in (2, 3):
        network.stores[node_id].save(HardState(term=3, commit=1), [])
    for node_id in (1, 2, 3):
        network.start(node_id)
    leader = network.nodes[1]
    leader.campaign()
    no_op_index = 3
    # Deliver everything, but keep the no-op of the new term from the followers.
    network.process_all()
    while network.outbox:
        message = network.outbox.pop(0)
        if message.type is MessageType.APPEND:
            kept = tuple(entry for entry in message.entries if entry.index != no_op_index)
            message = replace(message, entries=kept)
        network.deliver(message)
    assert leader.role is StateRole.LEADER and leader.term == 4
    # Entry 2 (term 2) is now on all three nodes, the no-op of term 4 only on the leader.
    assert [network.nodes[i].last_index for i in (1, 2, 3)] == [3, 2, 2]
    assert leader.commit_index == 1

    network.tick(1)  # heartbeat -> answers -> the no-op goes out, unaltered this time
    network.stabilize()
    assert leader.commit_index == no_op_index
    assert network.applied_data(2) == [b"old"]


def test_followers_learn_the_commit_index_and_apply() -> None:
    network = Network([1, 2, 3])
    leader = network.elect(1)
    for number in range(5):
        leader.propose(f"command {number}".encode())
    network.stabilize()
    network.tick(1)
    network.stabilize()
    expected = [f"command {number}".encode() for number in range(5)]
    assert all(network.applied_data(i) == expected for i in (1, 2, 3))
    assert {network.nodes[i].commit_index for i in (1, 2, 3)} == {leader.last_index}


def test_a_lazy_leader_tells_a_commit_with_the_next_append_or_heartbeat() -> None:
    """lazy_commit_broadcast: committing sends no append of its own; the
    next proposal's append carries the commit index, or the next heartbeat."""
    network = Network([1, 2, 3], lazy_commit_broadcast=True)
    leader = network.elect(1)
    first = leader.propose(b"first")
    start = len(network.delivered)
    network.stabilize()
    assert leader.commit_index == first
    assert network.nodes[2].commit_index < first
    appends = [m for m in network.delivered_since(start) if m.type is MessageType.APPEND]
    assert sorted(m.target for m in appends) == [2, 3]  # the entry's, and nothing for its commit
    second = leader.propose(b"second")
    network.stabilize()
    assert network.nodes[2].commit_index == first  # carried by the append of the second
    assert leader.commit_index == second
    network.tick(1)  # a heartbeat
    network.stabilize()
    assert {network.nodes[i].commit_index for i in (1, 2, 3)} == {second}
    assert all(network.applied_data(i) == [b"first", b"second"] for i in (1, 2, 3))


def test_a_lazy_leader_knows_which_followers_lack_the_commit_and_tells_only_them() -> None:
    """commit_untold/broadcast_commit: the driver's flush of a commit index
    that no append carried; a follower that knows it gets nothing more."""
    network = Network([1, 2, 3], lazy_commit_broadcast=True)
    leader = network.elect(1)
    network.stabilize()
    assert leader.commit_untold()  # the new leader's empty entry
    network.tick(1)  # a heartbeat tells it
    network.stabilize()
    assert not leader.commit_untold()
    index = leader.propose(b"x")
    network.stabilize()
    assert leader.commit_index == index
    assert leader.commit_untold()
    leader.raft.progress[3].commit_sent = index  # as if told already: the flush skips it
    start = len(network.delivered)
    leader.broadcast_commit()
    network.stabilize()
    flushed = [m for m in network.delivered_since(start) if m.type is MessageType.APPEND]
    assert [(m.target, m.commit, m.entries) for m in flushed] == [(2, index, ())]
    assert network.nodes[2].commit_index == index
    assert network.applied_data(2) == [b"x"]
    assert not leader.commit_untold()
    start = len(network.delivered)
    leader.broadcast_commit()  # nothing untold: nothing sent
    network.stabilize()
    assert network.delivered_since(start) == []
    assert not network.nodes[2].commit_untold()  # a follower never has anything to tell


def test_with_lazy_followers_a_new_entry_goes_to_a_quorum_and_the_others_get_it_when_flushed() -> None:
    """lazy_followers: of 2 followers, only the eager one (the most up to
    date, then the lowest id) gets each entry at once; the lazy one gets
    what it lacks in one append when the driver flushes."""
    network = Network([1, 2, 3], lazy_commit_broadcast=True, lazy_followers=True)
    leader = network.elect(1)
    network.tick(1)
    network.stabilize()
    assert not leader.lazy_pending()
    start = len(network.delivered)
    indexes = [leader.propose(f"command {n}".encode()) for n in range(3)]
    network.stabilize()
    assert leader.commit_index == indexes[-1]  # the leader and node 2: a quorum
    appends = [m for m in network.delivered_since(start) if m.type is MessageType.APPEND]
    assert {m.target for m in appends} == {2}
    assert network.stores[3].last_index() < indexes[0]
    assert leader.lazy_pending()
    start = len(network.delivered)
    leader.flush_lazy()
    network.stabilize()
    [flushed] = [m for m in network.delivered_since(start) if m.type is MessageType.APPEND]
    assert (flushed.target, [e.index for e in flushed.entries]) == (3, indexes)
    assert flushed.commit == indexes[-1]  # the flush tells the commit index as well
    assert not leader.lazy_pending()
    assert network.applied_data(3)[-3:] == [f"command {n}".encode() for n in range(3)]


def test_with_lazy_followers_commits_go_on_through_a_lazy_follower_when_the_eager_one_is_cut_off() -> None:
    """An eager follower that stops answering falls behind: the lazy one,
    flushed, makes the quorum, and becomes the eager one from then on."""
    network = Network([1, 2, 3], lazy_commit_broadcast=True, lazy_followers=True)
    leader = network.elect(1)
    network.tick(1)
    network.stabilize()
    network.isolate(2)
    index = leader.propose(b"while 2 is cut off")
    network.stabilize()
    assert leader.commit_index < index  # sent to node 2 only, which does not answer
    leader.flush_lazy()
    network.stabilize()
    assert leader.commit_index == index  # node 3 made the quorum
    start = len(network.delivered)
    after = leader.propose(b"after")
    network.stabilize()
    assert leader.commit_index == after
    assert 3 in {m.target for m in network.delivered_since(start) if m.type is MessageType.APPEND}
    network.heal()
    network.tick(1)
    network.stabilize()
    leader.flush_lazy()
    network.stabilize()
    assert all(network.applied_data(i)[-2:] == [b"while 2 is cut off", b"after"] for i in (1, 2, 3))


def test_leader_counts_its_own_log_only_once_persisted() -> None:
    """The leader is part of a majority only for what its driver made durable."""
    network = Network([1])
    leader = network.elect(1)
    index = leader.propose(b"x")
    ready = leader.ready()
    assert [e.index for e in ready.entries] == [index]
    assert ready.committed_entries == ()
    network.stores[1].save(ready.hard_state, ready.entries, ready.snapshot)
    leader.advance(ready)
    ready = leader.ready()
    assert [e.data for e in ready.committed_entries] == [b"x"]
    leader.advance(ready)


def test_follower_rejects_an_append_whose_previous_entry_does_not_match() -> None:
    """5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries" (and hints where to retry)."""
    network = Network([1, 2, 3], pre_vote=False)
    network.elect(1)
    follower = network.nodes[2]
    term = follower.term
    follower.step(
        Message(
            MessageType.APPEND,
            1,
            2,
            term,
            log_term=term,
            index=7,
            entries=(Entry(term, 8, data=b"x"),),
            commit=8,
        )
    )
    network.process(2)
    (answer,) = network.take(of_type(MessageType.APPEND_RESPONSE))
    assert answer.reject
    assert answer.index == 7
    assert answer.reject_hint == follower.last_index
    assert follower.commit_index == 2


def test_follower_drops_a_conflicting_suffix() -> None:
    """5.3: "the leader handles inconsistencies by forcing the followers' logs to
    duplicate its own": conflicting entries are overwritten, on disk too."""
    network = Network([1, 2, 3], pre_vote=False)
    stale = [Entry(term=2, index=index, data=b"stale") for index in (2, 3, 4)]
    network.stores[3].save(HardState(term=3, commit=1), stale)
    for node_id in (1, 2):
        network.stores[node_id].save(HardState(term=3, commit=1), [])
    for node_id in (1, 2, 3):
        network.start(node_id)
    leader = network.elect(1)  # term 4, with node 2's vote
    leader.propose(b"fresh")
    network.stabilize()
    log = network.stores[3].entries(2, network.stores[3].last_index() + 1)
    assert [(e.term, e.data) for e in log] == [(4, b""), (4, b"fresh")]
    assert network.applied_data(3) == [b"fresh"]


def test_leader_finds_the_match_point_skipping_whole_terms() -> None:
    """5.3 (optimization): a rejection carries the follower's last index at or below
    the probe with a term no greater than the leader's, so a long divergent suffix
    is skipped in one round trip rather than one entry per round trip."""
    network = Network([1, 2, 3], pre_vote=False)
    kept = [Entry(term=3, index=index, data=b"kept") for index in range(2, 11)]
    divergent = [Entry(term=2, index=index, data=b"lost") for index in range(2, 40)]
    network.stores[3].save(HardState(term=3, commit=1), divergent)
    for node_id in (1, 2):
        network.stores[node_id].save(HardState(term=3, commit=1), kept)
    for node_id in (1, 2, 3):
        network.start(node_id)
    leader = network.elect(1)
    network.stabilize()
    assert network.nodes[3].last_index == leader.last_index
    rejections = [
        m
        for m in network.delivered_since(0)
        if m.type is MessageType.APPEND_RESPONSE and m.reject and m.source == 3
    ]
    assert len(rejections) == 1  # one entry at a time would take 10


def test_pipelining_keeps_at_most_the_inflight_window_unacknowledged() -> None:
    network = Network([1, 2, 3], max_entries_per_append=1, max_inflight_appends=3)
    leader = network.elect(1)
    network.drop = lambda m: m.type is MessageType.APPEND_RESPONSE
    for number in range(10):
        leader.propose(f"{number}".encode())
    network.process(1)
    appends = network.take(lambda m: m.type is MessageType.APPEND and m.target == 2)
    assert len(appends) == 3
    assert [m.entries[0].data for m in appends] == [b"0", b"1", b"2"]
    # Acknowledging the first frees one slot: exactly one more append goes out.
    network.heal()
    network.deliver(appends[0])
    network.take(lambda m: m.target != 1)
    network.deliver_matching(of_type(MessageType.APPEND_RESPONSE))
    more = network.take(lambda m: m.type is MessageType.APPEND and m.target == 2)
    assert [m.entries[0].data for m in more] == [b"3"]


@pytest.mark.parametrize(
    ("max_entries", "max_bytes", "payload_size", "expected_batches"),
    [
        pytest.param(64, 1 << 20, 10, [8], id="all 8 entries in one append"),
        pytest.param(3, 1 << 20, 10, [3, 3, 2], id="at most 3 entries per append"),
        pytest.param(
            64, 100, 40, [1, 1, 1, 1, 1, 1, 1, 1], id="byte limit: one 64-byte entry each"
        ),
        pytest.param(64, 140, 40, [2, 2, 2, 2], id="byte limit: two entries each"),
        pytest.param(64, 1, 1000, [1] * 8, id="an entry larger than the limit still goes alone"),
    ],
)
def test_appends_are_batched_within_entry_and_byte_limits(
    max_entries: int, max_bytes: int, payload_size: int, expected_batches: list[int]
) -> None:
    """A follower that fell behind catches up with appends of several entries each."""
    network = Network([1, 2, 3], max_entries_per_append=max_entries, max_bytes_per_append=max_bytes)
    leader = network.elect(1)
    network.isolate(2)
    for number in range(8):
        leader.propose(bytes([number]) * payload_size)
    network.stabilize()
    leader.report_unreachable(2)
    network.heal()
    start = len(network.delivered)
    network.tick(1)
    network.stabilize()
    catch_up = [
        m
        for m in network.delivered_since(start)
        if m.type is MessageType.APPEND and m.target == 2 and m.entries
    ]
    assert [len(m.entries) for m in catch_up] == expected_batches
    assert network.nodes[2].last_index == leader.last_index


def test_restarted_node_recovers_term_vote_log_and_commit_from_its_store() -> None:
    """Figure 3.1: currentTerm, votedFor and log[] are persistent state."""
    network = Network([1, 2, 3])
    leader = network.elect(1)
    leader.propose(b"survives")
    network.stabilize()
    network.tick(1)
    network.stabilize()
    before = network.nodes[2]
    restarted = network.start(2)
    assert restarted.term == before.term
    assert restarted.raft.vote == before.raft.vote
    assert restarted.last_index == before.last_index
    assert restarted.commit_index == before.commit_index
    assert restarted.role is StateRole.FOLLOWER
    network.process(2)  # committed entries are delivered again for a fresh state machine
    assert network.applied_data(2) == [b"survives"]
