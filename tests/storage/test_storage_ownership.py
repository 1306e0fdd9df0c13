"""A storage node judges a request by a table at least as new as its caller's."""

from __future__ import annotations

import concurrent.futures

import pytest

from neostore import errors
from neostore.partition_table import Cell, CellState, NodeState, PartitionTable, StorageNodeInfo
from neostore.storage_node.ownership import Ownership

from waiting import wait_until

NODE = 1


def _table(version: int, state: CellState) -> PartitionTable:
    return PartitionTable(
        version=version, num_partitions=1, num_replicas=2,
        rows=((Cell(NODE, state), Cell(2, CellState.UP_TO_DATE)),),
        nodes=(StorageNodeInfo(NODE, "127.0.0.1:1", NodeState.RUNNING),
               StorageNodeInfo(2, "127.0.0.1:2", NodeState.RUNNING)),
    )


def test_a_request_routed_with_a_newer_table_waits_for_it_and_is_judged_by_it() -> None:
    """The case of a transaction committed without this node: the client
    knows its cell is OUT_OF_DATE before the node does.  Judged by its old
    table, the node would lock and check conflicts on data it lacks."""
    ownership = Ownership(NODE)
    ownership.set_table(_table(5, CellState.UP_TO_DATE))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checked = pool.submit(ownership.writable, 0, 6)
        wait_until(lambda: ownership.waiting == 1, "the check to wait for table version 6")
        assert not checked.done()
        ownership.set_table(_table(6, CellState.OUT_OF_DATE))
        assert checked.result(timeout=30) is CellState.OUT_OF_DATE
    assert ownership.waiting == 0
    with pytest.raises(errors.NotOwner, match="partition 0 has no readable cell on storage node 1 "
                                              r"\(its cell is OUT_OF_DATE\)"):
        ownership.readable(0, 6)


def test_an_older_or_equal_routed_version_is_judged_by_the_table_held_at_once() -> None:
    ownership = Ownership(NODE, table_wait=0)
    ownership.set_table(_table(5, CellState.UP_TO_DATE))
    assert ownership.readable(0, 5) is CellState.UP_TO_DATE
    assert ownership.readable(0, 2) is CellState.UP_TO_DATE
    assert ownership.readable(0) is CellState.UP_TO_DATE  # 0: a caller that names no version


def test_a_table_that_does_not_come_makes_the_request_unavailable() -> None:
    ownership = Ownership(NODE, table_wait=0.01)
    ownership.set_table(_table(5, CellState.UP_TO_DATE))
    with pytest.raises(errors.Unavailable, match="storage node 1 holds partition table version 5, older than "
                                                 "version 9 the request was routed with"):
        ownership.writable(0, 9)
    assert ownership.waiting == 0


def test_a_node_without_a_table_says_so_at_once() -> None:
    """Registering: the caller goes to another replica rather than wait."""
    ownership = Ownership(NODE)
    with pytest.raises(errors.Unavailable, match="storage node 1 has no partition table yet"):
        ownership.readable(0, 3)
