"""An application restart with and without the client cache file (``cache-path``).

    python benchmarks/warm_restart.py [--objects 2000] [--page 200] [--rounds 5] [--json]

Starts a neostore cluster (1 master, 3 storage nodes, R=2, processes on
127.0.0.1), stores ``--objects`` small objects, then measures a process
restart as an application sees it, ``--rounds`` times each, alternating:

* *cold*: a new client without a cache file opens the database and reads
  a "page" of ``--page`` objects (every load goes to a storage node);
* *warm*: the same with the cache file that the previous client wrote when
  it closed (its objects come from the file; the masters are asked only
  for what changed since).

Reported: the time to the first page (opening the storage and the DB
included) and the loads per second of that page, medians.  A benchmark,
not a test: compare the two rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster


def _page(masters: list[str], name: str, page: int, cache_path: str | None) -> tuple[float, float, int, int]:
    """Open, read ``page`` objects: (seconds to the first page, loads/s, objects served by the client
    cache, calls to storage nodes for them)."""
    began = time.perf_counter()
    storage = NeoStorage(masters, name, cache_path=cache_path)
    # From before the DB's own load of the root: with read-ahead, that load may bring the whole page.
    hits, calls = storage._cache.hits, storage.load_calls
    db = ZODB.DB(storage, cache_size=10 * page)
    with db.transaction() as conn:
        items = conn.root()["items"]
        loading = time.perf_counter()
        total = sum(items[i]["n"] for i in range(page))
        done = time.perf_counter()
    assert total == sum(range(page))
    served, calls = storage._cache.hits - hits, storage.load_calls - calls
    db.close()  # writes the cache file, when there is one
    return done - began, page / (done - loading), served, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--page", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="neostore-warm-restart-") as workdir:
        cluster = LocalCluster(os.path.join(workdir, "cluster"), name="warm-restart")
        cluster.start()
        try:
            masters = list(cluster.masters)
            db = ZODB.DB(NeoStorage(masters, cluster.name))
            with db.transaction() as conn:
                conn.root()["items"] = PersistentMapping(
                    {i: PersistentMapping(n=i, text="x" * 100) for i in range(args.objects)})
            db.close()
            cache_path = os.path.join(workdir, "client.cache")
            _page(masters, cluster.name, args.page, cache_path)  # the first file
            rows: dict[str, list[tuple[float, float, int, int]]] = {"cold": [], "warm": []}
            for _ in range(args.rounds):
                rows["cold"].append(_page(masters, cluster.name, args.page, None))
                rows["warm"].append(_page(masters, cluster.name, args.page, cache_path))
        finally:
            cluster.stop()
    figures: dict[str, Any] = {
        kind: {"first_page_ms": 1000 * statistics.median(r[0] for r in runs),
               "loads_per_second": statistics.median(r[1] for r in runs),
               "served_by_client_cache": statistics.median(r[2] for r in runs),
               "storage_calls": statistics.median(r[3] for r in runs)}
        for kind, runs in rows.items()}
    if args.json:
        print(json.dumps({"objects": args.objects, "page": args.page, "rounds": args.rounds, **figures}, indent=2))
        return 0
    print(f"restart, then a page of {args.page} objects (of {args.objects}); medians of {args.rounds} rounds")
    print(f"{'':6} {'first page':>12} {'loads/s':>10} {'from the client cache':>22} {'storage calls':>14}")
    for kind, row in figures.items():
        print(f"{kind:6} {row['first_page_ms']:>9.1f} ms {row['loads_per_second']:>10.0f} "
              f"{row['served_by_client_cache']:>22.0f} {row['storage_calls']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
