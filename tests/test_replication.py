"""Catch-up replication and the consistency check, on a cluster of threads.

A storage node that was away while transactions committed comes back with
OUT_OF_DATE cells; it copies what it missed from a readable replica, chunk
by chunk, skipping chunks whose checksums match, and becomes UP_TO_DATE.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import threading
from collections.abc import Iterator

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.tests.MinPO import MinPO
from ZODB.tests.StorageTestBase import zodb_pickle

from neostore import rpc
from neostore.ids import MAX_TID, ZERO_TID
from neostore.partition_table import CellState, NodeState
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc
from neostore.storage_node import layout
from neostore.storage_node.database import Database
from neostore.storage_node.node import StorageConfig, StorageNode
from neostore.storage_node.ranges import range_digest

from harness import ThreadCluster
from waiting import wait_until


def admin(cluster: ThreadCluster) -> master_pb2_grpc.AdminStub:
    return master_pb2_grpc.AdminStub(rpc.make_channel(cluster.rpc, cluster.master.address))


def node_cells(cluster: ThreadCluster, node_id: int, state: CellState) -> list[int]:
    return cluster.master.state.table.partitions_of_node(node_id, [state])


def take_down(cluster: ThreadCluster, index: int) -> int:
    """Stop storage ``index`` and wait until the master marks it DOWN; its node id."""
    away = cluster.storages[index]
    away.stop()
    wait_until(lambda: cluster.master.state.table.node(away.node_id).state == NodeState.DOWN, what="node down",
               timeout=60)
    return away.node_id


def restart(cluster: ThreadCluster, index: int, **changes: object) -> StorageNode:
    """Start storage ``index`` again on its data (``changes`` to its config)."""
    config = StorageConfig(rpc=cluster.rpc, masters=cluster.masters,
                           data_dir=os.path.join(cluster.data_dir, f"storage-{index}"))
    node = StorageNode(dataclasses.replace(config, **changes))
    node.start()
    cluster.storages[index] = node
    return node


def commit_values(db: ZODB.DB, name: str, count: int, size: int = 100) -> None:
    for i in range(count):
        with db.transaction() as conn:
            conn.root()[name][i % 50]["value"] = (i, os.urandom(size))  # incompressible


def assert_replicas_identical(cluster: ThreadCluster) -> None:
    """Every partition's UP_TO_DATE replicas hold the same records, byte for
    byte, once every decision is applied (published at the decision, a
    transaction reaches its participants' disks a moment later)."""
    wait_until(lambda: not cluster.master.state.pending_decisions, what="every decision applied")
    state = cluster.master.state
    by_id = {node.node_id: node for node in cluster.storages}
    for partition, row in enumerate(state.table.rows):
        holders = [by_id[c.node_id] for c in row if c.state == CellState.UP_TO_DATE]
        assert len(holders) == state.num_replicas, f"partition {partition}: {row}"
        for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
            digests = {range_digest(node.database.scan_range(partition, kind)[0]) for node in holders}
            assert len(digests) == 1, f"partition {partition} kind {kind} differs: {digests}"


class ReplicatorHold:
    """Holds the replicator after its ``after``-th copied chunk until
    ``release()``: a test then stops a node or a source in the middle of a
    walk (not between two cells, nor after the last), whatever the pace."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
        self.inserted: list[int] = []
        self._gate = threading.Event()
        insert_replicated = Database.insert_replicated

        def held_insert(database: Database, *args: object, **kwargs: object) -> int:
            added = insert_replicated(database, *args, **kwargs)
            self.inserted.append(added)
            if len(self.inserted) == after:
                self._gate.wait(60)
            return added

        monkeypatch.setattr(Database, "insert_replicated", held_insert)
        self._after = after

    def wait_held(self) -> None:
        wait_until(lambda: len(self.inserted) >= self._after, what="replication under way", timeout=60)

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2) as running:
        yield running


@pytest.fixture
def db(cluster: ThreadCluster) -> Iterator[ZODB.DB]:
    database = ZODB.DB(cluster.client())
    with database.transaction() as conn:
        conn.root()["accounts"] = PersistentMapping(
            {i: PersistentMapping(value=(0, b"")) for i in range(50)})
    yield database
    database.close()


def test_a_node_away_while_transactions_commit_catches_up(cluster: ThreadCluster, db: ZODB.DB) -> None:
    with db.transaction() as conn:  # objects it holds already and that do not change: skipped
        conn.root()["archive"] = PersistentMapping({i: PersistentMapping(v=i) for i in range(300)})
    node_id = take_down(cluster, 0)
    commit_values(db, "accounts", 200, size=2000)
    missed = node_cells(cluster, node_id, CellState.OUT_OF_DATE)
    assert missed, "the node's cells should be OUT_OF_DATE after missing commits"
    back = restart(cluster, 0, replication_chunk_records=10)
    wait_until(lambda: not node_cells(cluster, node_id, CellState.OUT_OF_DATE), what="catch-up", timeout=60)
    totals = back.replicator.totals
    # (the master marks a cell before its answer reaches the replicator)
    wait_until(lambda: totals["cells_done"] == len(missed), what="every cell counted", timeout=60)
    assert totals["chunks_copied"] > 0 and totals["records_copied"] > 0
    assert totals["chunks_skipped"] > 0, totals  # what it held before leaving was not copied again
    assert_replicas_identical(cluster)
    report = admin(cluster).Check(master_pb2.CheckRequest(), timeout=60)
    assert all(p.consistent and len(p.node_ids) == 2 for p in report.partitions), report
    with db.transaction() as conn:
        assert [conn.root()["accounts"][i]["value"][0] for i in range(50)] == [150 + i for i in range(50)]


def test_catch_up_goes_on_while_clients_commit(cluster: ThreadCluster, db: ZODB.DB) -> None:
    node_id = take_down(cluster, 1)
    commit_values(db, "accounts", 100, size=1000)
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            conn = db.open()
            i = 0
            while not stop.is_set():
                conn.root()["accounts"][i % 50]["value"] = (i, b"w")
                transaction.commit()
                i += 1
            conn.close()
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        restart(cluster, 1, replication_chunk_records=7)
        wait_until(lambda: not node_cells(cluster, node_id, CellState.OUT_OF_DATE), what="catch-up under load",
                   timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    wait_until(lambda: not cluster.master.state.pending_decisions, what="every decision applied", timeout=60)
    assert_replicas_identical(cluster)


def test_replication_resumes_after_the_target_restarts(
    cluster: ThreadCluster, db: ZODB.DB, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_id = take_down(cluster, 2)
    commit_values(db, "accounts", 300, size=500)
    hold = ReplicatorHold(monkeypatch, after=5)
    node = restart(cluster, 2, replication_chunk_records=3)
    hold.wait_held()
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    wait_until(lambda: node.replicator.stopping, what="the replicator told to stop", timeout=60)
    hold.release()
    stopper.join(30)
    monkeypatch.undo()
    first_copied = node.replicator.totals["records_copied"]
    database = Database(os.path.join(cluster.data_dir, "storage-2"), cluster.name)
    try:
        positions = [database.replication_position(p) for p in range(6)]
    finally:
        database.close()
    assert any(position is not None for position in positions), "no replication position was stored"
    node = restart(cluster, 2, replication_chunk_records=3)
    wait_until(lambda: not node_cells(cluster, node_id, CellState.OUT_OF_DATE), what="catch-up after restart",
               timeout=60)
    assert first_copied > 0
    assert_replicas_identical(cluster)


def test_check_marks_the_replica_that_differs_from_the_majority(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=3, num_replicas=3) as cluster:
        database = ZODB.DB(cluster.client())
        with database.transaction() as conn:
            conn.root()["x"] = PersistentMapping(v=1)
        wait_until(lambda: not cluster.master.state.pending_decisions, what="applied", timeout=60)
        stub = admin(cluster)
        assert all(p.consistent for p in stub.Check(master_pb2.CheckRequest(), timeout=60).partitions)
        # Damage one replica of partition 0 behind the cluster's back: a record it lacks.
        victim = cluster.storages[1]
        records, _ = victim.database.scan_range(0, layout.RANGE_OBJECTS)
        assert records
        key, _ = records[0]
        with victim.database._write() as txn:  # noqa: SLF001 - simulating disk damage
            txn.delete(layout.range_prefix(layout.RANGE_OBJECTS, 0) + key, db=victim.database._objects)
        report = stub.Check(master_pb2.CheckRequest(partitions=[0]), timeout=60)
        (result,) = report.partitions
        assert not result.consistent and list(result.corrupted) == [victim.node_id], result
        assert "objects" in result.detail
        assert cluster.master.state.table.cell_state(0, victim.node_id) == CellState.CORRUPTED
        # Asking about a partition that does not exist names it.
        with pytest.raises(Exception, match="partition 7 does not exist"):
            rpc.call(stub.Check, master_pb2.CheckRequest(partitions=[7]), timeout=10)
        database.close()


def test_a_cell_that_becomes_writable_between_stores_and_vote_gets_the_whole_transaction(
    tmp_path: pathlib.Path,
) -> None:
    """Found by the rebalancing test under load: a transaction stored its
    objects while partition 0 had one cell; before its vote a second cell
    became UP_TO_DATE.  The client gave the new cell the metadata only and
    counted its vote for the partition, so the master kept it UP_TO_DATE
    without the objects (a stale read, replicas that differ).  Now every
    write goes out at vote, to the cells the table names then."""
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=1, num_replicas=1) as cluster:
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["x"] = PersistentMapping(v=1)
        storage = cluster.client()
        meta = TransactionMetaData()
        storage.tpc_begin(meta)
        oid = storage.new_oid()
        storage.store(oid, ZERO_TID, zodb_pickle(MinPO(7)), "", meta)
        (first,) = [s.node_id for s in cluster.storages if cluster.master.state.table.cell_state(0, s.node_id)]
        stub = admin(cluster)
        rpc.call(stub.Tweak, master_pb2.TweakRequest(replicas=2), timeout=30)
        wait_until(lambda: all(c.state == CellState.UP_TO_DATE for c in cluster.master.state.table.rows[0])
                   and len(cluster.master.state.table.rows[0]) == 2, what="a second UP_TO_DATE cell", timeout=60)
        version = cluster.master.state.table.version
        wait_until(lambda: storage._cluster.table.version >= version, what="the client to see it", timeout=60)
        storage.tpc_vote(meta)
        tid = storage.tpc_finish(meta)
        wait_until(lambda: not cluster.master.state.pending_decisions, what="applied", timeout=60)
        for node in cluster.storages:
            result = node.database.load_before(0, oid, MAX_TID)
            assert result.serial == tid, f"storage node {node.node_id} lacks the object (first: {first})"
        assert all(p.consistent for p in stub.Check(master_pb2.CheckRequest(), timeout=60).partitions)
        db.close()


def test_replication_progress_is_visible_through_the_admin_service(cluster: ThreadCluster, db: ZODB.DB) -> None:
    stub = admin(cluster)
    assert list(stub.GetReplication(common_pb2.Empty(), timeout=10).cells) == []
    node_id = take_down(cluster, 0)
    commit_values(db, "accounts", 300, size=20_000)
    seen: list[master_pb2.ReplicationProgress] = []
    node = restart(cluster, 0, replication_chunk_records=1, replication_report_interval=0.01)

    def watch() -> bool:
        seen.extend(stub.GetReplication(common_pb2.Empty(), timeout=10).cells)
        return not node_cells(cluster, node_id, CellState.OUT_OF_DATE)

    wait_until(watch, what="catch-up", timeout=60)
    wait_until(lambda: node.replicator.totals["cells_done"] > 0, what="the replicator's count", timeout=60)
    assert seen, "no progress was reported while replicating"
    assert all(p.node_id == node_id and not p.done for p in seen), seen[:3]
    assert any(p.bytes_done > 0 and p.rate > 0 and p.bytes_left > 0 for p in seen), seen[:3]


def test_neoctl_wait_status_and_check_on_a_node_catching_up(
    cluster: ThreadCluster, db: ZODB.DB, capsys: pytest.CaptureFixture[str]
) -> None:
    from neostore import neoctl

    base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
    node_id = take_down(cluster, 0)
    commit_values(db, "accounts", 100, size=5000)
    assert neoctl.main([*base, "status"]) == 0
    out = capsys.readouterr().out
    assert f"node {node_id:>3} OUT_OF_DATE" in out
    assert neoctl.main([*base, "wait", "--timeout", "0"]) == neoctl.EXIT_TIMEOUT
    capsys.readouterr()
    restart(cluster, 0)
    assert neoctl.main([*base, "wait", "--timeout", "60", "--quiet"]) == 0
    assert "every cell is UP_TO_DATE" in capsys.readouterr().out
    assert neoctl.main([*base, "--json", "check"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all(row["result"] == "ok" and row["records"] > 0 for row in rows), rows
    assert neoctl.main([*base, "check", "99"]) == neoctl.EXIT_REFUSED
    assert "partition 99 does not exist" in capsys.readouterr().err


def test_replication_survives_the_loss_of_its_source(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=3, num_replicas=3) as cluster:
        database = ZODB.DB(cluster.client())
        with database.transaction() as conn:
            conn.root()["accounts"] = PersistentMapping(
                {i: PersistentMapping(value=(0, b"")) for i in range(50)})
        node_id = take_down(cluster, 0)
        commit_values(database, "accounts", 300, size=2000)
        hold = ReplicatorHold(monkeypatch, after=3)
        node = restart(cluster, 0, replication_chunk_records=2)
        hold.wait_held()
        current = node.replicator.current
        assert current is not None
        source = next(s for s in cluster.storages if s.node_id == current.source_node_id)
        source.stop()  # the source dies in the middle of the walk
        hold.release()
        wait_until(lambda: not node_cells(cluster, node_id, CellState.OUT_OF_DATE),
                   what="catch-up from the other source", timeout=60)
        wait_until(lambda: not cluster.master.state.pending_decisions, what="every decision applied")
        survivors = [s for s in cluster.storages if s is not source]
        state = cluster.master.state
        for partition in range(3):
            holders = [s for s in survivors if state.table.cell_state(partition, s.node_id) == CellState.UP_TO_DATE]
            assert len(holders) == 2, (partition, state.table.rows[partition])
            for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
                assert len({range_digest(s.database.scan_range(partition, kind)[0]) for s in holders}) == 1
        with database.transaction() as conn:
            assert [conn.root()["accounts"][i]["value"][0] for i in range(50)] == [250 + i for i in range(50)]
        database.close()


def test_iterating_the_history_goes_on_when_a_replica_it_reads_from_goes_away(
        cluster: ThreadCluster, db: ZODB.DB, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction iterator (verify, zodbconvert from neostore) reads
    each partition's transactions a page at a time from one replica; when
    that replica stops serving them mid-way, the rest comes from the others."""
    from neostore.client import history

    commit_values(db, "accounts", 60)
    storage = db.storage
    everything = [(record.tid, sorted(r.oid for r in record)) for record in storage.iterator()]
    assert len(everything) == 62  # the root, the accounts, 60 changes
    monkeypatch.setattr(history, "PAGE_SIZE", 4)  # many pages: the node goes away between two of them
    iterator = storage.iterator()
    seen = [(record.tid, sorted(r.oid for r in record)) for record in itertools.islice(iterator, 5)]
    cluster.storages[0].stop()  # every node serves some partitions' pages (6 partitions over 3 nodes)
    seen += [(record.tid, sorted(r.oid for r in record)) for record in iterator]
    assert seen == everything
