"""Data movement: catch-up of a storage node that missed N megabytes, then rebalancing.

    python benchmarks/catch_up.py [--megabytes 1024] [--object-kb 100] [--json]

Starts 1 master and 2 storage nodes as processes (R=2, so both hold every
partition), stops storage 2, commits ``--megabytes`` of incompressible
object data through ZODB (transactions of ``--per-transaction`` objects of
``--object-kb`` KiB), starts storage 2 again and measures the time from its
restart until every one of its cells is UP_TO_DATE, with the progress the
master shows (``Admin.GetReplication``) once a second.  Prints MB/s and
objects/s of the catch-up, and the write unavailability the clients saw
while the node was stopped (failed commits: expected none with R=2).

Then a second catch-up of the same node after a few more commits shows the
checksum skipping: most chunks are identical and are not copied.

Last, rebalancing: a third storage node joins (``neoctl add-node``: the
planner moves a third of the cells to it) while a client commits small
transactions; prints the time until every cell is UP_TO_DATE, the bytes
moved, and the client's commits per second during the move next to the
same client's rate just before it.

A benchmark, not a test: one run, this machine, figures to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore import rpc
from neostore.client import NeoStorage
from neostore.launcher import LocalCluster
from neostore.partition_table import CellState, PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc


def admin(cluster: LocalCluster) -> master_pb2_grpc.AdminStub:
    return master_pb2_grpc.AdminStub(rpc.make_channel(cluster.rpc, cluster.masters[0]))


def out_of_date(stub: master_pb2_grpc.AdminStub) -> int:
    table = PartitionTable.from_proto(rpc.call(stub.GetPartitionTable, common_pb2.Empty(), timeout=10))
    return sum(1 for row in table.rows for cell in row if cell.state == CellState.OUT_OF_DATE)


def write(db: ZODB.DB, megabytes: int, object_kb: int, per_transaction: int) -> dict[str, Any]:
    objects = megabytes * 1024 // object_kb
    failed = 0
    started = time.monotonic()
    with db.transaction() as conn:
        conn.root()["blobs"] = PersistentMapping()
    written = 0
    while written < objects:
        try:
            with db.transaction() as conn:
                blobs = conn.root()["blobs"]
                for _ in range(min(per_transaction, objects - written)):
                    blobs[written] = PersistentMapping(data=os.urandom(object_kb * 1024))
                    written += 1
        except Exception as error:  # noqa: BLE001 - counted: write unavailability
            failed += 1
            print(f"  commit failed: {error}", file=sys.stderr)
            transaction.abort()
        if written % (per_transaction * 50) == 0:
            print(f"  wrote {written}/{objects} objects", file=sys.stderr)
    return {"objects": objects, "seconds": time.monotonic() - started, "failed_commits": failed}


def catch_up(cluster: LocalCluster, index: int, stub: master_pb2_grpc.AdminStub) -> dict[str, Any]:
    started = time.monotonic()
    cluster.storages[index].start()
    last: Any = None
    while out_of_date(stub):
        cells = rpc.call(stub.GetReplication, common_pb2.Empty(), timeout=10).cells
        for cell in cells:
            last = cell
            print(f"  partition {cell.partition}: {cell.bytes_done / 1e6:.0f} MB done, "
                  f"{cell.bytes_left / 1e6:.0f} MB left, {cell.rate / 1e6:.1f} MB/s, "
                  f"{cell.records_copied} records copied, {cell.chunks_skipped} chunks skipped", file=sys.stderr)
        time.sleep(1.0)
    del last
    return {"seconds": time.monotonic() - started}


class Ticker:
    """A client committing one small transaction after another, counting them."""

    def __init__(self, db: ZODB.DB) -> None:
        import threading

        self.db = db
        self.times: list[float] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with self.db.transaction() as conn:
            conn.root()["ticks"] = PersistentMapping(n=0)
        while not self.stop.is_set():
            try:
                with self.db.transaction() as conn:
                    conn.root()["ticks"]["n"] += 1
                self.times.append(time.monotonic())
            except Exception:  # noqa: BLE001 - counted
                self.failed += 1
                transaction.abort()

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.times if start <= t < end) / max(end - start, 1e-9)


def rebalance(cluster: LocalCluster, stub: master_pb2_grpc.AdminStub, db: ZODB.DB) -> dict[str, Any]:
    ticker = Ticker(db)
    time.sleep(10.0)  # the rate before
    node = cluster.storage_process(2)
    node.start()
    cluster.storages.append(node)
    rpc.call(stub.AddNodes, master_pb2.AddNodesRequest(node_ids=[node.node_id]), timeout=30)
    started = time.monotonic()
    reply = rpc.call(stub.Tweak, master_pb2.TweakRequest(), timeout=30)
    while out_of_date(stub):
        time.sleep(0.5)
    ended = time.monotonic()
    time.sleep(1.0)
    ticker.stop.set()
    ticker.thread.join(30)
    before = ticker.rate(started - 10.0, started)
    during = ticker.rate(started, ended)
    return {"seconds": ended - started, "cells_moved": len(reply.moves),
            "commits_per_s_before": before, "commits_per_s_during": during,
            "failed_commits": ticker.failed}


def storage_stats(cluster: LocalCluster, index: int) -> dict[str, int]:
    """Replication totals from the storage node's log (its replicator logs each cell)."""
    copied = skipped = chunks_copied = 0
    path = os.path.join(cluster.log_dir, f"storage-{index}.log")
    with open(path) as log:
        for line in log:
            if "replicated up to" in line:
                # "... (N records copied, S chunks skipped, C copied)..."
                inside = line.split("(", 1)[1].split(")", 1)[0]
                parts = [int(p.strip().split()[0]) for p in inside.split(",")]
                copied += parts[0]
                skipped += parts[1]
                chunks_copied += parts[2]
    return {"records_copied": copied, "chunks_skipped": skipped, "chunks_copied": chunks_copied}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--object-kb", type=int, default=100)
    parser.add_argument("--per-transaction", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="neostore-catch-up-") as data:
        cluster = LocalCluster(data, name="catch-up", num_storages=2, num_replicas=2)
        cluster.start()
        try:
            stub = admin(cluster)
            db = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
            cluster.storages[1].stop()
            print(f"storage 2 stopped; writing {args.megabytes} MB", file=sys.stderr)
            written = write(db, args.megabytes, args.object_kb, args.per_transaction)
            print(f"wrote {written['objects']} objects in {written['seconds']:.0f}s; restarting storage 2",
                  file=sys.stderr)
            first = catch_up(cluster, 1, stub)
            first.update(storage_stats(cluster, 1))
            megabytes = written["objects"] * args.object_kb / 1024
            first["mb_per_s"] = megabytes / first["seconds"]
            first["objects_per_s"] = written["objects"] / first["seconds"]
            # A second, short absence: nearly every chunk is identical.
            cluster.storages[1].stop()
            with db.transaction() as conn:
                for i in range(20):
                    conn.root()["blobs"][i]["data"] = os.urandom(args.object_kb * 1024)
            second = catch_up(cluster, 1, stub)
            totals = storage_stats(cluster, 1)
            second.update({key: totals[key] - first[key] for key in totals})
            print("adding a third storage node and rebalancing", file=sys.stderr)
            moved = rebalance(cluster, stub, db)
            moved.update(storage_stats(cluster, 2))
            moved["mb_per_s"] = moved["records_copied"] and (
                written["objects"] * args.object_kb / 1024 * moved["cells_moved"] / 12) / moved["seconds"]
            db.close()
        finally:
            cluster.stop()
    result = {"written": written, "first_catch_up": first, "second_catch_up": second,
              "rebalance": moved, "megabytes": args.megabytes}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"write while one of 2 replicas was down: {written['objects']} objects "
              f"({args.megabytes} MB) in {written['seconds']:.1f}s, failed commits: {written['failed_commits']}")
        print(f"catch-up of {args.megabytes} MB: {first['seconds']:.1f}s = {first['mb_per_s']:.1f} MB/s, "
              f"{first['objects_per_s']:.0f} objects/s ({first['records_copied']} records copied, "
              f"{first['chunks_copied']} chunks copied, {first['chunks_skipped']} skipped)")
        print(f"catch-up after 20 more objects: {second['seconds']:.1f}s ({second['records_copied']} records "
              f"copied, {second['chunks_copied']} chunks copied, {second['chunks_skipped']} skipped)")
        print(f"rebalance onto a third node: {moved['cells_moved']} of 24 cells moved in {moved['seconds']:.1f}s "
              f"(~{moved['mb_per_s']:.1f} MB/s, {moved['records_copied']} records copied); client commits/s "
              f"{moved['commits_per_s_before']:.1f} before, {moved['commits_per_s_during']:.1f} during, "
              f"failed commits: {moved['failed_commits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
