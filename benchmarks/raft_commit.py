"""Commits through Raft: latency, throughput, leader failover, master CPU.

    python benchmarks/raft_commit.py [--rounds 1000] [--clients 1,16]
                                     [--kill-runs 10] [--remove-runs 5] [--server-sync]
                                     [--json] [--quick]
                                     [--keep-logs]

Starts 3 master processes (Raft) and 3 storage nodes (R=2) on 127.0.0.1
with neostore.launcher.LocalCluster, in a temporary directory, then measures
through ZODB (every client: its own ``ZODB.DB`` over its own NeoStorage,
committing one object of its own, so there are no conflicts):

1. for each number of concurrent clients in ``--clients``: latency of
   ``transaction.commit()`` (p50/p99, ms) and throughput (commits/s) over
   ``--rounds`` commits in all (split across the clients, after a warm-up);
   also the Finish rpc alone (the master's decision: replicated through
   Raft, applied on the storage nodes, answered; timed by wrapping the
   client's ``master_call``) and, with ``--server-sync``, the Sync rpc
   (ZODB's sync at each transaction's start then asks the master for what
   the client missed and for the next TTID; by default, as in ZEO, sync
   sends nothing and the Finish answer brings the next TTID);
2. CPU seconds (user+sys, from /proc/PID/stat) per committed transaction
   over that same measured phase: the 3 masters (leader and followers
   apart), each storage node, and this client process, for context;
3. ``--kill-runs`` times: one client commits a small transaction about
   every 10 ms while the Raft leader's process gets SIGKILL; the time from
   the kill to the first successful commit begun after it (and, apart, to
   the first commit acknowledged after it, which may be one in flight at
   the kill).  The killed master is restarted (it rejoins as a follower)
   and caught up before the next run, so every run starts with 3 masters.
   Also counts the commits that failed (the client retries them), and
   checks the committed counter against the acknowledged commits: a
   mismatch means a lost (or a phantom) commit;
4. ``--remove-runs`` times, with the same client: ``neoctl remove-master``
   of the leader (it hands leadership over to the most up-to-date master,
   which removes it; its process exits), then ``neoctl add-master`` of a
   new master, caught up, so that every run starts with 3 masters again.
   The figure is the longest gap between two acknowledged commits from the
   removal until the removed master's process has exited.

Prints a table at the end (``--json``: the same figures as JSON).  A
benchmark, not a test: these machines are shared and noisy; never read a
single run's figures as a bound.  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore.launcher import LocalCluster, NodeProcess

CLUSTER_NAME = "raftbench"
NUM_MASTERS = 3
WARMUP_COMMITS = 5  # per client, before each measured phase
COMMIT_INTERVAL = 0.010  # seconds between the failover client's commits
RECOVERY_LIMIT = 60.0  # seconds to wait for a commit after a kill
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 (nearest rank) and mean of ``samples`` (seconds), in ms."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "mean_ms": math.nan, "samples": 0}

    def rank(p: float) -> float:
        return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)] * 1000

    return {"p50_ms": rank(50), "p99_ms": rank(99),
            "mean_ms": statistics.fmean(ordered) * 1000, "samples": len(ordered)}


# -- processes -----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def master_process(cluster: LocalCluster, index: int) -> NodeProcess:
    process = cluster.master if index == 0 else cluster.other_masters[index - 1]
    assert process is not None
    return process


def node_processes(cluster: LocalCluster) -> dict[str, NodeProcess]:
    nodes = {f"master-{i}": master_process(cluster, i) for i in range(cluster.num_masters)}
    nodes.update({f"storage-{i}": storage for i, storage in enumerate(cluster.storages)})
    return nodes


def cpu_snapshot(cluster: LocalCluster) -> dict[str, float]:
    snapshot = {}
    for name, node in node_processes(cluster).items():
        assert node.process is not None
        snapshot[name] = cpu_seconds(node.process.pid)
    snapshot["client"] = cpu_seconds(os.getpid())
    return snapshot


def leader_of(cluster: LocalCluster, timeout: float = 30.0) -> int:
    """Index of the leading master, once every running master names the same one."""
    deadline = time.monotonic() + timeout
    while True:
        leaders = set()
        for index, address in enumerate(cluster.master_addresses):
            if not master_process(cluster, index).running:
                continue
            try:
                info = cluster.cluster_info(timeout=1.0, address=address)
            except Exception:  # noqa: BLE001 - not up (yet)
                leaders.add("")
                continue
            leaders.add(info.leader if info.state == info.RUNNING else "")
        if len(leaders) == 1:
            leader = leaders.pop()
            if leader in cluster.master_addresses:
                return cluster.master_addresses.index(leader)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the masters do not agree on a leader: {sorted(leaders)}")
        time.sleep(0.05)


def wait_caught_up(cluster: LocalCluster, index: int, tid: bytes, timeout: float = 60.0) -> None:
    """Wait until master ``index`` runs and has published ``tid``."""
    deadline = time.monotonic() + timeout
    address = cluster.master_addresses[index]
    while True:
        try:
            info = cluster.cluster_info(timeout=1.0, address=address)
        except Exception:  # noqa: BLE001 - not up yet
            info = None
        if info is not None and info.state == info.RUNNING and info.leader and info.last_tid >= tid:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"restarted master {address} has not caught up after {timeout:.0f}s")
        time.sleep(0.05)


# -- clients -------------------------------------------------------------------


#: --server-sync: every client's sync() asks the master (NeoStorage's server_sync).
SERVER_SYNC = False


def open_storage(cluster: LocalCluster) -> Any:
    from neostore.client import NeoStorage

    return NeoStorage(cluster.masters, cluster.name, server_sync=SERVER_SYNC)


class Client:
    """One ZODB client (its own DB and NeoStorage) committing to its own object."""

    def __init__(self, cluster: LocalCluster, key: str) -> None:
        self.key = key
        self.storage = open_storage(cluster)
        self.db = ZODB.DB(self.storage)
        self.rpc_times: dict[str, list[float]] = {"Sync": [], "Finish": []}
        self.recording = False
        self._wrap_master_call()
        self.manager = transaction.TransactionManager()
        self.connection: Any = None

    def _wrap_master_call(self) -> None:
        # This client's master rpcs, timed (successful ones, while recording).
        cluster = self.storage._cluster
        original = cluster.master_call

        def timed(method: str, request: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            reply = original(method, request, *args, **kwargs)
            if self.recording and method in self.rpc_times:
                self.rpc_times[method].append(time.perf_counter() - started)
            return reply

        cluster.master_call = timed  # type: ignore[method-assign]

    def open(self) -> None:
        self.connection = self.db.open(self.manager)

    def commit(self) -> float:
        """One small transaction; the seconds ``commit()`` took."""
        self.manager.begin()
        self.connection.root()[self.key]["n"] += 1
        started = time.perf_counter()
        self.manager.commit()
        return time.perf_counter() - started

    def close(self) -> None:
        try:
            self.manager.abort()
            if self.connection is not None:
                self.connection.close()
        finally:
            self.db.close()


def create_objects(cluster: LocalCluster, keys: list[str]) -> None:
    db = ZODB.DB(open_storage(cluster))
    try:
        with db.transaction() as connection:
            root = connection.root()
            for key in keys:
                if key not in root:
                    root[key] = PersistentMapping(n=0)
    finally:
        db.close()


def measure_commits(cluster: LocalCluster, num_clients: int, rounds: int) -> dict[str, Any]:
    """``rounds`` commits in all by ``num_clients`` concurrent clients."""
    keys = [f"c{num_clients}-{i}" for i in range(num_clients)]
    create_objects(cluster, keys)
    clients = [Client(cluster, key) for key in keys]
    per_client = max(rounds // num_clients, 1)
    latencies: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []
    start = threading.Barrier(num_clients + 1)
    done = threading.Barrier(num_clients + 1)

    def work(index: int) -> None:
        client = clients[index]
        try:
            client.open()
            for _ in range(WARMUP_COMMITS):
                client.commit()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
            start.abort()
            return
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        try:
            client.recording = True
            for _ in range(per_client):
                latencies[index].append(client.commit())
            client.recording = False
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        done.wait()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(num_clients)]
    try:
        for thread in threads:
            thread.start()
        leader = leader_of(cluster)
        try:
            start.wait()
        except threading.BrokenBarrierError:
            raise RuntimeError(f"a client failed during the warm-up: {errors[0]!r}") from None
        cpu_before = cpu_snapshot(cluster)
        started = time.perf_counter()
        done.wait()
        elapsed = time.perf_counter() - started
        cpu_after = cpu_snapshot(cluster)
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a commit failed with {num_clients} clients: {errors[0]!r}")
    finally:
        for client in clients:
            client.close()
    commits = sum(len(samples) for samples in latencies)
    cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
    masters = [f"master-{i}" for i in range(cluster.num_masters)]
    storages = [name for name in cpu if name.startswith("storage-")]
    followers = [name for name in masters if name != f"master-{leader}"]
    per_commit = {name: seconds / commits * 1000 for name, seconds in cpu.items()}
    return {
        "clients": num_clients,
        "commits": commits,
        "seconds": elapsed,
        "commits_per_s": commits / elapsed,
        "commit": percentiles([s for samples in latencies for s in samples]),
        "finish_rpc": percentiles([s for c in clients for s in c.rpc_times["Finish"]]),
        "sync_rpc": percentiles([s for c in clients for s in c.rpc_times["Sync"]]),
        "leader": f"master-{leader}",
        "cpu_ms_per_commit": {
            "masters": sum(per_commit[name] for name in masters),
            "leader": per_commit[f"master-{leader}"],
            "followers": sum(per_commit[name] for name in followers),
            "storages": sum(per_commit[name] for name in storages),
            "client_process": per_commit["client"],
            "per_process": per_commit,
        },
        "cpu_utilisation": {name: seconds / elapsed for name, seconds in cpu.items()},
    }


# -- failover ------------------------------------------------------------------


class LoopingClient(threading.Thread):
    """Commits a small transaction every ~10 ms; records (began, ended, error or None)."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(name="failover-client", daemon=True)
        create_objects(cluster, ["failover"])
        self.client = Client(cluster, "failover")
        self.events: list[tuple[float, float, str | None]] = []
        self.last_tid = b""
        self.in_commit_since: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        self.client.open()
        while not self.stopping.is_set():
            began = self.in_commit_since = time.monotonic()
            try:
                self.client.commit()
            except Exception as error:  # noqa: BLE001 - failover: retry as a new transaction
                self.client.manager.abort()
                self.events.append((began, time.monotonic(), f"{type(error).__name__}: {error}"))
            else:
                self.events.append((began, time.monotonic(), None))
                self.last_tid = self.client.connection.root()["failover"]._p_serial
            self.in_commit_since = None
            self.stopping.wait(COMMIT_INTERVAL)

    def first_success(self, killed_at: float, began_after: bool) -> float | None:
        for began, ended, error in list(self.events):
            if error is None and ended > killed_at and (began >= killed_at or not began_after):
                return ended
        return None

    def successes(self) -> int:
        return sum(1 for *_, error in list(self.events) if error is None)

    def wait_commits(self, count: int, timeout: float = 30.0) -> None:
        target = self.successes() + count
        deadline = time.monotonic() + timeout
        while self.successes() < target:
            if time.monotonic() > deadline or not self.is_alive():
                raise RuntimeError(f"the failover client committed nothing for {timeout:.0f}s; "
                                   + self.diagnosis())
            time.sleep(0.01)

    def diagnosis(self) -> str:
        """What the client is doing: for a report when it is stuck."""
        now = time.monotonic()
        events = list(self.events)
        last_ok = max((ended for _, ended, error in events if error is None), default=None)
        failures = [(ended, error) for _, ended, error in events if error is not None]
        lines = [f"last successful commit {now - last_ok:.1f}s ago" if last_ok else "no successful commit",
                 f"{len(failures)} failed commits in all"]
        lines += [f"failed {now - ended:.1f}s ago: {error[:300]}" for ended, error in failures[-3:]]
        since = self.in_commit_since
        if since is not None and self.ident is not None:
            frame = sys._current_frames().get(self.ident)
            stack = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else "(gone)"
            lines.append(f"in commit() for {now - since:.1f}s, at:\n{stack}")
        return "\n  ".join(lines)


