"""Master membership: the replicated address book, add-master and remove-master.

The address book (Raft node id -> address) is part of the replicated
state, so it reaches a master that catches up from a snapshot; the leader
adds and removes one master at a time and refuses what would break the
group; a whole cluster of master processes grows and shrinks while a
client commits.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import transaction
import ZODB

from neostore import errors, neoctl, rpc
from neostore.client import NeoStorage
from neostore.launcher import LocalCluster
from neostore.master_node.codec import decode_command, decode_state, encode_command, encode_state
from neostore.master_node.command_log import submit_one
from neostore.master_node.raft_driver import RaftCommandLog
from neostore.master_node.raft_transport import RaftServicer
from neostore.master_node.state import (
    AddMaster,
    AllocateOids,
    CreateCluster,
    MasterMember,
    RemoveMaster,
    apply,
    initial_state,
)
from neostore.protocol import raft_pb2_grpc

from waiting import wait_until

RPC = rpc.RpcConfig("membership-test")
TICK = 0.05  # an election timeout of 0.5-1 s: a loaded machine does not miss that many heartbeats


# -- the address book in the state -----------------------------------------------------


def test_first_members_are_numbered_from_one_in_the_initial_state() -> None:
    state = initial_state(["a:1", "b:2", "c:3"])
    assert state.masters == (MasterMember(1, "a:1"), MasterMember(2, "b:2"), MasterMember(3, "c:3"))
    assert state.next_master_id == 4


def test_adding_and_removing_masters_applies_before_the_cluster_exists() -> None:
    state, node_id = apply(initial_state(["a:1", "b:2", "c:3"]), AddMaster(4, "d:4"))
    assert node_id == 4 and state.next_master_id == 5
    state, node_id = apply(state, RemoveMaster(2))
    assert node_id == 2
    assert [member.address for member in state.masters] == ["a:1", "c:3", "d:4"]
    assert state.next_master_id == 5  # ids are never given out twice


@pytest.mark.parametrize("command", [
    pytest.param(AddMaster(4, "b:2"), id="an address already a member"),
    pytest.param(AddMaster(2, "d:4"), id="an id given out before"),
    pytest.param(AddMaster(4, ""), id="no address"),
    pytest.param(RemoveMaster(9), id="removing a stranger"),
])
def test_address_book_refuses_inconsistent_changes(command: AddMaster | RemoveMaster) -> None:
    state = initial_state(["a:1", "b:2", "c:3"])
    with pytest.raises(errors.BadRequest):
        apply(state, command)


def test_address_book_survives_the_state_codec() -> None:
    state, _ = apply(initial_state(["a:1", "b:2"]), AddMaster(3, "c:3"))
    state, _ = apply(state, CreateCluster("x", 4, 1))
    assert decode_state(encode_state(state)) == state
    for command in (AddMaster(3, "c:3"), RemoveMaster(2)):
        assert decode_command(encode_command(command)) == command


# -- RaftCommandLogs over gRPC: adding, joining, removing ---------------------------------


class Group:
    """Masters as RaftCommandLogs behind real gRPC servers; ``spare`` servers
    wait for masters that join later (unreachable until then)."""

    def __init__(self, root: pathlib.Path, size: int = 3, spare: int = 1) -> None:
        self.root = root
        self.servers: list[grpc.Server] = []
        self.addresses: list[str] = []
        self.logs: list[RaftCommandLog | None] = [None] * (size + spare)
        for index in range(size + spare):
            server, port = rpc.make_server(RPC, "127.0.0.1:0", max_workers=8)
            raft_pb2_grpc.add_RaftServicer_to_server(
                RaftServicer(lambda messages, i=index: self._deliver(i, messages)), server)
            self.servers.append(server)
            self.addresses.append(f"127.0.0.1:{port}")
        for index in range(size):
            self._start(index, RaftCommandLog(self.root / f"m{index}", index + 1, self.addresses[:size], RPC,
                                              snapshot_every=5, keep_entries=2, tick_interval=TICK))
        for server in self.servers:
            server.start()

    def _deliver(self, index: int, messages: list) -> None:  # type: ignore[type-arg]
        command_log = self.logs[index]
        if command_log is None:
            raise errors.Unavailable("not running")
        command_log.receive(messages)

    def _start(self, index: int, command_log: RaftCommandLog) -> RaftCommandLog:
        command_log.start()
        self.logs[index] = command_log
        return command_log

    def join(self, index: int, node_id: int, members: dict[int, str]) -> RaftCommandLog:
        return self._start(index, RaftCommandLog(self.root / f"m{index}", node_id, members, RPC, join=True,
                                                 snapshot_every=5, keep_entries=2, tick_interval=TICK))

    def stop(self, index: int) -> None:
        command_log, self.logs[index] = self.logs[index], None
        if command_log is not None:
            command_log.close()

    def running(self) -> list[RaftCommandLog]:
        return [command_log for command_log in self.logs if command_log is not None]

    def leader(self) -> RaftCommandLog:
        found: list[RaftCommandLog] = []

        def one_leader() -> bool:
            found[:] = [log for log in self.running()
                        if log.is_leader and log.term == log.raft_term and not log.removed]
            return len(found) == 1

        wait_until(one_leader, "exactly one current leader among the running masters")
        return found[0]

    def close(self) -> None:
        for index in range(len(self.logs)):
            self.stop(index)
        for server in self.servers:
            server.stop(0)


@pytest.fixture
def group(tmp_path: pathlib.Path) -> Iterator[Group]:
    masters = Group(tmp_path)
    try:
        yield masters
    finally:
        masters.close()


def test_a_joining_master_catches_up_from_a_snapshot_and_knows_every_address(group: Group) -> None:
    leader = group.leader()
    submit_one(leader, CreateCluster(RPC.cluster_name, 4, 1))
    for _ in range(12):  # past two snapshots: the log no longer starts at the beginning
        submit_one(leader, AllocateOids(1))
    new_address = group.addresses[3]
    assert leader.add_master(new_address) == 4
    assert dict(leader.members())[4] == new_address
    joined = group.join(3, 4, dict(leader.members()))
    wait_until(lambda: joined.state == leader.state, "the joined master to catch up with the leader's state")
    assert joined.members() == leader.members() == list(enumerate(group.addresses, start=1))
    submit_one(group.leader(), AllocateOids(1))  # four voters commit
    wait_until(lambda: all(log.state == group.leader().state for log in group.running()),
               "every running master to reach the leader's state")


def test_membership_changes_are_refused_with_clear_errors(group: Group) -> None:
    leader = group.leader()
    follower = next(log for log in group.running() if log is not leader)
    with pytest.raises(errors.NotLeader):
        follower.add_master(group.addresses[3])
    with pytest.raises(errors.MembershipRefused, match="already a member"):
        leader.add_master(leader.address)
    with pytest.raises(errors.MembershipRefused, match="no master 127.0.0.1:1 "):
        leader.remove_master("127.0.0.1:1")
    with pytest.raises(errors.BadRequest):
        leader.add_master("127.0.0.1:0")
    # One of three down: a fourth member that does not answer yet would leave
    # two reachable of four, no majority.
    group.stop(group.logs.index(follower))
    time.sleep(1.2)  # longer than the window in which a peer counts as reachable
    with pytest.raises(errors.MembershipRefused, match="no majority"):
        leader.add_master(group.addresses[3])
    survivor = next(log for log in group.running() if log is not leader)
    with pytest.raises(errors.MembershipRefused, match="no majority"):
        leader.remove_master(survivor.address)
    assert len(leader.members()) == 3


def test_a_removed_master_stops_and_the_rest_keep_committing(group: Group) -> None:
    leader = group.leader()
    submit_one(leader, CreateCluster(RPC.cluster_name, 4, 1))
    follower = next(log for log in group.running() if log is not leader)
    assert leader.remove_master(follower.address) == follower.node_id
    # It learns that its removal committed from the leader's last broadcast
    # (best effort); in any case it appended the change, so it never campaigns.
    wait_until(lambda: follower.removed or follower.node_id not in follower._node.conf_state.voters,
               "the removed follower to learn it is no longer a voter")
    submit_one(leader, AllocateOids(1))
    rest = [log for log in group.running() if log is not follower]
    wait_until(lambda: all(log.state == leader.state for log in rest),
               "the remaining masters to reach the leader's state")
    assert all(follower.address not in dict(log.members()).values() for log in rest)


def test_a_leader_removing_itself_steps_down_and_another_leads(group: Group) -> None:
    leader = group.leader()
    submit_one(leader, CreateCluster(RPC.cluster_name, 4, 1))
    leader.remove_master(leader.address)
    assert leader.removed
    new_leader = group.leader()
    assert new_leader is not leader
    submit_one(new_leader, AllocateOids(1))


# -- processes: neoctl add-master / remove-master while a client commits -------------------


def _neoctl_json(cluster: LocalCluster, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = neoctl.main(["--masters", ",".join(cluster.masters), "--cluster", cluster.name, "--json", *args])
    return status, capsys.readouterr().out


@pytest.mark.process
def test_masters_grow_lose_one_and_shrink_while_a_client_commits(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LocalCluster(str(tmp_path), name="grow", num_storages=2, num_partitions=4, num_replicas=2,
                      num_masters=3) as cluster:
        original = cluster.masters
        storage = NeoStorage(original[:1], cluster.name)  # one master address: it learns the others
        db = ZODB.DB(storage)
        committed: list[int] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def commit_forever() -> None:
            value = 0
            while not stop.is_set():
                value += 1
                for _attempt in range(100):
                    try:
                        connection = db.open()
                        try:
                            connection.root()["counter"] = value
                            transaction.commit()
                        finally:
                            connection.close()
                        break
                    except Exception:  # noqa: BLE001 - failover: retry
                        transaction.abort()
                        time.sleep(0.1)
                else:
                    failures.append(AssertionError(f"commit {value} never succeeded"))
                    return
                committed.append(value)

        writer = threading.Thread(target=commit_forever, daemon=True)
        writer.start()
        try:
            wait_until(lambda: len(committed) >= 3, "the client's first 3 commits")
            new_index = cluster.add_master()
            new_address = cluster.master_addresses[new_index]
            info = cluster.cluster_info(address=new_address)
            assert new_address in info.masters and len(info.masters) == 4

            # Refusals through neoctl: exit status 1, a clear message.
            status, _ = _neoctl_json(cluster, "add-master", new_address, capsys=capsys)
            assert status == neoctl.EXIT_REFUSED
            status, _ = _neoctl_json(cluster, "remove-master", "127.0.0.1:1", capsys=capsys)
            assert status == neoctl.EXIT_REFUSED

            # kill -9 the leader among the original masters.
            leader_address = cluster.cluster_info(address=new_address).leader
            victim = original.index(leader_address) if leader_address in original else 0
            process = cluster.master if victim == 0 else cluster.other_masters[victim - 1]
            assert process is not None
            process.kill()
            before = len(committed)
            wait_until(lambda: len(committed) >= before + 5, "5 more commits after the leader was killed", timeout=60)
            assert not failures

            # The new master holds the committed state: at least every
            # transaction the client saw committed (the writer goes on, so
            # the two never need to be equal at one instant).
            last = committed[-1]
            seen = storage.lastTransaction()
            wait_until(lambda: cluster.cluster_info(address=new_address).last_tid >= seen,
                       "the new master to know the client's last transaction", interval=0.05)  # an rpc per look
            assert last >= before + 5

            # Remove the dead master: three members, all alive, keep committing.
            status, out = _neoctl_json(cluster, "remove-master", original[victim], capsys=capsys)
            assert status == neoctl.EXIT_OK, out
            assert original[victim] not in [m["address"] for m in json.loads(out)["members"]]
            cluster.removed.add(victim)
            before = len(committed)
            wait_until(lambda: len(committed) >= before + 5, "5 more commits after removing the dead master",
                       timeout=60)
            # And remove a live original one: it exits by itself.
            live = next(i for i, address in enumerate(original) if i != victim and address != new_address)
            cluster.remove_master(live)
            live_process = cluster.master if live == 0 else cluster.other_masters[live - 1]
            assert live_process is not None and live_process.process is not None
            live_process.process.wait(30)
            before = len(committed)
            wait_until(lambda: len(committed) >= before + 5, "5 more commits after removing a live master", timeout=60)
            assert not failures
            assert len(cluster.cluster_info(address=new_address).members) == 2
        finally:
            stop.set()
            writer.join(60)
            db.close()


def test_neoctl_removing_the_leader_hands_leadership_over_first(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from harness import ThreadCluster

    with ThreadCluster(str(tmp_path), num_masters=3, num_storages=2, num_partitions=4, num_replicas=2) as cluster:
        db = ZODB.DB(cluster.client())
        with db.transaction() as connection:
            connection.root()["value"] = 1
        leader = cluster.wait_for_leader()
        base = ["--masters", ",".join(cluster.masters), "--cluster", cluster.name, "--json"]
        capsys.readouterr()
        with caplog.at_level(logging.INFO, logger="neostore.master_node"):
            status = neoctl.main([*base, "remove-master", leader.address])
        out = capsys.readouterr().out
        assert status == neoctl.EXIT_OK, out
        assert leader.address not in [m["address"] for m in json.loads(out)["members"]]
        # The leader handed over (TimeoutNow) and was removed as a follower
        # by the new leader, rather than stepping down and leaving the group
        # an election timeout without a leader.
        assert any("handed leadership over to" in r.getMessage() for r in caplog.records), caplog.text
        wait_until(lambda: leader.removed, "the old leader to learn it was removed")
        leader.stop()  # as neo-master does once removed: its clients move to another master
        new_leader = cluster.wait_for_leader(other_than=leader)
        assert len(new_leader.members()) == 2
        # The storage nodes register with the new leader once the old one
        # stopped, dropping what was voted and undecided then: a commit in
        # that window fails as a ConflictError (TransactionNotCommittedError),
        # which ZODB applications retry.  One such failure at most.
        from ZODB.POSException import ConflictError

        manager = transaction.TransactionManager()
        connection = db.open(manager)
        conflicts = []
        for attempt in manager.attempts(3):
            with attempt:
                try:
                    connection.root()["value"] = 2
                    manager.commit()
                except ConflictError as error:
                    conflicts.append(error)
                    raise
        assert len(conflicts) <= 1, conflicts
        connection.close()
        with db.transaction() as connection:
            assert connection.root()["value"] == 2
        db.close()
