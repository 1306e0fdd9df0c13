"""Reading the transaction log: iterator, undoLog/undoInfo and history.

A transaction's metadata lives on the cells of ``partition(tid)``; each
readable storage node answers for the partitions it is asked about, in TID
order, a page at a time.  The client asks one readable replica per
partition (grouping partitions by node) and merges the pages by TID.
"""

from __future__ import annotations

import functools
import heapq
import pickle
from collections.abc import Callable, Iterator
from typing import Any

from ZODB.BaseStorage import DataRecord, TransactionRecord
from ZODB.POSException import POSKeyError

from neostore import errors, rpc
from neostore.client import prefetch
from neostore.client.cluster import ClusterConnection
from neostore.ids import MAX_TID, ZERO_TID, p64, partition_of, tid_time, u64
from neostore.protocol import common_pb2, storage_pb2
from neostore.records import Record

RECORDS_TIMEOUT = 30.0

PAGE_SIZE = 256


def transactions(
    cluster: ClusterConnection, min_tid: bytes | None = None, max_tid: bytes | None = None,
    descending: bool = False,
) -> Iterator[common_pb2.TransactionInfo]:
    """Every committed transaction in [min_tid, max_tid], merged by TID."""
    table = cluster.table
    by_node: dict[int, list[int]] = {}
    for partition in range(table.num_partitions):
        nodes = table.readable_nodes(partition)
        if not nodes:
            raise errors.Unavailable(f"partition {partition} has no readable replica")
        # Spread the partitions over their replicas.
        by_node.setdefault(nodes[partition % len(nodes)], []).append(partition)
    pages = [
        _paged(cluster, node_id, partitions, min_tid or ZERO_TID, max_tid or MAX_TID, descending)
        for node_id, partitions in by_node.items()
    ]
    return iter(heapq.merge(*pages, key=lambda t: t.tid, reverse=descending))


def _paged(
    cluster: ClusterConnection, node_id: int, partitions: list[int],
    low: bytes, high: bytes, descending: bool,
) -> Iterator[common_pb2.TransactionInfo]:
    """The transactions of ``partitions`` in [low, high] from ``node_id``
    while it serves them.  Once it fails (it went down, or its cell went
    OUT_OF_DATE since the table was read), the rest comes from any readable
    replica of each partition, failing over as reads do."""

    def from_node(request: storage_pb2.ListTransactionsRequest) -> storage_pb2.ListTransactionsReply:
        stub, peer = cluster.storage_stub(node_id)
        return rpc.call(stub.ListTransactions, request, timeout=60, peer=peer)

    position = [low, high]  # what is left to read, narrowed as transactions are yielded
    try:
        for info in _pages(cluster, from_node, partitions, low, high, descending):
            yield info
            _narrow(position, info.tid, descending)
    except (errors.Unavailable, errors.NotOwner):
        pass
    else:
        return
    low, high = position
    if low > high:
        return
    yield from heapq.merge(*(
        _pages(cluster, functools.partial(cluster.read_call, partition, "ListTransactions"),
               [partition], low, high, descending)
        for partition in partitions
    ), key=lambda t: t.tid, reverse=descending)


def _pages(
    cluster: ClusterConnection, ask: Callable[[storage_pb2.ListTransactionsRequest], Any],
    partitions: list[int], low: bytes, high: bytes, descending: bool,
) -> Iterator[common_pb2.TransactionInfo]:
    """The transactions of ``partitions`` in [low, high], a page per
    ``ask(request)``."""
    position = [low, high]
    while position[0] <= position[1]:
        request = cluster.name_unfinished(storage_pb2.ListTransactionsRequest(
            partitions=partitions, min_tid=position[0], max_tid=position[1], limit=PAGE_SIZE,
            descending=descending))
        reply = ask(request)
        yield from reply.transactions
        if len(reply.transactions) < PAGE_SIZE:
            return
        _narrow(position, reply.transactions[-1].tid, descending)


def _narrow(position: list[bytes], tid: bytes, descending: bool) -> None:
    """Leave out of [low, high] (``position``) ``tid`` and what came before it."""
    if descending:
        if tid == ZERO_TID:
            position[:] = [MAX_TID, ZERO_TID]  # empty
        else:
            position[1] = p64(u64(tid) - 1)
    elif tid == MAX_TID:
        position[:] = [MAX_TID, ZERO_TID]
    else:
        position[0] = p64(u64(tid) + 1)


def transaction_info(cluster: ClusterConnection, tid: bytes) -> common_pb2.TransactionInfo | None:
    partition = partition_of(tid, cluster.table.num_partitions)
    reply = cluster.read_call(partition, "ListTransactions", storage_pb2.ListTransactionsRequest(
        partitions=[partition], min_tid=tid, max_tid=tid, limit=1))
    return reply.transactions[0] if reply.transactions else None


def extension_of(info: common_pb2.TransactionInfo) -> dict[str, Any]:
    if not info.extension:
        return {}
    try:
        value = pickle.loads(info.extension)
    except Exception:  # noqa: BLE001 - a foreign extension is not fatal
        return {}
    return value if isinstance(value, dict) else {}


