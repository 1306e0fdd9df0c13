"""The client's object cache: revisions of objects, bounded in bytes.

An entry is one revision of one object: its data, the TID that wrote it
(``start``) and the TID that replaced it (``end``), or ``None`` while it is
the current revision as far as the invalidation stream has told us.

* A *non-current* entry (``end`` known) is history: it answers
  ``loadBefore(oid, tid)`` for every ``start < tid <= end``, forever.
* A *current* entry answers ``loadBefore(oid, tid)`` for ``tid > start`` only
  while ``tid - 1`` is not beyond the last TID whose invalidations were
  processed: beyond it, the cache cannot know whether a newer revision exists.
* An invalidation of ``oid`` at TID ``t`` turns its current entry into a
  non-current one ending at ``t``.

A load sent to a storage node races with invalidations: its answer may say
"current" about a revision that an invalidation processed meanwhile has
replaced.  :meth:`ObjectCache.begin_load` / :meth:`ObjectCache.end_load`
bracket every load so that such an answer is stored with the right ``end``.
A load's reference read-ahead brings objects nobody named before it was
sent: :meth:`ObjectCache.begin_read_ahead` / :meth:`ObjectCache.end_read_ahead`
bracket it so, noting every invalidation processed meanwhile, whatever
its objects.  What one read-ahead brings is a *cohort*, in the order its
objects were named: when one of them is read for the first time,
:meth:`ObjectCache.cohort_members` gives it and the next ones whose
references were not all brought yet (in a walk, the siblings read next),
so that the client asks for what they all refer to at once
(:meth:`ObjectCache.mark_followed` once they came).  The cache counts what
read-ahead brought and how much of it was read
(:meth:`ObjectCache.read_ahead_stats`).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterable

from neostore.ids import u64

#: Marks loads in flight during a clear(): their answers are not cached.
_CLEARED = b""

#: Fixed cost counted per entry, beyond its data.
ENTRY_OVERHEAD = 100

#: Read-ahead cohorts remembered, the newest, up to this many entries in
#: all (an older one's entries, read, bring only what each refers to; the
#: lists hold keys of entries evicted since, so they are bounded apart).
MAX_COHORT_ENTRIES = 50_000


@dataclasses.dataclass
class _Entry:
    data: bytes
    start: bytes
    end: bytes | None
    cohort: int = 0  # brought by read-ahead and not read yet: the read-ahead's (0: neither)
    position: int = 0  # in its cohort
    followed: bool = False  # what it refers to was brought


@dataclasses.dataclass
class ReadAheadStats:
    """What reference read-ahead brought into the cache, and what of it was read."""

    objects: int = 0
    bytes: int = 0
    used_objects: int = 0
    used_bytes: int = 0


class ObjectCache:
    """Thread-safe LRU cache of object revisions, at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        # (oid, start) -> entry, in LRU order (oldest first)
        self._entries: collections.OrderedDict[tuple[bytes, bytes], _Entry] = collections.OrderedDict()
        self._current: dict[bytes, bytes] = {}  # oid -> start of current entry
        self._by_oid: dict[bytes, set[bytes]] = {}  # oid -> starts
        self._size = 0
        self._loading: dict[bytes, int] = {}  # oid -> loads in flight
        # oid -> invalidation TIDs seen while loading it (or [_CLEARED])
        self._raced: dict[bytes, list[bytes]] = {}
        # read-ahead in flight: token -> {oid: invalidation TIDs seen meanwhile}
        self._wide: dict[int, dict[bytes, list[bytes]]] = {}
        self._wide_cleared: set[int] = set()
        self._next_token = 0
        # cohort -> the entries one read-ahead brought, in the order they were named
        self._cohorts: collections.OrderedDict[int, list[tuple[bytes, bytes]]] = collections.OrderedDict()
        self._cohort_entries = 0
        self._ahead = ReadAheadStats()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    # -- lookups ---------------------------------------------------------------

    def load_before(self, oid: bytes, before: bytes, last_seen: bytes,
                    first_use: list[tuple[int, int]] | None = None) -> tuple[bytes, bytes, bytes | None] | None:
        """``(data, start, end)`` if the cache can answer, else ``None``.
        ``first_use``: ``(cohort, position)`` is appended to it when the
        answer is an entry that read-ahead brought, read for the first time,
        whose references were not all brought yet."""
        with self._lock:
            entry = self._find(oid, before, last_seen)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end((oid, entry.start))
            self.hits += 1
            if entry.cohort:
                if first_use is not None and not entry.followed:
                    first_use.append((entry.cohort, entry.position))
                entry.cohort = 0
                self._ahead.used_objects += 1
                self._ahead.used_bytes += len(entry.data)
            return entry.data, entry.start, entry.end

    def missing(self, oids: Iterable[bytes], before: bytes, last_seen: bytes) -> list[bytes]:
        """Those of ``oids`` that :meth:`load_before` could not answer and
        no load is bringing (no count, no change of the LRU order)."""
        with self._lock:
            return [oid for oid in oids if oid not in self._loading and self._find(oid, before, last_seen) is None]

    def _find(self, oid: bytes, before: bytes, last_seen: bytes) -> _Entry | None:
        starts = self._by_oid.get(oid)
        if starts:
            for start in starts:
                if start >= before:
                    continue
                entry = self._entries[(oid, start)]
                if entry.end is None:
                    if u64(before) - 1 > u64(last_seen):
                        continue
                elif entry.end < before:
                    continue
                return entry
        return None

    def load_serial(self, oid: bytes, serial: bytes) -> bytes | None:
        with self._lock:
            entry = self._entries.get((oid, serial))
            if entry is None:
                return None
            self._entries.move_to_end((oid, serial))
            return entry.data

    # -- loads in flight ---------------------------------------------------------

    def begin_load(self, oid: bytes) -> None:
        with self._lock:
            self._loading[oid] = self._loading.get(oid, 0) + 1

    def end_load(self, oid: bytes, data: bytes | None, start: bytes | None, end: bytes | None,
                 cohort: int = 0) -> None:
        """Finish a load; cache its answer (``data`` None: nothing to cache);
        ``cohort``: a load nobody asked for yet (read-ahead), from :meth:`new_cohort`."""
        with self._lock:
            count = self._loading[oid] - 1
            raced = self._raced.get(oid, [])
            if count:
                self._loading[oid] = count
            else:
                del self._loading[oid]
                self._raced.pop(oid, None)
            if data is None or start is None or _CLEARED in raced:
                return
            if end is None:
                later = [tid for tid in raced if tid > start]
                if later:
                    end = min(later)
            if self._add(oid, data, start, end) and cohort:
                self._brought_ahead(oid, start, data, cohort)

    def begin_read_ahead(self) -> int:
        """Before sending a load that may bring other objects along: a
        token for :meth:`end_read_ahead`."""
        with self._lock:
            self._next_token += 1
            self._wide[self._next_token] = {}
            return self._next_token

    def new_cohort(self) -> int:
        """A cohort for the loads one read-ahead makes (:meth:`end_load`)."""
        with self._lock:
            self._next_token += 1
            return self._next_token

    def cohort_members(self, cohort: int, position: int, most: int) -> list[tuple[tuple[bytes, bytes], bytes]]:
        """``(key, data)`` of the entry at ``position`` in ``cohort`` and of
        the next ones still cached whose references were not all brought,
        at most ``most`` (looking at ``4 * most`` at most)."""
        with self._lock:
            members = []
            for key in self._cohorts.get(cohort, [])[position:position + 4 * most]:
                entry = self._entries.get(key)
                if entry is not None and not entry.followed:
                    members.append((key, entry.data))
                    if len(members) >= most:
                        break
            return members

    def unread_ahead(self, oids: Iterable[bytes], before: bytes, last_seen: bytes,
                     ) -> list[tuple[tuple[bytes, bytes], bytes]]:
        """``(key, data)`` of those of ``oids`` that the cache answers with
        an entry read-ahead brought, nobody read yet, and whose references
        were not all brought (no count, no change of the LRU order)."""
        with self._lock:
            found = []
            for oid in oids:
                entry = self._find(oid, before, last_seen)
                if entry is not None and entry.cohort and not entry.followed:
                    found.append(((oid, entry.start), entry.data))
            return found

    def mark_followed(self, keys: Iterable[tuple[bytes, bytes]]) -> None:
        """What these entries refer to was brought: their first read asks nothing."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.followed = True

    def end_read_ahead(self, token: int, revisions: list[tuple[bytes, bytes, bytes, bytes | None]]) -> None:
        """Cache the ``(oid, data, start, end)`` revisions a load brought
        along (none: it failed), as :meth:`end_load` would each."""
        with self._lock:
            raced = self._wide.pop(token)
            if self._wide_cleared:
                if token in self._wide_cleared:
                    self._wide_cleared.discard(token)
                    return
            for oid, data, start, end in revisions:
                if end is None:
                    later = [tid for tid in raced.get(oid, ()) if tid > start]
                    if later:
                        end = min(later)
                if self._add(oid, data, start, end):
                    self._brought_ahead(oid, start, data, token)

    def _brought_ahead(self, oid: bytes, start: bytes, data: bytes, cohort: int) -> None:
        self._ahead.objects += 1
        self._ahead.bytes += len(data)
        members = self._cohorts.get(cohort)
        if members is None:
            members = self._cohorts[cohort] = []
        while self._cohort_entries >= MAX_COHORT_ENTRIES and len(self._cohorts) > 1:
            self._cohort_entries -= len(self._cohorts.popitem(last=False)[1])
        self._cohort_entries += 1
        entry = self._entries[(oid, start)]
        entry.cohort, entry.position = cohort, len(members)
        members.append((oid, start))

    def read_ahead_stats(self) -> ReadAheadStats:
        """What read-ahead brought (new entries only) and what of it was read since."""
        with self._lock:
            return dataclasses.replace(self._ahead)

    # -- changes -------------------------------------------------------------------

    def store(self, oid: bytes, data: bytes, start: bytes, end: bytes | None) -> None:
        with self._lock:
            self._add(oid, data, start, end)

    def invalidate(self, oids: list[bytes], tid: bytes) -> None:
        """Objects ``oids`` got a new revision at ``tid``."""
        with self._lock:
            for raced in self._wide.values():
                for oid in oids:
                    raced.setdefault(oid, []).append(tid)
            for oid in oids:
                if oid in self._loading:
                    self._raced.setdefault(oid, []).append(tid)
                start = self._current.pop(oid, None)
                if start is not None:
                    entry = self._entries[(oid, start)]
                    entry.end = tid

    def snapshot(self) -> list[tuple[bytes, bytes, bytes | None, bytes]]:
        """Every entry as ``(oid, start, end, data)``, least recently used
        first (stored back in this order, they keep it)."""
        with self._lock:
            return [(oid, start, entry.end, entry.data) for (oid, start), entry in self._entries.items()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._current.clear()
            self._by_oid.clear()
            self._size = 0
            for oid in self._loading:
                self._raced[oid] = [_CLEARED]
            self._wide_cleared.update(self._wide)

    def _add(self, oid: bytes, data: bytes, start: bytes, end: bytes | None) -> bool:
        """Whether a new entry was made (not one known already, nor one older
        than the current revision known)."""
        key = (oid, start)
        old = self._entries.get(key)
        if old is not None:
            if old.end is None and end is not None:
                old.end = end
                self._current.pop(oid, None)
            self._entries.move_to_end(key)
            return False
        if end is None:
            current = self._current.get(oid)
            if current is not None and current > start:
                return False  # we already know a newer revision
            if current is not None and current < start:
                # Its end is unknown (maybe not ``start``): forget it.
                self._remove(oid, current)
            self._current[oid] = start
        entry = _Entry(data, start, end)
        self._entries[key] = entry
        self._by_oid.setdefault(oid, set()).add(start)
        self._size += len(data) + ENTRY_OVERHEAD
        while self._size > self._max_bytes and self._entries:
            old_oid, old_start = next(iter(self._entries))
            self._remove(old_oid, old_start)
        return key in self._entries

    def _remove(self, oid: bytes, start: bytes) -> None:
        victim = self._entries.pop((oid, start))
        self._size -= len(victim.data) + ENTRY_OVERHEAD
        starts = self._by_oid[oid]
        starts.discard(start)
        if not starts:
            del self._by_oid[oid]
        if self._current.get(oid) == start:
            del self._current[oid]
