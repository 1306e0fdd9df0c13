"""Rebalancing plans (master_node/rebalance.py): table-driven cases, then
hypothesis: safety of every plan for any table, and convergence of the
plan / replicate / clean up FEEDING cycle under sequences of membership
changes and failures.

Rows are written as strings, one per partition: "1U 2F 3O" is node 1
UP_TO_DATE, node 2 FEEDING, node 3 OUT_OF_DATE (D discarded, C corrupted).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neostore.master_node.rebalance import describe_moves, plan_rows
from neostore.partition_table import READABLE_STATES, Cell, CellState, initial_rows

U, O, F = CellState.UP_TO_DATE, CellState.OUT_OF_DATE, CellState.FEEDING  # noqa: E741 - the letters of the table notation
LETTER = {"U": U, "O": O, "F": F, "D": CellState.DISCARDED, "C": CellState.CORRUPTED}
NAME = {state: letter for letter, state in LETTER.items()}


def table(*rows: str) -> tuple[tuple[Cell, ...], ...]:
    return tuple(tuple(Cell(int(cell[:-1]), LETTER[cell[-1]]) for cell in row.split()) for row in rows)


def text(rows) -> list[str]:
    return [" ".join(f"{c.node_id}{NAME[c.state]}" for c in row) for row in rows]


def balanced(node_ids, num_partitions, num_replicas):
    return tuple(tuple(row) for row in initial_rows(node_ids, num_partitions, num_replicas))


# -- the properties -------------------------------------------------------------


def label_of(node_id: int, labels) -> tuple:
    return ("label", labels[node_id]) if labels.get(node_id) else ("node", node_id)


def live_readable(row, down) -> set[int]:
    return {c.node_id for c in row if c.state in READABLE_STATES and c.node_id not in down}


def check_target_shape(rows, eligible, width, labels):
    """Target cells (UP_TO_DATE and OUT_OF_DATE ones): R' per partition on
    eligible nodes, node loads within one, labels spread."""
    targets = [{c.node_id for c in row if c.state in (U, O)} for row in rows]
    for partition, target in enumerate(targets):
        assert len(target) == width, (partition, text(rows))
        assert target <= eligible
    if not rows or not eligible:
        return
    loads = Counter(n for target in targets for n in target)
    assert max(loads[n] for n in eligible) - min(loads[n] for n in eligible) <= 1, loads
    label_totals = Counter(label_of(n, labels) for target in targets for n in target)
    label_sizes = Counter(label_of(n, labels) for n in eligible)
    labels_enough = all(size * width <= len(eligible) for size in label_sizes.values())
    for target in targets:
        per_label = Counter(label_of(n, labels) for n in target)
        for label, count in per_label.items():
            # as spread as the label's share allows, and distinct labels when
            # no label holds more than 1/R' of the nodes
            assert count <= max(1, -(-label_totals[label] // len(rows))), (label, text(rows))
            assert count == 1 or not labels_enough, (label, text(rows))


def check_plan(old, new, members, num_replicas, labels, down):
    """Everything a single plan must guarantee, whatever the input."""
    eligible = set(members) - set(down)
    width = min(num_replicas, len(eligible))
    assert len(new) == len(old)
    for old_row, new_row in zip(old, new, strict=True):
        before = {c.node_id: c.state for c in old_row}
        after = {c.node_id: c.state for c in new_row}
        assert len(after) == len(new_row), "two cells of one partition on one node"
        assert all(n in before or n in eligible for n in after), "a new cell on a non-member"
        for node_id, state in before.items():  # readable cells stay, and readable
            if state in READABLE_STATES:
                assert after.get(node_id) in READABLE_STATES
        if live_readable(old_row, down):
            assert live_readable(new_row, down), "a partition became unreadable"
        target = {n for n, state in after.items() if state in (U, O)}
        for node_id, state in after.items():
            if node_id not in before:
                assert state == O
            elif node_id in target:  # kept: FEEDING is up to date again; others start over
                assert state == {U: U, F: U, O: O}.get(before[node_id], O)
            else:
                assert state == F and before[node_id] in READABLE_STATES
    check_target_shape(new, eligible, width, labels)


# -- table-driven ---------------------------------------------------------------

CASES = [
    # name, rows, members, R, labels, down, expected
    ("balanced table is kept", balanced([1, 2, 3], 6, 2), [3, 1, 2], 2, {}, (),
     text(balanced([1, 2, 3], 6, 2))),
    ("FEEDING kept is UP_TO_DATE again", table("1U 2F"), [1, 2], 2, {}, (), ["1U 2U"]),
    ("FEEDING on a non-member keeps feeding", table("1U 3F"), [1, 2], 2, {}, (), ["1U 3F 2O"]),
    ("UP_TO_DATE on a non-member feeds its replacement", table("1U 3U"), [1, 2], 2, {}, (), ["1U 3F 2O"]),
    ("extra OUT_OF_DATE cell is removed", table("1U 2U 3O"), [1, 2, 3], 2, {}, (), ["1U 2U"]),
    ("extra UP_TO_DATE cell feeds", table("1U 2U 3U"), [1, 2, 3], 2, {}, (), ["1U 2U 3F"]),
    ("UP_TO_DATE kept before OUT_OF_DATE", table("1O 2U"), [1, 2], 1, {}, (), ["2U"]),
    ("CORRUPTED removed, replaced elsewhere", table("1U 2C"), [1, 2, 3], 2, {}, (), ["1U 3O"]),
    ("CORRUPTED node as last resort starts over", table("1U 2C"), [1, 2], 2, {}, (), ["1U 2O"]),
    ("no readable cell: new cells", table("3D"), [1, 2], 2, {}, (), ["1O 2O"]),
    ("DOWN node's cell is kept, not relied on", table("1U 2U"), [1, 3], 2, {}, {2}, ["1U 2F 3O"]),
    ("DOWN member gets nothing", table("1U"), [1, 2, 3], 2, {}, {2}, ["1U 3O"]),
    ("fewer members than R", table("1U"), [1, 2], 3, {}, (), ["1U 2O"]),
    ("no members: readable cells feed", table("1U 2O", "2F"), [], 2, {}, (), ["1F", "2F"]),
    ("one replica per rack", table("1U 2U", "3U 4U"), [1, 2, 3, 4], 2,
     {1: "a", 2: "a", 3: "b", 4: "b"}, (), ["1U 2F 4O", "3U 4F 2O"]),
    ("drop a node", balanced([1, 2, 3], 3, 2), [1, 2], 2, {}, (), ["1U 2U", "3F 1U 2O", "2U 3F 1O"]),
]


@pytest.mark.parametrize(("name", "rows", "members", "replicas", "labels", "down", "expected"),
                         CASES, ids=[case[0] for case in CASES])
def test_plan_cases(name, rows, members, replicas, labels, down, expected):
    new = plan_rows(rows, members, replicas, labels, down)
    assert text(new) == expected
    check_plan(rows, new, members, replicas, labels, down)


def test_add_node_moves_only_its_share():
    rows = balanced([1, 2, 3], 12, 2)
    new = plan_rows(rows, [1, 2, 3, 4], 2)
    added = [(p, c.node_id) for p, row in enumerate(new) for c in row if c not in rows[p]
             and c.state == O]
    assert len(added) == 6 and {n for _, n in added} == {4}
    assert Counter(c.state for row in new for c in row) == Counter({U: 18, F: 6, O: 6})
    check_plan(rows, new, [1, 2, 3, 4], 2, {}, ())


def test_rack_with_too_many_nodes_spreads_as_evenly_as_balance_allows():
    # rack a has 2 of 3 nodes: balance (8 cells each) forces 4 partitions into rack a twice
    labels = {1: "a", 2: "a", 4: "b"}
    new = plan_rows(balanced([1, 2, 3], 12, 2), [1, 2, 4], 2, labels)
    assert Counter(c.node_id for row in new for c in row if c.state in (U, O)) == {1: 8, 2: 8, 4: 8}
    assert sum(1 for row in new if {c.node_id for c in row if c.state in (U, O)} == {1, 2}) == 4


def test_converged_table_is_a_fixed_point_and_planning_is_deterministic():
    rows = balanced([1, 2, 3, 4, 5], 10, 3)
    assert plan_rows(rows, [5, 4, 3, 2, 1], 3) == rows
    messy = table("1U 2O 7F", "3C 4U", "", "5F 6U 1O")
    assert plan_rows(messy, [1, 2, 3, 4], 2, {1: "x"}, {6}) == plan_rows(
        list(messy), (4, 3, 2, 1), 2, {1: "x", 9: ""}, [6, 6])


def test_invalid_input():
    with pytest.raises(ValueError):
        plan_rows(table("1U"), [1], 0)
    with pytest.raises(ValueError):
        plan_rows(table("1U 1O"), [1], 1)
    assert plan_rows((), [1, 2], 2) == ()


def test_describe_moves():
    old = table("1U 2F 3O", "1U 2U", "1U")
    new = table("1U 2U 4O", "1U 2U", "1F 5O")
    assert describe_moves(old, new) == [
        "partition 0: node 2 UP_TO_DATE, node 4 added (OUT_OF_DATE), node 3 removed",
        "partition 2: node 1 FEEDING, node 5 added (OUT_OF_DATE)",
    ]
    rows = balanced([1, 2, 3], 3, 2)
    assert describe_moves(rows, plan_rows(rows, [1, 2, 3], 2)) == []


def test_large_table_is_fast():
    rows = balanced(range(1, 21), 600, 3)
    start = time.monotonic()
    new = plan_rows(rows, range(1, 22), 3, {n: f"rack{n % 7}" for n in range(1, 22)})
    assert time.monotonic() - start < 30  # about 1 s; a guard against quadratic blow-ups
    check_plan(rows, new, range(1, 22), 3, {n: f"rack{n % 7}" for n in range(1, 22)}, ())


# -- hypothesis: any table --------------------------------------------------------

NODES = list(range(1, 9))
node_ids = st.sampled_from(NODES)
label_maps = st.dictionaries(node_ids, st.sampled_from(["", "a", "b", "c"]))


@st.composite
def rows_strategy(draw, max_partitions=10):
    num_partitions = draw(st.integers(0, max_partitions))
    return tuple(
        tuple(Cell(n, draw(st.sampled_from(list(CellState))))
              for n in draw(st.lists(node_ids, unique=True, max_size=5)))
        for _ in range(num_partitions)
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy(), members=st.lists(node_ids, unique=True), replicas=st.integers(1, 4),
       labels=label_maps, down=st.frozensets(node_ids, max_size=3))
def test_any_plan_is_safe_balanced_and_deterministic(rows, members, replicas, labels, down):
    new = plan_rows(rows, members, replicas, labels, down)
    check_plan(rows, new, members, replicas, labels, down)
    assert plan_rows(list(rows), list(reversed(members)), replicas, dict(labels), set(down)) == new


# -- hypothesis: sequences of events, then convergence ------------------------------


def replicate_all(rows, down):
    """Every OUT_OF_DATE cell on a live node with a live source catches up."""
    return tuple(
        tuple(Cell(c.node_id, U) if c.state == O and c.node_id not in down else c for c in row)
        if live_readable(row, down) else row
        for row in rows
    )


def clean_feeding(rows, width, down):
    """The master drops FEEDING cells once a partition has R' live UP_TO_DATE cells."""
    return tuple(
        tuple(c for c in row if c.state != F)
        if width and sum(1 for c in row if c.state == U and c.node_id not in down) >= width else row
        for row in rows
    )


