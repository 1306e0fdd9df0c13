"""A node's log: what is on its store, plus what is not persisted yet.

``RaftLog`` is the single view of the log the Raft rules use.  It is made of

* the stable part, read from the ``RaftLogStore`` (which the driver writes);
* ``Unstable``: entries (and possibly an incoming snapshot) that this node
  appended or received and that the driver has not persisted yet.  They go
  out in ``Ready.entries``/``Ready.snapshot`` and leave ``Unstable`` when
  ``advance`` reports them durable (``stable_to``).

Unstable entries may overwrite a suffix of the stable ones (a follower
dropping a conflicting suffix, Figure 3.1's "if an existing entry conflicts
with a new one, delete the existing entry and all that follow it"); the
store does the same when it saves them.

Indexes: ``committed`` (known to be on a majority), ``applied`` (handed to
the state machine and acknowledged by ``advance``).  ``applied <= committed
<= last_index()`` always.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import CompactedError, UnavailableError
from .storage import RaftLogStore, limit_size
from .types import Entry, Snapshot


class Unstable:
    """Entries and snapshot not yet persisted; ``offset`` is the index of ``entries[0]``."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.index == index:
                return self.snapshot.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``index`` are durable, if the one at ``index`` still has ``term``."""
        if index < self.offset or index >= self.offset + len(self.entries):
            return
        if self.entries[index - self.offset].term != term:
            return  # replaced since the Ready that carried it
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable and a suffix of the stable log.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)


class RaftLog:
    """The log as the Raft rules see it; see the module docstring."""

    def __init__(self, store: RaftLogStore, max_applying_bytes: int = 0) -> None:
        self.store = store
        self.unstable = Unstable(store.last_index() + 1)
        first = store.first_index()
        self.committed = first - 1
        self.applied = first - 1
        self.max_applying_bytes = max_applying_bytes

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # --- bounds and terms ------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.store.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.store.last_index()

    def term(self, index: int) -> int:
        """Term at ``index``; ``CompactedError``/``UnavailableError`` out of range."""
        first_known = self.first_index() - 1
        if index < first_known:
            raise CompactedError(f"index {index} compacted")
        if index > self.last_index():
            raise UnavailableError(f"index {index} beyond last index {self.last_index()}")
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        return self.store.term(index)

    def term_or_zero(self, index: int) -> int:
        """Term at ``index``, or 0 when it is out of the log's range."""
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (``last_index``, ``term``) is at least as up to date
        as this one (Raft 5.4.1: higher last term, or same term and at least as long)."""
        my_term = self.last_term()
        return term > my_term or (term == my_term and last_index >= self.last_index())

    # --- appending -------------------------------------------------------------

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index at or below ``index`` whose term is at most ``term``.

        Used to skip whole terms when appends are rejected: every entry
        above the result has a term above ``term`` and cannot match an
        entry of a log whose entry at ``index`` has ``term``.
        """
        index = min(index, self.last_index())
        first_known = self.first_index() - 1
        while index > first_known:
            entry_term = self.term(index)
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return index, self.term_or_zero(index)

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> tuple[int, int] | None:
        """AppendEntries receiver rules 2–5 (Figure 3.1).

        Returns ``None`` if the entry at ``index`` does not have
        ``log_term``; otherwise ``(last_new_index, first_written_index)``
        where ``first_written_index`` is the index from which entries were
        written (0 if none were: all were already present).
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        first_written = 0
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with a committed entry (commit {self.committed})"
                )
            self.append(entries[conflict - index - 1 :])
            first_written = conflict
        self.commit_to(min(committed, last_new))
        return last_new, first_written

    def append(self, entries: Sequence[Entry]) -> int:
        """Append (overwriting a suffix if needed); returns the new last index."""
        if entries:
            if entries[0].index - 1 < self.committed:
                raise AssertionError(
                    f"appending at {entries[0].index} would overwrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    # --- reading entries -------------------------------------------------------

    def slice(self, low: int, high: int, max_bytes: int = 0) -> list[Entry]:
        """Entries ``[low, high)`` (at least one if any, within ``max_bytes`` if > 0)."""
        if low >= high:
            return []
        if low < self.first_index():
            raise CompactedError(f"index {low} compacted")
        if high > self.last_index() + 1:
            raise UnavailableError(f"index {high - 1} beyond last index {self.last_index()}")
        result: list[Entry] = []
        offset = self.unstable.offset
        if low < offset:
            result = self.store.entries(low, min(high, offset), max_bytes)
            if len(result) < min(high, offset) - low:
                return result  # size limit reached
        if high > offset:
            unstable = self.unstable.entries[max(low, offset) - offset : high - offset]
            result = result + unstable if result else list(unstable)
        return limit_size(result, max_bytes)

    def entries_from(self, low: int, max_bytes: int = 0, max_count: int = 0) -> list[Entry]:
        """Entries from ``low`` to the end, within ``max_bytes`` and ``max_count`` if > 0."""
        high = self.last_index() + 1
        if max_count > 0:
            high = min(high, low + max_count)
        return self.slice(low, high, max_bytes)

    def all_entries(self) -> list[Entry]:
        """Every entry kept (tests and invariant checks)."""
        return self.slice(self.first_index(), self.last_index() + 1)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.store.snapshot()

    # --- commit and apply ------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if the entry there is of ``term`` (the current term).

        Raft 5.4.2: a leader never commits entries of earlier terms by
        counting replicas; they commit with the first entry of its own term.
        """
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            return False  # the snapshot is applied first
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied, within ``max_applying_bytes``."""
        if not self.has_next_committed_entries():
            return []
        low = max(self.applied + 1, self.first_index())
        return self.slice(low, self.committed + 1, self.max_applying_bytes)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise AssertionError(f"applied {index} beyond commit {self.committed}")
        if index > self.applied:
            self.applied = index

    # --- persistence acknowledgements -------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (InstallSnapshot, Figure 5.3)."""
        self.committed = snapshot.index
        self.unstable.restore(snapshot)

    def stable_last_index(self) -> int:
        """The last index already durable on this node's store."""
        return self.unstable.offset - 1
