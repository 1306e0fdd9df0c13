"""A storage node's LMDB environment: committed revisions, pending votes, meta.

One environment per node, laid out as :mod:`neostore.storage_node.layout`
describes.  This module is the only one that talks to LMDB.

Reading (``load_before``, ``load_serial``, ``history``...) uses read-only
LMDB transactions, which never block and see one consistent snapshot.
Writing happens in two steps of two-phase commit, each one LMDB write
transaction, fsynced before it returns (the environment is opened with
``sync``):

1. :meth:`Database.write_pending` (at vote): the transaction's objects and
   metadata go to ``pending`` under its TTID.  Once it returns, a crash
   loses nothing the node voted for.
2. :meth:`Database.commit` (at the master's decision): moves the TTID's
   pending entries to ``objects`` and ``transactions`` under the final TID
   (what a restore batch carries, under the TIDs it carries them with),
   updates the per-partition last TID and statistics in ``meta``, and
   records ``ttid → tid`` in ``applied``.  Idempotent: with nothing pending
   it changes nothing and returns False.

Reading an object as of a TID (``load_before``): revisions of one object
are adjacent keys ``(partition, oid, tid)``, oldest first.  ``set_range`` on
``(partition, oid, before_tid)`` lands on the first revision at or after
``before_tid`` (its TID is the answer's ``next_serial``); one step back is
the revision to return.  A back-pointer revision (written by undo) takes
its data from the revision it names, followed until a revision holding
data.  The outcomes, as ZODB's ``loadBefore`` wants them (ZODB issue #318):

* the oid has no revision at all here → :class:`~neostore.errors.NotFound`;
* no revision before ``before_tid`` (not created yet) → NO_REVISION with no
  ``serial``;
* the revision before ``before_tid`` is an undone creation (deleted) →
  NO_REVISION, ``serial`` the deleting revision;
* otherwise FOUND with the data, its ``serial``, the ``next_serial`` and,
  for a back-pointer, the ``data_serial`` holding the data.

Writes are serialised by one mutex (LMDB allows one writer at a time
anyway); the votes and Commit orders that arrive while one is written
share the next transaction and its fsync (:mod:`.group_commit`).  A full
map or disk raises :class:`~neostore.errors.StorageFull` naming the data
directory; the failed LMDB transaction is aborted, so
nothing already committed is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import heapq
import itertools
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, cast

import lmdb

from neostore import errors
from neostore.ids import oid_repr, tid_repr
from neostore.lmdb_files import check_data_file
from neostore.records import Record
from neostore.storage_node import layout
from neostore.storage_node.group_commit import GroupCommit, Job
from neostore.storage_node.layout import PartitionStats, StoredObject, TransactionMetadata

DEFAULT_MAP_SIZE = 64 * 2**30
#: How many committed TTIDs ``applied`` remembers (oldest TTIDs go first).
APPLIED_HISTORY = 100_000
#: Back-pointer chains longer than this are taken for a cycle (corruption).
MAX_BACK_POINTER_HOPS = 10_000
LOCK_FILE_NAME = "neostore-storage.lock"

_PAST_ANY_TID = b"\xff" * 8


class LoadStatus(enum.Enum):
    FOUND = "found"
    NO_REVISION = "no revision"


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What a load finds.

    ``serial``: FOUND: the revision returned; NO_REVISION: the revision that
    undid the object's creation, or None when it was not created yet.
    ``next_serial``: the revision after ``serial`` (or after ``before_tid``
    when there is no ``serial``), None if none.  ``data_serial``: set when
    the revision is a back-pointer: the revision whose data it carries.
    """

    status: LoadStatus
    serial: bytes | None
    next_serial: bytes | None
    record: Record | None = None
    data_serial: bytes | None = None


@dataclasses.dataclass(frozen=True)
class PendingObject:
    """A revision voted; ``tid``: that of the carried transaction of a
    restore batch it belongs to (None: the transaction's own)."""

    partition: int
    oid: bytes
    stored: StoredObject
    tid: bytes | None = None


@dataclasses.dataclass(frozen=True)
class PendingMetadata:
    """A transaction's metadata, voted on the cells of ``partition``;
    ``tid`` as for :class:`PendingObject`."""

    partition: int
    metadata: TransactionMetadata
    tid: bytes | None = None


@dataclasses.dataclass(frozen=True)
class TransactionRecord:
    partition: int
    tid: bytes
    metadata: TransactionMetadata


@dataclasses.dataclass(frozen=True)
class Revision:
    """One line of an object's history: ``size`` is the stored data's."""

    tid: bytes
    size: int


@dataclasses.dataclass(frozen=True)
class Stats:
    object_count: int
    size: int
    last_tid: bytes | None


