"""Raft safety and liveness under a simulated hostile network (see ``simulation.py``).

Three ways in, all deterministic:

* a plain loop over many seeds, each seed a whole plan (``random_plan``);
* hypothesis generating plans (fault schedules, rates, group sizes), which
  it shrinks to a small failing plan if one fails;
* ``test_replay``, which runs one plan twice and checks both runs agree:
  ``NEOSTORE_RAFT_SEED=1234 pytest tests/raft/test_raft_simulation.py -k replay``
  (or ``NEOSTORE_RAFT_PLAN='<json>'`` for a plan printed by hypothesis).

A failure message names the seed (or the plan) and the last events.
``-m slow`` adds a longer soak over other seeds.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neostore.raft import log as raft_log
from neostore.raft import raft as raft_rules

from simulation import (
    FAULT_KINDS,
    Fault,
    Plan,
    Simulation,
    SimulationFailure,
    random_plan,
    run_plan,
)

SEEDED_SCHEDULES = 2400
SEEDED_CHUNKS = 8
HYPOTHESIS_SCHEDULES = 800
STEPS = 60
SOAK_SCHEDULES = 10_000
SOAK_FIRST_SEED = 1_000_000


def run_seeds(seeds: range) -> Counter[str]:
    """Run the plans of ``seeds``; return how often each kind of event happened."""
    totals: Counter[str] = Counter()
    for seed in seeds:
        simulation = Simulation(random_plan(seed, steps=STEPS))
        try:
            simulation.run_scheduled()
            simulation.heal_all()
            simulation.check_liveness()
        except SimulationFailure:
            raise
        except Exception as error:
            raise SimulationFailure(
                f"seed {seed}: {type(error).__name__}: {error}\n"
                f"replay: NEOSTORE_RAFT_SEED={seed} pytest tests/raft/test_raft_simulation.py -k replay"
            ) from error
        totals.update(simulation.counts)
        totals["schedules"] += 1
        totals["reads checked"] += simulation.reads_checked
        totals["entries applied"] += len(simulation.applied_log)
    return totals


CHUNK_SIZE = SEEDED_SCHEDULES // SEEDED_CHUNKS


@pytest.mark.parametrize(
    "first_seed",
    range(0, SEEDED_SCHEDULES, CHUNK_SIZE),
    ids=[f"seeds {s}-{s + CHUNK_SIZE - 1}" for s in range(0, SEEDED_SCHEDULES, CHUNK_SIZE)],
)
def test_seeded_schedules_keep_raft_safe_and_live(first_seed: int) -> None:
    started = time.perf_counter()
    totals = run_seeds(range(first_seed, first_seed + CHUNK_SIZE))
    print(f"{CHUNK_SIZE} schedules in {time.perf_counter() - started:.1f}s: {dict(totals)}")
    # The schedules must actually exercise what they claim to.
    assert totals["schedules"] == CHUNK_SIZE
    for kind in (
        "elected",
        "crash",
        "restart",
        "partition",
        "install_snapshot",
        "compact",
        "transfer",
    ):
        assert totals[kind] >= CHUNK_SIZE // 20, f"too few {kind}: {totals[kind]}"
    assert totals["add"] + totals["remove"] >= CHUNK_SIZE // 20
    assert totals["apply_membership"] >= CHUNK_SIZE // 10
    assert totals["reads checked"] >= CHUNK_SIZE
    assert totals["entries applied"] >= 5 * CHUNK_SIZE


faults = st.builds(
    Fault,
    step=st.integers(0, STEPS - 1),
    kind=st.sampled_from(FAULT_KINDS),
    node=st.integers(0, 15),
    arg=st.integers(0, 63),
)

plans = st.builds(
    Plan,
    seed=st.integers(0, 2**32 - 1),
    num_nodes=st.sampled_from([3, 5]),
    steps=st.just(STEPS),
    drop_percent=st.integers(0, 25),
    duplicate_percent=st.integers(0, 10),
    delay_percent=st.integers(0, 40),
    max_delay=st.integers(1, 3),
    propose_percent=st.integers(10, 70),
    read_percent=st.integers(0, 40),
    codec_percent=st.sampled_from([0, 0, 10, 100]),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
    max_entries_per_append=st.integers(1, 4),
    max_inflight_appends=st.integers(1, 4),
    snapshot_every=st.sampled_from([0, 4, 8, 16]),
    faults=st.lists(faults, max_size=24).map(lambda drawn: tuple(sorted(drawn))),
    lazy_commit_broadcast=st.booleans(),
    lazy_followers=st.booleans(),
)


@settings(
    max_examples=HYPOTHESIS_SCHEDULES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=plans)
def test_hypothesis_schedules_keep_raft_safe_and_live(plan: Plan) -> None:
    summary = run_plan(plan)
    assert summary.liveness_ticks > 0


def test_replay() -> None:
    """Replays ``NEOSTORE_RAFT_PLAN`` (JSON) or ``NEOSTORE_RAFT_SEED`` (default 1234)
    twice: both runs must pass and be identical."""
    plan_json = os.environ.get("NEOSTORE_RAFT_PLAN")
    if plan_json:
        plan = Plan.from_json(plan_json)
    else:
        plan = random_plan(int(os.environ.get("NEOSTORE_RAFT_SEED", "1234")), steps=STEPS)
    first = run_plan(plan)
    second = run_plan(plan)
    print(first)
    assert first == second
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("mutation", "target", "name", "known_seed"),
    [
        pytest.param(
            lambda self, last_index, term: True,
            raft_log.RaftLog,
            "is_up_to_date",
            3,
            id="votes granted to out-of-date logs -> caught",
        ),
        pytest.param(
            lambda self: True,
            raft_rules.Raft,
            "committed_in_current_term",
            813,
            id="reads served before the leader's first commit -> caught",
        ),
    ],
)
def test_the_checks_catch_a_broken_raft(
    monkeypatch: pytest.MonkeyPatch, mutation: object, target: type, name: str, known_seed: int
) -> None:
    """The simulation is only worth its checks: break a rule on purpose and it must fail.

    ``known_seed`` caught it when this test was written; if the harness changes,
    the loop goes on over other seeds.
    """
    monkeypatch.setattr(target, name, mutation)
    with pytest.raises(SimulationFailure):
        for seed in [known_seed, *range(3000)]:
            run_plan(random_plan(seed, steps=STEPS))


SOAK_CHUNK = 1_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "first_seed",
    range(SOAK_FIRST_SEED, SOAK_FIRST_SEED + SOAK_SCHEDULES, SOAK_CHUNK),
    ids=lambda seed: f"seeds {seed}-{seed + SOAK_CHUNK - 1}",
)
def test_soak_many_more_seeds(first_seed: int) -> None:
    started = time.perf_counter()
    totals = run_seeds(range(first_seed, first_seed + SOAK_CHUNK))
    print(f"{SOAK_CHUNK} schedules in {time.perf_counter() - started:.1f}s: {dict(totals)}")
    assert totals["schedules"] == SOAK_CHUNK