@dataclasses.dataclass
class KillRun:
    leader: int
    killed_at: float
    first_new: float = 0.0  # first successful commit begun after the kill ended
    first_any: float = 0.0  # first successful commit ended after the kill
    restarted_at: float = 0.0  # the killed master serves again
    caught_up_at: float = 0.0  # ... and has published the client's last commit


def classify_failures(looper: LoopingClient, runs: list[KillRun]) -> dict[str, Any]:
    """Failed commits: until the first new commit after a kill (expected), or else where."""
    to_recovery = [0] * len(runs)
    elsewhere: list[dict[str, Any]] = []
    for _, ended, error in looper.events:
        if error is None:
            continue
        index = max((i for i, r in enumerate(runs) if r.killed_at < ended), default=None)
        if index is not None and ended <= runs[index].first_new:
            to_recovery[index] += 1
            continue
        where = "before the first kill"
        if index is not None:
            run = runs[index]
            phase = ("while the killed master restarted" if ended <= run.restarted_at else
                     "while it caught up" if ended <= run.caught_up_at else "in steady state")
            where = f"run {index + 1}, {(ended - run.killed_at) * 1000:.0f} ms after the kill, {phase}"
        elsewhere.append({"where": where, "error": error})
    return {"to_recovery": to_recovery, "elsewhere": elsewhere}


