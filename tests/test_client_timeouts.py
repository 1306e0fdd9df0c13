"""A client of a cluster that went away fails in bounded time, and says so once.

``wait-timeout`` (ZConfig; ``wait_timeout`` for NeoStorage and zodburi)
bounds how long a load, a tpc_begin or a vote keeps trying masters and
replicas that do not answer; before it, a load waited 30 s per master
round and a read could ask the masters three times; a master that hangs
(SIGSTOP) fails an idempotent call at the wait-timeout instead of its 60 s
RPC timeout.  The invalidation stream logs its break once, not once per
retry.
"""

from __future__ import annotations

import logging
import pathlib
import time

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.config import storageFromString

from neostore.client.exceptions import ClusterUnavailableError
from neostore.ids import p64

from harness import ThreadCluster

WAIT_TIMEOUT = 1.0
#: Generous: the point is "seconds, not the 30 s default nor minutes", on a busy machine.
BOUND = WAIT_TIMEOUT + 15.0


def stop_nodes(cluster: ThreadCluster) -> None:
    for master in cluster.master_nodes:
        master.stop()
    for storage in cluster.storages:
        storage.stop()


def test_loads_and_commits_fail_within_the_wait_timeout_once_the_cluster_is_gone(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    cluster = ThreadCluster(str(tmp_path), name="gone", num_storages=2, num_partitions=4).start()
    try:
        db = ZODB.DB(cluster.client(wait_timeout=WAIT_TIMEOUT))
        with db.transaction() as connection:
            connection.root()["a"] = PersistentMapping(n=1)
            connection.root()["b"] = PersistentMapping(n=1)
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        root = connection.root()
        root["a"]["n"] = 2
        caplog.set_level(logging.DEBUG, logger="neostore.client.cluster")
        stop_nodes(cluster)

        started = time.monotonic()
        with pytest.raises(ClusterUnavailableError):
            tm.commit()
        assert time.monotonic() - started < BOUND

        tm.abort()
        connection.cacheMinimize()  # every object must be loaded again
        started = time.monotonic()
        with pytest.raises(ClusterUnavailableError):
            root["b"]["n"]
        assert time.monotonic() - started < BOUND

        # The stream kept retrying (each retry a DEBUG line); its break was a WARNING once.
        deadline = time.monotonic() + 120
        while sum("invalidation stream from master" in r.getMessage() and r.levelno == logging.DEBUG
                  for r in caplog.records) < 3:
            assert time.monotonic() < deadline, "the invalidation stream did not retry"
            time.sleep(0.1)
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno >= logging.WARNING and "invalidation stream" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "broke" in warnings[0]
        connection.close()
        db.close()
    finally:
        cluster.stop()


def test_a_finish_whose_outcome_nobody_can_tell_fails_in_bounded_time_saying_so(tmp_path: pathlib.Path) -> None:
    """The masters go away between vote and finish: the Finish fails, and
    so does every question about the outcome.  tpc_finish then gives up
    after max(OUTCOME_TIMEOUT, wait-timeout), not minutes, and its error
    says the outcome is unknown (not that the transaction failed)."""
    from ZODB.Connection import TransactionMetaData

    from neostore.client.commit import OUTCOME_TIMEOUT

    cluster = ThreadCluster(str(tmp_path), name="no-outcome", num_storages=2, num_partitions=4).start()
    try:
        storage = cluster.client(wait_timeout=WAIT_TIMEOUT)
        oid = storage.new_oid()
        txn = TransactionMetaData()
        storage.tpc_begin(txn)
        storage.store(oid, None, b"data", "", txn)
        storage.tpc_vote(txn)
        for master in cluster.master_nodes:
            master.stop()
        started = time.monotonic()
        with pytest.raises(ClusterUnavailableError, match="outcome .* is unknown: it may have committed"):
            storage.tpc_finish(txn)
        assert time.monotonic() - started < OUTCOME_TIMEOUT + BOUND
        storage.close()
    finally:
        cluster.stop()


def test_wait_timeout_is_a_zconfig_key(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path), name="keyed", num_storages=1, num_partitions=2, num_replicas=1) as cluster:
        storage = storageFromString(f"""
            %import neostore
            <neostore>
              master-nodes {' '.join(cluster.masters)}
              name keyed
              wait-timeout 2.5
            </neostore>
        """)
        try:
            assert storage._cluster.wait_timeout == 2.5
        finally:
            storage.close()


@pytest.mark.slow
@pytest.mark.process
def test_a_hung_master_fails_idempotent_calls_in_about_the_wait_timeout(tmp_path: pathlib.Path) -> None:
    """A master that stops answering (SIGSTOP: paused, not gone, so no
    connection error comes) used to hold each call for its 60 s RPC
    timeout; an idempotent call (Begin, NewOids) now gives up at the
    wait-timeout, MIN_CALL_SECONDS at least."""
    import os
    import signal

    from ZODB.Connection import TransactionMetaData

    from neostore.client import NeoStorage
    from neostore.client.cluster import MIN_CALL_SECONDS, RPC_TIMEOUT
    from neostore.launcher import LocalCluster

    cluster = LocalCluster(str(tmp_path / "cluster"), name="hung", num_masters=1, num_storages=1, num_replicas=1)
    cluster.start()
    storage = None
    assert cluster.master is not None and cluster.master.process is not None
    pid = cluster.master.process.pid
    try:
        storage = NeoStorage(cluster.masters, cluster.name, wait_timeout=WAIT_TIMEOUT)
        os.kill(pid, signal.SIGSTOP)
        bound = MIN_CALL_SECONDS + 15.0  # generous on a busy machine, and far below RPC_TIMEOUT
        assert bound < RPC_TIMEOUT
        for what, call in (("new_oid", storage.new_oid),
                           ("tpc_begin", lambda: storage.tpc_begin(TransactionMetaData(), p64(1 << 60)))):
            started = time.monotonic()
            with pytest.raises(ClusterUnavailableError):
                call()
            assert time.monotonic() - started < bound, f"{what} waited for the RPC timeout"
    finally:
        os.kill(pid, signal.SIGCONT)
        if storage is not None:
            storage.close()
        cluster.stop()