def fail(rows, node_id, down):
    """``node_id`` goes DOWN: its readable cells are OUT_OF_DATE, unless the last readable."""
    def after(row):
        others = live_readable(row, down | {node_id}) - {node_id}
        return tuple(Cell(c.node_id, O) if c.node_id == node_id and c.state in READABLE_STATES and others
                     else c for c in row)
    return tuple(after(row) for row in rows)


def converge(rows, members, replicas, labels, down):
    """Replicate, clean up, re-plan until re-planning changes nothing."""
    width = min(replicas, len(set(members) - down))
    for _ in range(20):
        settled = clean_feeding(replicate_all(rows, down), width, down)
        rows = plan_rows(settled, members, replicas, labels, down)
        check_plan(settled, rows, members, replicas, labels, down)
        if rows == settled:
            return rows
    raise AssertionError(f"no convergence: {text(rows)}")


EVENTS = ["add", "drop", "fail", "recover", "replicate", "clean"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=rows_strategy(max_partitions=8), replicas=st.integers(1, 3), labels=label_maps,
       down=st.frozensets(node_ids, max_size=3))
def test_events_keep_the_table_safe_and_converge(data, rows, replicas, labels, down):
    down = set(down)
    members = data.draw(st.lists(st.sampled_from([n for n in NODES if n not in down] or [1]),
                                 unique=True, min_size=1), label="members")
    down -= set(members)
    rows = plan_rows(rows, members, replicas, labels, down)
    for _ in range(data.draw(st.integers(0, 12), label="steps")):
        event = data.draw(st.sampled_from(EVENTS), label="event")
        outsiders = [n for n in NODES if n not in members and n not in down]
        if event == "add" and outsiders:
            members.append(data.draw(st.sampled_from(outsiders)))
        elif event == "drop" and len(members) > 1:
            members.remove(data.draw(st.sampled_from(members)))
        elif event == "fail" and len(members) > 1:
            node_id = data.draw(st.sampled_from(members))
            rows = fail(rows, node_id, down)
            members.remove(node_id)
            down.add(node_id)
        elif event == "recover" and down:
            node_id = data.draw(st.sampled_from(sorted(down)))
            down.remove(node_id)
            members.append(node_id)
        elif event == "replicate":
            pending = [(p, c) for p, row in enumerate(rows) for c in row
                       if c.state == O and c.node_id not in down and live_readable(row, down)]
            if pending:
                p, cell = data.draw(st.sampled_from(pending))
                rows = rows[:p] + (tuple(Cell(c.node_id, U) if c == cell else c for c in rows[p]),) + rows[p + 1:]
        elif event == "clean":
            rows = clean_feeding(rows, min(replicas, len(members)), down)
        new = plan_rows(rows, members, replicas, labels, down)
        check_plan(rows, new, members, replicas, labels, down)
        rows = new

    readable_before = [bool(live_readable(row, down)) for row in rows]
    rows = converge(rows, members, replicas, labels, down)
    width = min(replicas, len(members))
    for readable, row in zip(readable_before, rows, strict=True):
        states = {c.node_id: c.state for c in row}
        if readable:  # a live source: converged to R' UP_TO_DATE cells on members
            assert set(states.values()) == {U} and len(states) == width and set(states) <= set(members)
        else:  # nothing to copy from: R' cells wait OUT_OF_DATE, the old cells on DOWN nodes stay
            assert [n for n, s in states.items() if s != F] == [n for n in states if n in members]
            assert all(s == O for n, s in states.items() if n in members)
            assert all(n in down for n, s in states.items() if s == F)
    check_target_shape(rows, set(members), width, labels)
    assert plan_rows(rows, members, replicas, labels, down) == rows
