"""A client of a cluster that went away fails in bounded time, and says so once.

``wait-timeout`` (ZConfig; ``wait_timeout`` for NeoStorage and zodburi)
bounds how long a load, a tpc_begin or a vote keeps trying masters and
replicas that do not answer; before it, a load waited 30 s per master
round and a read could ask the masters three times.  The invalidation
stream logs its break once, not once per retry.
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
