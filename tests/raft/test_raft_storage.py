"""The ``RaftLogStore`` contract, run against ``MemoryLogStore`` and ``LmdbLogStore``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from neostore.raft import (
    CompactedError,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryLogStore,
    RaftLogStore,
    RawNode,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    StorageError,
    UnavailableError,
    bootstrap,
)

try:  # installed layout
    from neostore.master_node import raft_log
    from neostore.master_node.raft_log import LmdbLogStore
except ImportError:  # source tree
    from master_node import raft_log
    from master_node.raft_log import LmdbLogStore

VOTERS = ConfState.of(1, 2, 3)


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(term, index, EntryType.NORMAL, f"{term}:{index}".encode())
        for index in range(first, last + 1)
    ]


class StoreFactory:
    """Opens a store of one kind; ``reopen`` gives what a restarted process sees."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.opened: list[LmdbLogStore] = []
        self.memory: MemoryLogStore | None = None

    def open(self) -> RaftLogStore:
        if self.kind == "memory":
            if self.memory is None:
                self.memory = MemoryLogStore()
            return self.memory
        store = LmdbLogStore(self.directory / "raft", map_size=64 << 20)
        self.opened.append(store)
        return store

    def reopen(self, store: RaftLogStore) -> RaftLogStore:
        if isinstance(store, LmdbLogStore):
            store.close()
            self.opened.remove(store)
        return self.open()

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["memory", "lmdb"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    made = StoreFactory(request.param, tmp_path)
    yield made
    made.close()


class TestRaftLogStoreConformance:
    """What every ``RaftLogStore`` must do (see ``neostore.raft.storage``)."""

    def test_new_store_is_empty(self, factory: StoreFactory) -> None:
        store = factory.open()
        assert isinstance(store, RaftLogStore)
        assert store.hard_state() == HardState()
        assert (store.first_index(), store.last_index(), store.term(0)) == (1, 0, 0)
        assert store.snapshot().is_empty()
        assert store.entries(1, 1) == []

    def test_save_stores_hard_state_and_entries(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(2, 1, 3), entries(1, 5, 2))
        assert store.hard_state() == HardState(2, 1, 3)
        assert (store.first_index(), store.last_index()) == (1, 5)
        assert store.entries(2, 5) == entries(2, 4, 2)
        assert store.term(5) == 2

    def test_save_drops_a_conflicting_suffix(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(2), entries(1, 6, 2))
        store.save(HardState(3), entries(4, 4, 3))
        assert store.last_index() == 4
        assert [e.term for e in store.entries(1, 5)] == [2, 2, 2, 3]
        assert [store.term(i) for i in range(1, 5)] == [2, 2, 2, 3]
        with pytest.raises(UnavailableError):
            store.term(5)

    def test_save_refuses_a_gap_or_unordered_entries(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(1), entries(1, 2, 1))
        with pytest.raises(StorageError):
            store.save(None, entries(4, 5, 1))
        with pytest.raises(StorageError):
            store.save(None, [Entry(1, 3), Entry(1, 5)])
        assert store.last_index() == 2

    def test_entries_out_of_range_raise_named_errors(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(1, 0, 6), entries(1, 6, 1))
        store.create_snapshot(3, VOTERS, b"image")
        store.compact(3)
        with pytest.raises(CompactedError):
            store.entries(3, 5)
        with pytest.raises(CompactedError):
            store.term(2)
        with pytest.raises(UnavailableError):
            store.entries(4, 8)
        with pytest.raises(UnavailableError):
            store.term(7)
        assert store.term(3) == 1  # the entry before the first kept is known by its term

    def test_entries_respect_max_bytes_but_return_at_least_one(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(1), [Entry(1, i, EntryType.NORMAL, b"x" * 100) for i in range(1, 6)])
        assert len(store.entries(1, 6, max_bytes=1)) == 1
        assert len(store.entries(1, 6, max_bytes=300)) == 2
        assert len(store.entries(1, 6)) == 5

    def test_snapshot_and_compaction(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(2, 0, 8), entries(1, 10, 2))
        snapshot = store.create_snapshot(8, VOTERS, b"state at 8")
        assert snapshot.metadata == SnapshotMetadata(8, 2, VOTERS)
        assert store.snapshot() == snapshot
        store.compact(6)
        assert (store.first_index(), store.last_index()) == (7, 10)
        assert store.entries(7, 11) == entries(7, 10, 2)
        with pytest.raises(StorageError):
            store.compact(9)  # past the snapshot
        with pytest.raises(CompactedError):
            store.compact(5)
        with pytest.raises(SnapshotOutOfDateError):
            store.create_snapshot(7, VOTERS, b"older")
        with pytest.raises(StorageError):
            store.create_snapshot(9, VOTERS, b"beyond commit")

    def test_saving_a_received_snapshot_replaces_the_log(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(2, 0, 3), entries(1, 5, 2))
        snapshot = Snapshot(SnapshotMetadata(20, 4, VOTERS), b"leader's image")
        store.save(HardState(4, 0, 20), entries(21, 22, 4), snapshot)
        assert store.snapshot() == snapshot
        assert (store.first_index(), store.last_index(), store.term(20)) == (21, 22, 4)
        assert store.entries(21, 23) == entries(21, 22, 4)
        with pytest.raises(SnapshotOutOfDateError):
            store.save(None, [], snapshot)

    def test_everything_survives_a_reopen(self, factory: StoreFactory) -> None:
        store = factory.open()
        store.save(HardState(3, 2, 9), entries(1, 12, 3))
        snapshot = store.create_snapshot(9, VOTERS, b"image")
        store.compact(7)
        store = factory.reopen(store)
        assert store.hard_state() == HardState(3, 2, 9)
        assert store.snapshot() == snapshot
        assert (store.first_index(), store.last_index(), store.term(7)) == (8, 12, 3)
        assert store.entries(8, 13) == entries(8, 12, 3)

    def test_a_node_restarts_from_the_store(self, factory: StoreFactory) -> None:
        store = factory.open()
        bootstrap(store, ConfState.of(1))
        node = RawNode(Config(node_id=1, rng=random.Random(0)), store)
        node.campaign()
        proposed = []
        for round_number in range(3):
            if node.is_leader:
                proposed.append(node.propose(f"command {round_number}".encode()))
            while node.has_ready():
                ready = node.ready()
                store.save(ready.hard_state, ready.entries, ready.snapshot)
                node.advance(ready)
        term, commit = node.term, node.commit_index
        assert commit == proposed[-1]
        store = factory.reopen(store)
        restarted = RawNode(Config(node_id=1, rng=random.Random(0)), store)
        assert (restarted.term, restarted.commit_index) == (term, commit)
        assert restarted.conf_state == ConfState.of(1)
        ready = restarted.ready()
        assert [e.data for e in ready.committed_entries if e.data][-3:] == [
            b"command 0",
            b"command 1",
            b"command 2",
        ]


def test_lmdb_save_is_one_transaction_per_call(tmp_path: Path) -> None:
    with LmdbLogStore(tmp_path / "raft", map_size=16 << 20) as store:
        store.save(HardState(1, 1, 0), entries(1, 50, 1))
        store.save(None, [])  # nothing to write: no transaction at all
        assert store.save_calls == 1


def test_lmdb_terms_past_the_cached_tail_are_read_from_the_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_log, "TERM_CACHE", 3)
    with LmdbLogStore(tmp_path / "raft", map_size=16 << 20) as store:
        store.save(HardState(1, 1, 0), entries(1, 5, 1))
        store.save(HardState(2, 1, 0), entries(6, 8, 2))
        store.save(HardState(3, 1, 0), entries(7, 7, 3))  # replaces 7 and 8
        assert [store.term(i) for i in range(1, 8)] == [1, 1, 1, 1, 1, 2, 3]
        with pytest.raises(UnavailableError):
            store.term(8)