def measure_failover(cluster: LocalCluster, runs: int, log: Any) -> dict[str, Any]:
    looper = LoopingClient(cluster)
    looper.start()
    done: list[KillRun] = []
    try:
        for number in range(1, runs + 1):
            looper.wait_commits(20)  # steady state: ~0.2 s of commits
            leader = leader_of(cluster)
            process = master_process(cluster, leader)
            run = KillRun(leader, time.monotonic())
            process.kill()
            deadline = run.killed_at + RECOVERY_LIMIT
            first_new = None
            while first_new is None and time.monotonic() < deadline:
                time.sleep(0.005)
                first_new = looper.first_success(run.killed_at, began_after=True)
            if first_new is None:
                raise RuntimeError(
                    f"run {number}: no commit succeeded within {RECOVERY_LIMIT:.0f}s of killing the leader, "
                    f"master-{leader} (logs in {cluster.log_dir})")
            run.first_new = first_new
            run.first_any = looper.first_success(run.killed_at, began_after=False) or first_new
            done.append(run)
            log(f"  run {number}: killed master-{leader}: first new commit after "
                f"{(run.first_new - run.killed_at) * 1000:.0f} ms")
            cluster.restart_master(index=leader)
            run.restarted_at = time.monotonic()
            looper.wait_commits(5)
            wait_caught_up(cluster, leader, looper.last_tid)
            run.caught_up_at = time.monotonic()
        looper.wait_commits(20)
    finally:
        looper.stopping.set()
        looper.join(RECOVERY_LIMIT)
        looper.client.close()

    def summary(samples: list[float]) -> dict[str, float]:
        return {"median_ms": statistics.median(samples) * 1000, "max_ms": max(samples) * 1000,
                "min_ms": min(samples) * 1000}

    failures = classify_failures(looper, done)
    # Every acknowledged commit added 1, every failed one nothing: a fresh client must read the count.
    db = ZODB.DB(open_storage(cluster))
    try:
        with db.transaction() as connection:
            stored = connection.root()["failover"]["n"]
    finally:
        db.close()
    return {
        "runs": len(done),
        "kill_to_first_new_commit": summary([r.first_new - r.killed_at for r in done]),
        "kill_to_first_acknowledged_commit": summary([r.first_any - r.killed_at for r in done]),
        "restart_and_catch_up": summary([r.caught_up_at - r.first_new for r in done]),
        "commits": looper.successes(),
        "counter_in_database": stored,
        "failed_commits_to_recovery": failures["to_recovery"],
        "failed_commits_elsewhere": failures["elsewhere"],
        "samples_ms": [round((r.first_new - r.killed_at) * 1000, 1) for r in done],
        "killed": [f"master-{r.leader}" for r in done],
    }


