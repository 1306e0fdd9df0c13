"""kill -9 in the middle of pipelined, batched commits from many clients.

Three ``neo-master`` processes (Raft), three storage nodes, two replicas
(:class:`~neostore.launcher.LocalCluster`).  Eight client threads, each with
its own storage connection, commit continuously on their own objects: at
any moment several transactions are voting, deciding (many per Raft entry)
and being applied (many per ``Storage.Commit`` to a node, one LMDB write
each), and decisions are published before their Commit orders arrive.
Into that load, in turn: kill -9 of the Raft leader, of a follower and of
a storage node, each restarted once commits resumed without it.

Then, from a fresh client and the cluster's own tools:

* every acknowledged (TID, value) is there, read at its TID;
* none was applied twice (the values in each object's history are
  distinct); TIDs strictly increase per client and are globally unique;
* commits resumed after every fault;
* every cell caught up (``neoctl wait``) and the replicas are identical
  (``neoctl check``: every partition compared on both replicas).
"""

from __future__ import annotations

import json
import pathlib
import time

import pytest
from test_master_failover import Writer
from test_master_faults import RESUME_LIMIT, _acknowledged_after, _check_everything, _close, _leader, _master, _wait

from neostore.launcher import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.process]

NUM_CLIENTS = 8
CATCH_UP_SECONDS = 180  # for `neoctl wait`: the restarted storage node replicates what it missed


def _start(cluster: LocalCluster) -> list[Writer]:
    writers = [Writer(cluster, f"client-{i}") for i in range(NUM_CLIENTS)]
    for writer in writers:
        writer.setup()
    for writer in writers:
        writer.thread.start()
    return writers


def _committed_since(writers: list[Writer], moment: float, count: int) -> bool:
    """Whether at least ``count`` commits were acknowledged after ``moment``."""
    return sum(1 for writer in writers for _, _, when in list(writer.acknowledged) if when > moment) >= count


def _fault(writers: list[Writer], what: str, kill: object) -> float:
    """Inject ``kill()`` under load; the moment it happened, once commits resumed."""
    waiting = time.monotonic()
    _wait(lambda: _committed_since(writers, waiting, NUM_CLIENTS), RESUME_LIMIT, "commits flowing before the fault")
    moment = time.monotonic()
    kill()  # type: ignore[operator]
    print(f"\nkill -9 {what}")
    resumed = _wait(lambda: _acknowledged_after(writers, moment), RESUME_LIMIT, f"a commit after killing {what}")
    print(f"  first commit acknowledged after the kill: {resumed:.2f}s")
    return moment


def check_replicas(cluster: LocalCluster) -> None:
    """Every cell caught up (``neoctl wait``) and every partition compared
    equal on its two replicas (``neoctl check``)."""
    cluster._neoctl("wait", "--timeout", str(CATCH_UP_SECONDS), "--quiet")
    partitions = json.loads(cluster._neoctl("check"))  # raises unless every partition is consistent
    assert len(partitions) == cluster.num_partitions
    for row in partitions:
        assert row["result"] == "ok", row
        assert len(row["replicas"]) == 2, f"partition {row['partition']}: not compared on 2 replicas"


def test_kill_9_of_leader_follower_and_storage_node_under_batched_commits(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="commit-faults", num_masters=3,
                           num_storages=3, num_replicas=2)
    cluster.start()
    writers: list[Writer] = []
    try:
        writers = _start(cluster)
        faults: list[float] = []

        leader = cluster.master_addresses.index(_leader(cluster))
        faults.append(_fault(writers, f"the leader (master {leader + 1})", _master(cluster, leader).kill))
        cluster.restart_master(index=leader)

        new_leader = _leader(cluster)
        follower = next(i for i, a in enumerate(cluster.master_addresses) if a != new_leader)
        faults.append(_fault(writers, f"a follower (master {follower + 1})", _master(cluster, follower).kill))
        cluster.restart_master(index=follower)

        faults.append(_fault(writers, "storage node process 0", cluster.storages[0].kill))
        _wait(lambda: _committed_since(writers, faults[-1], 10 * NUM_CLIENTS), RESUME_LIMIT,
              "commits on the remaining replicas")
        cluster.restart_storage(0)

        _wait(lambda: all(any(when > faults[-1] for _, _, when in list(w.acknowledged)) for w in writers),
              RESUME_LIMIT, "every client to commit after the last fault")
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.thread.join(90)
            assert not writer.thread.is_alive(), f"{writer.name} is stuck"

        _check_everything(cluster, writers, faults)
        check_replicas(cluster)
    finally:
        _close(writers, cluster)