def undo_description(info: common_pb2.TransactionInfo) -> dict[str, Any]:
    """The mapping undoLog/undoInfo return for one transaction."""
    description: dict[str, Any] = {
        "id": info.tid,
        "time": tid_time(info.tid),
        "user_name": info.user,
        "description": info.description,
        "size": len(info.oids),
    }
    description.update(extension_of(info))
    return description


def undo_log(
    cluster: ClusterConnection, first: int, last: int, accept: Callable[[dict[str, Any]], bool] | None
) -> list[dict[str, Any]]:
    if last < 0:
        last = first - last
    found: list[dict[str, Any]] = []
    index = 0
    for info in transactions(cluster, descending=True):
        if index >= last:
            break
        if info.packed:
            break
        description = undo_description(info)
        if accept is not None and not accept(description):
            continue
        if index >= first:
            found.append(description)
        index += 1
    return found


class NeoTransactionRecord(TransactionRecord):
    """A transaction as ``iterator()`` yields it; iterating gives its records."""

    def __init__(self, cluster: ClusterConnection, info: common_pb2.TransactionInfo) -> None:
        super().__init__(info.tid, "p" if info.packed else " ", info.user, info.description,
                         info.extension)
        self._cluster = cluster
        self._oids = list(info.oids)

    def __iter__(self) -> Iterator[DataRecord]:
        answered = _records_at(self._cluster, self._oids, self.tid) if len(self._oids) > 1 else {}
        for oid in self._oids:
            answer = answered.get(oid)
            if answer is not None:
                yield _data_record(oid, self.tid, answer)
                continue
            partition = partition_of(oid, self._cluster.table.num_partitions)
            try:
                reply = self._cluster.read_call(partition, "LoadSerial", storage_pb2.LoadSerialRequest(
                    oid=oid, serial=self.tid, table_version=self._cluster.table.version))
            except errors.NotFound:
                yield DataRecord(oid, self.tid, None, None)
                continue
            yield _data_record(oid, self.tid, reply)


def _data_record(oid: bytes, tid: bytes, reply: storage_pb2.LoadReply) -> DataRecord:
    """The record of ``oid`` in transaction ``tid`` from a load's answer."""
    if reply.status != storage_pb2.LoadReply.FOUND:
        return DataRecord(oid, tid, None, None)  # a deletion (undone creation)
    data = Record.from_proto(reply.record).unpack(f"object {oid.hex()}@{tid.hex()}")
    return DataRecord(oid, tid, data, reply.data_serial or None)


def _records_at(cluster: ClusterConnection, oids: list[bytes], tid: bytes) -> dict[bytes, storage_pb2.LoadReply]:
    """The revisions transaction ``tid`` wrote of ``oids``, one
    ``LoadBeforeMany`` per storage node (before ``tid`` + 1: each oid's
    revision there is the one ``tid`` wrote), all in parallel.  Best
    effort: what does not come (a node failed, an answer was cut) is left
    out, for the caller to load one by one."""
    asked, calls = prefetch.load_many_calls(cluster, oids, p64(u64(tid) + 1), RECORDS_TIMEOUT)
    found = {}
    for batch, outcome in zip(asked, rpc.call_all(calls), strict=True):
        if not isinstance(outcome, storage_pb2.LoadManyReply):
            continue
        for oid, answer in zip(batch, outcome.replies, strict=False):
            if answer.serial == tid and answer.status in (storage_pb2.LoadReply.FOUND,
                                                          storage_pb2.LoadReply.NO_REVISION):
                found[oid] = answer
    return found


class TransactionIterator:
    """What ``iterator(start, stop)`` returns: an iterator with ``close()``."""

    def __init__(self, cluster: ClusterConnection, start: bytes | None, stop: bytes | None) -> None:
        self._cluster = cluster
        self._source = transactions(cluster, start, stop)

    def __iter__(self) -> TransactionIterator:
        return self

    def __next__(self) -> NeoTransactionRecord:
        return NeoTransactionRecord(self._cluster, next(self._source))

    def close(self) -> None:
        self._source = iter(())


#: HistoryRequest.size is a uint32; 0 asks for every revision.
_ALL_REVISIONS = 0


def history(cluster: ClusterConnection, oid: bytes, size: int | None) -> list[dict[str, Any]]:
    """The ``size`` newest revisions of ``oid`` (every one when ``size`` is
    None or beyond what the request can say: zodbbrowser asks for 10**12)."""
    if size is not None and size < 1:
        return []
    wire_size = _ALL_REVISIONS if size is None or size >= 2**32 else size
    partition = partition_of(oid, cluster.table.num_partitions)
    try:
        reply = cluster.read_call(partition, "History", storage_pb2.HistoryRequest(oid=oid, size=wire_size))
    except errors.NotFound:
        raise POSKeyError(oid) from None
    result = []
    for revision in reply.revisions:
        info = transaction_info(cluster, revision.tid)
        entry: dict[str, Any] = {
            "tid": revision.tid,
            "serial": revision.tid,
            "time": tid_time(revision.tid),
            "size": revision.size,
            "user_name": info.user if info else b"",
            "description": info.description if info else b"",
        }
        if info is not None:
            entry.update(extension_of(info))
        result.append(entry)
    return result