def longest_gap(looper: LoopingClient, start: float, end: float) -> float:
    """The longest time without an acknowledged commit between ``start`` and ``end``."""
    ends = sorted(ended for _, ended, error in list(looper.events) if error is None)
    points = [max([e for e in ends if e < start], default=start)] + [e for e in ends if start <= e <= end]
    gaps = [b - a for a, b in itertools.pairwise(points)]
    after = [e for e in ends if e > end]
    gaps.append((after[0] if after else end) - points[-1])
    return max(gaps)


def measure_leader_removal(cluster: LocalCluster, runs: int, log: Any) -> dict[str, Any]:
    looper = LoopingClient(cluster)
    looper.start()
    gaps: list[float] = []
    failed = 0
    try:
        for number in range(1, runs + 1):
            looper.wait_commits(20)
            leader = leader_of(cluster)
            process = master_process(cluster, leader).process
            assert process is not None
            before = sum(1 for *_, error in list(looper.events) if error is not None)
            removed_at = time.monotonic()
            cluster.remove_master(leader)
            process.wait(RECOVERY_LIMIT)
            exited_at = time.monotonic()
            looper.wait_commits(5)
            gaps.append(longest_gap(looper, removed_at, exited_at))
            failed += sum(1 for *_, error in list(looper.events) if error is not None) - before
            log(f"  run {number}: removed the leader master-{leader}: longest gap between commits "
                f"{gaps[-1] * 1000:.0f} ms; its process exited {(exited_at - removed_at) * 1000:.0f} ms "
                "after the removal began")
            added = cluster.add_master()
            looper.wait_commits(5)
            wait_caught_up(cluster, added, looper.last_tid)
    finally:
        looper.stopping.set()
        looper.join(RECOVERY_LIMIT)
        looper.client.close()
    return {
        "runs": len(gaps),
        "longest_gap": {"median_ms": statistics.median(gaps) * 1000, "max_ms": max(gaps) * 1000,
                        "min_ms": min(gaps) * 1000},
        "failed_commits": failed,
        "samples_ms": [round(gap * 1000, 1) for gap in gaps],
    }


