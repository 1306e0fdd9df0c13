"""Fault injection (issue 4): a bank workload on a real process cluster while
a seeded nemesis kills, pauses and restarts nodes.

Three masters (Raft), four storage nodes, 12 partitions x 2 replicas.  Six
client threads, each with its own ``ZODB.DB`` over its own ``NeoStorage``,
move random amounts between ``ACCOUNTS`` accounts and retry conflicts as
ZODB applications do.  Every attempt writes a unique id, with the transfer
it makes, into its client's own log (an ``OOBTree``), so that the end state
can be checked against what each client was told:

* an attempt whose commit returned is *acknowledged* (its TID is the
  accounts' ``_p_serial``): it must be in the log and its TID in the
  transaction history;
* an attempt that raised a ``ConflictError`` did not commit: it must not be
  in the log;
* an attempt whose commit raised anything else (a node dying under it) is
  *unknown*: it may or may not be in the log;
* each account's balance is exactly its initial balance plus what the log
  says moved in and out (so the total is conserved too).

The nemesis (seed from ``NEOSTORE_NEMESIS_SEED``, else random, printed)
injects, for ``NEMESIS_SECONDS``: kill -9 then restart of a storage node;
SIGSTOP then SIGCONT of a storage node for a few seconds; kill -9 then
restart of the leading master, or of a follower.  One fault at a time: never
more than one storage node down or paused (R=2), never more than one master
down, and a storage fault only once every cell is UP_TO_DATE again (else
the next fault could take the last readable replica of a partition, which
the cluster rightly refuses to serve).  The *schedule* (which kind, which
node, how long) is drawn from the seeded generator alone; the times depend
on how fast the cluster recovers.  Network partitions are not injected:
they would need network namespaces (root, ``ip netns``) per node, and every
node binds 127.0.0.1; kill -9 and SIGSTOP cover a silent peer, a lost
session and a lost answer.

At the end everything is healed (every process running, SIGCONT), every cell
must come back UP_TO_DATE with no replication pending, ``Admin.Check`` must
find every partition consistent, and every partition must have exactly R
UP_TO_DATE cells.  A second test runs the same workload for the same time
without faults and prints the baseline throughput.  Timings are printed,
never asserted.
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import threading
import time
from typing import Any

import pytest
import transaction
import ZODB
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.POSException import ConflictError

from neostore import rpc
from neostore.client import NeoStorage
from neostore.launcher import LocalCluster, NodeProcess
from neostore.partition_table import CellState, NodeState, PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.process]

ACCOUNTS = 20
INITIAL = 1000
CLIENTS = 6
STORAGES = 4
PARTITIONS = 12
REPLICAS = 2
NEMESIS_SECONDS = float(os.environ.get("NEOSTORE_NEMESIS_SECONDS", "60"))
HEAL_TIMEOUT = 120.0
RECOVERY_TIMEOUT = 90.0  # one fault's recovery (node registered, cells caught up)
TIMELINE_WINDOW = 5.0  # seconds per bucket of the printed commit timeline


# -- admin ---------------------------------------------------------------------


def _admin(cluster: LocalCluster, address: str, method: str, request: Any, timeout: float = 10.0) -> Any:
    channel = rpc.make_channel(cluster.rpc, address)
    try:
        return rpc.call(getattr(master_pb2_grpc.AdminStub(channel), method), request, timeout=timeout,
                        peer=f"master {address}")
    finally:
        channel.close()


def leader_address(cluster: LocalCluster) -> str | None:
    """The master that says it leads (asked of itself), if any answers so."""
    for address in cluster.masters:
        try:
            info = _admin(cluster, address, "GetClusterInfo", common_pb2.Empty(), timeout=2.0)
        except Exception:  # noqa: BLE001, S112 - down or stopped
            continue
        if info.leader:
            try:
                again = _admin(cluster, info.leader, "GetClusterInfo", common_pb2.Empty(), timeout=2.0)
            except Exception:  # noqa: BLE001, S112 - the leader it names is gone
                continue
            if again.leader == info.leader:
                return info.leader
    return None


def leader_call(cluster: LocalCluster, method: str, request: Any, timeout: float = 10.0) -> Any:
    """An Admin call on the leader, retried until one answers (or 30 s)."""
    deadline = time.monotonic() + 30.0
    while True:
        leader = leader_address(cluster)
        if leader is not None:
            try:
                return _admin(cluster, leader, method, request, timeout=timeout)
            except Exception:
                if time.monotonic() > deadline:
                    raise
        elif time.monotonic() > deadline:
            raise RuntimeError("no master leads")
        time.sleep(0.2)


def partition_table(cluster: LocalCluster) -> PartitionTable:
    return PartitionTable.from_proto(leader_call(cluster, "GetPartitionTable", common_pb2.Empty()))


def not_up_to_date(table: PartitionTable) -> list[str]:
    """The cells that are not UP_TO_DATE, as "partition/node:STATE"."""
    return [f"{p}/{cell.node_id}:{cell.state.name}"
            for p in range(table.num_partitions) for cell in table.cells(p)
            if cell.state != CellState.UP_TO_DATE]


def wait_healthy(cluster: LocalCluster, timeout: float) -> float:
    """Wait until every cell is UP_TO_DATE and no replication is pending;
    the seconds it took.  Fails with the cells still behind."""
    start = time.monotonic()
    behind: list[str] = ["(not asked yet)"]
    replicating = -1
    while time.monotonic() - start < timeout:
        try:
            table = partition_table(cluster)
            behind = not_up_to_date(table)
            down = [n.node_id for n in table.nodes if n.state != NodeState.RUNNING]
            if not behind and not down:
                replicating = len(leader_call(cluster, "GetReplication", common_pb2.Empty()).cells)
                if replicating == 0:
                    return time.monotonic() - start
            else:
                behind = behind + [f"node {n} not RUNNING" for n in down]
        except Exception as error:  # noqa: BLE001 - a master election in progress
            behind = [f"{type(error).__name__}: {error}"]
        time.sleep(0.25)
    pytest.fail(f"cluster not healthy after {timeout:.0f}s: {behind[:20]} "
                f"(replicating: {replicating}; logs in {cluster.log_dir})")


def master_processes(cluster: LocalCluster) -> list[NodeProcess | None]:
    return [cluster.master, *cluster.other_masters]


def wait_master_caught_up(cluster: LocalCluster, index: int, timeout: float) -> None:
    """Master ``index`` answers and knows the same leader as the leader."""
    address = cluster.master_addresses[index]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = leader_address(cluster)
        try:
            info = _admin(cluster, address, "GetClusterInfo", common_pb2.Empty(), timeout=2.0)
        except Exception:  # noqa: BLE001 - not up yet
            info = None
        if leader is not None and info is not None and info.leader == leader \
                and info.state == master_pb2.ClusterInfo.RUNNING:
            return
        time.sleep(0.2)
    pytest.fail(f"master {index} ({address}) did not rejoin within {timeout:.0f}s (logs in {cluster.log_dir})")


# -- the bank ------------------------------------------------------------------


def create_bank(cluster: LocalCluster) -> None:
    db = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["accounts"] = accounts = OOBTree()
            for number in range(ACCOUNTS):
                accounts[number] = PersistentMapping(balance=INITIAL)
            root["logs"] = PersistentMapping({index: OOBTree() for index in range(CLIENTS)})
    finally:
        db.close()


class BankClient:
    """One application process: its own DB, moving money until told to stop."""

    def __init__(self, cluster: LocalCluster, index: int, seed: int, stop: threading.Event) -> None:
        self.index = index
        self.rng = random.Random(seed)
        self.stop = stop
        self.db = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
        self.acknowledged: dict[str, bytes] = {}  # attempt id -> TID
        self.acknowledged_at: list[float] = []  # time.monotonic() of each
        self.started = 0.0  # when the workload started
        self.conflicted: set[str] = set()
        self.unknown: set[str] = set()
        self.attempted = self.failed_before_commit = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.crash: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"bank-{index}", daemon=True)

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.crash = error

    def run(self) -> None:
        manager = transaction.TransactionManager()
        conn = self.db.open(manager)
        transfer = 0
        try:
            while not self.stop.is_set():
                transfer += 1
                source, target = self.rng.sample(range(ACCOUNTS), 2)
                amount = self.rng.randint(1, 50)
                attempt = 0
                while not self.stop.is_set():
                    attempt += 1
                    attempt_id = f"{self.index}-{transfer}-{attempt}"
                    self.attempted += 1
                    committing = False
                    try:
                        manager.begin()
                        root = conn.root()
                        accounts = root["accounts"]
                        accounts[source]["balance"] -= amount
                        accounts[target]["balance"] += amount
                        root["logs"][self.index][attempt_id] = (source, target, amount)
                        committing = True
                        manager.commit()
                    except ConflictError as error:
                        self._abort(manager)
                        self.conflicted.add(attempt_id)
                        if "waited too long" in str(error):  # a lock held for 30 s: worth a look
                            self.errors[f"ConflictError (lock timeout): {str(error)[:200]}"] += 1
                        continue  # the same transfer again, as applications retry
                    except Exception as error:  # noqa: BLE001 - a node died under us
                        self._abort(manager)
                        self.errors[f"{type(error).__name__}: {str(error)[:300]}"] += 1
                        if committing:
                            self.unknown.add(attempt_id)
                        else:
                            self.failed_before_commit += 1
                        time.sleep(0.1)
                        break  # give this transfer up; the next one is another
                    self.acknowledged[attempt_id] = accounts[source]._p_serial
                    self.acknowledged_at.append(time.monotonic())
                    break
        finally:
            self._abort(manager)
            conn.close()

    @staticmethod
    def _abort(manager: transaction.TransactionManager) -> None:
        try:
            manager.abort()
        except Exception:  # noqa: BLE001, S110 - the abort of a dead transaction
            pass


def run_bank(cluster: LocalCluster, seconds: float, seed: int,
             nemesis: Nemesis | None = None) -> tuple[list[BankClient], float]:
    """Run the workload for ``seconds`` (the nemesis too, if any); the clients
    and the seconds the workload ran."""
    stop = threading.Event()
    clients = [BankClient(cluster, index, seed * 1000 + index, stop) for index in range(CLIENTS)]
    started = time.monotonic()
    try:
        for client in clients:
            client.started = started
            client.thread.start()
        if nemesis is not None:
            nemesis.run(started + seconds)
        remaining = started + seconds - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    finally:
        stop.set()
        for client in clients:
            client.thread.join(180)
    elapsed = time.monotonic() - started
    stuck = [c.thread.name for c in clients if c.thread.is_alive()]
    assert not stuck, f"clients still running 180 s after the end: {stuck}"
    crashed = {c.thread.name: c.crash for c in clients if c.crash is not None}
    assert not crashed, f"clients crashed: {crashed}"
    return clients, elapsed


def verify_bank(cluster: LocalCluster, clients: list[BankClient]) -> None:
    """The end state against what every client was told (module docstring)."""
    db = ZODB.DB(NeoStorage(cluster.masters, cluster.name))
    try:
        with db.transaction() as conn:
            root = conn.root()
            balances = {n: root["accounts"][n]["balance"] for n in range(ACCOUNTS)}
            logs = {index: dict(root["logs"][index].items()) for index in range(CLIENTS)}
        history = {info.tid for info in db.storage.iterator()}
    finally:
        db.close()
    expected = dict.fromkeys(range(ACCOUNTS), INITIAL)
    for log in logs.values():
        for source, target, amount in log.values():
            expected[source] -= amount
            expected[target] += amount
    if sum(balances.values()) != ACCOUNTS * INITIAL or balances != expected:
        # Name what is wrong: which accounts, and whether the replicas differ.
        off = {n: (balances[n], expected[n]) for n in balances if balances[n] != expected[n]}
        report = leader_call(cluster, "Check", master_pb2.CheckRequest(partitions=[]), timeout=120.0)
        differing = [(p.partition, list(p.corrupted), p.detail) for p in report.partitions if not p.consistent]
        raise AssertionError(
            f"total {sum(balances.values())} (expected {ACCOUNTS * INITIAL}); accounts whose balance differs "
            f"from the logged transfers (read, expected): {off}; replicas that differ: {differing or 'none'}; "
            f"logs in {cluster.log_dir}")
    for client in clients:
        log = logs[client.index]
        lost = sorted(set(client.acknowledged) - set(log))
        assert not lost, f"client {client.index}: acknowledged transfers lost: {lost[:10]}"
        missing_tids = sorted(t.hex() for t in set(client.acknowledged.values()) - history)
        assert not missing_tids, f"client {client.index}: acknowledged TIDs not in the history: {missing_tids[:10]}"
        assert len(set(client.acknowledged.values())) == len(client.acknowledged), \
            f"client {client.index}: a TID acknowledged twice"
        phantom = sorted(set(log) - set(client.acknowledged) - client.unknown)
        assert not phantom, f"client {client.index}: transfers committed though told otherwise: {phantom[:10]}"


def verify_cluster(cluster: LocalCluster) -> None:
    report = leader_call(cluster, "Check", master_pb2.CheckRequest(partitions=[]), timeout=120.0)
    assert len(report.partitions) == PARTITIONS
    bad = [(p.partition, list(p.corrupted), p.detail) for p in report.partitions if not p.consistent]
    assert not bad, f"replicas differ: {bad}"
    table = partition_table(cluster)
    for partition in range(PARTITIONS):
        cells = table.cells(partition)
        up = [c.node_id for c in cells if c.state == CellState.UP_TO_DATE]
        assert len(up) == REPLICAS and len(cells) == REPLICAS, f"partition {partition}: cells {cells}"


def counts(clients: list[BankClient], elapsed: float) -> dict[str, Any]:
    committed = sum(len(c.acknowledged) for c in clients)
    return {
        "attempted": sum(c.attempted for c in clients),
        "committed": committed,
        "conflicted": sum(len(c.conflicted) for c in clients),
        "failed (unknown outcome)": sum(len(c.unknown) for c in clients),
        "failed (before commit)": sum(c.failed_before_commit for c in clients),
        "committed/s": round(committed / elapsed, 1),
    }


# -- the nemesis ---------------------------------------------------------------


class Nemesis:
    """Draws faults from a seeded generator; one at a time, each healed."""

    KINDS = ("kill-storage", "pause-storage", "kill-leader", "kill-follower")

    def __init__(self, cluster: LocalCluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.faults: list[str] = []
        self.started = time.monotonic()
        self.paused: set[int] = set()

    def log(self, kind: str, node: str, note: str = "") -> None:
        line = f"t={time.monotonic() - self.started:6.1f}s {kind:<14} {node:<10} {note}"
        self.faults.append(line)
        print(f"nemesis: {line}", flush=True)

    def run(self, deadline: float) -> None:
        self.started = time.monotonic()
        storages_healthy = True
        kinds: list[str] = []
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(1.0, 3.0))
            if time.monotonic() >= deadline:
                break
            if not kinds:  # every kind once per round, in a seeded order
                kinds = list(self.KINDS)
                self.rng.shuffle(kinds)
            kind = kinds.pop()
            down_for = self.rng.uniform(1.0, 4.0)
            pick = self.rng.randrange(1000)
            if kind.endswith("storage"):
                if not storages_healthy:
                    took = wait_healthy(self.cluster, RECOVERY_TIMEOUT)
                    self.log("healthy", "cluster", f"cells caught up after {took:.1f}s more")
                index = pick % len(self.cluster.storages)
                if kind == "kill-storage":
                    self.kill_storage(index, down_for)
                else:
                    self.pause_storage(index, down_for)
                storages_healthy = False
            else:
                self.kill_master(kind == "kill-leader", pick, down_for)

    def kill_storage(self, index: int, down_for: float) -> None:
        process = self.cluster.storages[index]
        self.log("kill-storage", f"storage-{index}", f"node_id={process.node_id}, down {down_for:.1f}s")
        process.kill()
        time.sleep(down_for)
        begun = time.monotonic()
        self.cluster.restart_storage(index, timeout=RECOVERY_TIMEOUT)
        self.log("restarted", f"storage-{index}", f"registered in {time.monotonic() - begun:.1f}s")

    def pause_storage(self, index: int, down_for: float) -> None:
        process = self.cluster.storages[index].process
        assert process is not None
        self.log("pause-storage", f"storage-{index}", f"SIGSTOP for {down_for:.1f}s")
        self.paused.add(index)
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(down_for)
        os.kill(process.pid, signal.SIGCONT)
        self.paused.discard(index)
        self.log("resumed", f"storage-{index}", "SIGCONT")

    def kill_master(self, leader: bool, pick: int, down_for: float) -> None:
        cluster = self.cluster
        lead = None
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while lead is None and time.monotonic() < deadline:
            lead = leader_address(cluster)
            if lead is None:
                time.sleep(0.2)
        assert lead is not None, f"no master leads (logs in {cluster.log_dir})"
        leader_index = cluster.master_addresses.index(lead)
        if leader:
            index = leader_index
        else:
            followers = [i for i in range(cluster.num_masters) if i != leader_index]
            index = followers[pick % len(followers)]
        process = master_processes(cluster)[index]
        assert process is not None and process.running
        self.log("kill-leader" if leader else "kill-follower", f"master-{index}", f"down {down_for:.1f}s")
        process.kill()
        time.sleep(down_for)
        begun = time.monotonic()
        cluster.restart_master(RECOVERY_TIMEOUT, index=index)
        wait_master_caught_up(cluster, index, RECOVERY_TIMEOUT)
        self.log("restarted", f"master-{index}", f"rejoined in {time.monotonic() - begun:.1f}s, "
                 f"leader now master-{cluster.master_addresses.index(leader_address(cluster) or lead)}")

    def heal(self) -> None:
        """Every process running, none stopped."""
        for storage in self.cluster.storages:
            if storage.process is not None and storage.process.poll() is None:
                os.kill(storage.process.pid, signal.SIGCONT)
        self.paused.clear()
        for index, master in enumerate(master_processes(self.cluster)):
            if master is None or not master.running:
                self.log("heal", f"master-{index}", "restart")
                self.cluster.restart_master(RECOVERY_TIMEOUT, index=index)
        for index, storage in enumerate(self.cluster.storages):
            if not storage.running:
                self.log("heal", f"storage-{index}", "restart")
                self.cluster.restart_storage(index, timeout=RECOVERY_TIMEOUT)


def _crashed_processes(cluster: LocalCluster) -> list[str]:
    """Processes that exited on their own (the nemesis restarts what it kills)."""
    crashed = []
    for index, master in enumerate(master_processes(cluster)):
        if master is not None and master.process is not None and master.process.poll() is not None:
            crashed.append(f"master-{index} (exit {master.process.returncode}): {master.last_log_line()}")
    for index, storage in enumerate(cluster.storages):
        if storage.process is not None and storage.process.poll() is not None:
            crashed.append(f"storage-{index} (exit {storage.process.returncode}): {storage.last_log_line()}")
    return crashed


def _new_cluster(tmp_path: pathlib.Path, name: str) -> LocalCluster:
    return LocalCluster(str(tmp_path / name), name=name, num_masters=3, num_storages=STORAGES,
                        num_partitions=PARTITIONS, num_replicas=REPLICAS)


def _report(title: str, seed: int, clients: list[BankClient], elapsed: float) -> dict[str, Any]:
    figures = counts(clients, elapsed)
    print(f"\n{title}: seed={seed} {elapsed:.1f}s {figures}")
    errors: collections.Counter[str] = collections.Counter()
    for client in clients:
        errors.update(client.errors)
    for error, count in errors.most_common(10):
        print(f"  {count:5d} x {error}")
    windows = collections.Counter(
        int((when - client.started) // TIMELINE_WINDOW) for client in clients for when in client.acknowledged_at)
    print(f"  commits per {TIMELINE_WINDOW:.0f}s: "
          + " ".join(str(windows[w]) for w in range(int(elapsed // TIMELINE_WINDOW) + 1)))
    return figures


# -- the tests -----------------------------------------------------------------


def test_bank_under_nemesis(tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("NEOSTORE_NEMESIS_SEED", random.randrange(2**32)))
    print(f"\nnemesis seed: {seed} (NEOSTORE_NEMESIS_SEED={seed} replays this schedule)", flush=True)
    cluster = _new_cluster(tmp_path, "nemesis")
    cluster.start()
    nemesis = Nemesis(cluster, seed)
    try:
        create_bank(cluster)
        try:
            clients, elapsed = run_bank(cluster, NEMESIS_SECONDS, seed, nemesis)
        finally:
            crashed = _crashed_processes(cluster)
            nemesis.heal()
        assert not crashed, f"processes crashed: {crashed}"
        took = wait_healthy(cluster, HEAL_TIMEOUT)
        print(f"healed: every cell UP_TO_DATE, no replication pending, {took:.1f}s after the last fault")
        print(f"faults injected ({len(nemesis.faults)} events):")
        for line in nemesis.faults:
            print(f"  {line}")
        _report("bank with faults", seed, clients, elapsed)
        verify_bank(cluster, clients)
        verify_cluster(cluster)
        assert not _crashed_processes(cluster)
        for client in clients:
            client.db.close()
    finally:
        for index in nemesis.paused:
            process = cluster.storages[index].process
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
        cluster.stop()


def test_bank_baseline_without_faults(tmp_path: pathlib.Path) -> None:
    seed = int(os.environ.get("NEOSTORE_NEMESIS_SEED", random.randrange(2**32)))
    cluster = _new_cluster(tmp_path, "baseline")
    cluster.start()
    try:
        create_bank(cluster)
        clients, elapsed = run_bank(cluster, NEMESIS_SECONDS, seed)
        _report("bank without faults (baseline)", seed, clients, elapsed)
        verify_bank(cluster, clients)
        verify_cluster(cluster)
        assert not _crashed_processes(cluster)
        for client in clients:
            client.db.close()
    finally:
        cluster.stop()
