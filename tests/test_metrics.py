"""Every node's Prometheus endpoint, scraped over HTTP while a client works.

A real cluster (3 Raft masters, 2 storage nodes, in this process), a real
ZODB client, and ``urllib`` fetching ``/metrics``; the text is parsed with
prometheus_client's own parser.  The series must move by what the client
did: N commits are N Finish calls answered OK on the leader and N
transactions published by every master; each storage node votes N times
and writes them durably; a cold load is a LoadBefore on a storage node; a
caller naming the wrong cluster shows up as a WrongCluster outcome.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from prometheus_client.parser import text_string_to_metric_families

from neostore import errors, rpc
from neostore.protocol import common_pb2, master_pb2_grpc

from harness import ThreadCluster

COMMITS = 5
ROOT = pathlib.Path(__file__).resolve().parent.parent


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handled(samples: dict, method: str, code: str = "OK") -> float:
    return value(samples, "neostore_rpc_server_handled_total", method=method, code=code)


def settled_masters(cluster: ThreadCluster) -> dict[str, dict]:
    """Every master's samples, once each published as many commits as the
    leader (a follower applies a commit a little after the leader decides)."""
    deadline = time.monotonic() + 60
    while True:
        samples = {master.address: scrape(master.metrics_address) for master in cluster.master_nodes}
        counts = {value(s, "neostore_transactions_committed_total") for s in samples.values()}
        if len(counts) == 1:
            return samples
        assert time.monotonic() < deadline, f"the masters published different counts: {counts}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with ThreadCluster(str(tmp_path_factory.mktemp("metrics")), name="metrics", num_masters=3,
                       num_storages=2, num_partitions=4, num_replicas=2, metrics=True) as running:
        yield running


def test_every_node_serves_its_metrics_and_commits_move_them(cluster: ThreadCluster) -> None:
    cluster.wait_for_leader()
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as connection:
            connection.root()["counter"] = PersistentMapping(n=0)
        masters_before = settled_masters(cluster)
        storages_before = [scrape(storage.metrics_address) for storage in cluster.storages]
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        for n in range(COMMITS):
            connection.root()["counter"]["n"] = n + 1
            tm.commit()
        connection.close()
    finally:
        db.close()

    leaders = 0
    finished_ok = finishes = 0.0
    masters_after = settled_masters(cluster)
    for master in cluster.master_nodes:
        after, before = masters_after[master.address], masters_before[master.address]
        leaders += int(value(after, "neostore_master_leader"))
        assert value(after, "neostore_raft_term") >= 1
        assert value(after, "neostore_raft_commit_index") > value(before, "neostore_raft_commit_index")
        assert value(after, "neostore_cells", state="UP_TO_DATE") == 4 * 2
        assert value(after, "neostore_storage_nodes", state="RUNNING") == 2
        assert value(after, "neostore_lmdb_used_bytes", file="raft-log") > 0
        assert value(after, "neostore_lmdb_file_bytes", file="raft-log") >= value(
            after, "neostore_lmdb_used_bytes", file="raft-log")
        assert value(after, "neostore_lmdb_durable_writes_total", file="raft-log") > value(
            before, "neostore_lmdb_durable_writes_total", file="raft-log")
        # Every master publishes every commit to the clients it serves (a
        # follower once it applies it: settled_masters waited for that).
        published = (value(after, "neostore_transactions_committed_total")
                     - value(before, "neostore_transactions_committed_total"))
        assert published == COMMITS
        # The leader answered each Finish (summed: leadership may move on a busy machine).
        finished_ok += handled(after, "Master/Finish") - handled(before, "Master/Finish")
        finishes += (value(after, "neostore_rpc_server_handling_seconds_count", method="Master/Finish")
                     - value(before, "neostore_rpc_server_handling_seconds_count", method="Master/Finish"))
        if value(after, "neostore_master_leader"):
            assert value(after, "neostore_master_term") >= 1
    assert leaders == 1
    assert finished_ok == COMMITS
    assert finishes >= COMMITS  # with any refused (NotLeader) on the way

    for storage, before in zip(cluster.storages, storages_before, strict=True):
        after = scrape(storage.metrics_address)
        assert value(after, "neostore_storage_node_id") == storage.node_id
        assert value(after, "neostore_storage_cells", state="UP_TO_DATE") == 4  # R=2 on 2 nodes: every cell
        # Every written partition has a cell on each node: each votes each commit.
        assert handled(after, "Storage/Vote") - handled(before, "Storage/Vote") >= COMMITS
        writes = (value(after, "neostore_lmdb_durable_writes_total", file="storage")
                  - value(before, "neostore_lmdb_durable_writes_total", file="storage"))
        assert writes >= COMMITS
        assert value(after, "neostore_lmdb_used_bytes", file="storage") > 0


def test_a_cold_load_is_counted_with_its_latency(cluster: ThreadCluster) -> None:
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as connection:
            connection.root()["loaded"] = PersistentMapping(x=1)
        before = sum(value(scrape(s.metrics_address), "neostore_rpc_server_handling_seconds_count",
                           method="Storage/LoadBefore") for s in cluster.storages)
        # An empty cache and no read-ahead (the root's load would bring the mapping): every object is a load.
        fresh = ZODB.DB(cluster.client(read_ahead=0))
        try:
            with fresh.transaction() as connection:
                assert connection.root()["loaded"]["x"] == 1
        finally:
            fresh.close()
        after = [scrape(s.metrics_address) for s in cluster.storages]
    finally:
        db.close()
    loads = sum(value(a, "neostore_rpc_server_handling_seconds_count", method="Storage/LoadBefore")
                for a in after)
    assert loads >= before + 2  # the root and the mapping
    slowest_bucket = sum(value(a, "neostore_rpc_server_handling_seconds_bucket", method="Storage/LoadBefore",
                               le="+Inf") for a in after)
    assert slowest_bucket == loads


def test_the_invalidation_fan_out_lag_is_measured(cluster: ThreadCluster) -> None:
    """A client with its stream open hears of another's commits: the master
    serving its stream records how long each took to reach the stream."""
    def lag_count() -> float:
        return sum(value(scrape(m.metrics_address), "neostore_invalidation_lag_seconds_count")
                   for m in cluster.master_nodes)

    listener = cluster.client()  # its invalidation stream stays open
    writer = ZODB.DB(cluster.client())
    try:
        before = lag_count()
        with writer.transaction() as connection:
            connection.root()["lag"] = PersistentMapping(n=1)
        deadline = time.monotonic() + 60
        while lag_count() <= before:  # the stream takes the commit within milliseconds; 60 s bounds a broken one
            assert time.monotonic() < deadline, "no stream message counted in the fan-out lag"
            time.sleep(0.05)
        masters = [scrape(m.metrics_address) for m in cluster.master_nodes]
        count = sum(value(a, "neostore_invalidation_lag_seconds_count") for a in masters)
        assert sum(value(a, "neostore_invalidation_lag_seconds_bucket", le="+Inf") for a in masters) == count
        assert sum(value(a, "neostore_invalidation_lag_seconds_sum") for a in masters) >= 0.0
    finally:
        writer.close()
        listener.close()


def test_a_caller_of_another_cluster_is_counted_as_wrong_cluster(cluster: ThreadCluster) -> None:
    master = cluster.master_nodes[0]
    before = handled(scrape(master.metrics_address), "Master/GetClusterInfo", "WrongCluster")
    channel = rpc.make_channel(rpc.RpcConfig(cluster_name="another"), master.address)
    try:
        with pytest.raises(errors.WrongCluster):
            rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=10)
    finally:
        channel.close()
    after = handled(scrape(master.metrics_address), "Master/GetClusterInfo", "WrongCluster")
    assert after == before + 1


@pytest.mark.parametrize("command", ["neostore.master_node.main", "neostore.storage_node.main"])
def test_a_bad_metrics_address_is_refused_before_anything_starts(command: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, "-m", command, "--cluster", "c", "--masters", "127.0.0.1:1", "--data", str(tmp_path / "d"),
         "--metrics", "no-port-here"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "metrics address 'no-port-here' is not HOST:PORT" in done.stderr
    assert not (tmp_path / "d").exists()


def test_the_grafana_dashboard_uses_only_series_the_nodes_serve(cluster: ThreadCluster) -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana" / "neostore-dashboard.json").read_text())
    served = set()
    for node in [*cluster.master_nodes, *cluster.storages]:
        served.update(name for name, _ in scrape(node.metrics_address))
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    for expression in expressions:
        assert expression.count("(") == expression.count(")"), expression
        used = set(re.findall(r"neostore_[a-z_]+", expression))
        assert used and used <= served, (expression, used - served)
