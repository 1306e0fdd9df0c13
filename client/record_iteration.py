"""``record_iternext``: every live object's current record, for zodbupdate.

ZODB's contract (``IStorageCurrentRecordIteration``): ``record_iternext(next)``
answers ``(oid, tid, data, next)`` for the first object at or after
``next`` (from the first when None), ``next`` being None after the last.
Objects come partition by partition (``ListObjects`` of one readable cell
per partition, in oid order), so ``next`` is an oid and "at or after" means
in that order.  Answers are fetched a batch at a time (up to
``BATCH`` objects, one rpc per partition and batch) and handed out from
this client's memory, as long as no transaction was committed since the
batch was read (else it is read again); a call with a ``next`` that is not
the one expected fetches from there.  Deleted objects (an undone creation,
``deleteObject``) are left out; a back-pointer comes as the data it points
to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ZODB.POSException import POSKeyError

from neostore.client.cluster import ClusterConnection
from neostore.ids import ZERO_TID, partition_of
from neostore.protocol import storage_pb2
from neostore.records import Record

#: Objects fetched per batch at most, and the data size past which a batch ends.
BATCH = 500
MAX_BATCH_BYTES = 16 * 1024 * 1024

Answer = tuple[bytes, bytes, bytes, "bytes | None"]


class RecordLister:
    """The batches of one client's ``record_iternext`` calls."""

    def __init__(self, cluster: ClusterConnection, last_tid: Callable[[], bytes]) -> None:
        self._cluster = cluster
        self._last_tid = last_tid  # the last TID this client knows of
        self._lock = threading.Lock()
        self._answers: dict[bytes | None, Answer] = {}
        self._read_at = ZERO_TID  # the last TID known when the answers were read

    def next(self, start: bytes | None) -> Answer:
        with self._lock:
            last = self._last_tid()
            answer = self._answers.pop(start, None) if self._read_at == last else None
            if answer is None:
                self._answers, self._read_at = self._fetch(start), last
                answer = self._answers.pop(start, None)
            if answer is None:
                raise POSKeyError(start or ZERO_TID)  # no object at or after ``start``
            return answer

    def _fetch(self, start: bytes | None) -> dict[bytes | None, Answer]:
        """The answers for the objects from ``start`` on: up to BATCH of them
        (or MAX_BATCH_BYTES of data), and one more read to know where the
        last one's ``next`` points."""
        num_partitions = self._cluster.table.num_partitions
        if start is None:
            partition, after = 0, None
        else:
            partition = partition_of(start, num_partitions)
            value = int.from_bytes(start, "big")
            after = (value - 1).to_bytes(8, "big") if value else None
        listed: list[storage_pb2.CurrentObject] = []
        size = 0
        while partition < num_partitions and len(listed) <= BATCH and (size < MAX_BATCH_BYTES or len(listed) < 2):
            request = storage_pb2.ListObjectsRequest(
                partition=partition, after_oid=after or b"", limit=BATCH + 1 - len(listed))
            reply = self._cluster.read_call(partition, "ListObjects", request)
            listed.extend(reply.objects)
            size += sum(len(current.record.data) for current in reply.objects)
            if reply.more and reply.objects:
                after = reply.objects[-1].oid
            else:
                partition, after = partition + 1, None
        # Unless every object was listed, the last one only says where the
        # one before it points: its own answer comes with the next batch.
        answered = listed if partition >= num_partitions else listed[:-1]
        answers: dict[bytes | None, Answer] = {}
        for index, current in enumerate(answered):
            data = Record.from_proto(current.record).unpack(f"current record of object {current.oid.hex()}")
            following = listed[index + 1].oid if index + 1 < len(listed) else None
            answers[start if index == 0 else current.oid] = (current.oid, current.serial, data, following)
        return answers
