"""Hundreds of clients on one master: every one connects, every one is told
of a commit, and the master still serves the others' calls without a
thread per connected client.

Each client's invalidation stream used to hold a thread of the master for
as long as it was connected: one of the sync gRPC server's 256 workers (the
clients past the 250th found none left for their connect: they timed out),
then its frames connection's thread.  Streams over frames are now served by
one pump thread (neostore/frames_pump.py): the master's threads must not
grow with the clients.
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
import sys, threading, time
from neostore.client import NeoStorage

class Recorder:  # a DB stand-in: what the invalidation stream hands to ZODB
    def __init__(self):
        self.tids = set()
    def invalidate(self, tid, oids):
        self.tids.add(tid)
    def invalidateCache(self):
        pass
    def transform_record_data(self, data):
        return data
    untransform_record_data = transform_record_data

masters, name, count = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
opened, failures = [], []
for _ in range(count):
    try:
        storage = NeoStorage(masters, name, connect_timeout=60)
        recorder = Recorder()
        storage.registerDB(recorder)
        opened.append((storage, recorder))
    except Exception as error:
        failures.append(str(error))
print(len(opened), len(failures), failures[:1], flush=True)
tid = bytes.fromhex(sys.stdin.readline().strip())  # a commit: wait until every client was told
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not all(tid in recorder.tids for _, recorder in opened):
    time.sleep(0.05)
print(sum(tid in recorder.tids for _, recorder in opened), flush=True)
sys.stdin.read()  # stay connected until told
for storage, _ in opened:
    storage.close()
"""


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_three_hundred_clients_are_told_of_a_commit_by_one_master_without_a_thread_each(
        tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="many", num_storages=1, num_partitions=2,
                           num_replicas=1)
    cluster.start()
    processes: list[subprocess.Popen[str]] = []
    assert cluster.master is not None
    master_pid = cluster.master.process.pid
    threads_before = _threads(master_pid)
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
        # 300 streams open: the master's threads did not grow with them
        # (a few for the pump and the calls that connected them).
        assert _threads(master_pid) < threads_before + 50, (threads_before, _threads(master_pid))
        # Another client still connects and commits; every client is told.
        db = ZODB.DB(NeoStorage(cluster.masters, "many", connect_timeout=60))
        try:
            with db.transaction() as connection:
                connection.root()["still"] = PersistentMapping(serving=True)
            tid = db.lastTransaction()
            tm = transaction.TransactionManager()
            assert db.open(tm).root()["still"]["serving"] is True
        finally:
            db.close()
        told = []
        for process in processes:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(tid.hex() + "\n")
            process.stdin.flush()
        for process in processes:
            assert process.stdout is not None
            told.append(int(process.stdout.readline()))
        assert told == [CLIENTS_PER_PROCESS] * PROCESSES, f"clients told of the commit, by process: {told}"
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
