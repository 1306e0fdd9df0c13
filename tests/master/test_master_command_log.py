"""The command log: one apply loop, durable in LMDB across reopen and snapshots."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import lmdb
import pytest

from neostore import errors
from neostore.ids import p64, u64
from neostore.master_node.command_log import CommandLog, LmdbCommandLog, MemoryCommandLog, submit_one
from neostore.master_node.state import (
    AllocateOids,
    ClusterState,
    CreateCluster,
    CreatePartitionTable,
    RegisterNode,
    SetNodeState,
)
from neostore.partition_table import NodeState

from master_fakes import CLUSTER


@pytest.fixture(params=["memory", "lmdb"])
def command_log(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[CommandLog]:
    """Both implementations run the same behaviour tests."""
    made: CommandLog = MemoryCommandLog() if request.param == "memory" else LmdbCommandLog(tmp_path / "log")
    yield made
    made.close()


def test_submit_returns_one_result_per_command_in_order(command_log: CommandLog) -> None:
    results = command_log.submit([
        CreateCluster(CLUSTER, 4, 1),
        RegisterNode(0, "a:1"),
        RegisterNode(0, "b:2"),
        AllocateOids(10),
    ])
    assert results == [None, 1, 2, p64(1)]
    assert command_log.state.cluster_name == CLUSTER
    assert u64(command_log.state.last_oid) == 10


def test_a_rejected_command_holds_its_error_and_the_others_still_apply(command_log: CommandLog) -> None:
    results = command_log.submit([
        CreateCluster(CLUSTER, 4, 1),
        RegisterNode(5, "a:1"),  # unknown id
        AllocateOids(3),
    ])
    assert results[0] is None
    assert isinstance(results[1], errors.WrongCluster)
    assert results[2] == p64(1)


def test_submit_one_raises_the_error_that_refused_the_command(command_log: CommandLog) -> None:
    submit_one(command_log, CreateCluster(CLUSTER, 4, 1))
    with pytest.raises(errors.BadRequest, match="at least one"):
        submit_one(command_log, AllocateOids(0))


def test_listeners_see_every_change_in_order_and_nothing_else(command_log: CommandLog) -> None:
    seen: list[tuple[ClusterState, ClusterState]] = []
    command_log.add_listener(lambda old, new: seen.append((old, new)))
    submit_one(command_log, CreateCluster(CLUSTER, 4, 1))
    submit_one(command_log, RegisterNode(0, "a:1"))
    submit_one(command_log, RegisterNode(1, "a:1"))  # no change
    assert len(seen) == 2
    assert seen[0][1] is seen[1][0]
    assert seen[1][1] is command_log.state


def test_a_closed_log_refuses_submits(command_log: CommandLog) -> None:
    command_log.close()
    with pytest.raises(errors.Unavailable, match="closed"):
        command_log.submit([CreateCluster(CLUSTER, 4, 1)])


def test_memory_log_keeps_only_commands_that_changed_the_state() -> None:
    command_log = MemoryCommandLog()
    command_log.submit([CreateCluster(CLUSTER, 4, 1), RegisterNode(0, "a:1"), RegisterNode(1, "a:1"),
                        AllocateOids(0)])
    assert len(command_log.entries) == 2


# -- LMDB durability -------------------------------------------------------------------


def _populate(command_log: LmdbCommandLog, count: int) -> None:
    submit_one(command_log, CreateCluster(CLUSTER, 4, 2))
    submit_one(command_log, RegisterNode(0, "a:1"))
    submit_one(command_log, RegisterNode(0, "b:2"))
    submit_one(command_log, CreatePartitionTable((1, 2)))
    for _ in range(count):
        submit_one(command_log, AllocateOids(7))
    submit_one(command_log, SetNodeState(2, NodeState.DOWN))


def test_state_survives_reopen(tmp_path: pathlib.Path) -> None:
    first = LmdbCommandLog(tmp_path)
    _populate(first, 5)
    expected = first.state
    first.close()
    reopened = LmdbCommandLog(tmp_path)
    try:
        assert reopened.state == expected
        assert reopened.last_index == 10
        assert reopened.snapshot_index == 0
    finally:
        reopened.close()


@pytest.mark.parametrize("snapshot_every", [1, 3, 4, 100])
def test_snapshots_drop_the_log_they_cover_and_reopen_to_the_same_state(
    tmp_path: pathlib.Path, snapshot_every: int
) -> None:
    first = LmdbCommandLog(tmp_path, snapshot_every=snapshot_every)
    _populate(first, 9)  # 14 entries
    expected = first.state
    assert first.last_index == 14
    assert first.snapshot_index == (14 // snapshot_every) * snapshot_every
    first.close()
    env = lmdb.open(str(tmp_path), max_dbs=4, readonly=True, lock=False)
    with env.begin() as txn:
        kept = [u64(key) for key, _ in txn.cursor(db=env.open_db(b"log", txn=txn))]
    env.close()
    assert kept == list(range(first.snapshot_index + 1, 15))
    reopened = LmdbCommandLog(tmp_path, snapshot_every=snapshot_every)
    try:
        assert reopened.state == expected
        submit_one(reopened, AllocateOids(1))
        assert reopened.last_index == 15
    finally:
        reopened.close()


def test_every_open_raises_the_term(tmp_path: pathlib.Path) -> None:
    terms = []
    for _ in range(3):
        command_log = LmdbCommandLog(tmp_path)
        terms.append(command_log.term)
        command_log.close()
    assert terms == [1, 2, 3]


def test_a_second_log_on_the_same_directory_is_refused(tmp_path: pathlib.Path) -> None:
    first = LmdbCommandLog(tmp_path)
    try:
        with pytest.raises(errors.Unavailable, match="in use by another master"):
            LmdbCommandLog(tmp_path)
    finally:
        first.close()
    LmdbCommandLog(tmp_path).close()  # free again once closed


def test_a_corrupt_entry_is_reported_on_open(tmp_path: pathlib.Path) -> None:
    first = LmdbCommandLog(tmp_path)
    _populate(first, 1)
    first.close()
    env = lmdb.open(str(tmp_path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(p64(3), b"garbage", db=env.open_db(b"log", txn=txn))
    env.close()
    with pytest.raises(errors.Corrupted, match="entry 3 does not replay"):
        LmdbCommandLog(tmp_path)


def test_a_failed_write_leaves_the_state_unchanged(tmp_path: pathlib.Path) -> None:
    command_log = LmdbCommandLog(tmp_path, map_size=64 * 1024)
    submit_one(command_log, CreateCluster(CLUSTER, 4, 1))
    before = command_log.state
    addresses: Callable[[int], str] = lambda n: f"node-{n}-" + "x" * 2000 + ":1"  # noqa: E731
    with pytest.raises(errors.StorageFull):
        command_log.submit([RegisterNode(0, addresses(n)) for n in range(200)])
    assert command_log.state is before
    command_log.close()
