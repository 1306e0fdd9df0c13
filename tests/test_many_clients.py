"""Hundreds of clients on one master: every one connects, and the master
still serves the others' calls.

Each client's invalidation stream holds a thread of the master for as
long as it is connected (its frames connection's; over gRPC, one of the
sync server's workers).  With 256 gRPC workers, the clients past the 250th
found none left for their connect: they timed out (3 processes x 100
clients: the last ones still connecting after 600 s).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster

pytestmark = pytest.mark.slow

PROCESSES = 2
CLIENTS_PER_PROCESS = 150  # 300 in all: past the old limit of 256 server threads

CLIENTS = """
import sys
from neostore.client import NeoStorage
masters, name, count = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
opened, failures = [], []
for _ in range(count):
    try:
        opened.append(NeoStorage(masters, name, connect_timeout=60))
    except Exception as error:
        failures.append(str(error))
print(len(opened), len(failures), failures[:1], flush=True)
sys.stdin.read()  # stay connected until told
for storage in opened:
    storage.close()
"""


def test_three_hundred_clients_connect_to_one_master_which_still_serves_commits(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="many", num_storages=1, num_partitions=2,
                           num_replicas=1)
    cluster.start()
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(PROCESSES):
            processes.append(subprocess.Popen(
                [sys.executable, "-c", CLIENTS, ",".join(cluster.masters), "many", str(CLIENTS_PER_PROCESS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        counts = []
        for process in processes:
            assert process.stdout is not None
            counts.append(process.stdout.readline().split(" ", 2))  # once all its clients are connected
        assert [int(opened) for opened, _, _ in counts] == [CLIENTS_PER_PROCESS] * PROCESSES, counts
        # With 300 streams open, another client still connects and commits.
        db = ZODB.DB(NeoStorage(cluster.masters, "many", connect_timeout=60))
        try:
            with db.transaction() as connection:
                connection.root()["still"] = PersistentMapping(serving=True)
            tm = transaction.TransactionManager()
            assert db.open(tm).root()["still"]["serving"] is True
        finally:
            db.close()
    finally:
        for process in processes:
            if process.poll() is None:
                assert process.stdin is not None
                process.stdin.close()
                try:
                    process.wait(120)
                except subprocess.TimeoutExpired:
                    process.kill()
        cluster.stop()
