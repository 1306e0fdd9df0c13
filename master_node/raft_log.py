"""``LmdbLogStore``: a master's Raft log, hard state and snapshot in LMDB.

One LMDB environment per master, in the directory given to the
constructor, with two named databases:

* ``entries``: index (8 bytes, big-endian, so keys sort by index) →
  ``encode_entry(entry)``;
* ``meta``: ``hard_state`` → ``encode_hard_state``, ``snapshot`` →
  ``encode_snapshot``, ``log_start`` → index and term (two big-endian u64)
  of the entry just before the first one kept.

``save`` writes everything one ``Ready`` asks to persist — snapshot,
entries (dropping a conflicting suffix first), hard state — in ONE write
transaction, so the driver pays one commit, and with ``sync=True`` one
fsync of LMDB, per Ready (per tick when it batches a tick's work into one
Ready).  A crash leaves either all of it or none.

The bounds of the log, the hard state and the snapshot are cached in
memory (read once at open); entries are read from LMDB when asked for.
Implements ``neostore.raft.RaftLogStore``; ``tests/raft`` runs the same
conformance tests against it and ``MemoryLogStore``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from types import TracebackType

import lmdb

from neostore.lmdb_files import check_data_file
from neostore.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    StorageError,
    UnavailableError,
    decode_entry,
    decode_hard_state,
    decode_snapshot,
    encode_entry,
    encode_hard_state,
    encode_snapshot,
)
from neostore.raft.storage import plan_save

_INDEX = struct.Struct(">Q")
_LOG_START = struct.Struct(">QQ")
_ENTRY_TERM = struct.Struct(">BQ")  # format byte, then the term: enough to answer term()

_HARD_STATE_KEY = b"hard_state"
_SNAPSHOT_KEY = b"snapshot"
_LOG_START_KEY = b"log_start"


#: How many of the last entries' terms a store keeps in memory.
TERM_CACHE = 4096


def _key(index: int) -> bytes:
    return _INDEX.pack(index)


class LmdbLogStore:
    """A durable ``RaftLogStore`` in an LMDB environment at ``path`` (a directory)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int = 1 << 30,
        sync: bool = True,
    ) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = os.fspath(path)
        check_data_file(self.path)
        self._env = lmdb.open(
            self.path,
            map_size=map_size,
            max_dbs=2,
            subdir=True,
            sync=sync,
            metasync=sync,
            lock=True,
        )
        self._meta = self._env.open_db(b"meta")
        self._entries = self._env.open_db(b"entries")
        self.save_calls = 0
        """How many write transactions ``save`` committed (one fsync each with ``sync``)."""
        self._sync = sync
        self.syncs = 0  # sync() calls
        with self._env.begin() as txn:
            raw_hard_state = txn.get(_HARD_STATE_KEY, db=self._meta)
            raw_snapshot = txn.get(_SNAPSHOT_KEY, db=self._meta)
            raw_start = txn.get(_LOG_START_KEY, db=self._meta)
            cursor = txn.cursor(db=self._entries)
            last_key = cursor.key() if cursor.last() else None
        self._hard_state = decode_hard_state(raw_hard_state) if raw_hard_state else HardState()
        self._snapshot = decode_snapshot(raw_snapshot) if raw_snapshot else Snapshot()
        self._start_index: int = 0
        self._start_term: int = 0
        if raw_start:
            self._start_index, self._start_term = _LOG_START.unpack(raw_start)
        self._last_index: int = _INDEX.unpack(last_key)[0] if last_key else self._start_index
        if self._last_index < self._start_index:
            raise StorageError(f"{self.path}: entries end before the log start")
        #: The terms of the last entries saved (index -> term, increasing
        #: indexes, at most TERM_CACHE): the core asks for them on every
        #: append and answer, and a read transaction each costs more than
        #: the rest of the lookup.
        self._recent_terms: dict[int, int] = {}

    # --- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> LmdbLogStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def sync(self) -> None:
        """Flush committed transactions to disk (one fsync), for stores opened with ``sync=False``."""
        self._env.sync(True)
        self.syncs += 1

    def lmdb_metrics(self) -> tuple[lmdb.Environment, str, int]:
        """The environment, its directory and its durable writes so far (:mod:`neostore.metrics`)."""
        return self._env, self.path, self.syncs + (self.save_calls if self._sync else 0)

    # --- reads ----------------------------------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._start_index + 1

    def last_index(self) -> int:
        return self._last_index

    def term(self, index: int) -> int:
        if index < self._start_index:
            raise CompactedError(f"index {index} compacted (first index {self.first_index()})")
        if index > self._last_index:
            raise UnavailableError(f"index {index} beyond last index {self._last_index}")
        if index == self._start_index:
            return self._start_term
        cached = self._recent_terms.get(index)
        if cached is not None:
            return cached
        with self._env.begin() as txn:
            raw = txn.get(_key(index), db=self._entries)
        if raw is None:
            raise StorageError(f"{self.path}: entry {index} missing")
        term: int = _ENTRY_TERM.unpack_from(raw)[1]
        return term

    def entries(self, low: int, high: int, max_bytes: int = 0) -> list[Entry]:
        if low <= self._start_index:
            raise CompactedError(f"index {low} compacted (first index {self.first_index()})")
        if high > self._last_index + 1:
            raise UnavailableError(f"index {high - 1} beyond last index {self._last_index}")
        result: list[Entry] = []
        if low >= high:
            return result
        total = 0
        limited = False
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._entries)
            if cursor.set_key(_key(low)):
                for key, value in cursor.iternext():
                    index = _INDEX.unpack(key)[0]
                    if index >= high:
                        break
                    if index != low + len(result):
                        break
                    entry = decode_entry(value)
                    total += entry.size()
                    if max_bytes > 0 and total > max_bytes and result:
                        limited = True
                        break
                    result.append(entry)
        if not limited and len(result) != high - low:
            raise StorageError(f"{self.path}: entries missing in [{low}, {high})")
        return result

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- writes ---------------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        plan = plan_save(self._snapshot, self._start_index, self._start_term, self._last_index,
                         entries, snapshot)
        new_snapshot, start_index, start_term = plan.snapshot, plan.start_index, plan.start_term
        entries = plan.entries
        last_index = start_index if plan.replaces_snapshot(self._snapshot) else self._last_index
        if snapshot is None and not entries and hard_state is None:
            return
        with self._env.begin(write=True) as txn:
            if new_snapshot is not self._snapshot:
                txn.drop(self._entries, delete=False)
                txn.put(_SNAPSHOT_KEY, encode_snapshot(new_snapshot), db=self._meta)
                txn.put(_LOG_START_KEY, _LOG_START.pack(start_index, start_term), db=self._meta)
            if entries:
                first = entries[0].index
                if first <= last_index:
                    # A follower dropping a conflicting suffix.
                    self._delete_range(txn, first, last_index + 1)
                for entry in entries:
                    txn.put(_key(entry.index), encode_entry(entry), db=self._entries, append=True)
                last_index = entries[-1].index
            if hard_state is not None:
                txn.put(_HARD_STATE_KEY, encode_hard_state(hard_state), db=self._meta)
        # Committed (and synced): now the cached view may change.
        self.save_calls += 1
        recent = self._recent_terms
        if new_snapshot is not self._snapshot:
            recent.clear()
        if entries:
            first = entries[0].index
            if recent and first <= next(reversed(recent)):
                for index in [index for index in recent if index >= first]:
                    del recent[index]  # a conflicting suffix, replaced
            for entry in entries:
                recent[entry.index] = entry.term
            while len(recent) > TERM_CACHE:
                del recent[next(iter(recent))]
        self._snapshot = new_snapshot
        self._start_index, self._start_term = start_index, start_term
        self._last_index = last_index
        if hard_state is not None:
            self._hard_state = hard_state

    def _delete_range(self, txn: lmdb.Transaction, low: int, high: int) -> None:
        """Delete the entries with ``low <= index < high``."""
        cursor = txn.cursor(db=self._entries)
        doomed: list[bytes] = []
        if cursor.set_range(_key(low)):
            for key in cursor.iternext(keys=True, values=False):
                if _INDEX.unpack(key)[0] >= high:
                    break
                doomed.append(key)
        for key in doomed:
            txn.delete(key, db=self._entries)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.index:
            raise SnapshotOutOfDateError(f"snapshot {index} not newer than {self._snapshot.index}")
        if index > self._hard_state.commit:
            raise StorageError(f"snapshot at {index} beyond commit {self._hard_state.commit}")
        snapshot = Snapshot(SnapshotMetadata(index, self.term(index), conf_state), data)
        with self._env.begin(write=True) as txn:
            txn.put(_SNAPSHOT_KEY, encode_snapshot(snapshot), db=self._meta)
        self._snapshot = snapshot
        return snapshot

    def compact(self, index: int) -> None:
        if index <= self._start_index:
            raise CompactedError(f"index {index} already compacted")
        if index > self._snapshot.index:
            raise StorageError(
                f"cannot compact to {index} past the snapshot {self._snapshot.index}"
            )
        term = self.term(index)
        with self._env.begin(write=True) as txn:
            self._delete_range(txn, self._start_index + 1, index + 1)
            txn.put(_LOG_START_KEY, _LOG_START.pack(index, term), db=self._meta)
        self._start_index, self._start_term = index, term
        for gone in [gone for gone in self._recent_terms if gone <= index]:
            del self._recent_terms[gone]