class Database:
    """The LMDB environment of one storage node (thread-safe)."""

    def __init__(
        self,
        path: str,
        cluster_name: str,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> None:
        self._path = os.path.abspath(path)
        self._cluster_name = cluster_name
        self._write_mutex = threading.Lock()
        #: Votes and commits: one transaction for those that come together.
        self._group = GroupCommit(self._write_jobs)
        self._closed = False
        self.durable_writes = 0  # write transactions committed (one fsync each)
        os.makedirs(self._path, exist_ok=True)
        self._lock_file: IO[bytes] | None = self._lock_directory()
        self._env: lmdb.Environment | None = None
        try:
            check_data_file(self._path)
            self._env = lmdb.open(
                self._path,
                map_size=map_size,
                max_dbs=len(layout.DATABASE_NAMES),
                subdir=True,
                sync=sync,
                metasync=sync,
                lock=True,
            )
            self._objects = self._env.open_db(layout.OBJECTS_DB)
            self._transactions = self._env.open_db(layout.TRANSACTIONS_DB)
            self._pending = self._env.open_db(layout.PENDING_DB)
            self._applied = self._env.open_db(layout.APPLIED_DB)
            self._meta = self._env.open_db(layout.META_DB)
            self._claim_cluster()
        except BaseException:
            self.close()
            raise

    # -- opening and closing -------------------------------------------------

    def _lock_directory(self) -> IO[bytes]:
        """Refuse a second node (process or in-process) on one directory."""
        handle = open(os.path.join(self._path, LOCK_FILE_NAME), "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise errors.Unavailable(
                f"data directory {self._path} is in use by another storage node"
            ) from None
        return handle

    def _claim_cluster(self) -> None:
        with self._write() as txn:
            theirs = _get(txn, layout.META_CLUSTER_NAME, self._meta)
            if theirs is None:
                txn.put(layout.META_CLUSTER_NAME, self._cluster_name.encode(), db=self._meta)
            elif theirs.decode() != self._cluster_name:
                raise errors.WrongCluster(
                    f"data directory {self._path} belongs to cluster {theirs.decode()!r}, "
                    f"not {self._cluster_name!r}"
                )

    def close(self) -> None:
        """Close the environment and the directory lock (idempotent)."""
        with self._write_mutex:
            self._closed = True
            if self._env is not None:
                self._env.close()
                self._env = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    def lmdb_metrics(self) -> tuple[lmdb.Environment, str, int]:
        """The environment, its directory and its durable writes so far (:mod:`neostore.metrics`)."""
        return self._environment(), self._path, self.durable_writes

    def _environment(self) -> lmdb.Environment:
        if self._env is None:
            raise errors.Unavailable(f"the database in {self._path} is closed")
        return self._env

    @contextlib.contextmanager
    def _write(self) -> Iterator[lmdb.Transaction]:
        """One fsynced write transaction; full map or disk → StorageFull."""
        with self._write_mutex:
            env = self._environment()
            try:
                with env.begin(write=True) as txn:
                    yield txn
                self.durable_writes += 1
            except (lmdb.Error, OSError) as error:
                full = self._full(env, error)
                if full is not None:
                    raise full from None
                raise

    def _full(self, env: lmdb.Environment, error: BaseException) -> errors.StorageFull | None:
        """The StorageFull a full map or disk means, None for other errors."""
        if isinstance(error, lmdb.MapFullError):
            return errors.StorageFull(
                f"storage node data directory {self._path} is full "
                f"(LMDB map size {env.info()['map_size']} bytes reached): {error}")
        if _is_disk_full(error):
            return errors.StorageFull(
                f"no space left on the disk of storage node data directory {self._path}: {error}")
        return None

    def _write_jobs(self, jobs: list[Job[Any]]) -> None:
        """The group commit's write (:mod:`.group_commit`): ``jobs`` in one
        fsynced transaction; each in a nested one when there are several,
        so that one that raises is rolled back alone."""
        with self._write() as txn:
            if len(jobs) == 1:
                (job,) = jobs
                job.result = job.work(txn)  # raising aborts the transaction: job.error
                return
            env = self._environment()
            for job in jobs:
                try:
                    with env.begin(write=True, parent=txn) as nested:
                        job.result = job.work(nested)
                except Exception as error:  # noqa: BLE001 - this job's alone
                    job.error = self._full(env, error) or error

    def _read(self) -> lmdb.Transaction:
        return self._environment().begin(write=False)

    # -- meta ----------------------------------------------------------------

    def node_id(self) -> int:
        """The node id the master gave this node, 0 if none yet."""
        with self._read() as txn:
            value = _get(txn, layout.META_NODE_ID, self._meta)
        return layout.decode_u64(value) if value is not None else 0

    def set_node_id(self, node_id: int) -> None:
        with self._write() as txn:
            txn.put(layout.META_NODE_ID, layout.encode_u64(node_id), db=self._meta)

    def cluster_id(self) -> str:
        """The id of the cluster this data belongs to, "" until the first registration."""
        with self._read() as txn:
            value = _get(txn, layout.META_CLUSTER_ID, self._meta)
        return value.decode("ascii") if value is not None else ""

    def claim_cluster_id(self, cluster_id: str) -> None:
        """Keep ``cluster_id`` as this data's cluster; WrongCluster if it holds another's."""
        with self._write() as txn:
            theirs = _get(txn, layout.META_CLUSTER_ID, self._meta)
            if theirs is None:
                txn.put(layout.META_CLUSTER_ID, cluster_id.encode("ascii"), db=self._meta)
            elif theirs.decode("ascii") != cluster_id:
                raise errors.WrongCluster(
                    f"data directory {self._path} belongs to another cluster named {self._cluster_name!r} "
                    f"(cluster id {theirs.decode('ascii')}, the masters' is {cluster_id})")

    def term(self) -> int:
        """The highest master term this node has seen (0: none)."""
        with self._read() as txn:
            value = _get(txn, layout.META_TERM, self._meta)
        return layout.decode_u64(value) if value is not None else 0

    def set_term(self, term: int) -> None:
        with self._write() as txn:
            txn.put(layout.META_TERM, layout.encode_u64(term), db=self._meta)

    def last_tid(self) -> bytes | None:
        """The highest TID committed on this node, None if none."""
        with self._read() as txn:
            return _get(txn, layout.META_LAST_TID, self._meta)

    def partition_last_tids(self) -> dict[int, bytes]:
        """Per partition holding committed data: its highest TID."""
        with self._read() as txn:
            return self._partition_last_tids(txn)

    def _partition_last_tids(self, txn: lmdb.Transaction) -> dict[int, bytes]:
        prefix = layout.partition_last_tid_prefix()
        result = {}
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(prefix):
            for key, value in _items(cursor):
                if not key.startswith(prefix):
                    break
                result[layout.decode_partition_meta_key(key, prefix)] = value
        return result

    def stats(self, partitions: Iterable[int]) -> Stats:
        """Objects with data in their current revision, bytes, last TID."""
        totals = PartitionStats()
        last: bytes | None = None
        with self._read() as txn:
            for partition in sorted(set(partitions)):
                value = _get(txn, layout.partition_stats_key(partition), self._meta)
                if value is not None:
                    stats = layout.decode_stats(value)
                    totals = totals.plus(stats.object_count, stats.size)
                tid = _get(txn, layout.partition_last_tid_key(partition), self._meta)
                if tid is not None and (last is None or tid > last):
                    last = tid
        return Stats(totals.object_count, totals.size, last)

    # -- reading objects -------------------------------------------------------

    def load_before(self, partition: int, oid: bytes, before_tid: bytes) -> LoadResult:
        """The revision of ``oid`` current just before ``before_tid``.

        See the module docstring for the outcomes.  Raises NotFound only
        when this node holds no revision of ``oid`` at all.
        """
        with self._read() as txn:
            return self._load_before_in(txn, txn.cursor(db=self._objects), partition, oid, before_tid)

    def load_before_many(self, wanted: Sequence[tuple[int, bytes]], before_tid: bytes) -> dict[bytes, LoadResult]:
        """:meth:`load_before` of each ``(partition, oid)`` in one read
        transaction: the FOUND ones, by oid (the others are left out)."""
        found: dict[bytes, LoadResult] = {}
        with self._read() as txn:
            cursor = txn.cursor(db=self._objects)
            for partition, oid in wanted:
                try:
                    result = self._load_before_in(txn, cursor, partition, oid, before_tid)
                except (errors.NotFound, errors.Corrupted):
                    continue  # a load of its own says what is wrong
                if result.status is LoadStatus.FOUND:
                    found[oid] = result
        return found

    def _load_before_in(self, txn: lmdb.Transaction, cursor: lmdb.Cursor, partition: int, oid: bytes,
                        before_tid: bytes) -> LoadResult:
        prefix = layout.object_prefix(partition, oid)
        next_serial: bytes | None = None
        if cursor.set_range(layout.object_key(partition, oid, before_tid)):
            if _key(cursor).startswith(prefix):
                next_serial = _key(cursor)[len(prefix):]
            positioned = cursor.prev()
        else:
            positioned = cursor.last()
        if not positioned or not _key(cursor).startswith(prefix):
            if next_serial is None:
                raise errors.NotFound(
                    f"object {oid_repr(oid)} has no revision in partition {partition} of this node"
                )
            return LoadResult(LoadStatus.NO_REVISION, None, next_serial)
        serial = _key(cursor)[len(prefix):]
        stored = layout.decode_object(_value(cursor))
        return self._resolve(txn, partition, oid, serial, stored, next_serial)

    def load_serial(self, partition: int, oid: bytes, serial: bytes) -> LoadResult:
        """Revision ``serial`` of ``oid``: FOUND, or NotFound (also when
        that revision undid the object's creation, as FileStorage does)."""
        prefix = layout.object_prefix(partition, oid)
        with self._read() as txn:
            cursor = txn.cursor(db=self._objects)
            if not cursor.set_key(layout.object_key(partition, oid, serial)):
                known = cursor.set_range(prefix) and _key(cursor).startswith(prefix)
                raise errors.NotFound(
                    f"object {oid_repr(oid)} has no revision {tid_repr(serial)} on this node"
                    if known else
                    f"object {oid_repr(oid)} has no revision in partition {partition} of this node"
                )
            stored = layout.decode_object(_value(cursor))
            next_serial = None
            if cursor.next() and _key(cursor).startswith(prefix):
                next_serial = _key(cursor)[len(prefix):]
            result = self._resolve(txn, partition, oid, serial, stored, next_serial)
        if result.status is not LoadStatus.FOUND:
            raise errors.NotFound(
                f"object {oid_repr(oid)} has no data in revision {tid_repr(serial)}: "
                "that transaction undid its creation"
            )
        return result

    def _resolve(
        self,
        txn: lmdb.Transaction,
        partition: int,
        oid: bytes,
        serial: bytes,
        stored: StoredObject,
        next_serial: bytes | None,
    ) -> LoadResult:
        """Follow back-pointers from revision ``serial`` to its data."""
        data_serial: bytes | None = None
        current = stored
        hops = 0
        while current.data_tid is not None:
            hops += 1
            if hops > MAX_BACK_POINTER_HOPS:
                raise errors.Corrupted(
                    f"revision {tid_repr(serial)} of object {oid_repr(oid)}: back-pointer cycle"
                )
            data_serial = current.data_tid
            value = _get(txn, layout.object_key(partition, oid, data_serial), self._objects)
            if value is None:
                raise errors.Corrupted(
                    f"revision {tid_repr(serial)} of object {oid_repr(oid)} points to revision "
                    f"{tid_repr(data_serial)}, which this node does not hold"
                )
            current = layout.decode_object(value)
        if current.undone_creation:
            return LoadResult(LoadStatus.NO_REVISION, serial, next_serial)
        record = current.record()
        if zlib.crc32(record.data) != record.checksum:
            raise errors.Corrupted(
                f"revision {tid_repr(data_serial or serial)} of object {oid_repr(oid)} "
                f"fails its checksum in {self._path}"
            )
        return LoadResult(LoadStatus.FOUND, serial, next_serial, record, data_serial)

    def current_objects(self, partition: int, after_oid: bytes | None, limit: int,
                        max_bytes: int = 2**62) -> tuple[list[tuple[bytes, bytes, Record]], bool]:
        """The current revision of each live object of ``partition`` whose
        oid is above ``after_oid`` (from the first when None), in oid order:
        at most ``limit`` (oid, serial, record), a back-pointer's data
        resolved, and no more once their data reach ``max_bytes`` (at least
        one); and whether more objects may follow."""
        if after_oid is not None:
            if after_oid == b"\xff" * 8:
                return [], False
            start = layout.object_prefix(partition, (int.from_bytes(after_oid, "big") + 1).to_bytes(8, "big"))
        else:
            start = layout.object_prefix(partition)
        partition_prefix = layout.object_prefix(partition)
        found: list[tuple[bytes, bytes, Record]] = []
        size = 0
        with self._read() as txn:
            cursor = txn.cursor(db=self._objects)
            positioned = cursor.set_range(start)
            while positioned and _key(cursor).startswith(partition_prefix):
                _, oid, _ = layout.decode_object_key(_key(cursor))
                _last_with_prefix(cursor, layout.object_prefix(partition, oid))  # its newest revision
                serial = _key(cursor)[len(partition_prefix) + len(oid):]
                result = self._resolve(txn, partition, oid, serial, layout.decode_object(_value(cursor)), None)
                if result.status is LoadStatus.FOUND:
                    if len(found) == limit or (found and size >= max_bytes):
                        return found, True
                    assert result.record is not None
                    found.append((oid, serial, result.record))
                    size += len(result.record.data)
                positioned = cursor.next()
        return found, False

    def has_revision(self, partition: int, oid: bytes, tid: bytes) -> bool:
        """Whether revision ``tid`` of ``oid`` is committed here (any kind)."""
        with self._read() as txn:
            return _get(txn, layout.object_key(partition, oid, tid), self._objects) is not None

    def last_serial(self, partition: int, oid: bytes) -> bytes | None:
        """The TID of ``oid``'s last committed revision (any kind), or None."""
        prefix = layout.object_prefix(partition, oid)
        with self._read() as txn:
            cursor = txn.cursor(db=self._objects)
            if _last_with_prefix(cursor, prefix):
                return _key(cursor)[len(prefix):]
        return None

    def history(self, partition: int, oid: bytes, size: int = 0) -> list[Revision]:
        """``oid``'s revisions, newest first, at most ``size`` (0: all).

        A back-pointer's size is that of the data it points to; an undone
        creation's is 0.  NotFound when the node holds no revision of it.
        """
        prefix = layout.object_prefix(partition, oid)
        revisions: list[Revision] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._objects)
            if _last_with_prefix(cursor, prefix):
                while _key(cursor).startswith(prefix) and (size == 0 or len(revisions) < size):
                    stored = layout.decode_object(_value(cursor))
                    data_size = self._data_size(txn, partition, oid, stored)
                    revisions.append(Revision(_key(cursor)[len(prefix):], data_size))
                    if not cursor.prev():
                        break
        if not revisions:
            raise errors.NotFound(f"object {oid_repr(oid)} has no revision in partition {partition} of this node")
        return revisions

    def _data_size(self, txn: lmdb.Transaction, partition: int, oid: bytes, stored: StoredObject) -> int:
        hops = 0
        while stored.data_tid is not None and hops < MAX_BACK_POINTER_HOPS:
            value = _get(txn, layout.object_key(partition, oid, stored.data_tid), self._objects)
            if value is None:
                return 0
            stored = layout.decode_object(value)
            hops += 1
        return len(stored.data)

    # -- reading transactions --------------------------------------------------

    def list_transactions(
        self,
        partitions: Iterable[int],
        min_tid: bytes | None = None,
        max_tid: bytes | None = None,
        limit: int = 0,
        descending: bool = False,
    ) -> list[TransactionRecord]:
        """Committed transactions of ``partitions`` with ``min_tid <= tid <=
        max_tid`` (None: unbounded), merged in TID order, at most ``limit``
        (0: all)."""
        low = min_tid or layout.ZERO_ID
        high = max_tid or _PAST_ANY_TID
        with self._read() as txn:
            scans = [
                self._scan_transactions(txn, partition, low, high, descending)
                for partition in sorted(set(partitions))
            ]
            merged = heapq.merge(*scans, key=lambda record: record.tid, reverse=descending)
            return list(itertools.islice(merged, limit or None))

    def _scan_transactions(
        self, txn: lmdb.Transaction, partition: int, low: bytes, high: bytes, descending: bool
    ) -> Iterator[TransactionRecord]:
        prefix = layout.transaction_prefix(partition)
        cursor = txn.cursor(db=self._transactions)
        if descending:
            if cursor.set_range(prefix + high):
                if _key(cursor) != prefix + high and not cursor.prev():
                    return
            elif not cursor.last():
                return
            items = _items(cursor, reverse=True)
        else:
            if not cursor.set_range(prefix + low):
                return
            items = _items(cursor)
        for key, value in items:
            if not key.startswith(prefix):
                return
            tid = key[len(prefix):]
            if tid < low or tid > high:
                return
            yield TransactionRecord(partition, tid, layout.decode_transaction(value))

    # -- two-phase commit ------------------------------------------------------

    def write_pending(
        self,
        ttid: bytes,
        objects: Sequence[PendingObject],
        metadata: PendingMetadata | None = None,
        carried: Sequence[PendingMetadata] = (),
    ) -> None:
        """Make a vote durable: ``ttid``'s objects and metadata (with the
        metadata of the transactions a restore batch carries), replacing
        whatever was pending for it, in one fsynced write (shared with the
        votes and commits that come meanwhile: :mod:`.group_commit`)."""

        def write(txn: lmdb.Transaction) -> None:
            self._delete_pending(txn, ttid)
            for entry in objects:
                txn.put(
                    layout.pending_object_key(ttid, entry.partition, entry.oid, entry.tid),
                    layout.encode_object(entry.stored),
                    db=self._pending,
                )
            for meta in (metadata, *carried) if metadata is not None else carried:
                txn.put(
                    layout.pending_metadata_key(ttid, meta.partition, meta.tid),
                    layout.encode_transaction(meta.metadata),
                    db=self._pending,
                )

        self._group.run(write)

    def pending_ttids(self) -> list[bytes]:
        """TTIDs with voted, uncommitted data, in TTID order."""
        ttids = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._pending)
            found = cursor.first()
            while found:
                ttid = _key(cursor)[:8]
                ttids.append(ttid)
                end = _prefix_end(ttid)
                found = end is not None and cursor.set_range(end)
        return ttids

    def has_pending(self, ttid: bytes) -> bool:
        with self._read() as txn:
            cursor = txn.cursor(db=self._pending)
            return cursor.set_range(layout.pending_prefix(ttid)) and _key(cursor).startswith(ttid)

    def applied_tid(self, ttid: bytes) -> bytes | None:
        """The TID ``ttid`` was committed under on this node, if remembered."""
        with self._read() as txn:
            return _get(txn, layout.applied_key(ttid), self._applied)

    def commit(self, ttid: bytes, tid: bytes) -> bool:
        """Move ``ttid``'s pending data under ``tid`` (one fsynced write).

        Returns False, changing nothing, when nothing is pending for it.
        """
        return self.commit_many([(ttid, tid)])[0]

    def commit_many(self, decisions: Sequence[tuple[bytes, bytes]], linger: float = 0.0) -> list[bool]:
        """:meth:`commit` of each ``(ttid, tid)``, in order, all in ONE
        fsynced write, shared with the votes and commits that come meanwhile
        (:mod:`.group_commit`; ``linger``: how long a write that would be
        alone waits for company); whether each had anything pending."""
        for _, tid in decisions:
            if len(tid) != layout.TID_SIZE:
                raise layout.LayoutError("tid must be 8 bytes")

        def write(txn: lmdb.Transaction) -> list[bool]:
            applied = [self._commit_in(txn, ttid, tid) for ttid, tid in decisions]
            if any(applied):
                self._trim_applied(txn)
            return applied

        return self._group.run(write, linger)

    def _commit_in(self, txn: lmdb.Transaction, ttid: bytes, tid: bytes) -> bool:
        entries = self._pending_entries(txn, ttid)
        if not entries:
            return False
        deltas: dict[int, tuple[int, int]] = {}
        for key, value in entries:
            pending = layout.decode_pending_key(key)
            partition = pending.partition
            objects_delta, size_delta = deltas.get(partition, (0, 0))
            when = tid if pending.tid is None else pending.tid  # a restore batch's carried transaction
            if pending.oid is None:
                txn.put(layout.transaction_key(partition, when), value, db=self._transactions)
            else:
                key_committed = layout.object_key(partition, pending.oid, when)
                if _get(txn, key_committed, self._objects) is None:  # not already replicated
                    stored = layout.decode_object(value)
                    objects_delta += self._liveness_change(txn, partition, pending.oid, stored)
                    size_delta += len(stored.data)
                    txn.put(key_committed, value, db=self._objects)
            deltas[partition] = (objects_delta, size_delta)
            txn.delete(key, db=self._pending)
        for partition, (objects_delta, size_delta) in deltas.items():
            self._update_partition_meta(txn, partition, tid, objects_delta, size_delta)
        last = _get(txn, layout.META_LAST_TID, self._meta)
        if last is None or tid > last:
            txn.put(layout.META_LAST_TID, tid, db=self._meta)
        txn.put(layout.applied_key(ttid), tid, db=self._applied)
        return True

    def abort(self, ttid: bytes) -> bool:
        """Drop ``ttid``'s pending data; whether there was any."""
        if not self.has_pending(ttid):
            return False
        with self._write() as txn:
            return self._delete_pending(txn, ttid) > 0

    # -- replication: a cell as ranges of records ------------------------------

    def _range_db(self, kind: int) -> lmdb._Database:
        """The named database holding one range kind of a cell."""
        return self._transactions if kind == layout.RANGE_TRANSACTIONS else self._objects

    def scan_range(
        self,
        partition: int,
        kind: int,
        after_key: bytes = b"",
        end_key: bytes = b"",
        max_tid: bytes = _PAST_ANY_TID,
        limit: int = 0,
        max_bytes: int = 0,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Records of one cell's range, in key order, as stored.

        ``kind`` is :data:`layout.RANGE_TRANSACTIONS` (keys: tid) or
        :data:`layout.RANGE_OBJECTS` (keys: oid | tid); keys are given and
        returned without the partition prefix.  Records with a key above
        ``after_key`` and at most ``end_key`` (empty: no bound) whose tid is
        at most ``max_tid``, stopping after ``limit`` records or once
        ``max_bytes`` bytes are reached (0: no limit).  Returns the records
        and whether the range holds nothing more after them.
        """
        prefix = layout.range_prefix(kind, partition)
        db = self._range_db(kind)
        records: list[tuple[bytes, bytes]] = []
        size = 0
        with self._read() as txn:
            cursor = txn.cursor(db=db)
            start = prefix + after_key
            if not cursor.set_range(start):
                return records, True
            for key, value in _items(cursor):
                if not key.startswith(prefix):
                    return records, True
                suffix = key[len(prefix):]
                if after_key and suffix <= after_key:
                    continue
                if end_key and suffix > end_key:
                    return records, True
                tid = layout.range_key_tid(kind, suffix)
                if tid > max_tid:
                    if kind == layout.RANGE_TRANSACTIONS:
                        return records, True  # tid order: nothing further qualifies
                    continue
                if (limit and len(records) >= limit) or (max_bytes and size >= max_bytes):
                    return records, False
                records.append((suffix, value))
                size += len(suffix) + len(value)
        return records, True

    def insert_replicated(
        self,
        partition: int,
        kind: int,
        records: Sequence[tuple[bytes, bytes]],
        position: layout.ReplicationPosition | None = None,
    ) -> int:
        """Add records copied from another replica (one fsynced write).

        A record whose key is already held is kept as it is (both come from
        the same commit).  Statistics and last tids follow; ``position`` is
        stored in the same transaction, so a restart resumes after what was
        really written.  Returns how many records were new.
        """
        prefix = layout.range_prefix(kind, partition)
        added = 0
        with self._write() as txn:
            truncated = layout.decode_truncations(_get(txn, layout.META_TRUNCATIONS, self._meta) or b"")
            if truncated:  # a source not truncated yet must not bring those records back
                records = [(suffix, value) for suffix, value in records
                           if not any(after < layout.range_key_tid(kind, suffix) <= upto
                                      for after, upto in truncated)]
            db = self._range_db(kind)
            last_tid: bytes | None = None
            size_delta = 0
            touched: dict[bytes, bool] = {}
            cursor = txn.cursor(db=self._objects)
            for suffix, value in records:
                tid = layout.range_key_tid(kind, suffix)
                if kind == layout.RANGE_OBJECTS:
                    oid = suffix[:layout.OID_SIZE]
                    if oid not in touched:
                        touched[oid] = self._live(cursor, partition, oid)
                    stored = layout.decode_object(value)  # refuse garbage before writing it
                if not txn.put(prefix + suffix, value, db=db, overwrite=False):
                    continue
                added += 1
                if kind == layout.RANGE_OBJECTS:
                    size_delta += len(stored.data)
                if last_tid is None or tid > last_tid:
                    last_tid = tid
            objects_delta = sum(
                int(self._live(cursor, partition, oid)) - int(was) for oid, was in touched.items())
            if added:
                self._update_partition_meta(txn, partition, last_tid or layout.ZERO_ID, objects_delta, size_delta)
                last = _get(txn, layout.META_LAST_TID, self._meta)
                if last_tid is not None and (last is None or last_tid > last):
                    txn.put(layout.META_LAST_TID, last_tid, db=self._meta)
            if position is not None:
                txn.put(layout.replication_key(partition),
                        layout.encode_replication_position(position), db=self._meta)
        return added

    def holds_partition(self, partition: int) -> bool:
        """Whether any committed record of ``partition`` is here."""
        with self._read() as txn:
            for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
                prefix = layout.range_prefix(kind, partition)
                db = self._range_db(kind)
                cursor = txn.cursor(db=db)
                if cursor.set_range(prefix) and _key(cursor).startswith(prefix):
                    return True
        return False

    # -- truncation (neoctl truncate) --------------------------------------------

    def truncations(self) -> list[tuple[bytes, bytes]]:
        """The (after, upto] TID ranges truncated on this node."""
        with self._read() as txn:
            value = _get(txn, layout.META_TRUNCATIONS, self._meta)
        return layout.decode_truncations(value) if value else []

    def truncate(self, after: bytes, upto: bytes, batch: int = 10_000) -> tuple[int, int]:
        """Delete every committed transaction and object revision with
        ``after`` < tid <= ``upto`` (idempotent).  The range is remembered
        first, so that replication never brings such records back
        (:meth:`insert_replicated`); each partition's last TID and
        statistics are recomputed.  Returns (transactions, revisions)
        deleted."""
        if not after < upto:
            raise errors.BadRequest(f"empty truncation range ({tid_repr(after)}, {tid_repr(upto)}]")
        with self._write() as txn:
            value = _get(txn, layout.META_TRUNCATIONS, self._meta)
            ranges = layout.decode_truncations(value) if value else []
            if (after, upto) not in ranges:
                txn.put(layout.META_TRUNCATIONS, layout.encode_truncations([*ranges, (after, upto)]), db=self._meta)
        deleted = {}
        touched: set[int] = set()
        for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS):
            db = self._range_db(kind)
            count = 0
            start = b""
            while True:  # one write transaction per ``batch`` keys scanned
                with self._write() as txn:
                    cursor = txn.cursor(db=db)
                    more = cursor.set_range(start) if start else cursor.first()
                    scanned = 0
                    while more and scanned < batch:
                        key = _key(cursor)
                        tid = key[-layout.TID_SIZE:]
                        scanned += 1
                        if after < tid <= upto:
                            touched.add(int.from_bytes(key[:4], "big"))
                            count += 1
                            cursor.delete()  # moves to the next record, if any
                            more = bool(_key(cursor))
                            continue
                        more = cursor.next()
                    start = _key(cursor) if more else b""
                if not more:
                    break
            deleted[kind] = count
        if touched:
            with self._write() as txn:
                for partition in sorted(touched):
                    self._recount_partition(txn, partition)
                newest = max(self._partition_last_tids(txn).values(), default=b"")
                if newest:
                    txn.put(layout.META_LAST_TID, newest, db=self._meta)
                else:
                    txn.delete(layout.META_LAST_TID, db=self._meta)
        return deleted[layout.RANGE_TRANSACTIONS], deleted[layout.RANGE_OBJECTS]

    def _recount_partition(self, txn: lmdb.Transaction, partition: int) -> None:
        """Recompute a partition's last TID and statistics from its records."""
        last = b""
        cursor = txn.cursor(db=self._transactions)
        if _last_with_prefix(cursor, layout.transaction_prefix(partition)):
            last = _key(cursor)[-layout.TID_SIZE:]
        objects = size = 0
        previous_oid = b""
        alive = False
        cursor = txn.cursor(db=self._objects)
        prefix = layout.object_prefix(partition)
        if cursor.set_range(prefix):
            for key, value in _items(cursor):
                if not key.startswith(prefix):
                    break
                _, oid, tid = layout.decode_object_key(key)
                stored = layout.decode_object(value)
                if oid != previous_oid:
                    objects += int(alive)
                    previous_oid = oid
                alive = not stored.undone_creation
                size += len(stored.data)
                last = max(last, tid)
        objects += int(alive)
        if last:
            txn.put(layout.partition_last_tid_key(partition), last, db=self._meta)
        else:
            txn.delete(layout.partition_last_tid_key(partition), db=self._meta)
        txn.put(layout.partition_stats_key(partition), layout.encode_stats(PartitionStats(objects, size)),
                db=self._meta)

    def drop_partition(
        self, partition: int, batch: int = 10_000, may_drop: Callable[[], bool] | None = None
    ) -> int:
        """Delete every committed record of ``partition`` (a cell this node no
        longer holds, or a CORRUPTED one), ``batch`` keys per write
        transaction; how many.

        ``may_drop`` is asked inside each write transaction, before it
        deletes anything: LMDB has one writer at a time, so no commit lands
        between the answer and the deletion.  Once it answers False (say, the
        partition came back to this node, which may already have taken new
        commits of it), the drop stops there: what is left stays, statistics
        are recounted from it, and catch-up replication brings back what was
        deleted (from the start: the position of an earlier catch-up of the
        cell is deleted too).
        """
        dropped = 0
        prefixes = [(layout.range_prefix(kind, partition), self._range_db(kind))
                    for kind in (layout.RANGE_TRANSACTIONS, layout.RANGE_OBJECTS)]
        while True:
            with self._write() as txn:
                if may_drop is not None and not may_drop():
                    if dropped:  # a catch-up position may point past records now deleted
                        self._recount_partition(txn, partition)
                        txn.delete(layout.replication_key(partition), db=self._meta)
                    return dropped
                count = 0
                for prefix, db in prefixes:
                    cursor = txn.cursor(db=db)
                    if cursor.set_range(prefix):
                        while count < batch and _key(cursor).startswith(prefix):
                            if not cursor.delete():
                                break
                            count += 1
                dropped += count
                if count < batch:  # the last batch: nothing of the partition is left
                    for key in (layout.partition_last_tid_key(partition), layout.partition_stats_key(partition),
                                layout.replication_key(partition)):
                        txn.delete(key, db=self._meta)
                    return dropped

    def _live(self, cursor: lmdb.Cursor, partition: int, oid: bytes) -> bool:
        """Whether the object's newest revision has it alive."""
        if not _last_with_prefix(cursor, layout.object_prefix(partition, oid)):
            return False
        return not layout.decode_object(_value(cursor)).undone_creation

    def replication_position(self, partition: int) -> layout.ReplicationPosition | None:
        """Where an interrupted catch-up of the cell stopped (None: none)."""
        with self._read() as txn:
            value = _get(txn, layout.replication_key(partition), self._meta)
        return layout.decode_replication_position(value) if value is not None else None

    def set_replication_position(self, partition: int, position: layout.ReplicationPosition | None) -> None:
        with self._write() as txn:
            if position is None:
                txn.delete(layout.replication_key(partition), db=self._meta)
            else:
                txn.put(layout.replication_key(partition),
                        layout.encode_replication_position(position), db=self._meta)

    def _pending_entries(self, txn: lmdb.Transaction, ttid: bytes) -> list[tuple[bytes, bytes]]:
        prefix = layout.pending_prefix(ttid)
        cursor = txn.cursor(db=self._pending)
        entries = []
        if cursor.set_range(prefix):
            for key, value in _items(cursor):
                if not key.startswith(prefix):
                    break
                entries.append((key, value))
        return entries

    def _delete_pending(self, txn: lmdb.Transaction, ttid: bytes) -> int:
        entries = self._pending_entries(txn, ttid)
        for key, _value in entries:
            txn.delete(key, db=self._pending)
        return len(entries)

    def _liveness_change(self, txn: lmdb.Transaction, partition: int, oid: bytes, stored: StoredObject) -> int:
        """+1 if the object comes to life, -1 if it dies, 0 otherwise."""
        cursor = txn.cursor(db=self._objects)
        was_live = False
        if _last_with_prefix(cursor, layout.object_prefix(partition, oid)):
            was_live = not layout.decode_object(_value(cursor)).undone_creation
        now_live = not stored.undone_creation
        return int(now_live) - int(was_live)

    def _update_partition_meta(
        self, txn: lmdb.Transaction, partition: int, tid: bytes, objects_delta: int, size_delta: int
    ) -> None:
        last_key = layout.partition_last_tid_key(partition)
        last = _get(txn, last_key, self._meta)
        if last is None or tid > last:
            txn.put(last_key, tid, db=self._meta)
        stats_key = layout.partition_stats_key(partition)
        value = _get(txn, stats_key, self._meta)
        stats = layout.decode_stats(value) if value is not None else PartitionStats()
        txn.put(stats_key, layout.encode_stats(stats.plus(objects_delta, size_delta)), db=self._meta)

    def _trim_applied(self, txn: lmdb.Transaction) -> None:
        surplus = txn.stat(self._applied)["entries"] - APPLIED_HISTORY
        if surplus <= 0:
            return
        cursor = txn.cursor(db=self._applied)
        cursor.first()
        for _ in range(surplus):
            if not cursor.delete():
                break


def _get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    """``txn.get`` typed: the environment hands out bytes, never buffers."""
    return cast("bytes | None", txn.get(key, db=db))


def _key(cursor: lmdb.Cursor) -> bytes:
    return cast(bytes, cursor.key())


def _value(cursor: lmdb.Cursor) -> bytes:
    return cast(bytes, cursor.value())


def _items(cursor: lmdb.Cursor, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) from the cursor's position on, forwards or backwards."""
    items = cursor.iterprev() if reverse else cursor.iternext()
    return cast(Iterator[tuple[bytes, bytes]], items)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with ``prefix`` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _last_with_prefix(cursor: lmdb.Cursor, prefix: bytes) -> bool:
    """Position ``cursor`` on the last key starting with ``prefix``."""
    end = _prefix_end(prefix)
    if end is not None and cursor.set_range(end):
        positioned = cursor.prev()
    else:
        positioned = cursor.last()
    return bool(positioned) and _key(cursor).startswith(prefix)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text
