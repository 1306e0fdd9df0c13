"""The ``Storage`` gRPC service: decode, check, call domain code, encode.

Each rpc checks its identifiers (an oid or a TID is exactly 8 bytes, else
:class:`~neostore.errors.BadRequest`) and, through
:class:`~neostore.storage_node.ownership.Ownership`, that this node holds a
suitable cell of the partition (readable for reads, writable for writes;
reads are checked again once read: see ``_read``), then calls
:class:`~neostore.storage_node.database.Database` (reads) or
:class:`~neostore.storage_node.transaction_manager.TransactionManager`
(two-phase commit) and encodes the answer.  Errors are raised as
``neostore.errors`` exceptions; the interceptor of ``neostore.rpc`` turns
them into gRPC statuses (and refuses calls naming another cluster).

Commit and Abort are the master's (and the client's) orders: they are not
checked against the partition table, since applying a decision must not
depend on the table version the node happens to hold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from neostore import errors
from neostore.ids import oid_repr, tid_repr
from neostore.partition_table import READABLE_STATES
from neostore.protocol import common_pb2, storage_pb2, storage_pb2_grpc
from neostore.records import Record
from neostore.storage_node import read_ahead
from neostore.storage_node.database import Database, LoadResult, LoadStatus, PendingMetadata
from neostore.storage_node.layout import StoredObject, TransactionMetadata
from neostore.storage_node.ownership import Ownership
from neostore.storage_node.ranges import range_digest
from neostore.storage_node.transaction_manager import Conflict, ObjectWrite, TransactionManager

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Objects per ListObjects answer at most (each carries its data), and the
#: data size past which an answer ends (it holds at least one object).
LIST_OBJECTS_LIMIT = 1000
LIST_OBJECTS_MAX_BYTES = 8 * 1024 * 1024
#: At most this many objects in one LoadBeforeMany, and about this many
#: bytes of records in its answer (the rest: loaded one by one).
LOAD_MANY_LIMIT = 1000
LOAD_MANY_MAX_BYTES = 8 * 1024 * 1024


def _identifier(value: bytes, what: str) -> bytes:
    if len(value) != 8:
        raise errors.BadRequest(f"{what} must be 8 bytes, got {len(value)}")
    return value


def _lock_timeout(value: float) -> float | None:
    """A request's ``lock_timeout``: None for 0 (the node's own)."""
    if not math.isfinite(value) or value < 0:
        raise errors.BadRequest(f"lock_timeout must be a finite number of seconds >= 0, got {value}")
    return value or None


def _optional_identifier(value: bytes, what: str) -> bytes | None:
    return _identifier(value, what) if value else None


def _metadata(info: common_pb2.TransactionInfo, what: str) -> TransactionMetadata:
    oids = tuple(_identifier(oid, f"{what}.oids[{i}]") for i, oid in enumerate(info.oids))
    return TransactionMetadata(info.user, info.description, info.extension, oids, packed=info.packed)


class StorageServicer(storage_pb2_grpc.StorageServicer):
    """Serves one storage node's cells."""

    def __init__(self, database: Database, manager: TransactionManager, ownership: Ownership) -> None:
        self._database = database
        self._manager = manager
        self._ownership = ownership

    # -- reads ---------------------------------------------------------------

    def LoadBefore(self, request: storage_pb2.LoadBeforeRequest, context: Any) -> storage_pb2.LoadReply:
        oid = _identifier(request.oid, "oid")
        before_tid = _identifier(request.before_tid, "before_tid")
        partition = self._ownership.partition_of(oid)
        budget = read_ahead.check_budget(request.read_ahead_bytes)
        result = self._read([partition], lambda: self._database.load_before(partition, oid, before_tid),
                            request.table_version, oid, request.unfinished_ttids)
        reply = _load_reply(result)
        if budget and result.record is not None:
            for extra_oid, extra in read_ahead.walk(
                    result.record, oid, budget,
                    lambda oids: self._load_at_once(oids, before_tid, request.unfinished_ttids)):
                reply.read_ahead.add(oid=extra_oid, reply=_load_reply(extra))
        return reply

    def _load_at_once(self, oids: Sequence[bytes], before_tid: bytes, unfinished: Sequence[bytes],
                      ) -> dict[bytes, LoadResult]:
        """The FOUND loads of those of ``oids`` that a LoadBefore sent now
        would answer here without waiting (read-ahead): readable here and
        settled, the cells checked again after the read as :meth:`_read`
        does."""
        readable = set(self._ownership.readable_partitions())
        wanted = [(partition, oid) for oid in oids
                  if (partition := self._ownership.partition_of(oid)) in readable]
        unsettled = self._manager.unsettled([oid for _, oid in wanted], ignore=unfinished)
        found = self._database.load_before_many(
            [(partition, oid) for partition, oid in wanted if oid not in unsettled], before_tid)
        still = set(self._ownership.readable_partitions())
        return {oid: result for oid, result in found.items() if self._ownership.partition_of(oid) in still}

    def LoadBeforeMany(self, request: storage_pb2.LoadBeforeManyRequest,
                       context: Any) -> storage_pb2.LoadManyReply:
        if len(request.oids) > LOAD_MANY_LIMIT:
            raise errors.BadRequest(f"at most {LOAD_MANY_LIMIT} oids per LoadBeforeMany, got {len(request.oids)}")
        oids = [_identifier(oid, f"oids[{i}]") for i, oid in enumerate(request.oids)]
        before_tid = _identifier(request.before_tid, "before_tid")
        reply = storage_pb2.LoadManyReply()
        limit = min(request.max_bytes or LOAD_MANY_MAX_BYTES, LOAD_MANY_MAX_BYTES)
        unsettled = self._manager.unsettled(oids, ignore=request.unfinished_ttids) if request.no_wait else set()
        size = 0
        for oid in oids:
            answer = reply.replies.add()
            if size >= limit or oid in unsettled:
                continue
            partition = self._ownership.partition_of(oid)
            try:
                result = self._read(
                    [partition],
                    lambda p=partition, o=oid: self._database.load_before(p, o, before_tid),  # type: ignore[misc]
                    request.table_version, oid, request.unfinished_ttids)
            except (errors.NotOwner, errors.NotFound):
                continue  # STATUS_UNSPECIFIED: not for this node to answer
            answer.CopyFrom(_load_reply(result))
            size += len(answer.record.data)
        return reply

    def LoadSerial(self, request: storage_pb2.LoadSerialRequest, context: Any) -> storage_pb2.LoadReply:
        oid = _identifier(request.oid, "oid")
        serial = _identifier(request.serial, "serial")
        partition = self._ownership.partition_of(oid)
        return _load_reply(self._read(
            [partition], lambda: self._database.load_serial(partition, oid, serial), request.table_version, oid,
            request.unfinished_ttids))

    def History(self, request: storage_pb2.HistoryRequest, context: Any) -> storage_pb2.HistoryReply:
        oid = _identifier(request.oid, "oid")
        partition = self._ownership.partition_of(oid)
        revisions = self._read([partition], lambda: self._database.history(partition, oid, request.size), oid=oid,
                               unfinished=request.unfinished_ttids)
        return storage_pb2.HistoryReply(
            revisions=[storage_pb2.Revision(tid=r.tid, size=r.size) for r in revisions]
        )

    def ListObjects(self, request: storage_pb2.ListObjectsRequest, context: Any) -> storage_pb2.ListObjectsReply:
        after = _optional_identifier(request.after_oid, "after_oid")
        limit = min(request.limit or LIST_OBJECTS_LIMIT, LIST_OBJECTS_LIMIT)
        found, more = self._read([request.partition],
                                 lambda: self._database.current_objects(
                                     request.partition, after, limit, LIST_OBJECTS_MAX_BYTES),
                                 unfinished=request.unfinished_ttids)
        reply = storage_pb2.ListObjectsReply(more=more)
        for oid, serial, record in found:
            listed = reply.objects.add(oid=oid, serial=serial)
            record.to_proto(listed.record)
        return reply

    def ListTransactions(
        self, request: storage_pb2.ListTransactionsRequest, context: Any
    ) -> storage_pb2.ListTransactionsReply:
        partitions = self._readable_partitions(request.partitions)
        min_tid = _optional_identifier(request.min_tid, "min_tid")
        max_tid = _optional_identifier(request.max_tid, "max_tid")
        records = self._read(partitions, lambda: self._database.list_transactions(
            partitions, min_tid, max_tid, request.limit, request.descending), unfinished=request.unfinished_ttids)
        return storage_pb2.ListTransactionsReply(transactions=[
            common_pb2.TransactionInfo(
                tid=record.tid,
                user=record.metadata.user,
                description=record.metadata.description,
                extension=record.metadata.extension,
                oids=list(record.metadata.oids),
                packed=record.metadata.packed,
            )
            for record in records
        ])

    def GetStats(self, request: storage_pb2.StatsRequest, context: Any) -> storage_pb2.StatsReply:
        partitions = self._readable_partitions(request.partitions)
        stats = self._read(partitions, lambda: self._database.stats(partitions), unfinished=request.unfinished_ttids)
        return storage_pb2.StatsReply(
            object_count=stats.object_count, size=stats.size, last_tid=stats.last_tid or b""
        )

    def _read(self, partitions: Sequence[int], read: Callable[[], _T], routed_version: int = 0,
              oid: bytes | None = None, unfinished: Sequence[bytes] = ()) -> _T:
        """``read()`` of readable cells, checked before and after.

        First, the read waits for the transactions voted here that may be
        decided already (on ``oid``'s lock, or any for a read of more than
        one object: see :meth:`TransactionManager.settle`): the masters
        publish a transaction before their Commit orders arrive.  The
        reading client's ``unfinished`` transactions are not waited for.

        A node deletes the data of a partition once its table no longer
        lists its cell there (rebalancing moved it away), and tables only
        move forward: a read that began just before such a table arrived
        could see the data half deleted.  Checked again after the read, the
        cell is still readable, so no deletion began before the read did;
        otherwise the client gets NotOwner and reads elsewhere.
        """
        for partition in partitions:
            self._ownership.readable(partition, routed_version)
        self._manager.settle(oid, ignore=unfinished)
        result = read()
        for partition in partitions:
            self._ownership.readable(partition, routed_version)
        return result

    def _readable_partitions(self, partitions: Sequence[int]) -> list[int]:
        """The partitions asked for; none asked: all readable here (``_read``
        checks them)."""
        return list(partitions) or self._ownership.readable_partitions()

    # -- two-phase commit ------------------------------------------------------

    def Store(self, request: storage_pb2.StoreRequest, context: Any) -> storage_pb2.StoreReply:
        ttid = _identifier(request.ttid, "ttid")
        # Decode and check everything before taking any lock.
        writes = self._object_writes(ttid, request.objects, request.table_version)
        conflicts = self._manager.store(ttid, writes)
        return storage_pb2.StoreReply(conflicts=[_conflict(c) for c in conflicts])

    def _object_writes(self, ttid: bytes, objects: Sequence[storage_pb2.ObjectStore],
                       routed_version: int) -> list[ObjectWrite]:
        return [self._object_write(ttid, index, item, routed_version) for index, item in enumerate(objects)]

    def _object_write(
        self, ttid: bytes, index: int, item: storage_pb2.ObjectStore, routed_version: int
    ) -> ObjectWrite:
        oid = _identifier(item.oid, f"objects[{index}].oid")
        if item.restore and item.check_only:
            raise errors.BadRequest(f"store of object {oid_repr(oid)}: both restore and check_only set")
        carried = _optional_identifier(item.tid, f"objects[{index}].tid")
        if carried is not None and not item.restore:
            raise errors.BadRequest(f"store of object {oid_repr(oid)}: a tid is for restores only")
        serial = _identifier(item.serial, f"objects[{index}].serial")
        data_serial = _optional_identifier(item.data_serial, f"objects[{index}].data_serial")
        partition = self._ownership.partition_of(oid)
        state = self._ownership.writable(partition, routed_version)
        stored: StoredObject | None
        if item.check_only:
            stored = None
        elif item.undone_creation:
            if data_serial is not None:
                raise errors.BadRequest(
                    f"store of object {oid_repr(oid)}: both undone_creation and data_serial set"
                )
            stored = StoredObject.deletion(previous_tid=serial)
        elif data_serial is not None:
            stored = StoredObject.back_pointer(data_serial, previous_tid=serial)
        else:
            record = Record.from_proto(item.record)
            try:
                record.verify()
            except errors.Corrupted:
                raise errors.Corrupted(
                    f"object {oid_repr(oid)} stored by transaction {tid_repr(ttid)} "
                    "fails its checksum: not stored"
                ) from None
            stored = StoredObject.from_record(record, previous_tid=serial)
        return ObjectWrite(partition, oid, serial, stored, locking=state in READABLE_STATES, restore=item.restore,
                           tid=carried)

    def Vote(self, request: storage_pb2.VoteRequest, context: Any) -> storage_pb2.VoteReply:
        ttid = _identifier(request.ttid, "ttid")
        metadata = None
        if request.has_transaction:
            partition = (request.metadata_partition if request.HasField("metadata_partition")
                         else self._ownership.partition_of(ttid))
            self._ownership.writable(partition, request.table_version)
            metadata = PendingMetadata(partition, _metadata(request.transaction, "transaction"))
        carried = []
        for index, info in enumerate(request.carried):
            tid = _identifier(info.tid, f"carried[{index}].tid")
            partition = self._ownership.partition_of(tid)
            self._ownership.writable(partition, request.table_version)
            carried.append(PendingMetadata(partition, _metadata(info, f"carried[{index}]"), tid))
        lock_timeout = _lock_timeout(request.lock_timeout)
        writes = self._object_writes(ttid, request.objects, request.table_version)
        if writes:
            conflicts = self._manager.store(ttid, writes, lock_timeout)
            if conflicts:
                return storage_pb2.VoteReply(conflicts=[_conflict(c) for c in conflicts])
        unchecked = self._manager.vote(ttid, metadata, carried)
        return storage_pb2.VoteReply(unchecked_partitions=unchecked)

    def Commit(self, request: storage_pb2.CommitRequest, context: Any) -> storage_pb2.CommitReply:
        decisions = [
            (_identifier(d.ttid, f"decisions[{i}].ttid"), _identifier(d.tid, f"decisions[{i}].tid"))
            for i, d in enumerate(request.decisions)
        ]
        outcomes = self._manager.commit_many(decisions, request.term)
        return storage_pb2.CommitReply(results=[
            storage_pb2.CommitResult() if error is None
            else storage_pb2.CommitResult(error=type(error).__name__, message=str(error))
            for error in outcomes
        ])

    def Abort(self, request: storage_pb2.AbortTransactionRequest, context: Any) -> common_pb2.Empty:
        ttid = _identifier(request.ttid, "ttid")
        self._manager.abort(ttid, request.term)
        return common_pb2.Empty()

    # -- replication and checks ------------------------------------------------

    def _scan(self, request: storage_pb2.RangeRequest) -> tuple[list[tuple[bytes, bytes]], bool]:
        if request.kind not in (storage_pb2.TRANSACTIONS, storage_pb2.OBJECTS):
            raise errors.BadRequest(f"unknown range kind {request.kind}")
        max_tid = _identifier(request.max_tid, "max_tid")
        key_size = 8 if request.kind == storage_pb2.TRANSACTIONS else 16
        for what, key in (("after_key", request.after_key), ("end_key", request.end_key)):
            if key and len(key) != key_size:
                raise errors.BadRequest(f"{what} must be {key_size} bytes for this range kind, got {len(key)}")
        return self._read([request.partition], lambda: self._database.scan_range(
            request.partition, request.kind, request.after_key, request.end_key, max_tid,
            request.limit, request.max_bytes))

    def ChecksumRange(self, request: storage_pb2.RangeRequest, context: Any) -> storage_pb2.RangeChecksum:
        records, complete = self._scan(request)
        digest = range_digest(records)
        return storage_pb2.RangeChecksum(
            count=digest.count, size=digest.size, digest=digest.digest, last_key=digest.last_key,
            complete=complete)

    def DropCorruptedCell(self, request: storage_pb2.DropCorruptedCellRequest,
                          context: Any) -> storage_pb2.DropCorruptedCellReply:
        self._ownership.corrupted(request.partition, request.table_version)
        records = self._database.drop_partition(request.partition)
        log.warning("partition %d: CORRUPTED cell emptied to be rebuilt (%d records deleted)",
                    request.partition, records)
        return storage_pb2.DropCorruptedCellReply(records=records)

    def Truncate(self, request: storage_pb2.StorageTruncateRequest, context: Any) -> storage_pb2.StorageTruncateReply:
        after = _identifier(request.truncation.after, "truncation after")
        upto = _identifier(request.truncation.upto, "truncation upto")
        self._manager.observe_term(request.term, "truncate")
        transactions, revisions = self._database.truncate(after, upto)
        log.warning("truncated after %s: %d transactions and %d object revisions deleted",
                    tid_repr(after), transactions, revisions)
        return storage_pb2.StorageTruncateReply(transactions=transactions, revisions=revisions)

    def FetchRange(self, request: storage_pb2.RangeRequest, context: Any) -> storage_pb2.RangeRecords:
        records, complete = self._scan(request)
        return storage_pb2.RangeRecords(
            records=[storage_pb2.RangeRecord(key=key, value=value) for key, value in records],
            complete=complete)


def _conflict(conflict: Conflict) -> storage_pb2.Conflict:
    return storage_pb2.Conflict(
        oid=conflict.oid,
        serial=conflict.serial,
        committed_serial=conflict.committed_serial,
        read_conflict=conflict.read_conflict,
    )


def _load_reply(result: LoadResult) -> storage_pb2.LoadReply:
    """Encode a load: NO_REVISION carries ``serial`` only for a deletion."""
    reply = storage_pb2.LoadReply(
        serial=result.serial or b"",
        next_serial=result.next_serial or b"",
        data_serial=result.data_serial or b"",
    )
    if result.status is LoadStatus.FOUND:
        assert result.record is not None
        reply.status = storage_pb2.LoadReply.FOUND
        result.record.to_proto(reply.record)
    else:
        reply.status = storage_pb2.LoadReply.NO_REVISION
    return reply
