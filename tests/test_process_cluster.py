"""A cluster of separate processes, as ``neo-cluster`` starts it.

The master and each storage node are their own process; ZODB talks to them
over gRPC on 127.0.0.1.  These tests start real processes, so they share
one cluster where that is safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest
import transaction
import ZODB
import zodburi
from persistent.mapping import PersistentMapping
from ZODB.config import databaseFromString

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster, NodeProcess
from neostore.storage_node.database import Database

pytestmark = pytest.mark.process
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = LocalCluster(str(tmp_path_factory.mktemp("processes")), name="proc")
    running.start()
    yield running
    running.stop()


def test_a_zodb_application_writes_and_another_client_reads(cluster: LocalCluster) -> None:
    writer = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
    with writer.transaction() as conn:
        conn.root()["greeting"] = PersistentMapping(text="hello", count=1)
    # server_sync: each transaction of the reader begins with a round trip
    # to the master, so it sees every commit acknowledged before it began.
    reader = ZODB.DB(NeoStorage(cluster.masters, cluster.name, server_sync=True))
    with reader.transaction() as conn:
        assert conn.root()["greeting"]["text"] == "hello"
    # The reader sees the writer's next commit in its next transaction.
    with writer.transaction() as conn:
        conn.root()["greeting"]["count"] = 2
    with reader.transaction() as conn:
        assert conn.root()["greeting"]["count"] == 2
    writer.close()
    reader.close()


def test_zconfig_and_zodburi_open_the_cluster(cluster: LocalCluster, tmp_path: Any) -> None:
    def from_zconfig(option: str) -> ZODB.DB:
        return databaseFromString(f"""
            %import neostore
            <zodb>
              <neostore>
                master-nodes {" ".join(cluster.masters)}
                name {cluster.name}
                {option}
              </neostore>
            </zodb>
        """)

    db = from_zconfig("cache-size 5MB")
    assert db.storage._server_sync is False  # the default, as in ZEO
    assert db.storage._read_ahead == 64 * 1024  # the default
    with db.transaction() as conn:
        conn.root()["zconfig"] = True
    db.close()
    factory, dbkw = zodburi.resolve_uri(
        f"neostore://{cluster.name}@{cluster.masters[0]}?cache_size=1MB&server_sync=1")
    db = ZODB.DB(factory(), **dbkw)
    assert db.storage._server_sync is True
    with db.transaction() as conn:
        assert conn.root()["zconfig"] is True
    db.close()
    db = from_zconfig("server-sync on")
    assert db.storage._server_sync is True
    db.close()
    cache_path = tmp_path / "zconfig.cache"
    db = from_zconfig(f"cache-path {cache_path}")
    assert db.storage._cache_path == str(cache_path)
    db.close()
    assert cache_path.exists()  # written at close
    factory, dbkw = zodburi.resolve_uri(
        f"neostore://{cluster.name}@{cluster.masters[0]}?cache_path={tmp_path / 'uri.cache'}")
    db = ZODB.DB(factory(), **dbkw)
    assert db.storage._cache_path == str(tmp_path / "uri.cache")
    db.close()
    db = from_zconfig("read-ahead 0")
    assert db.storage._read_ahead == 0
    db.close()
    factory, dbkw = zodburi.resolve_uri(f"neostore://{cluster.name}@{cluster.masters[0]}?read_ahead=200KB")
    db = ZODB.DB(factory(), **dbkw)
    assert db.storage._read_ahead == 200 * 1024
    with db.transaction() as conn:
        assert conn.root()["zconfig"] is True
    db.close()


def _neoctl(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neostore.neoctl", "--masters", ",".join(cluster.masters),
         "--cluster", cluster.name, *args],
        capture_output=True, text=True, timeout=60)


def test_neoctl_prints_the_cluster_and_the_partition_table(cluster: LocalCluster) -> None:
    result = _neoctl(cluster, "print", "cluster", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cluster_name"] == cluster.name and info["state"] == "RUNNING"
    table = json.loads(_neoctl(cluster, "print", "pt", "--json").stdout)
    assert len(table["rows"]) == 12
    assert all(len(row) == 2 for row in table["rows"])
    text = _neoctl(cluster, "print", "pt").stdout
    assert "12 partitions, 2 replicas" in text
    nodes = _neoctl(cluster, "print", "node").stdout
    assert nodes.count("RUNNING") == 3


def test_neoctl_names_the_masters_it_could_not_reach() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "neostore.neoctl", "--masters", "127.0.0.1:1", "print", "cluster"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "127.0.0.1:1" in result.stderr


def test_storage_refuses_another_clusters_data_directory(cluster: LocalCluster, tmp_path: Any) -> None:
    data_dir = str(tmp_path / "theirs")
    Database(data_dir, "their-cluster").close()  # a data directory of another cluster
    node = NodeProcess("storage", [
        "--cluster", cluster.name, "--masters", ",".join(cluster.masters),
        "--data", data_dir, "--bind", "127.0.0.1:0",
    ], str(tmp_path / "intruder.log"))
    with pytest.raises(RuntimeError, match="exited") as raised:
        node.start(timeout=30)
    message = str(raised.value)
    assert "their-cluster" in message and f"'{cluster.name}'" in message and data_dir in message


def test_data_survives_a_restart_of_the_whole_cluster(tmp_path: Any) -> None:
    with LocalCluster(str(tmp_path / "restart"), name="restart") as first:
        db = ZODB.DB(NeoStorage(first.masters, "restart"))
        with db.transaction() as conn:
            conn.root()["kept"] = PersistentMapping(value=42)
        db.close()
    with LocalCluster(str(tmp_path / "restart"), name="restart") as second:
        db = ZODB.DB(NeoStorage(second.masters, "restart"))
        with db.transaction() as conn:
            assert conn.root()["kept"]["value"] == 42
        db.close()
    transaction.abort()


def test_neo_cluster_runs_the_demo_and_stops(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "neostore.launcher", "--data", str(tmp_path / "demo"), "--name", "demo",
         "--port", "0", "--", sys.executable, os.path.join(ROOT, "examples", "demo.py")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: OK" in result.stdout
    assert "stopped." in result.stdout


def test_no_committed_transaction_is_lost_when_a_storage_node_is_killed(tmp_path: Any) -> None:
    """R=2: kill -9 one storage node, between commits and during them;
    every acknowledged commit stays readable, and commits go on."""
    with LocalCluster(str(tmp_path / "kill"), name="kill") as cluster:
        db = ZODB.DB(NeoStorage(cluster.masters, "kill"))
        acknowledged: dict[int, int] = {}

        def commit_values(first: int, count: int) -> None:
            for i in range(first, first + count):
                with db.transaction() as conn:
                    conn.root()[f"value-{i}"] = PersistentMapping(n=i)
                acknowledged[i] = i

        commit_values(0, 20)
        killer = threading.Timer(0.05, cluster.storages[0].kill)
        killer.start()  # kill -9 while the next commits are in flight
        commit_values(20, 40)
        killer.join()
        assert not cluster.storages[0].running
        reader = ZODB.DB(NeoStorage(cluster.masters, "kill", server_sync=True))  # sees every acknowledged commit
        with reader.transaction() as conn:
            root = conn.root()
            assert {i: root[f"value-{i}"]["n"] for i in acknowledged} == acknowledged
        cluster.restart_storage(0)  # it rejoins on its LMDB data
        commit_values(60, 5)
        with reader.transaction() as conn:
            root = conn.root()
            assert {i: root[f"value-{i}"]["n"] for i in acknowledged} == acknowledged
        nodes = json.loads(_neoctl(cluster, "print", "node", "--json").stdout)
        assert [n["state"] for n in nodes] == ["RUNNING"] * 3
        reader.close()
        db.close()


def test_neo_cluster_stops_cleanly_on_ctrl_c(tmp_path: Any) -> None:
    import signal

    launcher = subprocess.Popen(
        [sys.executable, "-m", "neostore.launcher", "--data", str(tmp_path / "ctrl-c"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert launcher.stdout is not None
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "Ctrl-C to stop." in line:
            break
    assert any("running: 1 master at 127.0.0.1:" in line for line in lines), lines
    launcher.send_signal(signal.SIGINT)
    rest, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0
    assert rest.strip().endswith("stopped.")


def test_neoctl_kill_stops_a_storage_process_that_rejoins_when_restarted(tmp_path: Any) -> None:
    with LocalCluster(str(tmp_path / "maintenance"), name="maintenance") as cluster:
        db = ZODB.DB(NeoStorage(cluster.masters, "maintenance"))
        with db.transaction() as conn:
            conn.root()["n"] = 1
        killed = _neoctl(cluster, "kill", "1")
        assert "storage node 1 was told to stop and is marked DOWN" in killed.stdout
        process = cluster.storages[0].process
        assert process is not None
        assert process.wait(timeout=30) == 0  # a clean exit, not a crash
        log_path = os.path.join(cluster.log_dir, "storage-0.log")
        with open(log_path) as log_file:
            assert "neoctl kill" in log_file.read()
        with db.transaction() as conn:  # the other replicas serve
            conn.root()["n"] = 2
        nodes = json.loads(_neoctl(cluster, "print", "node", "--json").stdout)
        assert [n["state"] for n in nodes] == ["DOWN", "RUNNING", "RUNNING"]
        cluster.restart_storage(0)
        _neoctl(cluster, "wait", "--timeout", "60", "--quiet")
        nodes = json.loads(_neoctl(cluster, "print", "node", "--json").stdout)
        assert [n["state"] for n in nodes] == ["RUNNING"] * 3
        with db.transaction() as conn:
            assert conn.root()["n"] == 2
        db.close()
