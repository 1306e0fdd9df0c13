"""Master faults at the process level, under load: kill -9 and restart, SIGSTOP / SIGCONT.

Three ``neo-master`` processes (Raft) and three storage nodes
(:class:`~neostore.launcher.LocalCluster`); client threads commit
continuously, each on its own object, each recording every TID tpc_finish
acknowledged (the :class:`Writer` of ``test_master_failover``).  After the
faults, a fresh client reads everything back:

* every acknowledged (TID, value) is there (loadSerial at that TID);
* no transaction applied twice: the values in each object's history are
  distinct (a retried commit writes the next value, never the same one);
* TIDs strictly increase per client and are globally unique;
* commits resumed after every fault.

Each test prints what it injected and how long the cluster took to recover.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import Callable

import pytest
import transaction
import ZODB
from test_master_failover import Writer, _value_at

from neostore.client import NeoStorage
from neostore.launcher import LocalCluster, NodeProcess
from neostore.protocol import master_pb2

pytestmark = [pytest.mark.slow, pytest.mark.process]

NUM_CLIENTS = 3
RESUME_LIMIT = 30.0  # seconds for commits to resume after a fault
CATCH_UP_LIMIT = 30.0  # seconds for a restarted / resumed master to catch up
LEADER_PAUSE = 5.0  # seconds


def _master(cluster: LocalCluster, index: int) -> NodeProcess:
    process = cluster.master if index == 0 else cluster.other_masters[index - 1]
    assert process is not None
    return process


def _info(cluster: LocalCluster, address: str) -> master_pb2.ClusterInfo:
    return cluster.cluster_info(timeout=2.0, address=address)


def _leader(cluster: LocalCluster, exclude: tuple[str, ...] = (), timeout: float = RESUME_LIMIT) -> str:
    """The leader's address as a master (not in ``exclude``) that is its own leader says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address in cluster.master_addresses:
            if address in exclude:
                continue
            try:
                info = _info(cluster, address)
            except Exception:  # noqa: BLE001, S112 - down or paused
                continue
            if info.leader == address:
                return address
        time.sleep(0.1)
    raise AssertionError(f"no leader among {cluster.master_addresses} (excluding {exclude}) within {timeout:.0f}s")


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def _acknowledged_after(writers: list[Writer], moment: float) -> bool:
    return any(when > moment for writer in writers for _, _, when in list(writer.acknowledged))


def _last_tid(cluster: LocalCluster, address: str) -> bytes:
    try:
        return bytes(_info(cluster, address).last_tid)
    except Exception:  # noqa: BLE001 - not answering (yet)
        return b""


def _caught_up(cluster: LocalCluster, address: str, target: bytes) -> Callable[[], bool]:
    return lambda: _last_tid(cluster, address) >= target


def _start_writers(cluster: LocalCluster) -> list[Writer]:
    writers = [Writer(cluster, f"writer-{i}") for i in range(NUM_CLIENTS)]
    for writer in writers:
        writer.setup()
    for writer in writers:
        writer.thread.start()
    return writers


def _stop_writers(writers: list[Writer]) -> None:
    for writer in writers:
        writer.stop.set()
    for writer in writers:
        writer.thread.join(90)
        assert not writer.thread.is_alive(), f"{writer.name} is stuck"


def _check_everything(cluster: LocalCluster, writers: list[Writer], faults: list[float]) -> dict[str, int]:
    """The checks of the module docstring, from a fresh client; each writer's last value."""
    fresh = NeoStorage(cluster.masters, cluster.name)
    try:
        latest: dict[str, int] = {}
        all_tids: list[bytes] = []
        for writer in writers:
            tids = [tid for tid, _, _ in writer.acknowledged]
            assert tids == sorted(tids) and len(set(tids)) == len(tids), f"{writer.name}: TIDs not increasing"
            all_tids.extend(tids)
            for moment in faults:
                assert any(when > moment for _, _, when in writer.acknowledged), \
                    f"{writer.name} never committed after the fault at {moment:.1f}"
            for tid, value, _ in writer.acknowledged:
                assert _value_at(fresh, writer.oid, tid) == value, f"{writer.name}: commit {tid.hex()} lost"
            history = fresh.history(writer.oid, size=1_000_000)
            values = [_value_at(fresh, writer.oid, record["tid"]) for record in history]
            assert len(values) == len(set(values)), f"{writer.name}: a transaction was applied twice"
            assert {value for _, value, _ in writer.acknowledged} <= set(values)
            latest[writer.name] = values[0]  # history: newest first
        assert len(set(all_tids)) == len(all_tids), "a TID was acknowledged twice"
        print(f"{len(all_tids)} commits acknowledged, all read back "
              f"({sum(w.failures for w in writers)} retried after an error)")
        return latest
    finally:
        fresh.close()


