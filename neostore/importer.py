"""``neoctl import``: bring an existing ZODB database into a cluster, and check it came whole.

The source is any ZODB storage a ZConfig file describes (``<filestorage>``,
``<zeoclient>``, ``<relstorage>``, ...: what ``zodbconvert`` reads); the
destination is the cluster, through :class:`~neostore.client.NeoStorage`.
Every source transaction is copied with its TID, status, user, description,
extension and records, in TID order: an interrupted import leaves the
cluster with a prefix of the source's history, which ``--incremental``
continues after its last TID (as zodbconvert does), never copying a
transaction twice.

Transactions are copied in restore batches
(:mod:`neostore.client.restore_batch`): up to ``batch_records`` records
(or ``batch_bytes`` of data) of consecutive source transactions committed
as one, each under its own TID, all or none.  A transaction larger than
that is a batch of its own.  While one batch is being committed, a reader
thread reads the next ones from the source and packs their records.

:func:`verify` walks both histories side by side and compares every
transaction's metadata and every record's data.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ZODB import POSException
from ZODB.Connection import TransactionMetaData

from neostore import errors
from neostore.client.exceptions import ClusterUnavailableError
from neostore.client.restore_batch import RestoredTransaction
from neostore.ids import ZERO_TID, p64, tid_repr, tid_time, u64

log = logging.getLogger(__name__)

#: A restore batch closes once it holds this many records...
BATCH_RECORDS = 2_000
#: ... or this many bytes of data.
BATCH_BYTES = 8 * 2**20
#: Batches read ahead of the one being committed.
READ_AHEAD = 2
#: How many times a batch is tried before the import gives up.
BATCH_ATTEMPTS = 5


def open_source(path: str) -> Any:
    """The storage a ZConfig file describes (one storage section)."""
    import ZConfig
    import ZODB.config

    try:
        with open(path) as config:
            return ZODB.config.storageFromFile(config)
    except OSError as error:
        raise errors.BadRequest(f"cannot read source configuration {path}: {error.strerror}") from None
    except ZConfig.ConfigurationError as error:
        raise errors.BadRequest(
            f"{path} is not a ZODB storage configuration (e.g. <filestorage> path Data.fs </filestorage>): "
            f"{error}") from None


@dataclasses.dataclass
class Progress:
    """How far an import (or a verification) went."""

    transactions: int = 0
    records: int = 0
    bytes: int = 0
    first_tid: builtins.bytes = ZERO_TID  # builtins: ``bytes`` is the field above here
    last_tid: builtins.bytes = ZERO_TID
    started: float = dataclasses.field(default_factory=time.monotonic)
    fraction: float = 0.0  # of the source's time span (from its first TID to its last)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Records per second so far."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def add(self, batch: list[RestoredTransaction], fraction: float) -> None:
        """``batch`` was copied; ``fraction``: of the source's history, so far."""
        if not self.transactions:
            self.first_tid = batch[0].tid
        self.transactions += len(batch)
        for restored in batch:
            self.records += len(restored.records)
            self.bytes += sum(len(data) for _, data in restored.records if data is not None)
        self.last_tid = batch[-1].tid
        self.fraction = fraction

    def eta(self) -> float | None:
        if self.fraction <= 0.0 or self.fraction >= 1.0:
            return None
        return self.seconds * (1.0 - self.fraction) / self.fraction

    def as_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions, "records": self.records, "bytes": self.bytes,
            "first_tid": tid_repr(self.first_tid) if self.transactions else None,
            "last_tid": tid_repr(self.last_tid) if self.transactions else None,
            "seconds": round(self.seconds, 3), "records_per_s": round(self.rate(), 1),
        }


class _Span:
    """Where a TID lies in the source's history, as a fraction of its time span."""

    def __init__(self, first: bytes, last: bytes) -> None:
        self._first = tid_time(first)
        self._width = max(tid_time(last) - self._first, 1e-9)

    def fraction(self, tid: bytes) -> float:
        return min(1.0, max(0.0, (tid_time(tid) - self._first) / self._width))


def _first_tid(storage: Any, start: bytes | None) -> bytes | None:
    for transaction in storage.iterator(start):
        return bytes(transaction.tid)
    return None


