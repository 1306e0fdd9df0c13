"""Many connected clients: neostore next to ZEO 6 + FileStorage, same machine.

    python benchmarks/many_clients.py [--clients 300,1000] [--processes 4]
                                      [--commits 30] [--systems neostore,zeo]
                                      [--masters 3] [--kill-leader] [--json]

For each system and each number of clients: the clients are opened in
``--processes`` processes (each client a NeoStorage or ClientStorage
registered with a recorder that notes when each invalidation arrives, as
ZODB.DB would be told), then this process commits ``--commits`` 1-object
transactions one after another, 0.1 s apart.  Reported:

* connect: seconds until every client is open (all processes at once);
* commit p50: ``transaction.commit()`` of this process, with them connected;
* fan-out p50 / max: from ``commit()`` returning to the last client told
  (below 0 when every client heard before the committer's ``commit()``
  returned; every client must be told of every commit: a client that is
  not is counted as missed, and the run says so);
* neostore only: the masters' threads and resident memory, before the
  clients connect and with them connected (per client: the difference
  divided by the clients).

With ``--kill-leader``, then: kill -9 of the leading master (ZEO: of
runzeo, started again at once on the same port and FileStorage, as a
supervisor would), and ``--commits`` more commits 0.1 s apart, each retried
until it succeeds.  Reported: seconds from the kill to the first commit
that succeeded, to the first commit every client was told of (the last
client told), the commits made after the kill that some client was never
told of (each such client counted), and the clients whose caches were
reset instead (told that it missed what it cannot be told).

neostore runs ``--masters`` masters (Raft when more than one) and 3 storage
nodes, R=2; its clients spread their streams over every master.  A
benchmark, not a test: compare the columns of one run.  Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from commit import Zeo, machine_facts, open_storage  # noqa: E402 - the sibling benchmark's servers

#: Each client process: open N clients with recorders, say so, then on
#: "report" print every arrival (tid hex -> monotonic times), and exit on EOF.
CLIENTS = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from commit import open_storage

class Recorder:
    def __init__(self, arrivals):
        self.arrivals = arrivals
    def invalidate(self, tid, oids):
        self.arrivals.setdefault(tid.hex(), []).append(time.monotonic())
    def invalidateCache(self):
        self.arrivals.setdefault("reset", []).append(time.monotonic())
    def transform_record_data(self, data):
        return data
    untransform_record_data = transform_record_data

spec, count = json.loads(sys.argv[1]), int(sys.argv[2])
arrivals, storages, failures = {}, [], []
for _ in range(count):
    try:
        storage = open_storage(spec)
        storage.registerDB(Recorder(arrivals))
        storages.append(storage)
    except Exception as error:
        failures.append(f"{type(error).__name__}: {error}")
print(json.dumps({"opened": len(storages), "failures": failures[:3]}), flush=True)
for line in sys.stdin:
    if line.strip() == "report":
        print(json.dumps(arrivals), flush=True)
for storage in storages:
    try:
        storage.close()
    except Exception:
        pass
"""


def _proc_status(pid: int) -> tuple[int, int]:
    """Threads and resident KiB of a process."""
    threads = rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, rss


class NeostoreCluster:
    kill_what = "the leading master"

    key = "neostore"

    def __init__(self, workdir: str, masters: int) -> None:
        from neostore.launcher import LocalCluster

        self.masters_count = masters
        self.cluster = LocalCluster(os.path.join(workdir, "neostore"), name="many", num_storages=3,
                                    num_partitions=12, num_replicas=2, num_masters=masters)

    def start(self) -> None:
        self.cluster.start(timeout=120)
        self.spec = {"kind": "neostore", "masters": list(self.cluster.masters), "name": self.cluster.name}

    def master_pids(self) -> list[int]:
        processes = [self.cluster.master, *self.cluster.other_masters]
        return [process.process.pid for process in processes if process is not None]

    def stop(self) -> None:
        self.cluster.stop()

    def describe(self) -> str:
        return f"{self.masters_count} master(s), 3 storage nodes, 12 partitions, 2 replicas"

    def kill_leader(self) -> None:
        """kill -9 of the leading master (of the only one: started again, as a supervisor would)."""
        import signal

        from commit import Neostore

        processes = [self.cluster.master, *self.cluster.other_masters]
        index = Neostore.leader(self) if self.masters_count > 1 else 0  # type: ignore[arg-type]
        leader = processes[index]
        assert leader is not None
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait()
        if self.masters_count == 1:
            self.cluster.restart_master(index=0)


