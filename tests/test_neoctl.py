"""neoctl commands against a real master and storage nodes (threads of this process)."""

from __future__ import annotations

import pathlib

import pytest

from neostore import neoctl
from neostore.protocol import master_pb2
from neostore.storage_node.node import StorageNode

from harness import unstarted_cluster
from waiting import wait_until


def test_start_creates_the_table_of_a_cluster_created_empty(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with unstarted_cluster(str(tmp_path), "empty", num_partitions=4) as (master, _):
        base = ["--masters", master.address, "--cluster", "empty"]
        assert neoctl.main([*base, "print", "cluster"]) == 0
        assert "EMPTY" in capsys.readouterr().out
        assert neoctl.main([*base, "start"]) == 0
        assert "4 partitions, 2 replicas" in capsys.readouterr().out
        assert master.state.status == master_pb2.ClusterInfo.RUNNING
        assert neoctl.main([*base, "start"]) == 0
        assert "already running" in capsys.readouterr().out


# -- maintenance: set cluster, kill, check --repair, print node -------------------------


def test_set_cluster_stopping_refuses_new_transactions_until_running(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping
    from ZODB.POSException import ReadOnlyError

    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=4, num_replicas=2) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping(value=1)
        assert neoctl.main([*base, "set", "cluster", "STOPPING"]) == 0
        assert "STOPPING: new transactions are refused" in capsys.readouterr().out
        assert neoctl.main([*base, "--json", "print", "cluster"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "STOPPING"
        conn = db.open()
        conn.root()["data"]["value"] = 2
        with pytest.raises(ReadOnlyError, match="STOPPING"):
            transaction.commit()
        transaction.abort()
        conn.close()
        # Reads go on, and a new client connects to a STOPPING cluster.
        other = ZODB.DB(cluster.client())
        with other.transaction() as conn:
            assert conn.root()["data"]["value"] == 1
        other.close()
        assert neoctl.main([*base, "set", "cluster", "RUNNING"]) == 0
        assert "is RUNNING" in capsys.readouterr().out
        with db.transaction() as conn:
            conn.root()["data"]["value"] = 3
        with db.transaction() as conn:
            assert conn.root()["data"]["value"] == 3
        db.close()


def test_kill_takes_a_node_down_and_refuses_to_orphan_a_partition(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    import ZODB
    from persistent.mapping import PersistentMapping

    from neostore.partition_table import CellState, NodeState

    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping(value=0)
        victim = cluster.storages[0]
        assert neoctl.main([*base, "kill", "99"]) == neoctl.EXIT_REFUSED
        assert "storage node 99 is not known" in capsys.readouterr().err
        assert neoctl.main([*base, "kill", str(victim.node_id)]) == 0
        assert f"storage node {victim.node_id} was told to stop" in capsys.readouterr().out
        table = cluster.master.state.table
        assert table.node(victim.node_id).state == NodeState.DOWN
        assert not table.partitions_of_node(victim.node_id, [CellState.UP_TO_DATE])
        # The node was told why it stops (it reads the order on its own thread).
        wait_until(lambda: "neoctl kill" in victim.shutdown_reason, "the node told why it stops", timeout=60)
        # Writes and reads go on with one replica per partition.
        with db.transaction() as conn:
            conn.root()["data"]["value"] = 1
        # Now each partition the second node holds has its only readable copy there.
        second = cluster.storages[1]
        assert neoctl.main([*base, "kill", str(second.node_id)]) == neoctl.EXIT_REFUSED
        assert "only readable replica" in capsys.readouterr().err
        assert cluster.master.state.table.node(second.node_id).state == NodeState.RUNNING
        # Restarted, the killed node rejoins and catches up.
        victim.stop()
        config = dataclasses.replace(victim._config)  # noqa: SLF001 - same data dir, same settings
        node = StorageNode(config)
        node.start()
        cluster.storages[0] = node
        assert neoctl.main([*base, "wait", "--timeout", "60", "--quiet"]) == 0
        capsys.readouterr()
        with db.transaction() as conn:
            assert conn.root()["data"]["value"] == 1
        db.close()


def test_check_repair_rebuilds_a_corrupted_replica_and_print_node_shows_sizes(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import ZODB
    from persistent.mapping import PersistentMapping

    from neostore.partition_table import CellState
    from neostore.storage_node import layout
    from neostore.storage_node.ranges import range_digest

    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=3, num_replicas=3) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping({i: PersistentMapping(v=i) for i in range(30)})
        wait_until(lambda: not cluster.master.state.pending_decisions, "decisions applied", timeout=60)
        # Damage one replica behind the cluster's back: a record lost, another one altered.
        victim = cluster.storages[1]
        records, _ = victim.database.scan_range(0, layout.RANGE_OBJECTS)
        assert len(records) >= 2
        prefix = layout.range_prefix(layout.RANGE_OBJECTS, 0)
        with victim.database._write() as txn:  # noqa: SLF001 - simulating disk damage
            txn.delete(prefix + records[0][0], db=victim.database._objects)  # noqa: SLF001
        assert neoctl.main([*base, "check", "--repair", "0"]) == neoctl.EXIT_INCONSISTENT
        out = capsys.readouterr().out
        assert "DIFFERS" in out and "rebuilding CORRUPTED cells" in out, out
        wait_until(lambda: cluster.master.state.table.cell_state(0, victim.node_id) == CellState.UP_TO_DATE,
                   "the rebuilt cell UP_TO_DATE", timeout=60)
        for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
            digests = {range_digest(s.database.scan_range(0, kind)[0]) for s in cluster.storages}
            assert len(digests) == 1, kind
        assert neoctl.main([*base, "check"]) == 0
        assert "3 of 3 partitions consistent" in capsys.readouterr().out
        # The rebuilt node serves reads again, and writes go on.
        with db.transaction() as conn:
            assert sum(conn.root()["data"][i]["v"] for i in range(30)) == sum(range(30))
            conn.root()["data"][0]["v"] = 100
        assert neoctl.main([*base, "--json", "print", "node"]) == 0
        nodes = json.loads(capsys.readouterr().out)
        assert len(nodes) == 3 and all(n["objects"] >= 31 and n["size_bytes"] > 0 for n in nodes), nodes
        assert neoctl.main([*base, "print", "node"]) == 0
        out = capsys.readouterr().out
        header, *lines = out.splitlines()
        assert header.split() == ["NODE_ID", "ADDRESS", "STATE", "LABEL", "CELLS", "OBJECTS", "SIZE"], out
        assert len(lines) == 3 and all(line.rstrip().endswith(("B", "KB", "MB")) for line in lines), out
        db.close()


def test_truncate_rolls_the_database_back_everywhere_even_on_a_node_that_was_down(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    import ZODB
    from persistent.mapping import PersistentMapping

    from neostore.partition_table import NodeState
    from neostore.storage_node import layout

    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        tids = []
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping(value=0)
        for value in range(1, 6):
            with db.transaction() as conn:
                conn.root()["data"]["value"] = value
                conn.root()[f"key{value}"] = value
            tids.append(db.lastTransaction())
        keep = tids[2]  # value 3
        old_last = db.lastTransaction()
        # A node away during the truncation catches up with it when it rejoins.
        away = cluster.storages[2]
        away.stop()
        wait_until(lambda: cluster.master.state.table.node(away.node_id).state == NodeState.DOWN, "node down",
                   timeout=60)
        assert neoctl.main([*base, "truncate", layout.ZERO_ID.hex()[:4]]) == neoctl.EXIT_USAGE  # stdin not a tty
        assert "--yes" in capsys.readouterr().err
        assert neoctl.main([*base, "truncate", "not-a-tid", "--yes"]) == neoctl.EXIT_USAGE
        assert "not a TID" in capsys.readouterr().err
        assert neoctl.main([*base, "truncate", old_last.hex(), "--yes"]) == neoctl.EXIT_REFUSED
        assert "nothing to truncate" in capsys.readouterr().err
        assert neoctl.main([*base, "truncate", "0x" + keep.hex(), "--yes"]) == 0
        out = capsys.readouterr().out
        assert "truncated after" in out and f"storage node(s) {away.node_id} not running now" in out, out
        state = cluster.master.state
        assert not state.stopping and state.last_tid > old_last
        # The client that was connected resets its cache (once its stream
        # brings the truncation) and sees value 3.
        wait_until(lambda: db.lastTransaction() >= state.last_tid, "the client's stream brought the truncation",
                   timeout=60)
        db.storage.sync()
        with db.transaction() as conn:
            root = conn.root()
            assert root["data"]["value"] == 3
            assert sorted(k for k in root if k.startswith("key")) == ["key1", "key2", "key3"]
        assert db.lastTransaction() > old_last
        fresh = ZODB.DB(cluster.client())
        with fresh.transaction() as conn:
            assert conn.root()["data"]["value"] == 3
        assert [entry["id"] for entry in fresh.undoLog(0, 20)][:1] == [keep]
        fresh.close()
        # The node that was down truncates when it rejoins, then catches up.
        node = StorageNode(dataclasses.replace(away._config))  # noqa: SLF001 - same data dir
        node.start()
        cluster.storages[2] = node
        assert neoctl.main([*base, "wait", "--timeout", "60", "--quiet"]) == 0
        for storage in cluster.storages:
            assert storage.database.truncations() == [(keep, state.last_tid)]
            for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
                for partition in range(6):
                    records, _ = storage.database.scan_range(partition, kind)
                    assert all(layout.range_key_tid(kind, key) <= keep for key, _ in records), storage.node_id
        assert neoctl.main([*base, "check"]) == 0
        capsys.readouterr()
        # Writes go on, above the truncation marker.
        with db.transaction() as conn:
            conn.root()["data"]["value"] = 4
        assert db.lastTransaction() > state.last_tid
        with db.transaction() as conn:
            assert conn.root()["data"]["value"] == 4
        db.close()


def test_truncate_is_refused_while_a_transaction_stays_in_flight_and_loses_nothing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping

    from neostore.master_node import cluster as master_cluster

    from harness import ThreadCluster

    monkeypatch.setattr(master_cluster, "TRUNCATE_WAIT_SECONDS", 1.0)  # instead of 30 s
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=2, num_replicas=2) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping(value=1)
        keep = db.lastTransaction()
        with db.transaction() as conn:
            conn.root()["data"]["value"] = 2
        # A transaction in its two-phase commit (begun, stored, voted) while
        # the truncation waits for the transactions in flight to end.
        manager = transaction.TransactionManager()
        conn = db.open(manager)
        conn.root()["data"]["value"] = 3
        txn = manager.get()
        conn.tpc_begin(txn)
        conn.commit(txn)
        conn.tpc_vote(txn)
        assert neoctl.main([*base, "truncate", keep.hex(), "--yes"]) == neoctl.EXIT_REFUSED
        err = capsys.readouterr().err
        assert "1 transaction(s) still in flight" in err and "retry once they end" in err, err
        # Nothing was truncated, the cluster serves writes again, and the
        # transaction in flight commits.
        assert not cluster.master.state.stopping
        assert not cluster.master.state.truncations
        conn.tpc_finish(txn)
        conn.close()
        with db.transaction() as check:
            assert check.root()["data"]["value"] == 3
        db.close()


def test_health_and_check_tell_the_truth_about_a_degraded_cluster(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HEALTHY (exit 0) while everything is up; DEGRADED (exit 7) naming a
    master that does not answer, then a storage node DOWN and the partitions
    left with one readable replica, for which check exits 6: nothing was
    compared there, which is not "consistent"."""
    import json

    import ZODB
    from persistent.mapping import PersistentMapping

    from neostore.partition_table import NodeState

    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_storages=3, num_partitions=6, num_replicas=2, num_masters=3) as cluster:
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name]
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["data"] = PersistentMapping(value=0)
        db.close()
        leader = cluster.wait_for_leader()
        def healthy() -> bool:
            capsys.readouterr()  # only the last look's output is checked below
            return neoctl.main([*base, "health"]) == 0

        wait_until(healthy, "every master following the leader", timeout=60, interval=0.05)
        assert capsys.readouterr().out.splitlines() == ["HEALTHY"]
        assert neoctl.main([*base, "--json", "health"]) == neoctl.EXIT_OK
        assert json.loads(capsys.readouterr().out) == {"health": "HEALTHY", "problems": []}
        assert neoctl.main([*base, "check"]) == neoctl.EXIT_OK
        assert "6 of 6 partitions consistent" in capsys.readouterr().out
        assert neoctl.main([*base, "--json", "check"]) == neoctl.EXIT_OK
        rows = json.loads(capsys.readouterr().out)
        assert [(len(row["replicas"]), row["corrupted"], row["rebuilding"]) for row in rows] == [(2, [], [])] * 6

        follower = next(m for m in cluster.master_nodes if m is not leader)
        follower.stop()
        assert neoctl.main([*base, "health"]) == neoctl.EXIT_DEGRADED
        out = capsys.readouterr().out
        assert out.startswith("DEGRADED\n") and f"master {follower.address} does not answer" in out, out

        away = cluster.storages[2]
        away.stop()
        wait_until(lambda: leader.state.table.node(away.node_id).state == NodeState.DOWN, "node down", timeout=60)
        assert neoctl.main([*base, "--json", "health"]) == neoctl.EXIT_DEGRADED
        report = json.loads(capsys.readouterr().out)
        assert report["health"] == "DEGRADED"
        assert f"storage node {away.node_id} at {away.address} is DOWN" in report["problems"]
        assert any("fewer than 2 readable replicas" in problem for problem in report["problems"]), report
        assert neoctl.main([*base, "check"]) == neoctl.EXIT_NOT_COMPARED
        out = capsys.readouterr().out
        assert "not compared (fewer than 2 readable replicas reachable)" in out
        assert "6 of 6 partitions consistent" not in out
    # Once no master answers: UNAVAILABLE, exit 8 (the reason names each master tried).
    assert neoctl.main([*base, "health"]) == neoctl.EXIT_UNAVAILABLE
    out = capsys.readouterr().out
    assert out.startswith("UNAVAILABLE\n") and "no master reachable" in out, out


def test_version_and_a_closed_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    """--version names neostore's version and what it runs on; output into
    a pipe whose reader is gone ends quietly, with no traceback."""
    import subprocess
    import sys

    import neostore

    with pytest.raises(SystemExit) as exited:
        neoctl.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"neoctl {neostore.__version__} (Python ")
    process = subprocess.Popen(
        [sys.executable, "-m", "neostore.neoctl", "--masters", "127.0.0.1:1", "--cluster", "x", "health"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before anything is written
    errors_out = process.stderr.read().decode()
    assert process.wait(timeout=60) == neoctl.EXIT_OK, errors_out
    assert "Traceback" not in errors_out and "BrokenPipeError" not in errors_out, errors_out
