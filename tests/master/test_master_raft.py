"""Masters agreeing through Raft: three RaftCommandLogs over real gRPC and LMDB.

Each master of a group is a ``RaftCommandLog`` in its own data directory
with a real gRPC server on 127.0.0.1 serving ``Raft.Step``; the tests elect
a leader, replicate commands, check that followers refuse writes naming
the leader, and that stopping the leader elects another that keeps
committing; then whole clusters (three masters, three storage nodes, a
ZODB client) commit through the leader and keep committing when the
leading master stops.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
import transaction
import ZODB

from neostore import errors, rpc
from neostore.client import NeoStorage
from neostore.ids import u64
from neostore.launcher import LocalCluster
from neostore.master_node.command_log import submit_one
from neostore.master_node.raft_driver import RaftCommandLog, decode_batch, encode_batch
from neostore.master_node.raft_transport import RaftServicer
from neostore.master_node.state import AllocateOids, CreateCluster, RegisterNode
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, raft_pb2_grpc

from harness import ThreadCluster
from waiting import wait_until

RPC = rpc.RpcConfig("raft-test")
TICK = 0.05  # an election timeout of 0.5-1 s: a loaded machine does not miss that many heartbeats


class RaftGroup:
    """``size`` masters, each a RaftCommandLog behind a real gRPC server."""

    def __init__(self, root: pathlib.Path, size: int = 3, exchange: bool = False) -> None:
        self.root = root
        #: With ``exchange``, a Step is handled as the frames port does: its
        #: answer is the messages produced for the sender, sent as soon as
        #: persisted (``answer``); each Step whose round ran in its own
        #: thread records (applied index when answered, when its round ended).
        self.exchange = exchange
        self.answered: list[tuple[int, int]] = []
        self.servers: list[grpc.Server | None] = []
        self.addresses: list[str] = []
        self.logs: list[RaftCommandLog | None] = [None] * size
        for _ in range(size):
            server, port = rpc.make_server(RPC, "127.0.0.1:0", max_workers=8)
            self.servers.append(server)
            self.addresses.append(f"127.0.0.1:{port}")
        for index, server in enumerate(self.servers):
            assert server is not None
            raft_pb2_grpc.add_RaftServicer_to_server(
                RaftServicer(lambda messages, i=index: self._deliver(i, messages)), server)
        for index in range(size):
            self.open(index)
        for server in self.servers:
            assert server is not None
            server.start()

    def _deliver(self, index: int, messages: list) -> list | None:  # type: ignore[type-arg]
        command_log = self.logs[index]
        if command_log is None:
            raise errors.Unavailable("stopped")
        if not self.exchange:
            command_log.receive(messages)
            return None
        applied_when_answered: list[int] = []

        def answer(answers: list) -> None:  # type: ignore[type-arg]
            applied_when_answered.append(command_log.raft_indexes()["applied"])

        answers = command_log.exchange(messages, answer)
        if applied_when_answered:
            self.answered.append((applied_when_answered[0], command_log.raft_indexes()["applied"]))
        return answers

    def open(self, index: int) -> RaftCommandLog:
        command_log = RaftCommandLog(self.root / f"m{index + 1}", index + 1, self.addresses, RPC,
                                     snapshot_every=20, tick_interval=TICK)
        command_log.start()
        self.logs[index] = command_log
        return command_log

    def stop(self, index: int) -> None:
        command_log = self.logs[index]
        self.logs[index] = None
        if command_log is not None:
            command_log.close()

    def running(self) -> list[RaftCommandLog]:
        return [command_log for command_log in self.logs if command_log is not None]

    def leader(self, timeout: float = 30.0) -> RaftCommandLog:
        found: list[RaftCommandLog] = []

        def one_leader() -> bool:
            found[:] = [command_log for command_log in self.running()
                        if command_log.is_leader and command_log.term == command_log.raft_term]
            return len(found) == 1

        wait_until(one_leader, "exactly one current leader among the running masters", timeout)
        return found[0]

    def close(self) -> None:
        for index in range(len(self.logs)):
            self.stop(index)
        for server in self.servers:
            if server is not None:
                server.stop(0)


@pytest.fixture
def group(tmp_path: pathlib.Path) -> Iterator[RaftGroup]:
    raft_group = RaftGroup(tmp_path)
    try:
        yield raft_group
    finally:
        raft_group.close()


def test_a_command_batch_is_one_entry_that_round_trips() -> None:
    commands = [CreateCluster("c", 4, 1), AllocateOids(3)]
    assert decode_batch(encode_batch(commands)) == commands


def test_three_masters_elect_one_leader_and_replicate_commands(group: RaftGroup) -> None:
    leader = group.leader()
    assert submit_one(leader, CreateCluster("raft-test", 4, 1)) is None
    results = leader.submit([AllocateOids(2), RegisterNode(0, "127.0.0.1:1")])
    assert results[1] == 1
    wait_until(lambda: all(log.state == leader.state for log in group.running()),
               "the running masters to reach the leader's state")
    assert all(log.state.cluster_name == "raft-test" for log in group.running())
    assert all(log.raft_term == leader.term for log in group.running())


def test_a_step_is_answered_once_persisted_before_the_entries_it_commits_are_applied(
        tmp_path: pathlib.Path) -> None:
    """A follower answers the leader's append as soon as it is durable; the
    entries that append tells it are committed are applied after (their
    application is off the leader's wait)."""
    raft_group = RaftGroup(tmp_path, exchange=True)
    try:
        leader = raft_group.leader()
        assert submit_one(leader, CreateCluster("raft-test", 4, 1)) is None
        for _ in range(30):
            leader.submit([AllocateOids(1)])
        wait_until(lambda: all(log.state == leader.state for log in raft_group.running()),
                   "the running masters to reach the leader's state")
        assert raft_group.answered, "no Step was answered from its own round"
        assert any(when_answered < after for when_answered, after in raft_group.answered), \
            "every Step was answered after applying what it committed"
    finally:
        raft_group.close()


def test_a_refused_command_is_replicated_as_refused_everywhere(group: RaftGroup) -> None:
    leader = group.leader()
    (result,) = leader.submit([AllocateOids(1)])  # no cluster yet: refused, changes nothing
    assert isinstance(result, errors.NeoError)
    submit_one(leader, CreateCluster("raft-test", 4, 1))
    wait_until(lambda: all(log.state == leader.state for log in group.running()),
               "the running masters to reach the leader's state")


def test_a_follower_answers_writes_with_the_leaders_address(group: RaftGroup) -> None:
    leader = group.leader()
    follower = next(log for log in group.running() if log is not leader)
    wait_until(lambda: follower.leader_address == leader.address, "the follower to know the leader's address")
    with pytest.raises(errors.NotLeader, match=f"leader is {leader.address}"):
        follower.submit([CreateCluster("raft-test", 4, 1)])


def test_stopping_the_leader_elects_another_that_keeps_committing(group: RaftGroup) -> None:
    leader = group.leader()
    submit_one(leader, CreateCluster("raft-test", 4, 1))
    first_term = leader.term
    group.stop(group.logs.index(leader))
    new_leader = group.leader()
    assert new_leader.term > first_term
    assert all(log.raft_term == new_leader.term for log in group.running())
    submit_one(new_leader, AllocateOids(5))
    wait_until(lambda: all(log.state == new_leader.state for log in group.running()),
               "the running masters to reach the new leader's state")
    assert new_leader.state.cluster_name == "raft-test"


def test_a_restarted_master_recovers_its_state_from_snapshot_and_log(group: RaftGroup) -> None:
    leader = group.leader()
    submit_one(leader, CreateCluster("raft-test", 4, 1))
    for _ in range(45):  # past two snapshots (every 20 entries)
        submit_one(leader, AllocateOids(1))
    follower_index = next(i for i, log in enumerate(group.logs) if log is not leader)
    wait_until(lambda: all(log.state == leader.state for log in group.running()),
               "the running masters to reach the leader's state")
    group.stop(follower_index)
    submit_one(leader, AllocateOids(1))
    restarted = group.open(follower_index)
    wait_until(lambda: restarted.state == leader.state, "the restarted master to catch up with the leader's state")


def test_a_submit_not_committed_in_time_is_in_doubt_until_its_entry_commits_or_is_replaced(
        group: RaftGroup) -> None:
    """Without a quorum, submit raises InDoubt (an Unavailable): the entry
    may still commit.  Its ``pending`` gives the results if it commits, and
    raises if another leader's entry replaced it; either way every master
    agrees with the outcome."""
    leader = group.leader()
    submit_one(leader, CreateCluster("raft-test", 4, 1))
    leader._submit_timeout = 0.3  # noqa: SLF001 - no quorum: no commit in any time
    for index, command_log in enumerate(group.logs):
        if command_log is not leader:
            group.stop(index)
    with pytest.raises(errors.InDoubt, match="no Raft commit") as raised:
        leader.submit([AllocateOids(7)])
    pending = raised.value.pending
    assert pending is not None and pending(0.1) is None
    for index, command_log in enumerate(group.logs):
        if command_log is None:
            group.open(index)
    try:
        results: list | None = None  # type: ignore[type-arg]
        deadline = time.monotonic() + 30
        while results is None and time.monotonic() < deadline:
            results = pending(0.5)
    except errors.NotLeader:
        results = None  # replaced by the entry of a leader that never had it
    else:
        assert results is not None, "the in-doubt entry was neither committed nor replaced in 30 s"
    new_leader = group.leader()
    submit_one(new_leader, AllocateOids(1))  # an entry of the new term: everything before it is settled
    wait_until(lambda: all(log.state == new_leader.state for log in group.running()),
               "the running masters to reach the new leader's state")
    expected_last = (7 + 1) if results is not None else 1
    assert all(u64(log.state.last_oid) == expected_last for log in group.running())


def test_a_second_master_process_cannot_open_the_same_data_directory(group: RaftGroup) -> None:
    with pytest.raises(errors.Unavailable, match="in use"):
        RaftCommandLog(group.root / "m1", 1, group.addresses, RPC)


def test_a_new_leader_is_told_once_it_applied_an_entry_of_its_term(group: RaftGroup) -> None:
    leader = group.leader()
    led: list[tuple[int, int]] = []
    for command_log in group.running():
        command_log.on_leader(lambda term, node_id=command_log.node_id: led.append((node_id, term)))
    group.stop(group.logs.index(leader))
    new_leader = group.leader()
    wait_until(lambda: (new_leader.node_id, new_leader.term) in led, "the new leader to be told it leads its term")


# -- whole clusters: three masters, three storage nodes, a ZODB client ----------------


def _commit(db: ZODB.DB, key: str, value: int, attempts: int = 50) -> None:
    """Commit ``root[key] = value``, retrying while a new leader takes over."""
    for attempt in range(attempts):
        connection = db.open()
        try:
            connection.root()[key] = value
            transaction.commit()
            return
        except Exception:  # noqa: BLE001 - failover errors: retry
            transaction.abort()
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
        finally:
            connection.close()


def test_a_cluster_of_three_masters_commits_through_the_leader(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path / "cluster"), num_masters=3) as cluster:
        leader = cluster.leader()
        assert leader is not None
        db = ZODB.DB(cluster.client())
        try:
            _commit(db, "a", 1)
            followers = [master for master in cluster.master_nodes if master is not leader]
            wait_until(lambda: all(master.state == leader.state for master in followers),
                       "the followers to reach the leader's state")
            info = _cluster_info(cluster, followers[0].address)
            assert info.leader == leader.address
            assert list(info.masters) == cluster.masters
        finally:
            db.close()