class ZeoServer(Zeo):
    kill_what = "runzeo (started again at once)"

    def master_pids(self) -> list[int]:
        return []

    def kill_leader(self) -> None:
        """kill -9 of runzeo, then runzeo again on the same port and FileStorage."""
        import signal
        import socket

        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        port = self.spec["port"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
                 "-f", os.path.join(self.dir, "Data.fs")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("runzeo did not listen again within 60 s")


def _masters_status(system: Any) -> tuple[int, int]:
    threads = rss = 0
    for pid in system.master_pids():
        one_threads, one_rss = _proc_status(pid)
        threads += one_threads
        rss += one_rss
    return threads, rss


RETRY_FOR = 180.0  # seconds a commit after the kill keeps being retried


def _commit_retrying(tm: Any, root: Any) -> None:
    """One increment, retried until it commits (the cluster recovering from the kill)."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            root["counter"]["n"] += 1
            tm.commit()
            return
        except Exception:  # noqa: BLE001 - disconnected, unavailable, conflict: again
            tm.abort()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(system: Any, clients: int, processes: int, commits: int, log: Any,
            kill_leader: bool = False) -> dict[str, Any]:
    import transaction
    import ZODB
    from persistent.mapping import PersistentMapping

    threads_before, rss_before = _masters_status(system)
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    started = time.monotonic()
    here = os.path.dirname(os.path.abspath(__file__))
    children = [subprocess.Popen([sys.executable, "-c", CLIENTS, json.dumps(system.spec), str(count), here],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for count in per_process if count]
    try:
        opened, failures = 0, []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError("a client process died while connecting")
            report = json.loads(line)
            opened += report["opened"]
            failures += report["failures"]
        connect_seconds = time.monotonic() - started
        log(f"  {opened} of {clients} clients connected in {connect_seconds:.1f} s"
            + (f"; failures: {failures}" if failures else ""))
        threads_with, rss_with = _masters_status(system)
        db = ZODB.DB(open_storage(system.spec))
        latencies, ends = [], {}
        try:
            tm = transaction.TransactionManager()
            root = db.open(tm).root()
            root["counter"] = PersistentMapping(n=0)
            tm.commit()
            for _ in range(commits):
                time.sleep(0.1)
                root["counter"]["n"] += 1
                begin = time.monotonic()
                tm.commit()
                end = time.monotonic()
                latencies.append(end - begin)
                ends[db.lastTransaction().hex()] = end
            after_kill: dict[str, float] = {}
            if kill_leader:
                time.sleep(1.0)
                killed = time.monotonic()
                system.kill_leader()
                log(f"  killed {system.kill_what}")
                for _ in range(commits):
                    _commit_retrying(tm, root)
                    after_kill[db.lastTransaction().hex()] = time.monotonic()
                    time.sleep(0.1)
            time.sleep(5.0 if kill_leader else 2.0)  # the last invalidations on their way
        finally:
            db.close()
        arrivals: dict[str, list[float]] = {}
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("report\n")
            child.stdin.flush()
            for tid, times in json.loads(child.stdout.readline()).items():
                arrivals.setdefault(tid, []).extend(times)
        fan_out, missed = [], 0
        for tid, end in ends.items():
            told = arrivals.get(tid, [])
            missed += opened - len(told)
            if told:
                fan_out.append(max(told) - end)
        recovery: dict[str, Any] = {}
        if kill_leader:
            first_told_all = [max(arrivals[tid]) for tid in after_kill if len(arrivals.get(tid, [])) >= opened]
            recovery = {
                "kill_to_first_commit_s": min(after_kill.values()) - killed,
                "kill_to_all_told_s": (min(first_told_all) - killed) if first_told_all else None,
                "after_kill_missed": sum(opened - len(arrivals.get(tid, [])) for tid in after_kill),
                "cache_resets": len(arrivals.get("reset", [])),
            }
        return {
            "clients": clients, "opened": opened, "connect_failures": len(failures),
            "connect_s": connect_seconds,
            "commit_p50_ms": statistics.median(latencies) * 1e3,
            "fan_out_p50_ms": statistics.median(fan_out) * 1e3 if fan_out else None,
            "fan_out_max_ms": max(fan_out) * 1e3 if fan_out else None,
            "invalidations_missed": missed,
            "master_threads": [threads_before, threads_with] if system.master_pids() else None,
            "master_rss_kib_per_client": ((rss_with - rss_before) / opened) if system.master_pids() and opened
            else None,
            **recovery,
        }
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            try:
                child.wait(120)
            except subprocess.TimeoutExpired:
                child.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="300,1000")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--commits", type=int, default=30)
    parser.add_argument("--systems", default="neostore,zeo")
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--kill-leader", action="store_true",
                        help="then kill -9 the leading master (ZEO: runzeo) and commit on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(count) for count in args.clients.split(",")]
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    results: dict[str, Any] = {"machine": machine_facts(), "runs": {}}
    for key in args.systems.split(","):
        for clients in counts:
            with tempfile.TemporaryDirectory(prefix="neostore-many-") as workdir:
                system: Any = NeostoreCluster(workdir, args.masters) if key == "neostore" else ZeoServer(workdir)
                log(f"{key}: {clients} clients in {args.processes} processes...")
                system.start()
                try:
                    results["runs"].setdefault(key, []).append(
                        measure(system, clients, args.processes, args.commits, log, args.kill_leader))
                finally:
                    system.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print()
    print(f"{results['machine']['date']}: {results['machine']['cpus']} CPUs; neostore: "
          f"{args.masters} master(s), 3 storage nodes, R=2; ZEO: runzeo on a FileStorage")
    print(f"{'system':10} {'clients':>7} {'connect s':>9} {'commit p50':>10} {'fan-out p50':>11} "
          f"{'max':>7} {'missed':>6} {'master threads':>15} {'KiB/client':>10}")
    for key, runs in results["runs"].items():
        for run in runs:
            threads = run["master_threads"]
            threads_text = f"{threads[0]} -> {threads[1]}" if threads else "-"
            per_client = run["master_rss_kib_per_client"]
            per_client_text = "-" if per_client is None else f"{per_client:.0f}"
            print(f"{key:10} {run['opened']:>7} {run['connect_s']:>9.1f} {run['commit_p50_ms']:>8.1f}ms "
                  f"{_ms(run['fan_out_p50_ms']):>11} {_ms(run['fan_out_max_ms']):>7} "
                  f"{run['invalidations_missed']:>6} {threads_text:>15} {per_client_text:>10}")
    if args.kill_leader:
        print()
        print("after kill -9 of the leading master (ZEO: of runzeo, started again at once):")
        print(f"{'system':10} {'clients':>7} {'first commit':>12} {'all told':>9} {'missed':>6} {'resets':>6}")
        for key, runs in results["runs"].items():
            for run in runs:
                told = run["kill_to_all_told_s"]
                print(f"{key:10} {run['opened']:>7} {run['kill_to_first_commit_s']:>11.1f}s "
                      f"{'never' if told is None else f'{told:.1f}s':>9} {run['after_kill_missed']:>6} "
                      f"{run['cache_resets']:>6}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


if __name__ == "__main__":
    sys.exit(main())
