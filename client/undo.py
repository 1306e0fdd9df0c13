"""Transactional undo, computed by the client and stored like any write.

Undoing transaction ``tid`` writes, for each object it changed, a new
revision that restores the object's state from before ``tid``:

* if the revision written by ``tid`` is still the current one (or the current
  one holds the same data), the new revision is a *back-pointer* to the data
  of the revision before ``tid`` — no data is copied;
* if ``tid`` created the object, the new revision marks it *deleted*
  (``loadBefore`` answers ``None`` from then on);
* if a later transaction changed the object, ZODB's conflict resolution may
  still merge "undo ``tid``" with the later change; otherwise the undo fails
  with ``UndoError``, as FileStorage's does.

The writes go through the ordinary commit path (``neostore.client.commit``):
storage nodes lock the oids and check the serials, so an undo racing with
another commit conflicts like any store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ZODB.POSException import ConflictError, UndoError

from neostore import errors
from neostore.client import commit
from neostore.client.cluster import ClusterConnection
from neostore.client.history import transaction_info
from neostore.ids import partition_of
from neostore.protocol import storage_pb2
from neostore.records import Record

#: ZODB's tryToResolveConflict(oid, committed_serial, old_serial, new_data, committed_data)
UndoResolver = Callable[[bytes, bytes, bytes, bytes, bytes], bytes]


@dataclasses.dataclass(frozen=True)
class _Revision:
    serial: bytes
    data: bytes | None  # None: the revision marks the object deleted
    data_serial: bytes  # where its data lives (its own serial unless a back-pointer)


def undo(
    cluster: ClusterConnection, context: commit.TransactionContext, tid: bytes,
    resolve: UndoResolver,
) -> list[bytes]:
    """Queue the writes that undo ``tid``; return the oids they change."""
    if len(tid) != 8:
        raise UndoError("Invalid transaction id")
    info = transaction_info(cluster, tid)
    if info is None:
        raise UndoError("Invalid transaction id")
    writes = [_undo_write(cluster, context, oid, tid, resolve) for oid in info.oids]
    for write in writes:
        commit.store(cluster, context, write)
        context.undone_oids.add(write.oid)
    return [w.oid for w in writes]


def _undo_write(
    cluster: ClusterConnection, context: commit.TransactionContext, oid: bytes, tid: bytes,
    resolve: UndoResolver,
) -> commit.ObjectWrite:
    undone = _load_serial(cluster, oid, tid)
    if undone is None:
        if tid not in _revision_tids(cluster, oid):
            raise UndoError("Invalid transaction id", oid)
        undone = _Revision(tid, None, tid)  # tid deleted the object: undo restores it
    previous = _load_before(cluster, oid, tid)
    current, base_serial = _current(cluster, context, oid)
    copy = True
    if current.serial != tid and current.data_serial != undone.data_serial:
        if current.data != undone.data:
            copy = False
            if previous is None:
                raise UndoError(
                    "Can't undo an add transaction followed by conflicting transactions.", oid)
    if previous is None:
        return commit.ObjectWrite(oid, base_serial, undone_creation=True)
    if copy:
        return commit.ObjectWrite(oid, base_serial, data_serial=previous.data_serial)
    assert previous.data is not None
    try:
        data = resolve(oid, base_serial, tid, previous.data, current.data or b"")
    except ConflictError:
        raise UndoError("Some data were modified by a later transaction", oid) from None
    return commit.ObjectWrite(oid, base_serial, data, Record.pack(data))


def _current(
    cluster: ClusterConnection, context: commit.TransactionContext, oid: bytes
) -> tuple[_Revision, bytes]:
    """The object's current revision, and the serial a write must be based on.

    An earlier undo in this same transaction counts as current.
    """
    pending = context.writes.get(oid)
    if pending is not None and not pending.check_only:
        if pending.undone_creation:
            return _Revision(b"", None, b""), pending.serial
        if pending.data_serial:
            target = _load_serial(cluster, oid, pending.data_serial)
            data = target.data if target is not None else None
            return _Revision(b"", data, pending.data_serial), pending.serial
        return _Revision(b"", pending.data, b""), pending.serial
    revisions = _revision_tids(cluster, oid, 1)
    if not revisions:
        raise UndoError("Invalid transaction id", oid)
    serial = revisions[0]
    revision = _load_serial(cluster, oid, serial) or _Revision(serial, None, serial)
    return revision, serial


def _revision_tids(cluster: ClusterConnection, oid: bytes, size: int = 0) -> list[bytes]:
    """The TIDs of the object's revisions, newest first (all when size is 0)."""
    partition = partition_of(oid, cluster.table.num_partitions)
    history = cluster.read_call(partition, "History", storage_pb2.HistoryRequest(oid=oid, size=size))
    return [revision.tid for revision in history.revisions]


def _load_serial(cluster: ClusterConnection, oid: bytes, serial: bytes) -> _Revision | None:
    return _load(cluster, oid, "LoadSerial", storage_pb2.LoadSerialRequest(
        oid=oid, serial=serial, table_version=cluster.table.version))


def _load_before(cluster: ClusterConnection, oid: bytes, tid: bytes) -> _Revision | None:
    return _load(cluster, oid, "LoadBefore", storage_pb2.LoadBeforeRequest(
        oid=oid, before_tid=tid, table_version=cluster.table.version))


def _load(cluster: ClusterConnection, oid: bytes, method: str, request: object) -> _Revision | None:
    """The revision a load rpc answers, None when there is none with data."""
    partition = partition_of(oid, cluster.table.num_partitions)
    try:
        reply = cluster.read_call(partition, method, request)
    except errors.NotFound:
        return None
    if reply.status != storage_pb2.LoadReply.FOUND:
        return None
    data = Record.from_proto(reply.record).unpack(f"object {oid.hex()}@{reply.serial.hex()}")
    return _Revision(reply.serial, data, reply.data_serial or reply.serial)