def import_start(source: Any, destination: Any, incremental: bool) -> bytes | None:
    """The source TID to copy from (None: nothing to copy).  A destination
    that holds transactions is refused unless ``incremental``; then its last
    TID must be one of the source's, and the copy continues after it."""
    last = destination.lastTransaction()
    if last == ZERO_TID:
        return _first_tid(source, None)
    if not incremental:
        raise errors.BadRequest(
            f"the cluster is not empty: it holds transactions up to {tid_repr(last)}; "
            "import into an empty cluster, or pass --incremental to continue after that TID")
    if _first_tid(source, last) != last:
        raise errors.BadRequest(
            f"the cluster's last transaction {tid_repr(last)} is not a transaction of the source: "
            "it is not a copy of this database, --incremental cannot continue it")
    return _first_tid(source, p64(u64(last) + 1))


def read_transactions(source: Any, start: bytes | None) -> Iterator[RestoredTransaction]:
    """The source's transactions from ``start`` (None: its first), refusing
    TIDs out of order."""
    previous = ZERO_TID
    for transaction in source.iterator(start):
        tid = bytes(transaction.tid)
        if tid <= previous:
            # zodbconvert (BaseStorage.copy) moves such a transaction to a later
            # TID; an import keeps every TID, so that --verify and
            # --incremental can rely on them.
            raise errors.BadRequest(
                f"the source's transaction {tid_repr(tid)} comes after {tid_repr(previous)}: its timestamps are "
                "out of order (an old FileStorage?); zodbconvert can copy it under new TIDs")
        previous = tid
        meta = TransactionMetaData(transaction.user, transaction.description, transaction.extension_bytes)
        records = [(bytes(record.oid), record.data) for record in transaction]
        yield RestoredTransaction(tid, transaction.status, meta, records)


def _batches(transactions: Iterator[RestoredTransaction], max_records: int,
             max_bytes: int) -> Iterator[list[RestoredTransaction]]:
    """Consecutive transactions, grouped up to ``max_records`` records or
    ``max_bytes`` of data (a larger transaction alone)."""
    batch: list[RestoredTransaction] = []
    records = size = 0
    for restored in transactions:
        count = len(restored.records)
        length = sum(len(data) for _, data in restored.records if data is not None)
        if batch and (records + count > max_records or size + length > max_bytes):
            yield batch
            batch, records, size = [], 0, 0
        batch.append(restored)
        records += count
        size += length
    if batch:
        yield batch


class _ReadAhead:
    """Batches read from the source on a thread of their own, up to
    ``depth`` ahead of the consumer; an error of the source is raised to
    the consumer when it reaches it."""

    _END = object()

    def __init__(self, batches: Iterator[list[RestoredTransaction]], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches,), name="neostore-import-read", daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[list[RestoredTransaction]]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put(error)
            return
        self._put(self._END)

    def _put(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list[RestoredTransaction]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()


class Importer:
    """Copies a source storage into the cluster that ``new_client()`` reaches."""

    def __init__(self, source: Any, new_client: Callable[[], Any], batch_records: int = BATCH_RECORDS,
                 batch_bytes: int = BATCH_BYTES, report: Callable[[Progress], None] | None = None,
                 report_every: float = 1.0) -> None:
        self._source = source
        self._new_client = new_client
        self._batch_records = max(1, batch_records)
        self._batch_bytes = max(1, batch_bytes)
        self._report = report
        self._report_every = report_every

    def run(self, incremental: bool = False) -> Progress:
        progress = Progress()
        client = self._new_client()
        try:
            start = import_start(self._source, client, incremental)
            if start is None:
                return progress
            span = _Span(start, self._source.lastTransaction())
            reported = time.monotonic()

            def done(batch: list[RestoredTransaction]) -> None:
                nonlocal reported
                progress.add(batch, span.fraction(batch[-1].tid))
                if self._report is not None and time.monotonic() - reported >= self._report_every:
                    reported = time.monotonic()
                    self._report(progress)

            restore_all(client, read_transactions(self._source, start), self._batch_records, self._batch_bytes, done)
        finally:
            client.close()
        if self._report is not None:
            self._report(progress)
        return progress


def restore_all(storage: Any, transactions: Iterator[RestoredTransaction], batch_records: int = BATCH_RECORDS,
                batch_bytes: int = BATCH_BYTES, done: Callable[[list[RestoredTransaction]], None] | None = None,
                attempts: int = BATCH_ATTEMPTS) -> None:
    """Commit ``transactions`` into ``storage`` (a NeoStorage) in restore
    batches, read ahead on a thread of their own; ``done(batch)`` after
    each batch committed.  A batch that failed in a way that may pass (the
    master leader lost, the cluster unavailable for a while) is tried
    again, up to ``attempts`` times in all: a batch commits whole or not
    at all, and one that did commit after all is found in the cluster
    (:func:`_committed`) instead of being copied twice."""
    compress = getattr(storage, "compress", True)

    def packed(batch: list[RestoredTransaction]) -> list[RestoredTransaction]:
        for restored in batch:
            restored.stores(compress)
        return batch

    batches = _ReadAhead(
        (packed(batch) for batch in _batches(transactions, max(1, batch_records), max(1, batch_bytes))), READ_AHEAD)
    try:
        for batch in batches:
            for attempt in range(1, attempts + 1):
                try:
                    storage.restore_batch(batch)
                    break
                except (POSException.ConflictError, ClusterUnavailableError) as error:
                    # ConflictError: TransactionNotCommittedError (its TTID
                    # was lost with a leader) or a lock lost.
                    if _committed(storage, batch[-1].tid):
                        break
                    if attempt == attempts:
                        raise
                    log.warning("restore batch %s..%s failed (%s): trying again (%d of %d)",
                                tid_repr(batch[0].tid), tid_repr(batch[-1].tid), error, attempt + 1, attempts)
            if done is not None:
                done(batch)
    finally:
        batches.close()


def _committed(storage: Any, tid: bytes) -> bool:
    """Whether the cluster holds transaction ``tid`` (a batch's last: its
    own, committed with the rest or not at all)."""
    storage.sync()
    return any(True for _ in storage.iterator(tid, tid))


@dataclasses.dataclass
class Verification:
    """What :func:`verify` compared and found."""

    transactions: int = 0
    records: int = 0
    differences: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"transactions": self.transactions, "records": self.records,
                "differences": len(self.differences), "first_differences": self.differences[:20],
                "seconds": round(self.seconds, 3)}