def test_lmdb_failed_save_leaves_the_store_untouched(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    with LmdbLogStore(path, map_size=16 << 20) as store:
        store.save(HardState(1, 1, 0), entries(1, 3, 1))
        with pytest.raises(StorageError):
            store.save(HardState(9, 9, 0), entries(5, 6, 9))
        assert store.hard_state() == HardState(1, 1, 0)
    with LmdbLogStore(path, map_size=16 << 20) as reopened:
        assert reopened.hard_state() == HardState(1, 1, 0)
        assert reopened.last_index() == 3


def test_lmdb_a_truncated_log_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A master whose log file was cut short gets an error naming the file,
    not SIGBUS at the first read past its end."""
    import os

    from neostore import errors

    path = tmp_path / "raft"
    with LmdbLogStore(path, map_size=16 << 20) as store:
        for start in range(1, 400, 50):
            store.save(HardState(1, 1, 0), entries(start, start + 49, 1))
    file = path / "data.mdb"
    os.truncate(file, os.path.getsize(file) // 2)
    with pytest.raises(errors.Corrupted, match=r"raft/data.mdb is truncated"):
        LmdbLogStore(path, map_size=16 << 20)


def test_bootstrap_needs_an_empty_store() -> None:
    store = MemoryLogStore()
    bootstrap(store, VOTERS)
    assert store.hard_state() == HardState(term=1, vote=0, commit=1)
    with pytest.raises(StorageError):
        bootstrap(store, VOTERS)
