"""The partition table: placement invariants, encoding, formatting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from neostore.partition_table import (
    CellState,
    NodeState,
    PartitionTable,
    StorageNodeInfo,
    format_table,
    initial_rows,
)


def _table(node_ids: list[int], num_partitions: int, num_replicas: int) -> PartitionTable:
    rows = initial_rows(node_ids, num_partitions, num_replicas)
    nodes = tuple(StorageNodeInfo(n, f"127.0.0.1:{1000 + n}", NodeState.RUNNING) for n in sorted(node_ids))
    return PartitionTable(1, num_partitions, num_replicas, tuple(map(tuple, rows)), nodes)


@given(
    node_ids=st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=20),
    num_partitions=st.integers(min_value=1, max_value=500),
    num_replicas=st.integers(min_value=1, max_value=5),
)
def test_initial_placement_is_balanced_and_never_doubles_a_replica(
    node_ids: set[int], num_partitions: int, num_replicas: int
) -> None:
    table = _table(sorted(node_ids), num_partitions, num_replicas)
    replicas = min(num_replicas, len(node_ids))
    per_node = {n: 0 for n in node_ids}
    for partition in range(num_partitions):
        cells = table.cells(partition)
        assert len(cells) == replicas
        assert len({c.node_id for c in cells}) == replicas  # never twice on one node
        assert all(c.state is CellState.UP_TO_DATE for c in cells)
        for cell in cells:
            per_node[cell.node_id] += 1
    assert max(per_node.values()) - min(per_node.values()) <= 1
    assert table.is_operational()
    assert PartitionTable.from_proto(table.to_proto()) == table


def test_routing_skips_nodes_that_are_not_running() -> None:
    table = _table([1, 2, 3], 12, 2)
    partition = 0
    first, second = (c.node_id for c in table.cells(partition))
    down = table.with_node(StorageNodeInfo(first, "x", NodeState.DOWN))
    assert down.readable_nodes(partition) == [second]
    assert down.writable_nodes(partition) == [second]
    assert down.version == table.version + 1


def test_out_of_date_cells_take_writes_but_serve_no_reads() -> None:
    table = _table([1, 2], 4, 2)
    rows = [list(row) for row in table.rows]
    rows[0][0] = type(rows[0][0])(rows[0][0].node_id, CellState.OUT_OF_DATE)
    changed = table.with_rows(rows)
    node = rows[0][0].node_id
    assert node not in changed.readable_nodes(0)
    assert node in changed.writable_nodes(0)


def test_partition_of_is_oid_modulo_partitions() -> None:
    table = _table([1, 2, 3], 12, 2)
    assert table.partition_of((25).to_bytes(8, "big")) == 1


def test_format_table_shows_a_letter_per_cell() -> None:
    text = format_table(_table([1, 2, 3], 3, 2))
    lines = text.splitlines()
    assert "3 partitions, 2 replicas" in lines[0]
    assert lines[2].split("|")[1].split() == ["U", "U", "."]
