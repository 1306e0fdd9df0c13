"""Cold reads side by side: neostore (with and without reference read-ahead), ZEO 6 + FileStorage,
RelStorage 4 on PostgreSQL.

    python benchmarks/cold_read.py [--objects 1000] [--tree 20000] [--repetitions 5]
                                   [--systems neostore,zeo,relstorage-pg] [--json]

One run, one machine, every server on 127.0.0.1, started as in
``benchmarks/commit.py`` (neostore: 3 masters, 3 storage nodes, 12
partitions, 2 replicas; RelStorage skipped when no PostgreSQL server can be
started).  Two databases are written once:

* *flat* (zodbshootout's cold read): a PersistentMapping of ``--objects``
  small persistent objects;
* *tree*: an OOBTree of ``--tree`` small persistent objects (its buckets
  and inner nodes are persistent objects too).

Each repetition opens a new storage client (not timed) and times a new
``ZODB.DB`` on it (empty caches: the read is cold; the DB loads the root)
and the read of every object's attribute.  neostore is measured twice: with reference read-ahead
(the ``read-ahead`` default) and with it off (0).  Reported: objects read
per second (medians), and for neostore the round trips (LoadBefore calls)
and what read-ahead brought, and how much of it was never read (here the
root's walk brings objects of the other database too).  A benchmark,
not a test: compare the columns of one run.
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

import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from neostore.client.storage import DEFAULT_READ_AHEAD  # noqa: E402

import commit as servers  # noqa: E402 - the same servers, started the same way

TREE_BATCH = 5000  # objects per transaction when writing the tree


def open_storage(spec: dict[str, Any], read_ahead: int | None) -> Any:
    if spec["kind"] == "neostore":
        from neostore.client import NeoStorage

        return NeoStorage(spec["masters"], spec["name"], read_ahead=read_ahead or 0)
    return servers.open_storage(spec)


def populate(spec: dict[str, Any], objects: int, tree_size: int) -> None:
    db = ZODB.DB(open_storage(spec, 0))
    try:
        with db.transaction() as conn:
            conn.root()["flat"] = PersistentMapping({i: PersistentMapping(attr=i) for i in range(objects)})
            conn.root()["tree"] = OOBTree()
        for start in range(0, tree_size, TREE_BATCH):
            with db.transaction() as conn:
                tree = conn.root()["tree"]
                for i in range(start, min(tree_size, start + TREE_BATCH)):
                    tree[f"key{i:08d}"] = PersistentMapping(attr=i)
    finally:
        db.close()


def read_cold(spec: dict[str, Any], read_ahead: int | None, which: str) -> dict[str, float]:
    """One cold read of database ``which``: objects/s, and neostore's counts."""
    storage = open_storage(spec, read_ahead)
    calls = getattr(storage, "load_calls", 0)
    began = time.perf_counter()  # ZODB.DB loads the root: that is part of the read
    db = ZODB.DB(storage, cache_size=1_000_000)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        values = conn.root()[which].values()
        total = sum(value["attr"] for value in values)
        elapsed = time.perf_counter() - began
        count = len(values) if which == "flat" else len(conn.root()[which])
        assert total == sum(range(count)), (which, total)
        figures: dict[str, float] = {"objects_per_second": count / elapsed, "objects": count}
        if spec["kind"] == "neostore":
            figures["round_trips"] = storage.load_calls - calls
            stats = storage.read_ahead_stats()
            figures["read_ahead_kib"] = stats.bytes / 1024
            figures["read_ahead_unread_kib"] = (stats.bytes - stats.used_bytes) / 1024
        tm.abort()
        conn.close()
        return figures
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--tree", type=int, default=20000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--systems", default="neostore,zeo,relstorage-pg")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = {"neostore": servers.Neostore, "zeo": servers.Zeo, "relstorage-pg": servers.RelStoragePG}
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="neostore-cold-read-") as workdir:
        for key in args.systems.split(","):
            try:
                system = kinds[key](os.path.join(workdir, key))
                system.start()
            except servers.Skip as why:
                print(f"{key}: skipped ({why})", file=sys.stderr)
                continue
            try:
                populate(system.spec, args.objects, args.tree)
                variants = ({f"{key} read-ahead": DEFAULT_READ_AHEAD, f"{key} no read-ahead": 0}
                            if key == "neostore" else {key: None})
                for which in ("flat", "tree"):
                    runs: dict[str, list[dict[str, float]]] = {label: [] for label in variants}
                    read_cold(system.spec, None if key != "neostore" else 0, which)  # warms the servers
                    for _ in range(args.repetitions):
                        for label, read_ahead in variants.items():  # alternating
                            runs[label].append(read_cold(system.spec, read_ahead, which))
                    for label, samples in runs.items():
                        results.setdefault(which, {})[label] = {
                            name: statistics.median(sample[name] for sample in samples) for name in samples[0]}
            finally:
                system.stop()
    if args.json:
        print(json.dumps({"objects": args.objects, "tree": args.tree, "repetitions": args.repetitions,
                          "results": results}, indent=2))
        return 0
    for which, rows in results.items():
        size = args.objects if which == "flat" else args.tree
        print(f"cold read, {which} ({size} objects), medians of {args.repetitions}:")
        print(f"  {'':26} {'objects/s':>10} {'round trips':>12} {'read-ahead KiB':>15} {'never read KiB':>15}")
        for label, row in rows.items():
            extra = (f"{row['round_trips']:>12.0f} {row['read_ahead_kib']:>15.1f} {row['read_ahead_unread_kib']:>15.1f}"
                     if "round_trips" in row else "")
            print(f"  {label:26} {row['objects_per_second']:>10.0f} {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