# -- main ----------------------------------------------------------------------


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "setup": {"masters": NUM_MASTERS, "storages": 3, "replicas": 2, "partitions": 12,
                  "rounds": args.rounds, "cpus": os.cpu_count(), "server_sync": SERVER_SYNC},
        "commit": {},
    }
    with tempfile.TemporaryDirectory(prefix="raft-commit-") as workdir:
        cluster = LocalCluster(os.path.join(workdir, "cluster"), name=CLUSTER_NAME, num_masters=NUM_MASTERS)
        try:
            log(f"starting {NUM_MASTERS} masters and 3 storage nodes...")
            cluster.start()
            for num_clients in args.clients:
                log(f"commits with {num_clients} client{'s' * (num_clients != 1)}...")
                results["commit"][str(num_clients)] = measure_commits(cluster, num_clients, args.rounds)
            if args.kill_runs > 0:
                log(f"leader failover, {args.kill_runs} runs...")
                results["failover"] = measure_failover(cluster, args.kill_runs, log)
            if args.remove_runs > 0:
                log(f"removing the leader, {args.remove_runs} runs...")
                results["leader_removal"] = measure_leader_removal(cluster, args.remove_runs, log)
        except Exception:
            log(f"FAILED; the masters say: {masters_view(cluster)}")
            cluster.stop()
            log(f"the cluster's logs are kept in {keep_logs(cluster)}")
            raise
        finally:
            cluster.stop()
        if args.keep_logs:
            log(f"the cluster's logs are kept in {keep_logs(cluster)}")
    return results


