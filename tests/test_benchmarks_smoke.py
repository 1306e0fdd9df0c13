"""Smoke runs of benchmarks/raft_commit.py, commit.py, transport_floor.py,
many_clients.py, warm_restart.py and cold_read.py: each runs and reports
every figure.

No timing bound: only that the script finishes, prints JSON with the
expected keys, and every figure is a positive number.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.process]

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "raft_commit.py"


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_raft_commit_benchmark_quick_run_reports_every_figure() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        check=False, capture_output=True, text=True, timeout=110,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    assert set(results["commit"]) == {"1", "4"}  # --quick: 1 and 4 clients, 2 leader kills, 1 removal
    for clients, entry in results["commit"].items():
        assert entry["clients"] == int(clients)
        for key in ("commits", "seconds", "commits_per_s"):
            assert _positive(entry[key]), (clients, key, entry[key])
        for part in ("commit", "finish_rpc"):
            for key in ("p50_ms", "p99_ms", "mean_ms", "samples"):
                assert _positive(entry[part][key]), (clients, part, key, entry[part][key])
        assert entry["sync_rpc"]["samples"] == 0  # the default, as in ZEO: sync() sends nothing
        assert entry["commit"]["samples"] == entry["commits"]
        cpu = entry["cpu_ms_per_commit"]
        # CPU time ticks by 1/SC_CLK_TCK: one process may not have used a tick, the sums have.
        for key in ("masters", "leader", "storages"):
            assert _positive(cpu[key]), (clients, key, cpu[key])
        assert {f"master-{i}" for i in range(3)} <= set(cpu["per_process"])
        assert all(ms >= 0 for ms in cpu["per_process"].values())
    failover = results["failover"]
    assert failover["runs"] == 2 and _positive(failover["commits"])
    assert isinstance(failover["counter_in_database"], int)
    for part in ("kill_to_first_new_commit", "kill_to_first_acknowledged_commit", "restart_and_catch_up"):
        for key in ("median_ms", "max_ms", "min_ms"):
            assert _positive(failover[part][key]), (part, key, failover[part][key])
    removal = results["leader_removal"]
    assert removal["runs"] == 1 and len(removal["samples_ms"]) == 1
    for key in ("median_ms", "max_ms", "min_ms"):
        assert _positive(removal["longest_gap"][key]), (key, removal["longest_gap"][key])


COMMIT_SCRIPT = SCRIPT.parent / "commit.py"


@pytest.mark.timeout(900)
def test_commit_benchmark_quick_run_reports_every_figure() -> None:
    # neostore and ZEO only: PostgreSQL is not needed to run the tests.
    completed = subprocess.run(
        [sys.executable, str(COMMIT_SCRIPT), "--quick", "--json", "--systems", "neostore,zeo"],
        check=False, capture_output=True, text=True, timeout=880,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    systems = ("neostore", "zeo")
    assert set(results["systems"]) == set(systems) and results["skipped"] == {}
    assert _positive(results["machine"]["cpus"])
    for system in systems:
        assert set(results["small_commits"][system]) == {"1", "2"}  # --quick: 1 and 2 processes
        for procs, entry in results["small_commits"][system].items():
            assert entry["procs"] == int(procs)
            for key in ("commits", "seconds", "commits_per_s", "p50_ms", "p99_ms", "mean_ms", "cpu_busy"):
                assert _positive(entry[key]), (system, procs, key, entry[key])
            cpu = entry["cpu_ms_per_commit"]
            # Sums over processes; one process alone may not have used a clock tick.
            parts = ("servers", "clients", "total")
            if system == "neostore":
                parts += ("leader", "followers", "storages")
            for key in parts:
                assert _positive(cpu[key]), (system, procs, key, cpu[key])
            assert cpu["per_server_process"]
            assert all(isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0
                       for ms in cpu["per_server_process"].values())
        for op in ("add", "update"):
            assert set(results[op][system]) == {"1", "2"}  # c=1 and c=2
            for procs, entry in results[op][system].items():
                assert entry["procs"] == int(procs) and entry["objects_per_txn"] == 100
                assert len(entry["samples"]) == entry["repetitions"] == 2
                for value in (entry["objects_per_s"], entry["objects_per_s_best"], *entry["samples"]):
                    assert _positive(value), (system, op, procs, value)
    for workload in ("small_commits", "add", "update", "cpu_ms_per_commit"):
        assert set(results["ratios"][workload]) == {"1", "2"}, workload
        for procs, ratios in results["ratios"][workload].items():
            assert set(ratios) == {"neostore/zeo"} and _positive(ratios["neostore/zeo"]), (workload, procs, ratios)


@pytest.mark.timeout(120)
def test_transport_floor_benchmark_quick_run_reports_every_shape() -> None:
    script = SCRIPT.parent / "transport_floor.py"
    completed = subprocess.run([sys.executable, str(script), "--quick", "--json"],
                               check=False, capture_output=True, text=True, timeout=110)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    assert set(results["shapes"]) == {"grpc-unary", "grpc-stream", "framed-socket"}
    for shape, figures in results["shapes"].items():
        assert figures["calls"] == 300
        for key in ("round_trip_p50_us", "round_trip_p99_us"):
            assert _positive(figures[key]), (shape, key, figures[key])
        assert figures["round_trip_p99_us"] >= figures["round_trip_p50_us"]
        # CPU time ticks by 1/SC_CLK_TCK: 300 cheap calls may not fill one tick.
        for key in ("server_cpu_us_per_call", "client_cpu_us_per_call"):
            assert figures[key] >= 0, (shape, key, figures[key])


@pytest.mark.timeout(300)
def test_many_clients_benchmark_quick_run_tells_every_client_of_every_commit() -> None:
    script = SCRIPT.parent / "many_clients.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--clients", "6", "--processes", "2", "--commits", "3", "--masters", "1",
         "--json"], check=False, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    assert set(results["runs"]) == {"neostore", "zeo"}
    for system, (run,) in results["runs"].items():
        assert run["opened"] == 6 and run["connect_failures"] == 0, (system, run)
        assert run["invalidations_missed"] == 0, (system, run)
        for key in ("connect_s", "commit_p50_ms"):
            assert _positive(run[key]), (system, key, run[key])
        for key in ("fan_out_p50_ms", "fan_out_max_ms"):  # below 0 when a client heard before commit() returned
            assert isinstance(run[key], float) and math.isfinite(run[key]), (system, key, run[key])
    threads_before, threads_with = results["runs"]["neostore"][0]["master_threads"]
    assert threads_before > 0 and threads_with > 0
    assert results["runs"]["zeo"][0]["master_threads"] is None


@pytest.mark.timeout(400)
def test_many_clients_benchmark_reports_the_recovery_from_a_killed_leader() -> None:
    script = SCRIPT.parent / "many_clients.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--clients", "6", "--processes", "2", "--commits", "3", "--masters", "3",
         "--kill-leader", "--json"], check=False, capture_output=True, text=True, timeout=380)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    for system, (run,) in results["runs"].items():
        assert run["opened"] == 6 and run["invalidations_missed"] == 0, (system, run)
        assert _positive(run["kill_to_first_commit_s"]), (system, run)
        assert run["kill_to_all_told_s"] is None or _positive(run["kill_to_all_told_s"]), (system, run)
        assert isinstance(run["after_kill_missed"], int) and isinstance(run["cache_resets"], int), (system, run)
    # neostore: every client hears of every commit after the kill (a follower kept the history).
    neostore = results["runs"]["neostore"][0]
    assert neostore["after_kill_missed"] == 0 and _positive(neostore["kill_to_all_told_s"]), neostore


@pytest.mark.timeout(180)
def test_warm_restart_benchmark_reports_both_restarts() -> None:
    script = SCRIPT.parent / "warm_restart.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--objects", "60", "--page", "20", "--rounds", "1", "--json"],
        check=False, capture_output=True, text=True, timeout=170,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)
    for kind in ("cold", "warm"):
        assert _positive(results[kind]["first_page_ms"]) and _positive(results[kind]["loads_per_second"])
    # Warm: the page came from the file, with no call to a storage node; the cold client called them
    # (read-ahead brings most of the page with the first loads, so its cache serves much of it too).
    assert results["warm"]["served_by_client_cache"] >= 20 and results["warm"]["storage_calls"] == 0
    assert results["cold"]["storage_calls"] >= 1


@pytest.mark.timeout(300)
def test_cold_read_benchmark_reports_neostore_with_and_without_read_ahead_and_zeo() -> None:
    script = SCRIPT.parent / "cold_read.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--objects", "100", "--tree", "500", "--repetitions", "1",
         "--systems", "neostore,zeo", "--json"],
        check=False, capture_output=True, text=True, timeout=280,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout)["results"]
    for which, size in (("flat", 100), ("tree", 500)):
        rows = results[which]
        assert set(rows) == {"neostore read-ahead", "neostore no read-ahead", "zeo"}
        for row in rows.values():
            assert _positive(row["objects_per_second"]) and row["objects"] == size
        # Without read-ahead every object is a round trip; with it, far fewer.
        assert rows["neostore no read-ahead"]["round_trips"] > size
        assert rows["neostore read-ahead"]["round_trips"] < rows["neostore no read-ahead"]["round_trips"]
        assert _positive(rows["neostore read-ahead"]["read_ahead_kib"])
