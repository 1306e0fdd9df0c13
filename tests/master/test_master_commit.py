"""The master's side of two-phase commit, against fake storage nodes over gRPC."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neostore import errors
from neostore.ids import p64, u64
from neostore.master_node.cluster import ClusterManager
from neostore.master_node.codec import decode_command
from neostore.master_node.command_log import MemoryCommandLog, submit_one
from neostore.master_node.commit import CommitConfig, CommitCoordinator, Phase, last_published_tid
from neostore.master_node.invalidations import Invalidation, InvalidationPublisher
from neostore.master_node.state import (
    ClusterState,
    CommitDecisions,
    CreateCluster,
    CreatePartitionTable,
    Decision,
    NodeVote,
    RegisterNode,
    SetNodeState,
    plan_decision,
)
from neostore.master_node.storage_links import StorageLinks
from neostore.partition_table import CellState, NodeState

from master_fakes import CLUSTER, RPC_CONFIG, FakeStorage, in_background, running_log
from waiting import wait_until

# A participant that fails fails at once, so the deadline only bounds how
# long the tests of unreachable nodes wait; it is not tight, so that a healthy
# Commit on a loaded machine is never taken for a failure.
FAST = CommitConfig(commit_timeout=2.0, commit_deadline=2.0, abort_timeout=1.0, mark_applied_delay=0.01,
                    session_grace=0.0)


class SlowLog(MemoryCommandLog):
    """A memory log whose every write takes ``delay`` (an fsync's stand-in)
    and which counts the CommitDecisions entries it wrote."""

    def __init__(self, delay: float) -> None:
        super().__init__(term=7)
        self.delay = delay

    def _persist(self, entries: list[bytes], state: ClusterState) -> None:
        time.sleep(self.delay)
        super()._persist(entries, state)

    def decision_entries(self) -> list[bytes]:
        return [entry for entry in self.entries if entry.startswith(b'{"command":"CommitDecisions"')]


class GatedLog(MemoryCommandLog):
    """A memory log whose writes of commit decisions wait for ``gate``."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.waiting = threading.Event()

    def _persist(self, entries: list[bytes], state: ClusterState) -> None:
        if any(entry.startswith(b'{"command":"CommitDecisions"') for entry in entries):
            self.waiting.set()
            self.gate.wait(30)
        super()._persist(entries, state)


class InDoubtLog(MemoryCommandLog):
    """A memory log whose entries of commit decisions do not commit within
    the submit timeout (InDoubt at once), then commit when ``commit_later``
    opens, or are replaced by another leader's entry (``replaced``)."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_later = threading.Event()
        self.replaced = threading.Event()

    def submit(self, commands):  # type: ignore[no-untyped-def]
        if not any(isinstance(command, CommitDecisions) for command in commands):
            return super().submit(commands)

        def pending(timeout: float) -> list[Any] | None:
            deadline = time.monotonic() + timeout
            while not self.commit_later.is_set():
                if self.replaced.is_set():
                    raise errors.NotLeader("leadership changed before entry 9 committed")
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.01)
            return MemoryCommandLog.submit(self, commands)

        raise errors.InDoubt("no Raft commit within 10 s (no quorum?)", pending)


class Harness:
    """A coordinator over a memory log, a publisher and fake storages 1..N."""

    def __init__(self, storages: list[FakeStorage], num_partitions: int = 4, num_replicas: int = 2,
                 command_log: MemoryCommandLog | None = None, config: CommitConfig = FAST,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.storages = storages
        if command_log is None:
            command_log = running_log([s.address for s in storages], num_partitions, num_replicas)
        self.log = command_log
        state = command_log.state
        self.publisher = InvalidationPublisher(last_published_tid(state), state.table)
        self.subscription = self.publisher.subscribe()
        self.links = StorageLinks(RPC_CONFIG)
        self.coordinator = CommitCoordinator(command_log, self.links, self.publisher, config,
                                             monotonic=monotonic)

    @property
    def state(self) -> ClusterState:
        return self.log.state

    def votes_for(self, partitions: list[int], nodes: list[int] | None = None) -> list[NodeVote]:
        """Votes of ``nodes`` (default: every node holding a cell there)."""
        table = self.state.table
        voters = nodes if nodes is not None else sorted(
            {cell.node_id for p in partitions for cell in table.rows[p]})
        return [NodeVote(node, tuple(p for p in partitions
                                     if table.cell_state(p, node) is not None)) for node in voters]

    def commit(self, client: str = "client", nodes: list[int] | None = None, ttid: bytes | None = None) -> bytes:
        """Begin (unless ttid given) and finish a transaction writing one oid."""
        if ttid is None:
            ttid = self.coordinator.begin(client)
        partition = u64(ttid) % self.state.num_partitions
        oid = p64(partition)
        return self.coordinator.finish(client, ttid, [oid], [partition], self.votes_for([partition], nodes))

    def published(self) -> list[bytes]:
        events = []
        while (event := self.subscription.next_event(timeout=0.01)) is not None:
            if isinstance(event, Invalidation):
                events.append(event.tid)
        return events

    def close(self) -> None:
        self.coordinator.stop()
        self.links.close()
        self.publisher.close()


@pytest.fixture
def storages() -> Iterator[list[FakeStorage]]:
    made = [FakeStorage(), FakeStorage()]
    yield made
    for storage in made:
        storage.stop()


@pytest.fixture
def harness(storages: list[FakeStorage]) -> Iterator[Harness]:
    made = Harness(storages)
    made.coordinator.start()
    yield made
    made.close()


def test_finish_commits_on_every_voter_and_returns_the_published_tid(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    tid = harness.commit(ttid=ttid)
    assert tid > ttid
    assert u64(tid) % 4 == u64(ttid) % 4
    # Published once decided; the Commit orders follow.
    assert harness.publisher.last_tid == tid
    for storage in harness.storages:
        wait_until(lambda storage=storage: storage.commits == [(ttid, tid, harness.log.term)],
                   what="the commit order on every voter")
    assert harness.published() == [tid]
    assert harness.coordinator.phase_of(ttid) is None
    wait_until(lambda: harness.state.pending_decisions == (), what="MarkApplied")


class _Clock:
    """A monotonic clock the test advances (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_mark_applied_waits_for_a_decision_to_carry_it_from_when_its_marks_appear(
        storages: list[FakeStorage]) -> None:
    """A MarkApplied rides in the entry of the next decision; it gets an
    entry of its own only once ``mark_applied_delay`` passed with no
    decision taking it, counted from when *those* marks appeared, not from
    when earlier marks (carried away meanwhile) did: on a busy cluster, no
    Raft round is spent on MarkApplied alone."""
    clock = _Clock()
    command_log = running_log([s.address for s in storages])
    alone: list[float] = []  # the clock when an entry of MarkApplied alone was submitted
    submit = command_log.submit

    def recording(commands: list[Any]) -> list[Any]:
        if all(type(command).__name__ == "MarkApplied" for command in commands):
            alone.append(clock.now)
        return submit(commands)

    command_log.submit = recording  # type: ignore[method-assign]
    config = dataclasses.replace(FAST, mark_applied_delay=100.0)
    harness = Harness(storages, command_log=command_log, config=config, monotonic=clock)
    coordinator = harness.coordinator
    coordinator.start()

    def marks_waiting() -> bool:
        with coordinator._condition:  # noqa: SLF001
            return bool(coordinator._applied_marks)  # noqa: SLF001

    def advance(to: float) -> None:
        clock.now = to
        with coordinator._condition:  # noqa: SLF001 - the decider computes its wait again
            coordinator._condition.notify_all()  # noqa: SLF001

    try:
        first = harness.commit()
        wait_until(marks_waiting, what="the first transaction applied everywhere")  # marks at 0
        advance(90.0)
        second = harness.commit()  # carries the first one's marks
        assert first not in {d.tid for d in harness.state.pending_decisions}
        wait_until(marks_waiting, what="the second transaction applied everywhere")  # marks at 90
        advance(150.0)  # past 0 + 100, not 90 + 100: the second one's marks keep waiting
        time.sleep(0.2)  # the decider's turn to (wrongly) submit; nothing to wait for otherwise
        assert alone == []
        assert second in {d.tid for d in harness.state.pending_decisions}
        advance(195.0)
        wait_until(lambda: harness.state.pending_decisions == (), what="MarkApplied of the second one alone")
        assert alone == [195.0]
    finally:
        harness.close()


def test_concurrent_finishes_share_log_entries_and_publish_in_tid_order(storages: list[FakeStorage]) -> None:
    command_log = SlowLog(delay=0.03)
    submit_one(command_log, CreateCluster(CLUSTER, 4, 2))
    for storage in storages:
        submit_one(command_log, RegisterNode(0, storage.address))
    submit_one(command_log, CreatePartitionTable((1, 2)))
    harness = Harness(storages, command_log=command_log)
    harness.coordinator.start()
    try:
        ttids = [harness.coordinator.begin(f"client-{n}") for n in range(12)]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(harness.commit, f"client-{n}", None, ttid) for n, ttid in enumerate(ttids)]
            tids = [future.result(timeout=20) for future in futures]
        assert len(set(tids)) == 12
        for ttid, tid in zip(ttids, tids, strict=True):
            assert u64(tid) % 4 == u64(ttid) % 4
        assert harness.published() == sorted(tids)
        decided = sum(entry.count(b'"ttid"') for entry in command_log.decision_entries())
        assert decided == 12
        assert len(command_log.decision_entries()) < 12, "finishes arriving together share one entry"
        # Published once decided: the Commit orders reach the participants after.
        wait_until(lambda: all(set(storage.committed_tids()) == set(tids) for storage in storages),
                   what="every participant applies all twelve")
    finally:
        harness.close()


def test_a_writable_cell_that_did_not_vote_is_marked_out_of_date(harness: Harness) -> None:
    version = harness.state.table.version
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    tid = harness.commit(ttid=ttid, nodes=[1])
    assert harness.state.table.cell_state(partition, 2) == CellState.OUT_OF_DATE
    assert harness.state.table.cell_state(partition, 1) == CellState.UP_TO_DATE
    assert harness.state.table.version == version + 1
    wait_until(lambda: harness.storages[0].committed_tids() == [tid], what="the voter's commit order")
    assert harness.storages[1].committed_tids() == []
    # The node that did not vote may hold the transaction's stores and their
    # locks, which no Commit will release: it is ordered to drop them.
    wait_until(lambda: harness.storages[1].aborted_ttids() == [ttid], what="the non-voter told to drop it")
    assert harness.storages[0].aborted_ttids() == []


def test_a_node_that_is_down_gets_no_drop_order_for_each_decision(harness: Harness) -> None:
    submit_one(harness.log, SetNodeState(2, NodeState.DOWN))  # its cells: OUT_OF_DATE, still writable
    tids = [harness.commit(nodes=[1]) for _ in range(3)]
    wait_until(lambda: harness.storages[0].committed_tids() == tids, what="the voter's commit orders")
    time.sleep(0.2)
    assert harness.storages[1].aborted_ttids() == []  # it drops undecided TTIDs when it registers again


def test_finish_without_a_writable_voter_is_unavailable_and_aborts_the_transaction(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    with pytest.raises(errors.NotCommitted, match=f"partition {partition}: no storage node holding a writable cell"):
        harness.coordinator.finish("client", ttid, [p64(partition)], [partition], [])
    assert harness.coordinator.phase_of(ttid) is None
    for storage in harness.storages:
        wait_until(lambda storage=storage: storage.aborted_ttids() == [ttid], what="abort on every running node")
    harness.coordinator.abort("client", ttid, [1, 2])  # the client's own abort, later: harmless
    assert harness.published() == []


def test_finish_refuses_to_leave_a_partition_without_readable_cell(harness: Harness) -> None:
    submit_one(harness.log, SetNodeState(1, NodeState.DOWN))
    submit_one(harness.log, RegisterNode(1, harness.storages[0].address))  # back, cells OUT_OF_DATE
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    with pytest.raises(errors.NotCommitted, match=f"partition {partition}: the transaction would leave no readable"):
        harness.commit(ttid=ttid, nodes=[1])


def test_the_vote_of_a_node_that_registered_again_since_begin_does_not_count(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    with harness.coordinator.registering() as registered:
        registered(2)  # node 2 restarted: it drops its undecided pending data
    tid = harness.commit(ttid=ttid)
    assert harness.state.table.cell_state(partition, 2) == CellState.OUT_OF_DATE
    wait_until(lambda: harness.storages[0].committed_tids() == [tid], what="node 1's commit order")
    assert harness.storages[1].committed_tids() == []
    later = harness.coordinator.begin("client")
    assert harness.votes_for([u64(later) % 4], [1, 2])[1].node_id == 2
    harness.commit(ttid=later)  # begun after the registration: node 2's vote counts again
    wait_until(lambda: len(harness.storages[1].committed_tids()) == 1, what="node 2's commit order")


def test_an_unreachable_participant_is_marked_down_and_dropped(harness: Harness) -> None:
    harness.storages[1].fail_with = errors.Unavailable("disk on fire")
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    tid = harness.commit(ttid=ttid)
    assert harness.published() == [tid]  # once decided: the orders follow
    wait_until(lambda: harness.state.table.node(2).state == NodeState.DOWN, what="node 2 marked down")
    assert harness.state.table.cell_state(partition, 2) == CellState.OUT_OF_DATE
    assert harness.storages[1].commit_calls > 1, "an unreachable node is retried"
    wait_until(lambda: harness.state.pending_decisions == (), what="MarkApplied")


def test_a_participant_refusing_the_commit_is_dropped_but_not_marked_down(harness: Harness) -> None:
    harness.storages[1].fail_with = errors.UnknownTransaction("no such ttid")
    ttid = harness.coordinator.begin("client")
    partition = u64(ttid) % 4
    tid = harness.commit(ttid=ttid)
    assert harness.published() == [tid]
    wait_until(lambda: harness.state.table.cell_state(partition, 2) == CellState.OUT_OF_DATE,
               what="node 2's cell marked OUT_OF_DATE")
    assert harness.state.table.node(2).state == NodeState.RUNNING
    assert harness.storages[1].commit_calls == 1


def test_the_holder_of_the_last_readable_cell_stays_a_participant_until_it_returns(harness: Harness) -> None:
    """Published once decided, as always; node 1, which holds the only
    readable cell, keeps what it voted locked (reads there wait) and stays
    a participant until it applies the decision, once back."""
    submit_one(harness.log, SetNodeState(2, NodeState.DOWN))
    submit_one(harness.log, RegisterNode(2, harness.storages[1].address))  # back, cells OUT_OF_DATE
    harness.storages[0].fail_with = errors.Unavailable("network cut")
    ttid = harness.coordinator.begin("client")
    tid = harness.commit(ttid=ttid)
    assert harness.published() == [tid]
    wait_until(lambda: harness.state.table.node(1).state == NodeState.DOWN, what="node 1 marked down")
    assert harness.state.pending_decisions[0].participants == (1, 2), "node 1 was not dropped"
    assert harness.storages[0].committed_tids() == []
    harness.storages[0].fail_with = None
    submit_one(harness.log, RegisterNode(1, harness.storages[0].address))
    harness.coordinator.redrive_node(1)
    wait_until(lambda: harness.storages[0].committed_tids() == [tid], what="node 1 applied it once back")
    wait_until(lambda: all(d.tid != tid or 1 not in d.participants for d in harness.state.pending_decisions),
               what="MarkApplied of node 1")


def test_a_node_back_while_its_commit_loop_gives_up_gets_the_commit_again(harness: Harness) -> None:
    submit_one(harness.log, SetNodeState(2, NodeState.DOWN))
    submit_one(harness.log, RegisterNode(2, harness.storages[1].address))  # back, cells OUT_OF_DATE
    harness.storages[0].fail_with = errors.Unavailable("network cut")
    coordinator = harness.coordinator
    participant_failed = coordinator._participant_failed  # noqa: SLF001

    def back_just_then(applying: Any, node_id: int, error: errors.NeoError, unreachable: bool) -> None:
        # Node 1 registers again after the loop's last try and before the
        # loop records its failure: redrive_node finds the loop still running.
        harness.storages[0].fail_with = None
        coordinator.redrive_node(node_id)
        participant_failed(applying, node_id, error, unreachable)

    coordinator._participant_failed = back_just_then  # type: ignore[method-assign]  # noqa: SLF001
    tid = harness.commit()
    assert harness.published() == [tid]
    wait_until(lambda: harness.storages[0].committed_tids() == [tid], what="the commit order sent again")


def test_publication_follows_tid_order_without_waiting_for_the_participants(storages: list[FakeStorage]) -> None:
    harness = Harness(storages, num_partitions=2, num_replicas=1)  # partition p on node p + 1
    harness.coordinator.start()
    try:
        first = harness.coordinator.begin("a")
        second = harness.coordinator.begin("b")
        while u64(second) % 2 == u64(first) % 2:
            second = harness.coordinator.begin("b")
        gate = storages[u64(first) % 2].commit_gate = threading.Event()
        first_tid = harness.commit("a", None, first)  # its participant has not applied it
        second_tid = harness.commit("b", None, second)
        assert first_tid < second_tid
        assert harness.published() == [first_tid, second_tid]
        wait_until(lambda: len(storages[u64(second) % 2].commits) == 1, what="second applied")
        assert storages[u64(first) % 2].commits == []
        assert [d.tid for d in harness.state.pending_decisions][:1] == [first_tid], "first still to apply"
        gate.set()
        wait_until(lambda: harness.state.pending_decisions == (), what="both applied and forgotten")
    finally:
        harness.close()


def test_abort_orders_the_named_nodes_and_forgets_the_transaction(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    harness.coordinator.abort("client", ttid, [2, 77])  # 77: unknown, skipped
    assert harness.storages[1].aborts == [(ttid, harness.log.term)]
    assert harness.storages[0].aborts == []
    with pytest.raises(errors.UnknownTransaction):
        harness.commit(ttid=ttid)


def test_another_clients_transaction_can_neither_be_finished_nor_aborted(harness: Harness) -> None:
    ttid = harness.coordinator.begin("owner")
    with pytest.raises(errors.UnknownTransaction, match="'intruder'"):
        harness.commit(client="intruder", ttid=ttid)
    with pytest.raises(errors.UnknownTransaction, match="does not belong"):
        harness.coordinator.abort("intruder", ttid, [])
    assert harness.coordinator.phase_of(ttid) is Phase.BEGUN


def _finish_args(harness: Harness, ttid: bytes) -> dict[str, Any]:
    partition = u64(ttid) % 4
    return {"client_id": "client", "ttid": ttid, "oids": [p64(partition)], "partitions": [partition],
            "votes": harness.votes_for([partition])}


@pytest.mark.parametrize(
    "change, error, message",
    [
        pytest.param(lambda a: {**a, "ttid": b"short"}, errors.BadRequest, "ttid must be 8 bytes", id="short-ttid"),
        pytest.param(lambda a: {**a, "oids": [b"\0" * 9]}, errors.BadRequest, "oid must be 8 bytes", id="long-oid"),
        pytest.param(lambda a: {**a, "partitions": a["partitions"] + [4]}, errors.BadRequest, "out of range",
                     id="partition-out-of-range"),
        pytest.param(lambda a: {**a, "partitions": [], "oids": []}, errors.BadRequest, "name the partitions",
                     id="no-partitions"),
        pytest.param(lambda a: {**a, "partitions": [(a["partitions"][0] + 1) % 4], "oids": []},
                     errors.BadRequest, "holds the metadata", id="metadata-partition-missing"),
        pytest.param(lambda a: {**a, "oids": [p64(a["partitions"][0] + 1)]}, errors.BadRequest,
                     "not among the partitions written", id="oid-partition-missing"),
        pytest.param(lambda a: {**a, "votes": [NodeVote(9, tuple(a["partitions"]))]}, errors.BadRequest,
                     "unknown to this cluster", id="unknown-voter"),
        pytest.param(lambda a: {**a, "ttid": p64(u64(a["ttid"]) + 4)}, errors.UnknownTransaction,
                     "unknown to this master", id="unknown-ttid"),
    ],
)
def test_finish_refuses_bad_requests(harness: Harness, change, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    ttid = harness.coordinator.begin("client")
    with pytest.raises(error, match=message):
        harness.coordinator.finish(**change(_finish_args(harness, ttid)))
    if change(_finish_args(harness, ttid))["ttid"] != ttid:
        assert harness.coordinator.phase_of(ttid) is Phase.BEGUN, "another ttid: this one is untouched"
    else:
        assert harness.coordinator.phase_of(ttid) is None, "a refused finish aborts the transaction"
        wait_until(lambda: harness.storages[0].aborted_ttids() == [ttid], what="abort")
    assert harness.published() == []


def test_a_client_leaving_aborts_its_unfinished_transactions_on_every_running_node(harness: Harness) -> None:
    coordinator = harness.coordinator
    coordinator.client_connected("leaver")
    coordinator.client_connected("leaver")  # a second session (reconnect)
    unfinished = [coordinator.begin("leaver"), coordinator.begin("leaver")]
    finished = coordinator.begin("leaver")
    harness.commit(client="leaver", ttid=finished)
    other = coordinator.begin("stayer")
    coordinator.client_disconnected("leaver")
    time.sleep(0.05)
    assert all(storage.aborts == [] for storage in harness.storages), "one session is still open"
    coordinator.client_disconnected("leaver")
    for storage in harness.storages:
        wait_until(lambda storage=storage: sorted(storage.aborted_ttids()) == sorted(unfinished), what="aborts")
    assert [coordinator.phase_of(ttid) for ttid in unfinished] == [None, None]
    assert coordinator.phase_of(other) is Phase.BEGUN


def test_a_client_back_within_the_grace_keeps_its_transactions(storages: list[FakeStorage]) -> None:
    harness = Harness(storages, config=dataclasses.replace(FAST, session_grace=0.3))
    harness.coordinator.start()
    try:
        coordinator = harness.coordinator
        coordinator.client_connected("flaky")
        kept = coordinator.begin("flaky")
        coordinator.client_disconnected("flaky")  # its stream broke...
        coordinator.client_connected("flaky")  # ...and it came back in time
        time.sleep(0.5)
        assert coordinator.phase_of(kept) is Phase.BEGUN
        assert all(storage.aborts == [] for storage in harness.storages)
        coordinator.client_disconnected("flaky")  # now it is gone for good
        for storage in harness.storages:
            wait_until(lambda storage=storage: storage.aborted_ttids() == [kept], what="abort after grace")
        assert coordinator.phase_of(kept) is None
    finally:
        harness.close()


class _ManualTimers:
    """Stands for ``threading.Timer`` in the coordinator: the test fires
    each grace check when it chooses, not after a guessed delay."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, tuple[Any, ...]]] = []

    def __call__(self, interval: float, function: Any, args: tuple[Any, ...] = ()) -> _ManualTimers:
        self.pending.append((function, args))
        return self

    daemon = True

    def start(self) -> None:
        pass

    def fire(self) -> None:
        function, args = self.pending.pop(0)
        function(*args)


def test_a_client_whose_stream_moved_away_but_that_still_calls_keeps_its_transactions(
        storages: list[FakeStorage], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its stream broke and came back on another master (so the leader saw
    its session end), but it goes on beginning and finishing here: the
    TTID its last Finish reserved (or any it began) is not aborted under
    it.  Once it is silent for a whole grace, it is gone."""
    from neostore.master_node import commit as master_commit

    timers = _ManualTimers()
    monkeypatch.setattr(master_commit.threading, "Timer", timers)
    harness = Harness(storages, config=dataclasses.replace(FAST, session_grace=10.0))
    harness.coordinator.start()
    try:
        coordinator = harness.coordinator
        coordinator.client_connected("mover")
        coordinator.client_disconnected("mover")  # its stream went to a follower
        done = coordinator.begin("mover")
        harness.commit(client="mover", ttid=done)
        kept = coordinator.reserve("mover")  # as a Finish answer does
        assert kept is not None
        timers.fire()  # the grace is over: it was heard of meanwhile
        assert coordinator.phase_of(kept) is Phase.BEGUN
        assert all(storage.aborts == [] for storage in harness.storages)
        assert len(timers.pending) == 1, "it is looked at again after another grace"
        timers.fire()  # silent for that whole grace: gone
        for storage in harness.storages:
            wait_until(lambda storage=storage: storage.aborted_ttids() == [kept], what="abort after silence")
        assert coordinator.phase_of(kept) is None
        assert timers.pending == []
    finally:
        harness.close()


def test_start_redrives_decided_transactions_and_publishes_them(storages: list[FakeStorage]) -> None:
    command_log = running_log([s.address for s in storages])
    state = command_log.state
    votes = (NodeVote(1, (1,)), NodeVote(2, (1,)))
    decision = Decision(tid=p64(1001), ttid=p64(997), partitions=(1,), votes=votes, oids=(p64(5),),
                        out_of_date=plan_decision(state, (1,), votes))
    assert command_log.submit([CommitDecisions((decision,))]) == [(None,)]
    harness = Harness(storages, command_log=command_log)
    assert harness.publisher.last_tid == p64(1000)
    harness.coordinator.start()
    try:
        wait_until(lambda: harness.publisher.last_tid == p64(1001), what="re-driven decision published")
        assert harness.published() == [p64(1001)]
        # Published once decided: the Commit orders may still be on their way.
        wait_until(lambda: all(storage.commits == [(p64(997), p64(1001), 1)] for storage in storages),
                   what="re-driven Commit orders")
        wait_until(lambda: harness.state.pending_decisions == (), what="MarkApplied")
        ttid = harness.coordinator.begin("client")
        assert ttid > p64(1001), "new TTIDs start above the last decided TID"
    finally:
        harness.close()


def test_begin_before_the_cluster_runs_is_unavailable(storages: list[FakeStorage]) -> None:
    command_log = MemoryCommandLog()
    submit_one(command_log, CreateCluster(CLUSTER, 4, 2))
    harness = Harness(storages, command_log=command_log)
    harness.coordinator.start()
    try:
        with pytest.raises(errors.Unavailable, match="not running"):
            harness.coordinator.begin("client")
    finally:
        harness.close()


def test_stop_while_participants_are_unreachable_keeps_the_decision_to_re_drive(storages: list[FakeStorage]) -> None:
    harness = Harness(storages, num_partitions=2, num_replicas=1,
                      config=dataclasses.replace(FAST, commit_deadline=30.0))
    harness.coordinator.start()
    for storage in storages:
        storage.fail_with = errors.Unavailable("unreachable")
    ttid = harness.coordinator.begin("client")
    tid = harness.commit("client", None, ttid)  # published once decided
    assert harness.published() == [tid]
    harness.close()  # does not wait for the unreachable participant
    assert harness.state.pending_decisions, "the decision stays in the state, to be re-driven"


# -- GetTransactionOutcome ---------------------------------------------------------


def test_the_outcome_of_a_committed_transaction_is_its_tid(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    tid = harness.commit(ttid=ttid)
    assert harness.coordinator.outcome("client", ttid) == tid
    assert harness.coordinator.outcome("another-client", ttid) is None


def test_asking_the_outcome_of_a_begun_transaction_aborts_it(harness: Harness) -> None:
    ttid = harness.coordinator.begin("client")
    assert harness.coordinator.outcome("client", ttid) is None
    assert harness.coordinator.phase_of(ttid) is None
    with pytest.raises(errors.UnknownTransaction):
        harness.commit(ttid=ttid)
    assert harness.state.outcome_of(ttid, "client") is None


def test_an_unknown_ttid_is_aborted(harness: Harness) -> None:
    assert harness.coordinator.outcome("client", p64(12345)) is None


def test_the_outcome_of_a_finish_in_progress_waits_for_it(storages: list[FakeStorage]) -> None:
    gate = threading.Event()
    command_log = GatedLog(gate)
    for command in running_log([s.address for s in storages]).entries:
        command_log.submit([decode_command(command)])
    harness = Harness(storages, command_log=command_log)
    harness.coordinator.start()
    try:
        ttid = harness.coordinator.begin("client")
        finishing = in_background(lambda: harness.commit(ttid=ttid))
        wait_until(lambda: command_log.waiting.is_set(), what="the decision being written")
        # Not decided yet: the outcome waits for the finish.
        asking = in_background(harness.coordinator.outcome, "client", ttid)
        time.sleep(0.1)
        assert not asking.done() and not finishing.done()
        gate.set()
        tid = finishing.result(5)
        assert asking.result(5) == tid
    finally:
        harness.close()


def _in_doubt_harness(storages: list[FakeStorage]) -> tuple[Harness, InDoubtLog]:
    command_log = InDoubtLog()
    for command in running_log([s.address for s in storages]).entries:
        command_log.submit([decode_command(command)])
    harness = Harness(storages, command_log=command_log)
    harness.coordinator.start()
    return harness, command_log


def test_a_decision_not_committed_in_time_is_in_doubt_and_commits_later(storages: list[FakeStorage]) -> None:
    """A Raft entry that did not commit within the submit timeout may still
    commit: the voters are not told to drop the transaction (that would
    lose it once the entry commits), the client is told to ask, Abort is
    refused, and the outcome is the TID once the entry commits."""
    harness, command_log = _in_doubt_harness(storages)
    try:
        ttid = harness.coordinator.begin("client")
        with pytest.raises(errors.Unavailable, match="not recorded yet.*ask for the outcome"):
            harness.commit(ttid=ttid)
        assert harness.coordinator.phase_of(ttid) is Phase.FINISHING
        with pytest.raises(errors.BadRequest, match="being finished"):
            harness.coordinator.abort("client", ttid, [1, 2])
        asking = in_background(harness.coordinator.outcome, "client", ttid, 30.0)
        time.sleep(0.1)
        assert not asking.done()
        command_log.commit_later.set()
        tid = asking.result(10)
        assert tid is not None and harness.state.outcome_of(ttid, "client") == tid
        wait_until(lambda: all(tid in s.committed_tids() for s in storages), what="the commit orders")
        assert harness.published() == [tid]
        assert all(ttid not in s.aborted_ttids() for s in storages)
    finally:
        harness.close()


def test_a_decision_in_doubt_that_another_leader_replaced_is_given_up(storages: list[FakeStorage]) -> None:
    harness, command_log = _in_doubt_harness(storages)
    try:
        ttid = harness.coordinator.begin("client")
        with pytest.raises(errors.Unavailable, match="ask for the outcome"):
            harness.commit(ttid=ttid)
        time.sleep(0.1)
        assert all(ttid not in s.aborted_ttids() for s in storages)
        command_log.replaced.set()
        assert harness.coordinator.outcome("client", ttid, 10.0) is None
        wait_until(lambda: all(ttid in s.aborted_ttids() for s in storages), what="the drop orders")
        assert harness.state.outcome_of(ttid, "client") is None
        assert all(s.committed_tids() == [] for s in storages)
    finally:
        harness.close()


def test_a_stopped_cluster_manager_no_longer_follows_the_state(harness: Harness) -> None:
    """A master builds a new ClusterManager each time it leads: the one it
    stopped must not stay among the log's listeners (called and kept alive
    for ever, one more per leadership)."""
    listeners = harness.log._listeners  # noqa: SLF001 - what the leak was
    before = list(listeners)
    for _ in range(3):
        manager = ClusterManager(harness.log, harness.coordinator)
        assert len(listeners) == len(before) + 1
        manager.stop()
        assert listeners == before
