"""``NeoStorage``: the ZODB storage that talks to a neostore cluster.

This is the facade ZODB sees (through its ``MVCCAdapter``, as with ZEO and
NEO).  It declares the interfaces it implements, checks the preconditions
ZODB expects, maps neostore errors to ZODB exceptions, and forwards:

* reads to :mod:`neostore.client.cluster` (routing to a readable replica)
  through the object cache (:mod:`neostore.client.cache`);
* two-phase commit to :mod:`neostore.client.commit`, undo to
  :mod:`neostore.client.undo`;
* the transaction log to :mod:`neostore.client.history`;
* invalidations from the master's stream to ZODB through
  :mod:`neostore.client.invalidations`;
* with ``cache_path``, the cache kept on disk between runs:
  :mod:`neostore.client.cache_file`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import zope.interface
from ZODB import POSException, interfaces
from ZODB.ConflictResolution import ConflictResolvingStorage

from neostore import errors, rpc
from neostore.client import cache_file, commit, history, prefetch, restore_batch, undo
from neostore.client.cache import ObjectCache, ReadAheadStats
from neostore.client.cluster import MASTER_RETRY_SECONDS, ClusterConnection
from neostore.client.exceptions import ClusterUnavailableError, to_zodb_error
from neostore.client.invalidations import InvalidationDispatcher, catch_up
from neostore.client.record_iteration import RecordLister
from neostore.client.restore_batch import RestoredTransaction
from neostore.ids import MAX_TID, ZERO_TID, oid_repr, partition_of, tid_repr
from neostore.protocol import master_pb2, storage_pb2
from neostore.records import Record, references

log = logging.getLogger(__name__)

#: oids asked from the master at first, as NEO does; each further request
#: asks for twice as many, up to MAX_OID_BATCH (the master's own cap), so
#: that a transaction creating thousands of objects needs a few NewOids
#: (each one a Raft entry) rather than one per hundred objects.  Unused
#: oids are simply never used (64 bits leave room).
OID_BATCH = 100
MAX_OID_BATCH = 1000
DEFAULT_CACHE_SIZE = 20 * 1024 * 1024
#: Bytes of referenced objects a cold load may bring along (ZConfig
#: read-ahead; 0: none).  See neostore.storage_node.read_ahead.
DEFAULT_READ_AHEAD = 64 * 1024
#: An object read for the first time whose references are missing from the
#: cache brings at least this many, at most that many of them at once.
FOLLOW_AT_LEAST = 2
FOLLOW_AT_MOST = 1000
#: ... and then the references of what came, for this many rounds in all.
FOLLOW_ROUNDS = 2
#: An object read-ahead brought, read for the first time, asks for the
#: references of at most this many of its siblings (itself included).
FOLLOW_MEMBERS = 64
#: Seconds a call keeps trying an unreachable cluster (ZConfig wait-timeout).
DEFAULT_WAIT_TIMEOUT = MASTER_RETRY_SECONDS
SYNC_TIMEOUT = 60.0


@zope.interface.implementer(
    interfaces.IStorage,
    interfaces.IMultiCommitStorage,
    interfaces.IStorageIteration,
    interfaces.IStorageUndoable,
    interfaces.IStorageRestoreable,
    interfaces.IExternalGC,
    interfaces.IStorageCurrentRecordIteration,
    interfaces.IPrefetchStorage,
)
class NeoStorage(ConflictResolvingStorage):
    """A ZODB storage backed by a neostore cluster.

    ``master_nodes``: the masters' ``host:port`` addresses (a list, or one
    string separated by spaces or commas); ``name``: the cluster name, which
    every node checks; ``cache_path``: a file where the object cache is
    kept between runs (loaded when opening, written when closing).
    """

    def __init__(
        self,
        master_nodes: str | Iterable[str],
        name: str,
        read_only: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
        compress: bool = True,
        tls: rpc.TlsConfig | None = None,
        connect_timeout: float = 30.0,
        max_message_bytes: int = rpc.DEFAULT_MAX_MESSAGE_BYTES,
        server_sync: bool = False,
        wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
        cache_path: str | None = None,
        read_ahead: int = DEFAULT_READ_AHEAD,
    ) -> None:
        if isinstance(master_nodes, str):
            master_nodes = master_nodes.replace(",", " ").split()
        self._masters = list(master_nodes)
        self._name = name
        self._read_only = read_only
        self._server_sync = server_sync
        self._synced = False  # a Sync answered: the first transaction asks, whatever server_sync
        self._compress = compress
        self._client_id = uuid.uuid4().hex
        self._cache = ObjectCache(cache_size)
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be 0 or more bytes, not {read_ahead}")
        # Never more than a quarter of the cache: what comes along must not push out what is used.
        self._read_ahead = min(read_ahead, cache_size // 4)
        self.load_calls = 0  # LoadBefore and LoadBeforeMany calls of loads (benchmarks count round trips)
        self._dispatcher = InvalidationDispatcher(self._cache)
        self._config = rpc.RpcConfig(cluster_name=name, tls=tls, max_message_bytes=max_message_bytes)
        self._cluster = ClusterConnection(
            self._config, self._masters, self._client_id, self._dispatcher, connect_timeout, wait_timeout)
        self._cluster.on_stopping = self._release_spare
        self._transactions: dict[Any, commit.TransactionContext] = {}
        self._transactions_lock = threading.Lock()
        self._oid_lock = threading.Lock()
        self._oids: list[bytes] = []
        self._oid_batch = OID_BATCH
        self._spare = commit.SpareTtid()
        self._at_once = commit.AtOnceVotes()
        self._records = RecordLister(self._cluster, self._dispatcher.last_transaction)
        self._closed = False
        self._cache_path = cache_path or None
        self._cluster_id = ""
        try:
            self._cluster.connect(resume=self._load_cache_file)
        except errors.NeoError as error:
            self._cluster.close()
            raise to_zodb_error(error) from None

    def __repr__(self) -> str:
        return f"<NeoStorage {self._name!r} masters={','.join(self._masters)}>"

    # -- IStorage: identity --------------------------------------------------

    def getName(self) -> str:
        return self._name

    def sortKey(self) -> str:
        return f"neostore:{self._name}"

    def isReadOnly(self) -> bool:
        return self._read_only

    def supportsUndo(self) -> bool:
        return True

    def registerDB(self, db: Any) -> None:
        super().registerDB(db)
        self._dispatcher.register_db(db)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cluster.close()
        # ZODB's DB drops its connections' bookkeeping right after this
        # returns: no invalidation may reach it from the stream afterwards.
        self._dispatcher.detach_db()
        if self._cache_path is not None:
            self._save_cache_file(self._cache_path)

    # -- the cache file (cache-path) -------------------------------------------

    def _load_cache_file(self, info: Any) -> bytes | None:
        """Before the stream starts: the cache from ``cache_path``, if it is
        this cluster's and not newer than it; the TID the stream must go on
        from (see :mod:`neostore.client.cache_file`)."""
        self._cluster_id = info.cluster_id
        if self._cache_path is None:
            return None
        saved = cache_file.load(self._cache_path)
        if saved is None:
            return None
        path = self._cache_path
        if (saved.cluster_name, saved.cluster_id) != (self._name, info.cluster_id):
            log.warning("client cache file %s belongs to cluster %r (id %s), not to this one (%r, id %s): "
                        "not used", path, saved.cluster_name, saved.cluster_id or "none", self._name,
                        info.cluster_id or "none")
            return None
        if saved.last_tid > info.last_tid:
            log.warning("client cache file %s is newer (%s) than the cluster's last transaction (%s), as if the "
                        "cluster had been restored from an older copy: not used", path,
                        tid_repr(saved.last_tid), tid_repr(info.last_tid))
            return None
        for entry in saved.entries:
            self._cache.store(entry.oid, entry.data, entry.start, entry.end)
        self._dispatcher.resume(saved.last_tid)
        log.info("client cache file %s: %d revisions, current as of %s", path, len(saved.entries),
                 tid_repr(saved.last_tid))
        return saved.last_tid

    def _save_cache_file(self, path: str) -> None:
        """Keep the cache in ``path`` for the next run; a failure is logged
        (the next run then starts with the previous file, or cold)."""
        def snapshot(last_tid: bytes) -> tuple[bytes, list[cache_file.CacheEntry]]:
            return last_tid, [cache_file.CacheEntry(*entry) for entry in self._cache.snapshot()]

        last_tid, entries = self._dispatcher.consistent(snapshot)
        if last_tid == ZERO_TID:
            return  # the stream never started: nothing is known to be current
        try:
            size = cache_file.save(path, self._name, self._cluster_id, last_tid, entries)
        except OSError as error:
            log.warning("client cache file %s not written: %s", path, error)
            return
        log.info("client cache file %s: %d revisions written (%d bytes), current as of %s",
                 path, len(entries), size, tid_repr(last_tid))

    def new_client(self, **options: Any) -> NeoStorage:
        """Another, independent client of the same cluster."""
        settings: dict[str, Any] = dict(
            read_only=self._read_only, compress=self._compress, tls=self._config.tls,
            max_message_bytes=self._config.max_message_bytes)
        settings.update(options)
        return NeoStorage(self._masters, self._name, **settings)

    # -- IStorage: sizes ---------------------------------------------------------

    def _stats(self) -> tuple[int, int]:
        table = self._cluster.table
        count = size = 0
        for partition in range(table.num_partitions):
            reply = self._call(lambda partition=partition: self._cluster.read_call(  # type: ignore[misc]
                partition, "GetStats", storage_pb2.StatsRequest(partitions=[partition])))
            count += reply.object_count
            size += reply.size
        return count, size

    def __len__(self) -> int:
        return self._stats()[0]

    def getSize(self) -> int:
        return self._stats()[1]

    # -- IStorage: reads -----------------------------------------------------------

    def lastTransaction(self) -> bytes:
        return self._dispatcher.last_transaction()

    def sync(self, force: bool = True) -> None:
        """ZODB calls this as a transaction begins.  With ``server_sync``
        (ZEO's option, with ZEO's meaning): see every transaction committed
        before now, in one round trip to the master, which answers what this
        client missed (handed to ZODB at once) and a spare TTID for the
        transaction.  Without (the default, as in ZEO), nothing is sent: the
        invalidation stream keeps the client current (the master sends a
        client at most one message every few tens of milliseconds, each
        with every commit since the last), its own commits are always seen
        (a Finish answer brings every transaction up to its own, and the
        next spare TTID).  It asks the master as with ``server_sync`` for
        the client's first transaction (which so sees every commit
        acknowledged before it began) and after a vote conflict with a
        transaction not seen yet (so that the retry sees it)."""
        if not self._server_sync and self._synced and not self._dispatcher.behind():
            return
        # With server_sync; for the first transaction (the stream may have
        # started on a follower, behind the leader); after a conflict with a
        # transaction this client has not seen yet (its retry would conflict
        # the same way): ask the leader now rather than wait for the stream.
        request = master_pb2.SyncRequest(
            client_id=self._client_id, last_tid=self._dispatcher.last_transaction(),
            table_version=self._cluster.table.version, release_spare=self._spare.drop() or b"")
        reply = self._call(lambda: self._cluster.master_call("Sync", request))
        if reply.spare_ttid and not self._read_only:
            self._spare.put(reply.spare_ttid)
        catch_up(self._cluster, self._dispatcher, reply.catch_up)
        if reply.last_tid and not self._dispatcher.wait_for(reply.last_tid, SYNC_TIMEOUT):
            raise ClusterUnavailableError(
                f"invalidations up to {tid_repr(reply.last_tid)} did not arrive in {SYNC_TIMEOUT:.0f}s")
        self._synced = True

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        first_use: list[tuple[int, int]] = []
        cached = self._cache.load_before(oid, tid, self._dispatcher.last_transaction(), first_use)
        if cached is not None:
            if first_use and self._read_ahead:
                # Brought with its siblings, which a walk reads next: ask for what they refer to at once.
                cohort, position = first_use[0]
                siblings: list[tuple[tuple[bytes, bytes] | None, bytes]] = [
                    *self._cache.cohort_members(cohort, position, FOLLOW_MEMBERS)]
                self._follow_references(siblings or [(None, cached[0])], tid)  # its cohort forgotten: itself
            return cached
        loaded = self._load_before(oid, tid)
        if loaded is not None and self._read_ahead:
            # It, and those of its children that came along with it: a walk may never read them (a
            # BTree's inner nodes, when it goes along the buckets), but what they refer to is read next.
            members: list[tuple[tuple[bytes, bytes] | None, bytes]] = [(None, loaded[0])]
            members += self._cache.unread_ahead(references(loaded[0]), tid, self._dispatcher.last_transaction())
            self._follow_references(members, tid)
        return loaded

    def _load_before(self, oid: bytes, tid: bytes) -> tuple[bytes, bytes, bytes | None] | None:
        """One LoadBefore, with reference read-ahead when on; its answers cached."""
        partition = partition_of(oid, self._cluster.table.num_partitions)
        request = storage_pb2.LoadBeforeRequest(oid=oid, before_tid=tid, read_ahead_bytes=self._read_ahead)
        self._cache.begin_load(oid)
        token = self._cache.begin_read_ahead() if self._read_ahead else 0
        data = start = end = None
        brought: list[tuple[bytes, bytes, bytes, bytes | None]] = []
        try:
            self.load_calls += 1
            reply = self._call(lambda: self._cluster.read_call(partition, "LoadBefore", request), oid)
            brought = _brought_along(reply)
            if reply.status != storage_pb2.LoadReply.FOUND:
                return None
            data = Record.from_proto(reply.record).unpack(f"object {oid_repr(oid)}")
            start, end = reply.serial, reply.next_serial or None
            return data, start, end
        finally:
            self._cache.end_load(oid, data, start, end)
            if token:
                self._cache.end_read_ahead(token, brought)

    def _follow_references(self, members: Sequence[tuple[tuple[bytes, bytes] | None, bytes]], tid: bytes) -> None:
        """The second half of read-ahead, for an object read for the first
        time (loaded, or brought along and now read, with the siblings
        brought with it): the objects they refer to that the cache lacks
        (their nodes are others, or the budget ran out) come in one
        LoadBeforeMany per node; then what those refer to, for
        ``FOLLOW_ROUNDS`` rounds in all, so that reading them costs no round
        trip each.  ``members``: ``(cache key or None, data)``; a member whose
        references all came is marked, and asks nothing when read.  Best
        effort."""
        for _ in range(FOLLOW_ROUNDS):
            wanted: dict[bytes, None] = {}
            included: list[tuple[tuple[bytes, bytes] | None, list[bytes]]] = []
            for key, data in members:
                refs = references(data)
                if included and len(wanted) + len(refs) > FOLLOW_AT_MOST:
                    break  # the rest when one of them is read
                wanted.update(dict.fromkeys(refs))
                included.append((key, refs))
            last_seen = self._dispatcher.last_transaction
            missing = self._cache.missing(wanted, tid, last_seen())
            records: list[bytes] = []
            if len(missing) >= FOLLOW_AT_LEAST:
                try:
                    records, calls = prefetch.prefetch(self._cluster, self._cache, last_seen, missing, tid,
                                                       self._read_ahead, cohort=self._cache.new_cohort())
                except errors.NeoError as error:  # what did not come is loaded when read
                    log.debug("read-ahead of %d objects failed: %s", len(missing), error)
                    return
                self.load_calls += calls
                missing = self._cache.missing(missing, tid, last_seen())
            lacking = set(missing)
            self._cache.mark_followed(key for key, refs in included
                                      if key is not None and not lacking.intersection(refs))
            if not records:
                return
            members = [(None, data) for data in records]

    def read_ahead_stats(self) -> ReadAheadStats:
        """What reference read-ahead brought into this client's cache, and
        how much of it was read."""
        return self._cache.read_ahead_stats()

    def prefetch(self, oids: Iterable[bytes], tid: bytes) -> None:
        """IPrefetchStorage (``Connection.prefetch``): bring the revisions
        of ``oids`` current just before ``tid`` into the cache, one call per
        storage node for them all (see ``neostore.client.prefetch``), so
        that reading them costs no round trip each.  Best effort."""
        prefetch.prefetch(self._cluster, self._cache, self._dispatcher.last_transaction, oids, tid)

    def load(self, oid: bytes, version: str = "") -> tuple[bytes, bytes]:
        """The current revision (not used by ZODB itself, kept for tools)."""
        result = self.loadBefore(oid, MAX_TID)
        if result is None:
            raise POSException.POSKeyError(oid)
        return result[0], result[1]

    def getTid(self, oid: bytes) -> bytes:
        """The TID of the object's current revision (POSKeyError if none)."""
        return self.load(oid)[1]

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        cached = self._cache.load_serial(oid, serial)
        if cached is not None:
            return cached
        partition = partition_of(oid, self._cluster.table.num_partitions)
        request = storage_pb2.LoadSerialRequest(oid=oid, serial=serial)
        reply = self._call(lambda: self._cluster.read_call(partition, "LoadSerial", request), oid)
        if reply.status != storage_pb2.LoadReply.FOUND:
            raise POSException.POSKeyError(oid)
        return Record.from_proto(reply.record).unpack(f"object {oid_repr(oid)}@{tid_repr(serial)}")

    def history(self, oid: bytes, size: int | None = 1) -> list[dict[str, Any]]:
        return self._call(lambda: history.history(self._cluster, oid, size), oid)

    # -- IStorage: writes ---------------------------------------------------------------

    def new_oid(self) -> bytes:
        self._check_writable()
        with self._oid_lock:
            if not self._oids:
                reply = self._call(lambda: self._cluster.master_call(
                    "NewOids", master_pb2.NewOidsRequest(count=self._oid_batch)))
                self._oid_batch = min(self._oid_batch * 2, MAX_OID_BATCH)
                first = int.from_bytes(reply.first_oid, "big")
                self._oids = [(first + i).to_bytes(8, "big") for i in range(reply.count)]
                self._oids.reverse()
            return self._oids.pop()

    def tpc_begin(self, transaction: Any, tid: bytes | None = None, status: str = " ") -> None:
        """Begin ``transaction``; with ``tid`` (IStorageRestoreable, an
        import), it commits under that TID, which must be above the last
        one, and ``status`` "p" marks it packed as in the source."""
        self._check_writable()
        if status not in (" ", "p"):
            raise POSException.StorageError(
                f"transaction status {status!r} cannot be stored: neostore keeps ' ' (normal) or 'p' (packed)")
        with self._transactions_lock:
            if transaction in self._transactions:
                raise POSException.StorageTransactionError(
                    "tpc_begin called twice for the same transaction")
        context = self._call(lambda: commit.begin(
            self._cluster, self._client_id, transaction, tid, self._spare, packed=status == "p"))
        with self._transactions_lock:
            self._transactions[transaction] = context

    def _context(self, transaction: Any) -> commit.TransactionContext:
        with self._transactions_lock:
            context = self._transactions.get(transaction)
        if context is None:
            raise POSException.StorageTransactionError(self, transaction)
        return context

    def store(self, oid: bytes, serial: bytes | None, data: bytes, version: str, transaction: Any) -> None:
        self._check_writable()
        if version:
            raise POSException.Unsupported("Versions aren't supported")
        context = self._context(transaction)
        record = Record.pack(data, self._compress)
        write = commit.ObjectWrite(oid, serial or b"\0" * 8, data, record)
        self._call(lambda: commit.store(self._cluster, context, write), oid)

    def restore(self, oid: bytes, serial: bytes, data: bytes | None, version: str, prev_txn: bytes | None,
                transaction: Any) -> None:
        """IStorageRestoreable: write ``data`` as ``oid``'s revision in
        ``transaction`` as given, without conflict check (an import copies
        history that was consistent in its source).  ``data`` None records
        that the object does not exist as of this transaction (an undone
        creation, or a deleteObject).  ``serial`` is the source's TID of the
        record: the revision gets the TID the transaction commits under (the
        one given to tpc_begin).  ``prev_txn`` (the revision a back-pointer
        of the source pointed to) is not used: the data is written whole."""
        self._check_writable()
        if version:
            raise POSException.Unsupported("Versions aren't supported")
        context = self._context(transaction)
        if context.requested_tid is None:
            # Without conflict check, only a copy of a history may write
            # this way, under the TIDs it had.
            raise POSException.StorageTransactionError(
                "restore() needs a transaction begun with its TID: tpc_begin(transaction, tid, status)")
        if data is None:
            write = commit.ObjectWrite(oid, ZERO_TID, undone_creation=True, restore=True)
        else:
            write = commit.ObjectWrite(oid, ZERO_TID, data, Record.pack(data, self._compress), restore=True)
        self._call(lambda: commit.store(self._cluster, context, write), oid)

    def deleteObject(self, oid: bytes, oldserial: bytes, transaction: Any) -> None:
        """IExternalGC (zc.zodbdgc): delete ``oid`` in ``transaction`` if its
        current revision is ``oldserial`` (ConflictError at vote otherwise).
        From that transaction on, loading it raises POSKeyError; its earlier
        revisions stay readable (loadBefore) until a pack removes them."""
        self._check_writable()
        context = self._context(transaction)
        write = commit.ObjectWrite(oid, oldserial, undone_creation=True)
        self._call(lambda: commit.store(self._cluster, context, write), oid)

    def copyTransactionsFrom(self, other: Any, verbose: bool = False) -> None:
        """Copy every transaction of storage ``other`` (what ``other.iterator()``
        lists: zodbconvert's --incremental gives an iterator from where to
        continue), in TID order, with its TID, metadata and records, in
        restore batches (as ``neoctl import``); the TIDs must be in order
        (unlike ZODB's ``BaseStorage.copy``, which renumbers those that are
        not: neostore keeps every TID)."""
        from neostore import importer

        try:
            importer.restore_all(self, importer.read_transactions(other, None))
        except errors.NeoError as error:
            raise to_zodb_error(error) from None

    @property
    def compress(self) -> bool:
        """Whether this client compresses the records it writes."""
        return self._compress

    def restore_batch(self, transactions: Sequence[RestoredTransaction]) -> bytes:
        """Commit the source transactions ``transactions`` (TID order, all
        above the last TID) as one: each under its TID, with its metadata
        and records, all or none (:mod:`neostore.client.restore_batch`:
        what ``neoctl import`` uses).  Returns the last TID."""
        self._check_writable()
        return restore_batch.restore_batch(
            self._cluster, self._dispatcher, self._client_id, transactions, self._compress)

    def checkCurrentSerialInTransaction(self, oid: bytes, serial: bytes, transaction: Any) -> None:
        context = self._context(transaction)
        write = commit.ObjectWrite(oid, serial, check_only=True)
        self._call(lambda: commit.store(self._cluster, context, write), oid)

    def undo(self, transaction_id: bytes, transaction: Any) -> tuple[None, list[bytes]]:
        self._check_writable()
        context = self._context(transaction)
        oids = self._call(lambda: undo.undo(
            self._cluster, context, transaction_id, self.tryToResolveConflict))
        return None, oids

    def tpc_vote(self, transaction: Any) -> list[bytes]:
        context = self._context(transaction)
        try:
            return self._call(lambda: commit.vote(
                self._cluster, context, self.tryToResolveConflict, self._at_once))
        finally:
            if context.newest_conflict:
                self._dispatcher.learn_committed(context.newest_conflict)

    def tpc_finish(self, transaction: Any, func: Callable[[bytes], Any] = lambda tid: None) -> bytes:
        context = self._context(transaction)
        try:
            return self._call(lambda: commit.finish(
                self._cluster, self._dispatcher, self._client_id, context, func,
                None if self._server_sync else self._spare))
        finally:
            with self._transactions_lock:
                self._transactions.pop(transaction, None)

    def tpc_abort(self, transaction: Any) -> None:
        with self._transactions_lock:
            context = self._transactions.pop(transaction, None)
        if context is None:
            return
        self._call(lambda: commit.abort(self._cluster, self._client_id, context))

    def _release_spare(self) -> None:
        """The cluster became STOPPING: hand the spare TTID back now (until
        then, a truncation would wait for it), in the background."""
        ttid = self._spare.drop()
        if ttid is None:
            return

        def release() -> None:
            try:
                self._cluster.master_call("Abort", master_pb2.AbortRequest(client_id=self._client_id, ttid=ttid))
            except errors.NeoError:
                pass  # the master forgets it when this client's session ends

        threading.Thread(target=release, name="neostore-release-spare", daemon=True).start()

    def tpc_transaction(self) -> None:
        return None

    def pack(self, t: float, referencesf: Callable[..., Any], gc: bool = True) -> None:
        raise POSException.StorageError("neostore does not support pack yet")

    # -- IStorageIteration, IStorageUndoable ------------------------------------------------

    def iterator(self, start: bytes | None = None, stop: bytes | None = None) -> Iterator[Any]:
        return self._call(lambda: history.TransactionIterator(self._cluster, start, stop))

    def record_iternext(
        self, next: bytes | None = None,  # noqa: A002 - ZODB's name
    ) -> tuple[bytes, bytes, bytes, bytes | None]:
        """Every live object's current record (zodbupdate): see
        :mod:`neostore.client.record_iteration`."""
        return self._call(lambda: self._records.next(next))

    def undoLog(self, first: int = 0, last: int = -20,
                filter: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        return self._call(lambda: history.undo_log(self._cluster, first, last, filter))

    def undoInfo(self, first: int = 0, last: int = -20,
                 specification: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        accept = None
        if specification:
            def accept(description: dict[str, Any]) -> bool:
                return all(description.get(k) == v for k, v in specification.items())
        return self.undoLog(first, last, accept)

    # -- helpers -----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._read_only:
            raise POSException.ReadOnlyError()

    def _call(self, fn: Callable[[], Any], oid: bytes | None = None) -> Any:
        try:
            return fn()
        except errors.NeoError as error:
            raise to_zodb_error(error, oid) from None


def _brought_along(reply: storage_pb2.LoadReply) -> list[tuple[bytes, bytes, bytes, bytes | None]]:
    """``(oid, data, start, end)`` of each revision a LoadBefore brought along
    (reference read-ahead); one that does not check out is left out (its own
    load, if ever made, reports it)."""
    brought = []
    for extra in reply.read_ahead:
        answer = extra.reply
        if len(extra.oid) != 8 or len(answer.serial) != 8 or answer.status != storage_pb2.LoadReply.FOUND:
            continue
        try:
            data = Record.from_proto(answer.record).unpack(f"object {oid_repr(extra.oid)}")
        except errors.NeoError as error:
            log.warning("read-ahead of object %s: %s", oid_repr(extra.oid), error)
            continue
        brought.append((extra.oid, data, answer.serial, answer.next_serial or None))
    return brought
