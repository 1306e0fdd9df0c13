"""The durable log contract (``RaftLogStore``) and its in-memory implementation.

A store holds, durably:

* the ``HardState`` (current term, vote, commit index);
* the latest ``Snapshot`` (state machine image, its last index and term and
  the membership there);
* the log entries from ``first_index()`` to ``last_index()``.  The entry
  just before the first one kept (index ``first_index() - 1``) is
  remembered by its term only: ``term(first_index() - 1)`` answers, so an
  append following it can be checked.

The Raft core only *reads* a store (``hard_state``, ``first_index``,
``last_index``, ``term``, ``entries``, ``snapshot``).  The driver writes it:
``save`` with what a ``Ready`` asks to persist (one atomic, durable write:
an implementation on disk syncs once per call), and ``create_snapshot`` then
``compact`` when the application has a state machine image to keep the log
short.

Invariants: ``first_index() - 1 <= snapshot().index <= last_index()`` once a
snapshot exists (compaction never goes past the snapshot), and entries are
contiguous.  A new store is empty: ``first_index() == 1``,
``last_index() == 0``, ``term(0) == 0``.

Errors: ``CompactedError`` for an index below ``first_index() - 1``,
``UnavailableError`` beyond ``last_index()``, ``SnapshotOutOfDateError`` for
a snapshot not newer than the one held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .codec import encode_conf_change_record
from .errors import CompactedError, SnapshotOutOfDateError, StorageError, UnavailableError
from .types import (
    ConfChangeRecord,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


@runtime_checkable
class RaftLogStore(Protocol):
    """Durable hard state, log and snapshot of one Raft node."""

    def hard_state(self) -> HardState:
        """The hard state last saved (``HardState()`` for a new store)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry kept (``last_index() + 1`` when none)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry (the snapshot's index when the log is empty)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, for ``first_index() - 1 <= index <= last_index()``.

        Raises ``CompactedError`` below, ``UnavailableError`` above.
        """
        ...

    def entries(self, low: int, high: int, max_bytes: int = 0) -> list[Entry]:
        """Entries ``[low, high)``; with ``max_bytes`` > 0 stop before exceeding it
        (but return at least one entry when ``low < high``).

        Raises ``CompactedError`` if ``low < first_index()``,
        ``UnavailableError`` if ``high > last_index() + 1``.
        """
        ...

    def snapshot(self) -> Snapshot:
        """The latest snapshot (``Snapshot()``, index 0, when there is none)."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist, atomically and durably, what one ``Ready`` asks for.

        In this order: ``snapshot`` (replaces the whole log: afterwards
        ``first_index() == snapshot.index + 1``), ``entries`` (contiguous;
        stored entries at or after the first one's index are discarded
        first: that is how a follower drops a conflicting suffix), then
        ``hard_state`` (``None``: unchanged).
        """
        ...

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Keep ``data``, the state machine image after applying ``index``, as the snapshot.

        ``conf_state`` is the membership in force at ``index``.  ``index``
        must be committed, stored, and newer than the current snapshot.
        """
        ...

    def compact(self, index: int) -> None:
        """Discard the entries up to and including ``index`` (at most the snapshot's index)."""
        ...


def bootstrap_entry(voters: ConfState) -> Entry:
    """The first entry of a new cluster: index 1, term 1, its initial membership."""
    if not voters.voters:
        raise ValueError("a cluster needs at least one voter")
    return Entry(
        term=1,
        index=1,
        type=EntryType.CONF_CHANGE,
        data=encode_conf_change_record(ConfChangeRecord(voters)),
    )


def bootstrap(store: RaftLogStore, voters: ConfState) -> None:
    """Write the initial state of a new cluster into the empty ``store`` of each first member.

    Every initial member gets the same entry 1 (term 1) holding the
    membership, already committed since all members have it.  A node that
    joins later starts with an empty store and receives the log (or a
    snapshot) from the leader.
    """
    if store.last_index() != 0 or store.hard_state() != HardState():
        raise StorageError("bootstrap needs an empty store")
    store.save(HardState(term=1, vote=0, commit=1), [bootstrap_entry(voters)])


@dataclasses.dataclass(frozen=True)
class SavePlan:
    """What a ``save`` writes, validated: the log after it starts after
    ``start_index`` (of ``start_term``), under ``snapshot``; ``entries`` are
    appended after dropping any suffix from ``entries[0].index`` on."""

    snapshot: Snapshot
    start_index: int
    start_term: int
    entries: list[Entry]

    def replaces_snapshot(self, current: Snapshot) -> bool:
        return self.snapshot is not current


def plan_save(
    current_snapshot: Snapshot, start_index: int, start_term: int, last_index: int,
    entries: Sequence[Entry], snapshot: Snapshot | None,
) -> SavePlan:
    """Validate a ``save`` (both stores share this): a new snapshot must be
    newer than the current one and restarts the log at its index; entries it
    covers are dropped; the rest must follow the log without a gap."""
    new_snapshot = current_snapshot
    if snapshot is not None and not snapshot.is_empty():
        if snapshot.index <= current_snapshot.index:
            raise SnapshotOutOfDateError(
                f"snapshot {snapshot.index} not newer than {current_snapshot.index}"
            )
        new_snapshot = snapshot
        start_index, start_term, last_index = snapshot.index, snapshot.term, snapshot.index
    kept = [entry for entry in entries if entry.index > start_index]
    check_save_arguments(last_index, kept)
    return SavePlan(new_snapshot, start_index, start_term, kept)


def check_save_arguments(last_index: int, entries: Sequence[Entry]) -> None:
    """Shared precondition of ``save``: entries contiguous and not leaving a gap."""
    for previous, entry in zip(entries, entries[1:], strict=False):
        if entry.index != previous.index + 1:
            raise StorageError(f"entries not contiguous: {previous.index} then {entry.index}")
    if entries and entries[0].index > last_index + 1:
        raise StorageError(
            f"gap in the log: last index {last_index}, first new entry {entries[0].index}"
        )


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_bytes`` (at least one entry)."""
    if max_bytes <= 0 or not entries:
        return entries
    total = 0
    for count, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and count > 0:
            return entries[:count]
    return entries


class MemoryLogStore:
    """A ``RaftLogStore`` in memory, for tests and the simulation.

    "Durable" here means: what ``save`` stored stays, whatever happens to the
    ``RawNode`` that read it; the simulation models a crash by dropping the
    node and keeping its store.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._start_index = 0
        """Index of the entry before the first one kept."""
        self._start_term = 0
        self._entries: list[Entry] = []
        self.save_calls = 0
        """How many times ``save`` was called (what an on-disk store would fsync)."""

    # --- reads ---------------------------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._start_index + 1

    def last_index(self) -> int:
        return self._start_index + len(self._entries)

    def term(self, index: int) -> int:
        if index < self._start_index:
            raise CompactedError(f"index {index} compacted (first index {self.first_index()})")
        if index > self.last_index():
            raise UnavailableError(f"index {index} beyond last index {self.last_index()}")
        if index == self._start_index:
            return self._start_term
        return self._entries[index - self._start_index - 1].term

    def entries(self, low: int, high: int, max_bytes: int = 0) -> list[Entry]:
        if low <= self._start_index:
            raise CompactedError(f"index {low} compacted (first index {self.first_index()})")
        if high > self.last_index() + 1:
            raise UnavailableError(f"index {high - 1} beyond last index {self.last_index()}")
        if low >= high:
            return []
        offset = self._start_index + 1
        return limit_size(self._entries[low - offset : high - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- writes --------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        plan = plan_save(self._snapshot, self._start_index, self._start_term, self.last_index(),
                         entries, snapshot)
        entries = plan.entries
        # Validated: from here on nothing fails, so the write is all or nothing.
        self.save_calls += 1
        if plan.replaces_snapshot(self._snapshot):
            self._snapshot = plan.snapshot
            self._start_index, self._start_term = plan.start_index, plan.start_term
            self._entries = []
        if entries:
            del self._entries[entries[0].index - self._start_index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.index:
            raise SnapshotOutOfDateError(f"snapshot {index} not newer than {self._snapshot.index}")
        if index > self._hard_state.commit:
            raise StorageError(f"snapshot at {index} beyond commit {self._hard_state.commit}")
        snapshot = Snapshot(SnapshotMetadata(index, self.term(index), conf_state), data)
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
        del self._entries[: index - self._start_index]
        self._start_index = index
        self._start_term = term
