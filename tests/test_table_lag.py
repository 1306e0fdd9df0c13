"""A storage node whose partition table lags its caller's (in-process cluster).

The masters send each new table to the storage nodes and to the clients on
separate streams.  A transaction committed without a node (unreachable for
it: e.g. a node just restarted on a new port, the client still routing to
the old one) makes that node's cells OUT_OF_DATE; the committing client
learns it with its Finish answer and may store its next transaction on the
node before the node's own session brought that table.  This is what made
``test_no_committed_transaction_is_lost_when_a_storage_node_is_killed`` fail
once in CI with a ConflictError whose "committed" serial was older than the
one the transaction read.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading
from typing import Any

import ZODB

from neostore import errors
from neostore.partition_table import CellState, PartitionTable

from harness import ThreadCluster
from waiting import wait_until


class _Unreachable:
    """A storage stub whose every call fails as an unreachable node's."""

    def __init__(self, node_id: int) -> None:
        self._node_id = node_id

    def __getattr__(self, name: str) -> Any:
        def call(request: Any, timeout: float | None = None) -> Any:
            raise errors.Unavailable(f"storage node {self._node_id} unreachable (made so by the test)")
        return call


def test_a_node_behind_its_callers_table_waits_for_it_instead_of_reporting_a_false_conflict(
        tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=4, num_replicas=2) as cluster:
        storage = cluster.client()
        db = ZODB.DB(storage)
        with db.transaction() as conn:
            conn.root()["n"] = 0  # both nodes hold every partition
        lagging = cluster.storages[0]
        lagging_id = lagging.node_id

        # The lagging node's session tables are held back until released.
        held: list[PartitionTable] = []
        released = threading.Event()
        adopt = lagging.set_partition_table

        def held_back(table: PartitionTable) -> bool:
            if not released.is_set():
                held.append(table)
                return False
            return adopt(table)

        lagging.set_partition_table = held_back  # type: ignore[method-assign]

        # One transaction without the lagging node: the master marks its cell OUT_OF_DATE.
        connection = storage._cluster
        reach = connection.storage_stub

        def unreachable(node_id: int, table: PartitionTable | None = None) -> tuple[Any, str]:
            if node_id == lagging_id:
                return _Unreachable(node_id), f"storage node {node_id}"
            return reach(node_id, table)

        connection.storage_stub = unreachable
        with db.transaction() as conn:
            conn.root()["n"] = 1
        connection.storage_stub = reach
        newest = connection.table
        assert CellState.OUT_OF_DATE in {cell.state for row in newest.rows for cell in row
                                         if cell.node_id == lagging_id}
        lagging_table = lagging.partition_table
        assert lagging_table is not None and lagging_table.version < newest.version

        # The next transaction reaches the lagging node with the newer table:
        # the node waits for it rather than judge the cell by its old one.
        def commit() -> None:
            with db.transaction() as conn:
                conn.root()["n"] = 2

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            committing = pool.submit(commit)
            wait_until(lambda: lagging.awaiting_table or committing.done(),
                       "the lagging node to wait for the client's table")
            assert not committing.done(), committing.exception()
            released.set()
            for table in held:
                adopt(table)
            committing.result(timeout=60)  # a ConflictError here is the bug

        reader = ZODB.DB(cluster.client(server_sync=True))
        with reader.transaction() as conn:
            assert conn.root()["n"] == 2
        reader.close()
        db.close()