def _close(writers: list[Writer], cluster: LocalCluster) -> None:
    for writer in writers:
        writer.stop.set()
    for writer in writers:
        writer.thread.join(10)
        writer.db.close()
    cluster.stop()


def test_killing_and_restarting_each_master_in_turn_loses_no_commit(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="kill-each", num_masters=3)
    cluster.start()
    writers: list[Writer] = []
    try:
        writers = _start_writers(cluster)
        time.sleep(2.0)
        faults: list[float] = []
        leader_killed = False
        for index in range(3):
            address = cluster.master_addresses[index]
            leader = _leader(cluster)
            was_leader = leader == address
            leader_killed |= was_leader
            killed_at = time.monotonic()
            _master(cluster, index).kill()
            faults.append(killed_at)
            print(f"\nkill -9 master {index + 1} ({address}, {'LEADER' if was_leader else 'follower'})")
            resumed = _wait(lambda t=killed_at: _acknowledged_after(writers, t), RESUME_LIMIT,
                            f"a commit after killing master {index + 1}")
            print(f"  first commit acknowledged after the kill: {resumed:.2f}s")
            cluster.restart_master(index=index)
            target = _last_tid(cluster, _leader(cluster))
            caught = _wait(_caught_up(cluster, address, target), CATCH_UP_LIMIT,
                           f"master {index + 1} to catch up")
            print(f"  restarted; caught up with the leader's last TID within {caught:.2f}s")
            time.sleep(1.0)  # load with all three masters up again
        assert leader_killed, "the leader was never the one killed"
        _wait(lambda: all(any(when > faults[-1] for _, _, when in list(w.acknowledged)) for w in writers),
              RESUME_LIMIT, "every writer to commit after the last kill")
        _stop_writers(writers)
        _check_everything(cluster, writers, faults)
    finally:
        _close(writers, cluster)


class Observer:
    """A client following the invalidation stream of one master only (``address``)."""

    def __init__(self, cluster: LocalCluster, address: str, writers: list[Writer]) -> None:
        self.storage = NeoStorage([address], cluster.name)
        self.db = ZODB.DB(self.storage)
        self.writers = writers
        self.manager = transaction.TransactionManager()
        self.connection = self.db.open(self.manager)
        self.values()  # everything in the cache: a missed invalidation would show

    def values(self) -> dict[str, int]:
        self.manager.begin()
        root = self.connection.root()
        values = {writer.name: int(root[writer.name]["n"]) for writer in self.writers}
        self.manager.abort()
        return values

    def close(self) -> None:
        self.connection.close()
        self.db.close()


def _pause(process: NodeProcess) -> None:
    assert process.process is not None
    os.kill(process.process.pid, signal.SIGSTOP)


def _resume(process: NodeProcess) -> None:
    assert process.process is not None
    os.kill(process.process.pid, signal.SIGCONT)


