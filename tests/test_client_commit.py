"""The client's vote plan: which node may vote for which partition.

A vote for a partition tells the master that the node's cell holds the whole
transaction there; a node that took only part of it must not vote for it
(the master then marks its cell OUT_OF_DATE, and it catches up).
"""

from __future__ import annotations

from neostore.client.commit import ObjectWrite, TransactionContext, _whole_partitions
from neostore.ids import ZERO_TID, p64
from neostore.partition_table import (
    Cell,
    CellState,
    NodeState,
    PartitionTable,
    StorageNodeInfo,
)

A, B, C = 1, 2, 3
META_PARTITION = 0


def table() -> PartitionTable:
    """Two partitions; every node holds a writable cell of both."""
    row = tuple(Cell(n, CellState.UP_TO_DATE) for n in (A, B, C))
    nodes = tuple(StorageNodeInfo(n, f"127.0.0.1:{n}", NodeState.RUNNING) for n in (A, B, C))
    return PartitionTable(1, 2, 3, (row, row), nodes)


def write(oid: int) -> ObjectWrite:
    return ObjectWrite(p64(oid), ZERO_TID, b"data")


def context(*writes: ObjectWrite) -> TransactionContext:
    made = TransactionContext(ttid=p64(10), meta=None)
    made.writes = {w.oid: w for w in writes}
    return made


def took(made: TransactionContext, node_id: int, *writes: ObjectWrite) -> None:
    made.stored_on.setdefault(node_id, set()).update(table().partition_of(w.oid) for w in writes)
    made.taken.setdefault(node_id, {}).update((w.oid, w) for w in writes)


def test_only_nodes_that_took_every_write_of_a_partition_vote_for_it() -> None:
    first, second, other = write(2), write(4), write(3)  # partitions 0, 0, 1
    made = context(first, second, other)
    took(made, A, first, second, other)
    took(made, B, first, other)  # the table changed between two stores: B lacks the second
    took(made, C, second)
    targets = _whole_partitions(made, table(), META_PARTITION, [A, B, C])
    assert targets == {A: {0, 1}, B: {1}}


def test_a_node_that_lacks_the_writes_of_the_ttid_partition_gets_no_metadata_vote() -> None:
    """The failure found under rebalancing: C became a writable cell of the
    TTID's partition after the stores; the metadata alone is not the
    transaction."""
    first = write(2)
    made = context(first)
    took(made, A, first)
    assert _whole_partitions(made, table(), META_PARTITION, [A, C]) == {A: {0}}


def test_metadata_alone_is_the_whole_transaction_of_a_partition_without_writes() -> None:
    other = write(3)  # partition 1
    made = context(other)
    took(made, A, other)
    assert _whole_partitions(made, table(), META_PARTITION, [B, C]) == {A: {1}, B: {0}, C: {0}}


def test_a_write_replaced_by_its_conflict_resolution_must_be_taken_again() -> None:
    first = write(2)
    made = context(first)
    took(made, A, first)
    took(made, B, first)
    resolved = ObjectWrite(first.oid, p64(5), b"resolved")
    made.writes[first.oid] = resolved
    took(made, A, resolved)
    assert _whole_partitions(made, table(), META_PARTITION, [A, B]) == {A: {0}}


def test_a_node_no_longer_writable_for_the_ttid_partition_does_not_vote_for_it() -> None:
    first = write(2)
    made = context(first)
    took(made, A, first)
    took(made, B, first)
    assert _whole_partitions(made, table(), META_PARTITION, [A]) == {A: {0}}
