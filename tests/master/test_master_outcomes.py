"""The replicated record of recent commit outcomes (ttid -> tid) in the state."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neostore.ids import p64, u64
from neostore.master_node import state as state_module
from neostore.master_node.codec import decode_command, decode_state, encode_command, encode_state
from neostore.master_node.state import (
    ClusterState,
    CommitDecisions,
    Decision,
    NodeVote,
    Outcome,
    OutcomeLog,
    apply,
    plan_decision,
)

from master_fakes import running_state

ADDRESSES = ["127.0.0.1:7001", "127.0.0.1:7002"]


def _decide(state: ClusterState, ttid_value: int, client_id: str = "client-a") -> tuple[ClusterState, Decision]:
    """Commit one transaction writing its metadata partition."""
    num_partitions = state.num_partitions
    tid_value = u64(state.last_tid) + 1
    tid_value += (ttid_value - tid_value) % num_partitions
    partition = ttid_value % num_partitions
    votes = tuple(NodeVote(node, (partition,)) for node in (1, 2))
    decision = Decision(tid=p64(tid_value), ttid=p64(ttid_value), partitions=(partition,), votes=votes,
                        oids=(), out_of_date=plan_decision(state, (partition,), votes), client_id=client_id)
    new_state, (error,) = apply(state, CommitDecisions((decision,)))
    assert error is None
    return new_state, decision


def test_a_decision_is_recorded_with_its_ttid_tid_and_client() -> None:
    state, decision = _decide(running_state(ADDRESSES), 9)
    assert state.recent_outcomes == (Outcome(decision.ttid, decision.tid, "client-a"),)
    assert state.outcome_of(decision.ttid, "client-a") == decision.tid
    assert state.outcome_of(decision.ttid, "client-b") is None, "another client's TTID"
    assert state.outcome_of(p64(10), "client-a") is None


def test_the_record_stays_after_the_decision_is_applied_everywhere() -> None:
    state, decision = _decide(running_state(ADDRESSES), 9)
    state, _ = apply(state, state_module.MarkApplied(decision.tid, (1, 2)))
    assert state.pending_decisions == ()
    assert state.outcome_of(decision.ttid, "client-a") == decision.tid


def test_the_record_is_bounded_and_drops_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_RECENT_OUTCOMES", 3)
    state = running_state(ADDRESSES)
    decisions = []
    for ttid in range(20, 25):
        state, decision = _decide(state, ttid)
        decisions.append(decision)
    assert [o.ttid for o in state.recent_outcomes] == [d.ttid for d in decisions[-3:]]
    assert state.outcome_of(decisions[0].ttid, "client-a") is None
    assert state.outcome_of(decisions[-1].ttid, "client-a") == decisions[-1].tid


def test_the_record_is_deterministic_and_part_of_snapshots() -> None:
    def run() -> ClusterState:
        state = running_state(ADDRESSES)
        for ttid in (9, 14, 31):
            state, _ = _decide(state, ttid)
        return state

    first, second = run(), run()
    assert encode_state(first) == encode_state(second)
    restored = decode_state(encode_state(first))
    assert restored == first
    assert restored.outcome_of(p64(14), "client-a") == first.outcome_of(p64(14), "client-a")


def test_a_decision_without_client_id_decodes_from_older_logs() -> None:
    state, decision = _decide(running_state(ADDRESSES), 9, client_id="")
    encoded = encode_command(CommitDecisions((decision,)))
    old = encoded.replace(b'"client_id":"",', b"")
    assert old != encoded
    assert decode_command(old) == CommitDecisions((dataclasses.replace(decision, client_id=""),))
    assert state.outcome_of(decision.ttid, "anyone") == decision.tid, "an old record matches any client"


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6), st.integers(1, 700))
@settings(max_examples=60, deadline=None)
def test_the_log_of_outcomes_behaves_as_the_tuple_it_replaces(bounds: list[int], steps: int) -> None:
    """OutcomeLog (chunked, so that appending copies little) against the
    tuple model: same items in order, both ends, bound, bytes in a snapshot."""
    model: tuple[Outcome, ...] = ()
    log = OutcomeLog()
    for step in range(steps):
        bound = bounds[step % len(bounds)]
        outcome = Outcome(p64(step), p64(step + 1), f"c{step % 3}")
        model = (model + (outcome,))[-bound:]
        log = log.appended(outcome, bound)
        assert len(log) == len(model)
    assert log == model and model == log and list(reversed(log)) == list(reversed(model))
    assert [log[i] for i in range(-len(model), len(model))] == list(model) * 2
    assert log[1:3] == model[1:3]
    with pytest.raises(IndexError):
        log[len(model)]
    as_tuple = dataclasses.replace(running_state(ADDRESSES), recent_outcomes=model)
    as_log = dataclasses.replace(running_state(ADDRESSES), recent_outcomes=log)
    assert encode_state(as_log) == encode_state(as_tuple)
    assert decode_state(encode_state(as_tuple)).recent_outcomes == log
