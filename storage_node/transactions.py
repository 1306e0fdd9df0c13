"""In-memory state of the transactions a storage node takes part in.

One :class:`TransactionBuffer` per TTID, from its first store (or its vote)
until it commits or aborts.  Stores are buffered here, in memory, and reach
LMDB only at vote, in one fsynced write.  The phase is explicit::

    STORING ──vote──► VOTING ──written──► VOTED ──commit/abort──► (gone)
       │                 └──write failed──► STORING
       └──wounded──► DIED ──abort──► (gone)

* STORING: stores are taken (and replace earlier stores of the same oid:
  that is how a resolved conflict is stored again).
* VOTING: the vote is being written; stores are refused.
* VOTED: the vote is durable as pending; only commit or abort remain.
* DIED: an older transaction wounded it on this node (wound-wait, see
  :mod:`~neostore.storage_node.locks`: only a STORING transaction can be
  wounded); its buffer is dropped and its locks released at once; every
  store and vote is refused with LockDied until the client aborts it.

The buffer holds no lock of its own: the transaction manager changes it
under its mutex, and serialises vote, commit and abort of one TTID with the
buffer's ``vote_mutex``.
"""

from __future__ import annotations

import dataclasses
import enum
import threading

from neostore.storage_node.database import PendingObject
from neostore.storage_node.layout import StoredObject


class Phase(enum.Enum):
    STORING = "storing"
    VOTING = "voting"
    VOTED = "voted"
    DIED = "died"


@dataclasses.dataclass(frozen=True)
class BufferedObject:
    """A store taken, not yet voted: ``stored.previous_tid`` is its base."""

    partition: int
    oid: bytes
    stored: StoredObject
    tid: bytes | None = None  # a restore batch's carried transaction


class TransactionBuffer:
    """What one TTID stored on this node, and where it stands."""

    def __init__(self, ttid: bytes) -> None:
        self.ttid = ttid
        self.phase = Phase.STORING
        #: oid -> the last store of it (a re-store replaces); a restore
        #: batch's carried revisions under oid + their tid.
        self.objects: dict[bytes, BufferedObject] = {}
        #: The newest TID of a transaction a restore batch carries, if any:
        #: it must be below the TID the batch commits under.
        self.newest_carried: bytes | None = None
        #: oids whose last store conflicted and was not stored again since.
        self.conflicts: set[bytes] = set()
        #: Whether the vote wrote anything to ``pending``.
        self.has_pending = False
        #: Serialises vote, commit and abort of this TTID.
        self.vote_mutex = threading.Lock()
        #: Why it died (DIED only): the message of its LockDied refusals.
        self.died_reason = ""
        #: Partitions with a store taken without lock nor conflict check
        #: (the cell was not readable then): the vote says so, and the master
        #: does not count such a vote as the conflict check of the partition.
        self.unchecked: set[int] = set()

    def buffer(self, partition: int, oid: bytes, stored: StoredObject, tid: bytes | None = None) -> None:
        if tid is None:
            self.objects[oid] = BufferedObject(partition, oid, stored)
            self.conflicts.discard(oid)
        else:
            self.objects[oid + tid] = BufferedObject(partition, oid, stored, tid)
            self.carried(tid)

    def carried(self, tid: bytes) -> None:
        """A restore batch carries transaction ``tid``."""
        if self.newest_carried is None or tid > self.newest_carried:
            self.newest_carried = tid

    def checked(self, oid: bytes) -> None:
        """A check-only store of ``oid`` found its serial current."""
        self.conflicts.discard(oid)

    def conflicted(self, oid: bytes) -> None:
        """``oid``'s store conflicted: nothing is kept for it until stored again."""
        self.objects.pop(oid, None)
        self.conflicts.add(oid)

    def die(self, reason: str) -> None:
        self.phase = Phase.DIED
        self.died_reason = reason
        self.objects.clear()
        self.conflicts.clear()

    def pending_objects(self) -> list[PendingObject]:
        return [PendingObject(entry.partition, entry.oid, entry.stored, entry.tid) for entry in self.objects.values()]