def keep_logs(cluster: LocalCluster) -> str:
    kept = tempfile.mkdtemp(prefix="raft-commit-logs-")
    shutil.copytree(cluster.log_dir, kept, dirs_exist_ok=True)
    return kept


def masters_view(cluster: LocalCluster) -> str:
    """Each master's state, leader, term and last TID, for a report."""
    views = []
    for index, address in enumerate(cluster.master_addresses):
        try:
            info = cluster.cluster_info(timeout=2.0, address=address)
            views.append(f"master-{index} {address}: state {info.state} leader {info.leader or '-'} "
                         f"term {info.term} last_tid {info.last_tid.hex()}")
        except Exception as error:  # noqa: BLE001 - for the report
            views.append(f"master-{index} {address}: {type(error).__name__}")
    return "; ".join(views)


def print_table(results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(f"\nneostore, {setup['masters']} masters (Raft), {setup['storages']} storage nodes "
          f"(R={setup['replicas']}), one process each, all on this {setup['cpus']}-CPU machine")
    print(f"\n{'clients':>7} {'commits/s':>9} {'commit() p50/p99 ms':>21} {'Finish rpc p50/p99 ms':>23}"
          f" {'Sync rpc p50/p99':>19}")
    for entry in results["commit"].values():
        c, f, b = entry["commit"], entry["finish_rpc"], entry["sync_rpc"]
        sync = f"{b['p50_ms']:>8.2f} / {b['p99_ms']:<8.2f}" if b["samples"] else f"{'none sent':>19}"
        print(f"{entry['clients']:>7} {entry['commits_per_s']:>9.1f} {c['p50_ms']:>10.2f} / {c['p99_ms']:<8.2f}"
              f" {f['p50_ms']:>11.2f} / {f['p99_ms']:<9.2f} {sync}")
    print(f"\nCPU ms per commit (user+sys){'':8}"
          f"{'3 masters':>10} {'leader':>7} {'2 followers':>12} {'3 storages':>11} {'client proc':>12}")
    for entry in results["commit"].values():
        cpu = entry["cpu_ms_per_commit"]
        label = f"{entry['clients']} client{'s' * (entry['clients'] != 1)}, {entry['commits']} commits"
        print(f"  {label:<34}{cpu['masters']:>10.2f} {cpu['leader']:>7.2f} {cpu['followers']:>12.2f}"
              f" {cpu['storages']:>11.2f} {cpu['client_process']:>12.2f}")
    for entry in results["commit"].values():
        per = entry["cpu_ms_per_commit"]["per_process"]
        busy = sum(entry["cpu_utilisation"].values())
        print(f"  {entry['clients']:>2} client(s), per process (leader {entry['leader']}): "
              + ", ".join(f"{name} {ms:.2f}" for name, ms in per.items())
              + f"; all processes kept {busy:.2f} of {setup['cpus']} CPUs busy")
    failover = results.get("failover")
    if failover:
        new, anyc = failover["kill_to_first_new_commit"], failover["kill_to_first_acknowledged_commit"]
        print(f"\nkill -9 of the leader, {failover['runs']} runs (a commit every ~10 ms):")
        print(f"  to the first successful commit begun after the kill: median {new['median_ms']:.0f} ms, "
              f"max {new['max_ms']:.0f} ms (min {new['min_ms']:.0f} ms)")
        print(f"  to the first commit acknowledged after the kill:     median {anyc['median_ms']:.0f} ms, "
              f"max {anyc['max_ms']:.0f} ms (min {anyc['min_ms']:.0f} ms)")
        back = failover["restart_and_catch_up"]
        print(f"  then restarting the killed master until it has caught up: median {back['median_ms']:.0f} ms, "
              f"max {back['max_ms']:.0f} ms")
        to_recovery = failover["failed_commits_to_recovery"]
        print(f"  failed commits (retried) between the kill and that commit: {sum(to_recovery)} in all, "
              f"per run {to_recovery}")
        elsewhere = failover["failed_commits_elsewhere"]
        print(f"  failed commits at other times: {len(elsewhere)} (of {failover['commits']} successful commits)")
        for failure in elsewhere:
            print(f"    {failure['where']}: {failure['error'][:600]}")
        verdict = "OK" if failover["counter_in_database"] == failover["commits"] else "MISMATCH"
        print(f"  counter committed by the client, read back: {failover['counter_in_database']}, "
              f"acknowledged commits: {failover['commits']} ({verdict})")
        print(f"  each run, ms: {failover['samples_ms']} (killed {', '.join(failover['killed'])})")
    removal = results.get("leader_removal")
    if removal:
        gap = removal["longest_gap"]
        print(f"\nneoctl remove-master of the leader, {removal['runs']} runs (a commit every ~10 ms):")
        print(f"  longest gap between acknowledged commits until the removed master exited: "
              f"median {gap['median_ms']:.0f} ms, max {gap['max_ms']:.0f} ms (min {gap['min_ms']:.0f} ms)")
        print(f"  failed commits (retried): {removal['failed_commits']}; each run, ms: {removal['samples_ms']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured commits per client count, split across the clients (default 1000)")
    parser.add_argument("--clients", default=None, help="concurrent client counts, comma-separated (default 1,16)")
    parser.add_argument("--kill-runs", type=int, default=None, help="leader kills (default 10)")
    parser.add_argument("--remove-runs", type=int, default=None,
                        help="removals of the leader with neoctl remove-master (default 5)")
    parser.add_argument("--server-sync", action="store_true",
                        help="clients ask the master at each transaction's start (NeoStorage server_sync)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy the nodes' logs to a new directory under /tmp (always done on failure)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --rounds 48 --clients 1,4 --kill-runs 2 --remove-runs 1 unless given")
    args = parser.parse_args()
    global SERVER_SYNC
    SERVER_SYNC = args.server_sync
    quick = {"rounds": 48, "clients": "1,4", "kill_runs": 2, "remove_runs": 1}
    default = {"rounds": 1000, "clients": "1,16", "kill_runs": 10, "remove_runs": 5}
    for name, value in (quick if args.quick else default).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.clients = [int(n) for n in str(args.clients).split(",") if n.strip()]
    except ValueError:
        parser.error("--clients: comma-separated integers, e.g. 1,16")
    if args.rounds < 1 or not args.clients or min(args.clients) < 1 or args.kill_runs < 0 or args.remove_runs < 0:
        parser.error("--rounds and --clients must be at least 1, --kill-runs and --remove-runs at least 0")
    # Failover makes the client and ZODB log (a tpc_finish that failed, a broken stream): to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="  [log %(levelname)s %(name)s] %(message)s")
    # Ctrl-C and SIGTERM: unwind, so that the cluster's processes are stopped
    # (SIGINT explicitly too: a shell may start us with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        results = run(args, log)
    except KeyboardInterrupt:
        print("interrupted; the cluster was stopped", file=sys.stderr)
        sys.exit(130)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