def test_a_paused_follower_and_a_paused_leader_lose_no_commit(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="pause", num_masters=3)
    cluster.start()
    writers: list[Writer] = []
    observer: Observer | None = None
    paused: list[NodeProcess] = []
    try:
        writers = _start_writers(cluster)
        time.sleep(1.0)
        faults: list[float] = []

        # 1. A follower paused longer than the election timeout.
        leader = _leader(cluster)
        index = next(i for i, a in enumerate(cluster.master_addresses) if a != leader)
        follower_address = cluster.master_addresses[index]
        follower = _master(cluster, index)
        observer = Observer(cluster, follower_address, writers)
        stopped_at = time.monotonic()
        _pause(follower)
        paused.append(follower)
        faults.append(stopped_at)
        print(f"\nSIGSTOP follower master {index + 1} ({follower_address}) for 5s")
        committing = _wait(lambda: _acknowledged_after(writers, stopped_at), RESUME_LIMIT,
                           "a commit while the follower is paused")
        print(f"  commits go on during the pause (first after {committing:.2f}s)")
        time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped_at)))
        during = sum(1 for w in writers for _, _, when in list(w.acknowledged) if when > stopped_at)
        _resume(follower)
        paused.remove(follower)
        resumed_at = time.monotonic()
        print(f"SIGCONT follower master {index + 1}: {during} commits acknowledged during the pause")
        target = _last_tid(cluster, _leader(cluster))
        caught = _wait(_caught_up(cluster, follower_address, target), CATCH_UP_LIMIT,
                       "the paused follower to catch up")
        print(f"  follower caught up with the leader's last TID within {caught:.2f}s")
        newest = max(tid for w in writers for tid, _, when in list(w.acknowledged))
        seen = _wait(lambda: observer.storage.lastTransaction() >= newest, CATCH_UP_LIMIT,
                     "the observer on the follower to get the invalidations")
        print(f"  the client on the follower got its invalidations {seen:.2f}s later")
        _wait(lambda: _acknowledged_after(writers, resumed_at), RESUME_LIMIT, "a commit after SIGCONT")

        # 2. The leader paused for a few seconds.
        time.sleep(1.0)
        leader = _leader(cluster)
        index = cluster.master_addresses.index(leader)
        old_leader = _master(cluster, index)
        stopped_at = time.monotonic()
        _pause(old_leader)
        paused.append(old_leader)
        faults.append(stopped_at)
        print(f"SIGSTOP leader master {index + 1} ({leader}) for {LEADER_PAUSE:.0f}s")
        new_leader = _leader(cluster, exclude=(leader,))
        elected = time.monotonic() - stopped_at
        print(f"  new leader {new_leader} within {elected:.2f}s")
        time.sleep(max(0.0, LEADER_PAUSE - (time.monotonic() - stopped_at)))
        during = sum(1 for w in writers for _, _, when in list(w.acknowledged) if when > stopped_at + elected)
        _resume(old_leader)
        paused.remove(old_leader)
        resumed_at = time.monotonic()
        print(f"SIGCONT old leader master {index + 1}: {during} commits acknowledged "
              "between the election and SIGCONT")
        _wait(lambda: _acknowledged_after(writers, stopped_at), RESUME_LIMIT, "a commit after pausing the leader")
        _wait(lambda: all(any(when > stopped_at + elected for _, _, when in list(w.acknowledged)) for w in writers),
              RESUME_LIMIT, "every writer to commit again")
        per_writer = [min(when for _, _, when in list(w.acknowledged) if when > stopped_at + elected)
                      for w in writers]
        print("  each writer's first commit after the election: "
              + ", ".join(f"{when - stopped_at:.2f}s" for when in per_writer) + " after SIGSTOP")
        stepped_down = _wait(lambda: _info(cluster, leader).leader not in ("", leader), CATCH_UP_LIMIT,
                             "the old leader to step down")
        print(f"  old leader follows {_info(cluster, leader).leader} within {stepped_down:.2f}s of SIGCONT")
        target = _last_tid(cluster, _leader(cluster))
        caught = _wait(_caught_up(cluster, leader, target), CATCH_UP_LIMIT, "the old leader to catch up")
        print(f"  old leader caught up within {caught:.2f}s")
        time.sleep(1.0)
        _stop_writers(writers)
        # Quiet now: every master has published exactly the same last TID.
        final = max(tid for w in writers for tid, _, _ in w.acknowledged)
        for address in cluster.master_addresses:
            _wait(lambda a=address: _last_tid(cluster, a) >= final, CATCH_UP_LIMIT, f"{address} to catch up")
        tids: dict[str, bytes] = {}

        def all_answered() -> bool:  # _last_tid is b"" for a master slow to answer: ask again
            tids.update({address: _last_tid(cluster, address) for address in cluster.master_addresses})
            return all(tids.values())

        _wait(all_answered, CATCH_UP_LIMIT, "every master to answer")
        assert len(set(tids.values())) == 1, f"masters disagree on the last TID: {tids}"
        _wait(lambda: observer.storage.lastTransaction() >= final, CATCH_UP_LIMIT, "the observer")
        latest = _check_everything(cluster, writers, faults)
        assert observer.values() == latest, "the client on the follower missed invalidations"
    finally:
        for process in paused:
            _resume(process)
        if observer is not None:
            observer.close()
        _close(writers, cluster)


def test_commits_resume_under_a_new_leader_while_the_old_one_is_paused(tmp_path: pathlib.Path) -> None:
    cluster = LocalCluster(str(tmp_path / "cluster"), name="hung-leader", num_masters=3)
    cluster.start()
    writers: list[Writer] = []
    old_leader: NodeProcess | None = None
    try:
        writers = _start_writers(cluster)
        time.sleep(1.0)
        leader = _leader(cluster)
        old_leader = _master(cluster, cluster.master_addresses.index(leader))
        stopped_at = time.monotonic()
        _pause(old_leader)
        print(f"\nSIGSTOP leader {leader} for up to 20s")
        new_leader = _leader(cluster, exclude=(leader,))
        elected_at = time.monotonic()
        print(f"  new leader {new_leader} within {elected_at - stopped_at:.2f}s")
        try:
            _wait(lambda: _acknowledged_after(writers, elected_at), 20.0 - (elected_at - stopped_at),
                  "a commit under the new leader while the old one is paused")
        finally:
            _resume(old_leader)
            old_leader = None
    finally:
        if old_leader is not None:
            _resume(old_leader)
        _close(writers, cluster)