def test_stopping_the_leading_master_lets_commits_continue(tmp_path: pathlib.Path) -> None:
    with ThreadCluster(str(tmp_path / "cluster"), num_masters=3) as cluster:
        db = ZODB.DB(cluster.client())
        try:
            _commit(db, "before", 1)
            old_leader = cluster.leader()
            assert old_leader is not None
            old_term = old_leader.term
            old_leader.stop()
            new_leader = cluster.wait_for_leader(other_than=old_leader)
            assert new_leader.term > old_term
            _commit(db, "after", 2)
            connection = db.open()
            try:
                connection.sync()
                assert connection.root()["before"] == 1 and connection.root()["after"] == 2
            finally:
                connection.close()
        finally:
            db.close()


def _cluster_info(cluster: ThreadCluster, address: str) -> master_pb2.ClusterInfo:
    channel = rpc.make_channel(cluster.rpc, address)
    try:
        return rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=5)
    finally:
        channel.close()


@pytest.mark.process
def test_neo_master_processes_elect_a_leader_and_survive_its_loss(tmp_path: pathlib.Path) -> None:
    with LocalCluster(str(tmp_path / "processes"), name="raft-processes", num_masters=3) as cluster:
        db = ZODB.DB(NeoStorage(cluster.masters, "raft-processes"))
        try:
            _commit(db, "before", 1)
            leader = cluster.cluster_info().leader
            assert all(cluster.cluster_info(address=address).leader == leader for address in cluster.masters)
            processes = [cluster.master, *cluster.other_masters]
            stopped = processes[cluster.masters.index(leader)]
            assert stopped is not None
            stopped.stop()
            _commit(db, "after", 2)
            survivor = next(address for address in cluster.masters if address != leader)
            assert cluster.cluster_info(address=survivor).leader not in ("", leader)
        finally:
            db.close()
