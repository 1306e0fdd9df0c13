"""Single-client latency: neostore next to ZEO 6 + FileStorage, same machine.

    python benchmarks/latency.py [--rounds 200] [--json]

Starts both servers as separate processes on 127.0.0.1 (neostore: 1 master
and 3 storage nodes, R=2, via neostore.launcher.LocalCluster; ZEO: runzeo on
a FileStorage), then measures through ZODB's storage API:

* load (cold): ``loadBefore`` of an object not in the client's cache;
* read of 100 objects by a new client (empty cache) through ZODB, one
  load each, and after ``Connection.prefetch`` of them all (neostore: one
  ``LoadBeforeMany`` per storage node; ZEO: its asynchronous prefetch);
* commit of 1 object, and of 100 objects (through ``ZODB.DB``).

Prints median and 90th percentile in milliseconds.  A benchmark, not a
test: these machines are shared and noisy; compare the two columns of one
run, not runs of different days.
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
from collections.abc import Callable
from typing import Any

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.utils import maxtid

from neostore.launcher import LocalCluster, free_port


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(len(ordered) * 0.9) - 1] * 1000,
    }


def measure(open_storage: Callable[[], Any], rounds: int) -> dict[str, dict[str, float]]:
    db = ZODB.DB(open_storage())
    with db.transaction() as conn:
        root = conn.root()
        for i in range(100):
            root[i] = PersistentMapping(value=0)
    conn = db.open()
    root = conn.root()
    one, hundred = [], []
    for r in range(rounds):
        root[r % 100]["value"] += 1
        started = time.perf_counter()
        transaction.commit()
        one.append(time.perf_counter() - started)
    for _ in range(max(rounds // 4, 10)):
        for i in range(100):
            root[i]["value"] += 1
        started = time.perf_counter()
        transaction.commit()
        hundred.append(time.perf_counter() - started)
    oids = [root[i]._p_oid for i in range(100)]
    conn.close()
    db.close()
    loads = []
    for _ in range(max(rounds // 100, 2)):
        storage = open_storage()  # a new client: an empty cache
        for oid in oids:
            started = time.perf_counter()
            storage.loadBefore(oid, maxtid)
            loads.append(time.perf_counter() - started)
        storage.close()
    cold_reads = {False: [], True: []}
    for _ in range(max(rounds // 20, 5)):
        for prefetched in (False, True):
            cold_reads[prefetched].append(read_all_cold(open_storage, 100, prefetched))
    return {
        "load_cold": percentiles(loads),
        "read_100_cold": percentiles(cold_reads[False]),
        "read_100_prefetched": percentiles(cold_reads[True]),
        "commit_1_object": percentiles(one),
        "commit_100_objects": percentiles(hundred),
    }


def read_all_cold(open_storage: Callable[[], Any], count: int, prefetched: bool) -> float:
    """Seconds a new client takes to read objects ``0 .. count - 1`` under
    the root, one load each, or after ``Connection.prefetch`` of them all."""
    db = ZODB.DB(open_storage())  # a new client: an empty cache
    try:
        conn = db.open()
        root = conn.root()
        items = [root[i] for i in range(count)]  # ghosts: nothing of them loaded yet
        started = time.perf_counter()
        if prefetched:
            conn.prefetch(items)
        for item in items:
            item["value"]
        return time.perf_counter() - started
    finally:
        db.close()


def run_neostore(workdir: str, rounds: int) -> dict[str, Any]:
    from neostore.client import NeoStorage

    with LocalCluster(os.path.join(workdir, "neostore"), name="bench") as cluster:
        return measure(lambda: NeoStorage(cluster.masters, "bench"), rounds)


def run_zeo(workdir: str, rounds: int) -> dict[str, Any]:
    from ZEO.ClientStorage import ClientStorage

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
         "-f", os.path.join(workdir, "zeo.fs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ClientStorage(("127.0.0.1", port), wait_timeout=1).close()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return measure(lambda: ClientStorage(("127.0.0.1", port)), rounds)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        results = {"neostore": run_neostore(workdir, args.rounds), "zeo": run_zeo(workdir, args.rounds)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'operation':22} {'neostore median/p90 ms':>24} {'ZEO median/p90 ms':>20}")
    for operation in results["neostore"]:
        neo, zeo = results["neostore"][operation], results["zeo"][operation]
        print(f"{operation:22} {neo['median_ms']:>11.2f} / {neo['p90_ms']:<10.2f}"
              f" {zeo['median_ms']:>8.2f} / {zeo['p90_ms']:<8.2f}")


if __name__ == "__main__":
    main()
