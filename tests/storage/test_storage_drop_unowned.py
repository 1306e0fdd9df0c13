"""A storage node drops the data of partitions it holds no cell of any more,
and never what a cell given back to it took meanwhile."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from neostore import rpc
from neostore.ids import p64
from neostore.partition_table import (
    Cell,
    CellState,
    NodeState,
    PartitionTable,
    StorageNodeInfo,
)
from neostore.records import Record
from neostore.storage_node import layout
from neostore.storage_node.database import Database, PendingObject
from neostore.storage_node.layout import StoredObject
from neostore.storage_node.ownership import Ownership
from neostore.storage_node.replication import Replicator

CLUSTER = "drop-cluster"
NODE, OTHER = 1, 2
NUM_PARTITIONS = 3


def table(version: int, held: set[int]) -> PartitionTable:
    """NODE holds the cells of ``held`` (UP_TO_DATE); OTHER holds every cell."""
    rows = tuple(
        ((Cell(NODE, CellState.UP_TO_DATE),) if p in held else ()) + (Cell(OTHER, CellState.UP_TO_DATE),)
        for p in range(NUM_PARTITIONS))
    nodes = tuple(StorageNodeInfo(n, f"127.0.0.1:{1000 + n}", NodeState.RUNNING) for n in (NODE, OTHER))
    return PartitionTable(version, NUM_PARTITIONS, 2, rows, nodes)


@pytest.fixture
def database(tmp_path: pathlib.Path) -> Iterator[Database]:
    opened = Database(str(tmp_path / "data"), CLUSTER, map_size=16 * 2**20)
    for partition in range(NUM_PARTITIONS):
        for index in range(4):
            oid, ttid = p64(partition + NUM_PARTITIONS * index), p64(10**6 + 10 * partition + index)
            stored = StoredObject.from_record(Record.pack(b"data", compress=False))
            opened.write_pending(ttid, [PendingObject(partition, oid, stored)])
            assert opened.commit(ttid, p64(100 + 10 * partition + index))
    yield opened
    opened.close()


def replicator(database: Database, ownership: Ownership) -> Replicator:
    def no_master(method: str, request: Any) -> Any:
        raise AssertionError(f"dropping cells asks the master nothing ({method})")
    return Replicator(database, ownership, rpc.RpcConfig(CLUSTER), no_master)


def test_partitions_moved_away_are_dropped_and_held_ones_kept(database: Database) -> None:
    ownership = Ownership(NODE)
    ownership.set_table(table(2, held={1}))
    assert replicator(database, ownership).drop_unowned() == [0, 2]
    assert [database.holds_partition(p) for p in range(NUM_PARTITIONS)] == [False, True, False]


def test_a_partition_given_back_during_its_drop_keeps_what_it_holds(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race that lost committed data: the drop began by a table where
    partition 0 had moved away; before its first delete a newer table gave
    partition 0 back, and the node took commits of it.  The drop must see
    the newer table (it asks inside each write transaction) and stop."""
    ownership = Ownership(NODE)
    ownership.set_table(table(2, held=set()))
    real_drop = database.drop_partition

    def drop_as_the_table_changes(partition: int, **kwargs: Any) -> int:
        if partition == 0:
            ownership.set_table(table(3, held={0}))
        return real_drop(partition, **kwargs)

    monkeypatch.setattr(database, "drop_partition", drop_as_the_table_changes)
    assert replicator(database, ownership).drop_unowned() == [1, 2]
    assert len(database.scan_range(0, layout.RANGE_OBJECTS)[0]) == 4
    assert database.stats([0]).object_count == 4
