"""Bringing a database in: neostore's import next to ZODB's copy into FileStorage and ZEO.

    python benchmarks/import_speed.py [--transactions 3000] [--batch-records 2000] [--json]

Builds a FileStorage with a history like an application's (each transaction
adds 3 entries to one OOBTree, whose buckets split and change, and replaces
one of 300 documents in a PersistentMapping; users and notes vary), then
copies it, in turn and on this machine:

* into a new FileStorage (``copyTransactionsFrom``, what zodbconvert does);
* into ZEO 6 on a FileStorage (``runzeo`` started here; ClientStorage's
  ``copyTransactionsFrom``);
* into neostore, 3 masters + 3 storage nodes, 12 partitions, 2 replicas
  (neostore.launcher.LocalCluster): with ``neoctl import`` (the Importer,
  restore batches of ``--batch-records`` records), then ``--verify``; and, into a second
  cluster, with ``copyTransactionsFrom`` (what zodbconvert does).

Prints seconds, transactions/s, records/s and MB/s for each.  A benchmark,
not a test: one run on a shared machine; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import transaction
import ZODB
import ZODB.FileStorage
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from neostore.launcher import free_port  # a port below the ephemeral range: nothing takes it meanwhile

START_TIMEOUT = 60.0


def build_source(path: str, count: int) -> tuple[int, int, int]:
    """The source FileStorage; (transactions, records, bytes of data)."""
    storage = ZODB.FileStorage.FileStorage(path, create=True)
    db = ZODB.DB(storage)
    tm = transaction.TransactionManager()
    root = db.open(tm).root()
    with tm:
        root["tree"], root["docs"] = OOBTree(), PersistentMapping()
    chance = random.Random(1)
    for i in range(count):
        with tm as txn:
            txn.setUser(f"user{i % 5}")
            txn.note(f"edit {i}")
            for _ in range(3):
                root["tree"][chance.randrange(10**6)] = "x" * chance.randrange(10, 400)
            root["docs"][f"doc-{i % 300}"] = PersistentMapping(version=i, text="y" * 200)
    db.close()
    storage = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        transactions = records = size = 0
        for txn in storage.iterator():
            transactions += 1
            for record in txn:
                records += 1
                size += len(record.data or b"")
        return transactions, records, size
    finally:
        storage.close()


def open_source(path: str) -> ZODB.FileStorage.FileStorage:
    return ZODB.FileStorage.FileStorage(path, read_only=True)


def timed(run: Callable[[], Any]) -> float:
    started = time.monotonic()
    run()
    return time.monotonic() - started


def copy_into(destination: Any, source_path: str) -> float:
    source = open_source(source_path)
    try:
        return timed(lambda: destination.copyTransactionsFrom(source))
    finally:
        source.close()
        destination.close()


def into_zeo(workdir: str, source_path: str) -> float:
    from ZEO.ClientStorage import ClientStorage

    port = free_port()
    log_path = os.path.join(workdir, "runzeo.log")
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
                                   "-f", os.path.join(workdir, "zeo.fs")],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"runzeo did not start (log: {log_path})") from None
                time.sleep(0.05)
        return copy_into(ClientStorage(("127.0.0.1", port), wait_timeout=START_TIMEOUT), source_path)
    finally:
        server.terminate()
        server.wait(30)


def neostore_cluster(workdir: str) -> Any:
    from neostore.launcher import LocalCluster

    cluster = LocalCluster(workdir, name="import-bench", num_masters=3, num_storages=3,
                           num_partitions=12, num_replicas=2)
    cluster.start(timeout=START_TIMEOUT)
    return cluster


def into_neostore_import(workdir: str, source_path: str, batch_records: int) -> tuple[float, float, int]:
    """(import seconds, verify seconds, differences found)."""
    from neostore import importer
    from neostore.client import NeoStorage

    cluster = neostore_cluster(workdir)
    try:
        def new_client() -> NeoStorage:
            return NeoStorage(cluster.masters, cluster.name)

        source = open_source(source_path)
        try:
            seconds = timed(lambda: importer.Importer(source, new_client, batch_records=batch_records).run())
            destination = new_client()
            try:
                verification = importer.verify(source, destination)
            finally:
                destination.close()
        finally:
            source.close()
        return seconds, verification.seconds, len(verification.differences)
    finally:
        cluster.stop()


def into_neostore_copy(workdir: str, source_path: str) -> float:
    from neostore.client import NeoStorage

    cluster = neostore_cluster(workdir)
    try:
        return copy_into(NeoStorage(cluster.masters, cluster.name), source_path)
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--batch-records", type=int, default=2000, help="neoctl import's --batch-records")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="neostore-import-bench-")
    try:
        source_path = os.path.join(workdir, "source.fs")
        transactions, records, size = build_source(source_path, args.transactions)
        print(f"source: FileStorage, {transactions:,} transactions, {records:,} records, {size / 1e6:.1f} MB",
              file=sys.stderr)
        rows: list[dict[str, Any]] = []

        def row(name: str, seconds: float, **extra: Any) -> None:
            rows.append({"destination": name, "seconds": round(seconds, 2),
                         "transactions_per_s": round(transactions / seconds, 1),
                         "records_per_s": round(records / seconds, 1),
                         "mb_per_s": round(size / 1e6 / seconds, 2), **extra})
            print(f"  {name}: {seconds:.1f}s", file=sys.stderr)

        row("FileStorage (copyTransactionsFrom)",
            copy_into(ZODB.FileStorage.FileStorage(os.path.join(workdir, "copy.fs"), create=True), source_path))
        zeo_dir = os.path.join(workdir, "zeo")
        os.makedirs(zeo_dir)
        row("ZEO 6 + FileStorage (copyTransactionsFrom)", into_zeo(zeo_dir, source_path))
        seconds, verify_seconds, differences = into_neostore_import(
            os.path.join(workdir, "neo-import"), source_path, args.batch_records)
        row(f"neostore (neoctl import, batches of {args.batch_records} records)", seconds,
            verify_seconds=round(verify_seconds, 2), differences=differences)
        row("neostore (copyTransactionsFrom, as zodbconvert)",
            into_neostore_copy(os.path.join(workdir, "neo-copy"), source_path))
        if args.json:
            print(json.dumps({"transactions": transactions, "records": records, "bytes": size, "rows": rows},
                             indent=2))
        else:
            print(f"{transactions:,} transactions, {records:,} records, {size / 1e6:.1f} MB; "
                  "neostore: 3 masters, 3 storage nodes, 12 partitions, 2 replicas")
            print(f"{'destination':<48} {'seconds':>8} {'txn/s':>8} {'records/s':>10} {'MB/s':>6}")
            for entry in rows:
                print(f"{entry['destination']:<48} {entry['seconds']:>8.1f} {entry['transactions_per_s']:>8,.0f} "
                      f"{entry['records_per_s']:>10,.0f} {entry['mb_per_s']:>6.2f}")
            neo = rows[2]
            print(f"neoctl import --verify: {neo['verify_seconds']:.1f}s, {neo['differences']} difference(s)")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
