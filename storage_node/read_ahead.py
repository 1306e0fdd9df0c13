"""Reference read-ahead: a load brings along the objects its record names.

A cold page reads a tree of objects one round trip each: a folder, then
each of its items, then each item's attributes.  The record a node loads
already says which objects come next (its persistent references), and the
node often holds them: with ``read_ahead_bytes`` set in a ``LoadBefore``,
the node walks those references breadth first (the record's, then theirs)
and adds to its answer each object it can answer for as of the same
``before_tid``, until the bytes of data added would pass the budget.

An object comes along only when a ``LoadBefore`` of it, sent now, would
get the same answer without waiting: its partition is readable here, and
no transaction voted here may be about to change it (the reader's own
unfinished ones aside), as :meth:`StorageServicer._read` requires.  Every
other object is left out; the client loads it when it needs it.  Weak and
cross-database references are not followed (``referencesf`` skips them).

The walk costs the node a read and an unpickling of references per object
it adds; it stops after ``MAX_OBJECTS`` objects or ``MAX_VISITS`` looked
at, whatever the budget.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from neostore import errors, records
from neostore.records import Record
from neostore.storage_node.database import LoadResult

#: The most objects one answer brings along, and the most references the
#: walk looks at (an object held elsewhere, or already taken, is looked at
#: and skipped).
MAX_OBJECTS = 2000
MAX_VISITS = 8000
#: The largest budget a client may ask for.
MAX_BUDGET = 4 * 1024 * 1024


def references(record: Record) -> list[bytes]:
    """The oids ``record``'s pickle refers to (none if it is damaged or not a pickle)."""
    try:
        data = record.unpack()
    except Exception:  # noqa: BLE001 - damaged (checksum, compression): a load of its own reports it
        return []
    return records.references(data)


def walk(first: Record, oid: bytes, budget: int, load: Callable[[list[bytes]], dict[bytes, LoadResult]],
         ) -> list[tuple[bytes, LoadResult]]:
    """The objects to bring along with ``oid`` (whose record is ``first``):
    ``(oid, load)`` breadth first from ``first``'s references, their data
    at most ``budget`` bytes in all.

    ``load(oids)``: the FOUND loads of those ``oids`` that this node answers
    for at once (see the module docstring), by oid; the others are skipped.
    """
    budget = min(budget, MAX_BUDGET)
    taken: list[tuple[bytes, LoadResult]] = []
    seen = {oid}
    queue: collections.deque[bytes] = collections.deque()
    level = [first]
    visits = 0
    used = 0
    while level and used < budget and len(taken) < MAX_OBJECTS:
        for record in level:
            for ref in references(record):
                if ref not in seen:
                    seen.add(ref)
                    queue.append(ref)
        level = []
        while queue and visits < MAX_VISITS:
            # One level at a time, in batches: the node checks locks and
            # ownership once per batch rather than per object.
            batch = [queue.popleft() for _ in range(min(len(queue), 256))]
            visits += len(batch)
            found = load(batch)
            for ref in batch:
                result = found.get(ref)
                if result is None or result.record is None:
                    continue
                size = len(result.record.data)
                if used + size > budget or len(taken) >= MAX_OBJECTS:
                    return taken
                used += size
                taken.append((ref, result))
                level.append(result.record)
        if visits >= MAX_VISITS:
            break
    return taken


def check_budget(budget: int) -> int:
    """``budget`` as asked, BadRequest beyond :data:`MAX_BUDGET`."""
    if budget > MAX_BUDGET:
        raise errors.BadRequest(f"read_ahead_bytes {budget} is above the most a node sends, {MAX_BUDGET}")
    return budget