def _metadata(transaction: Any) -> tuple[Any, ...]:
    return (transaction.status, transaction.user, transaction.description, transaction.extension)


def verify(source: Any, destination: Any, report: Callable[[Verification], None] | None = None,
           limit: int = 100) -> Verification:
    """Compare the whole histories: TIDs, metadata, every record's oid and
    data (records of a transaction compared by oid).  Stops listing
    differences after ``limit``."""
    result = Verification()
    started = time.monotonic()
    reported = started
    theirs = iter(destination.iterator())
    for mine in source.iterator():
        other = next(theirs, None)
        if other is None:
            result.differences.append(f"transaction {tid_repr(mine.tid)} and later are missing from the cluster")
            break
        if other.tid != mine.tid:
            result.differences.append(
                f"transaction {tid_repr(mine.tid)} of the source faces {tid_repr(other.tid)} in the cluster")
            break
        result.transactions += 1
        if _metadata(mine) != _metadata(other):
            result.differences.append(f"transaction {tid_repr(mine.tid)}: metadata differ")
        want = {bytes(record.oid): record.data for record in mine}
        got = {bytes(record.oid): record.data for record in other}
        result.records += len(want)
        for oid in sorted(set(want) | set(got)):
            if oid not in want or oid not in got or want[oid] != got[oid]:
                what = "missing" if oid not in got else "unexpected" if oid not in want else "different data"
                result.differences.append(f"transaction {tid_repr(mine.tid)}: object {oid.hex()}: {what}")
        if len(result.differences) >= limit:
            break
        if report is not None and time.monotonic() - reported >= 1.0:
            reported = time.monotonic()
            result.seconds = reported - started
            report(result)
    else:
        extra = next(theirs, None)
        if extra is not None:
            result.differences.append(f"the cluster holds transactions the source does not, from {tid_repr(extra.tid)}")
    result.seconds = time.monotonic() - started
    return result


def progress_line(progress: Progress) -> str:
    eta = progress.eta()
    return (f"{progress.transactions:,} transactions, {progress.records:,} records "
            f"({progress.bytes / 1e6:.1f} MB) in {progress.seconds:.0f}s: {progress.rate():,.0f} records/s, "
            f"{100 * progress.fraction:.0f}% of the source's history"
            + (f", about {eta:.0f}s left" if eta is not None else ""))


