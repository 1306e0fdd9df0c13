"""Two-phase commit, client side: the whole commit path, top to bottom.

ZODB drives a commit as ``tpc_begin``, ``store``/``checkCurrentSerialIn
Transaction``/``undo`` (any number), ``tpc_vote``, then ``tpc_finish`` or
``tpc_abort``.  Each step is one function below:

1. :func:`begin` — a temporary id, the TTID: the spare one the master
   reserved in the answer to the sync ZODB made when the transaction
   began (:class:`SpareTtid`), else one from the master leader's Begin.
2. :func:`store` — the data is packed (compressed, checksummed) and queued;
   a large transaction sends its queued stores (:func:`send_stores`) to
   every writable cell of each oid's partition, without waiting, whenever
   4 MB have piled up.  Each storage node takes the oid's write lock for
   the TTID and reports a conflict when the serial is not the last
   committed one.
3. :func:`vote` — picks the partition that keeps the transaction's
   metadata (one it writes anyway: the master gives the TID in it), then
   runs rounds (:func:`_vote_round`) until every node involved voted: each
   node that has not voted gets the writes it lacks *with* its vote, in
   one ``Vote`` rpc (a small transaction needs no ``Store`` at all), and
   the cells of the metadata partition the metadata.  A node answering
   conflicts does not vote: they are resolved with ZODB's conflict
   resolution and the next round sends the result.  The stores of a vote
   never wait for a lock held by an older transaction (that could
   deadlock, see ``storage_node/locks.py``): such a node does not vote
   either, and if no node voted, a round of plain stores (which may wait)
   comes first; if some node did, the transaction is given up with a
   ConflictError, which ZODB retries.  A node holding an OUT_OF_DATE cell
   among them (it checks no conflict, so it must not vote before the
   others found none) gets plain stores, and its vote in the next round.
   A node that voted takes nothing more: if the table changed meanwhile
   (rebalancing), it does not count for the partitions whose writes it
   lacks.  A node votes for a partition only if it took every write of
   the transaction to that partition (its vote tells the master that its
   cell holds the whole transaction: a cell that did not vote is marked
   OUT_OF_DATE and catches up).  A node that fails is dropped as long as
   every partition touched keeps one replica that voted.  Returns the
   oids whose conflicts were resolved.
4. :func:`finish` — the master decides, assigns the TID, has the storages
   apply, publishes the invalidation, answers the TID with every commit
   since the client's last one (and the partition table if newer): the
   client hands them to ZODB, then calls ZODB's callback (see
   ``neostore.client.invalidations``; without them, it waits for its
   invalidation stream to deliver its TID).  When the Finish rpc fails
   without a definite answer (Unavailable, NotLeader, UnknownTransaction:
   the leader died or changed mid-finish), :func:`transaction_outcome` asks
   the masters what became of the TTID: committed, tpc_finish goes on as if
   the Finish had answered; aborted, it raises (nothing committed).
5. :func:`abort` — waits for stores still in flight (or their locks would
   outlive the abort), then asks the master to abort the TTID on the
   storage nodes.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ZODB import POSException

from neostore import errors, rpc
from neostore.client.cluster import MASTER_RETRY_SECONDS, ClusterConnection
from neostore.client.exceptions import ClusterUnavailableError, TransactionNotCommittedError, to_zodb_error
from neostore.client.invalidations import InvalidationDispatcher
from neostore.ids import partition_of, tid_repr
from neostore.protocol import common_pb2, master_pb2, storage_pb2
from neostore.records import Record

log = logging.getLogger(__name__)

#: How long a failed finish tries to have its votes dropped.
RELEASE_RETRY_SECONDS = 5.0
#: Queued stores are sent once they hold this many bytes.
SEND_THRESHOLD_BYTES = 4 * 1024 * 1024
#: At most this many bytes of objects in one Store request.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
STORE_TIMEOUT = 120.0
VOTE_TIMEOUT = 120.0
FINISH_TIMEOUT = 120.0
#: How long tpc_finish keeps asking what became of a transaction whose Finish failed.
OUTCOME_TIMEOUT = 120.0
#: A spare TTID (SpareTtid) is used only this long after it arrived.
SPARE_LIFETIME = 1.0

#: ZODB's conflict resolution: (oid, committed_serial, old_serial, new_data) -> data
Resolver = Callable[[bytes, bytes, bytes, bytes], bytes]


class Phase(enum.Enum):
    BEGUN = "begun"
    VOTED = "voted"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclasses.dataclass
class ObjectWrite:
    """One object write of a transaction, as last queued for its oid."""

    oid: bytes
    serial: bytes
    data: bytes | None = None  # None for undo and check-only writes
    record: Record | None = None
    data_serial: bytes = b""  # undo: copy this revision's data
    undone_creation: bool = False
    check_only: bool = False

    @property
    def size(self) -> int:
        return len(self.record.data) if self.record is not None else 0


@dataclasses.dataclass
class _InFlight:
    node_id: int
    peer: str
    partitions: frozenset[int]
    writes: list[ObjectWrite]
    future: Any


@dataclasses.dataclass
class TransactionContext:
    """Everything the client knows about one transaction in progress."""

    ttid: bytes
    meta: Any  # ZODB TransactionMetaData
    phase: Phase = Phase.BEGUN
    writes: dict[bytes, ObjectWrite] = dataclasses.field(default_factory=dict)
    queued: list[bytes] = dataclasses.field(default_factory=list)
    queued_bytes: int = 0
    in_flight: list[_InFlight] = dataclasses.field(default_factory=list)
    # node id -> partitions it took stores for, without error
    stored_on: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    # node id -> oid -> the write it took (without conflict): the very object
    # of ``writes``, or an earlier version that a resolution replaced
    taken: dict[int, dict[bytes, ObjectWrite]] = dataclasses.field(default_factory=dict)
    failed: dict[int, str] = dataclasses.field(default_factory=dict)
    touched: set[int] = dataclasses.field(default_factory=set)  # partitions
    conflicts: dict[bytes, storage_pb2.Conflict] = dataclasses.field(default_factory=dict)
    resolved: set[bytes] = dataclasses.field(default_factory=set)
    votes: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    # node id -> partitions it voted without checking conflicts (its cell was
    # not readable when it took the stores): the master needs another check
    unchecked: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    fatal: Exception | None = None
    undone_oids: set[bytes] = dataclasses.field(default_factory=set)
    # The TID a restore commits under (IStorageRestoreable), else None.
    requested_tid: bytes | None = None
    # Where the metadata goes (chosen at vote): the TID will fall in it.
    metadata_partition: int | None = None
    voted: set[int] = dataclasses.field(default_factory=set)  # nodes whose vote succeeded
    metadata_on: set[int] = dataclasses.field(default_factory=set)  # voted nodes that took the metadata
    contacted: set[int] = dataclasses.field(default_factory=set)  # every node sent a store or vote
    # A vote's stores found a lock held by an older transaction and no node
    # voted: the next round stores without voting (see _vote_round).
    refused: bool = False

    @property
    def changed_oids(self) -> list[bytes]:
        return [w.oid for w in self.writes.values() if not w.check_only]


# -- 1. begin ------------------------------------------------------------------


def begin(
    cluster: ClusterConnection, client_id: str, meta: Any, tid: bytes | None = None,
    spare: SpareTtid | None = None,
) -> TransactionContext:
    """A TTID: the ``spare`` one if fresh, else one from the master's
    ``Begin``; ``tid``: commit under this TID (restore)."""
    if tid is None and spare is not None and not cluster.stopping:
        ttid = spare.take()
        if ttid is not None:
            return TransactionContext(ttid=ttid, meta=meta)
    request = master_pb2.BeginRequest(client_id=client_id, tid=tid or b"")
    reply = cluster.master_call("Begin", request)
    return TransactionContext(ttid=reply.ttid, meta=meta, requested_tid=tid)


class SpareTtid:
    """The TTID the master reserved ahead for this client's next tpc_begin
    (a ``Sync`` answer brings it: ZODB syncs when a transaction begins),
    so that tpc_begin usually needs no round trip.  Used only within
    ``SPARE_LIFETIME`` seconds of its arrival (a cluster that became
    STOPPING meanwhile must refuse the transaction: the client drops its
    spare when the stream says so); an unused one is handed back at the
    next sync."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ttid: bytes | None = None
        self._since = 0.0

    def put(self, ttid: bytes) -> None:
        with self._lock:
            self._ttid, self._since = ttid, time.monotonic()

    def take(self) -> bytes | None:
        """The spare if fresh (it is no longer spare), else None."""
        with self._lock:
            ttid, self._ttid = self._ttid, None
            if ttid is not None and time.monotonic() - self._since > SPARE_LIFETIME:
                self._ttid = ttid  # stale: handed back at the next sync
                return None
            return ttid

    def drop(self) -> bytes | None:
        """The unused spare, to hand back (it is no longer spare)."""
        with self._lock:
            ttid, self._ttid = self._ttid, None
            return ttid


# -- 2. store ------------------------------------------------------------------


def store(cluster: ClusterConnection, context: TransactionContext, write: ObjectWrite) -> None:
    """Queue one write; send the queue when it is large enough."""
    if context.phase is not Phase.BEGUN:
        raise POSException.StorageTransactionError("store after vote")
    previous = context.writes.get(write.oid)
    if previous is not None and write.check_only and not previous.check_only:
        return  # already written in this transaction: the store checks it
    context.writes[write.oid] = write
    context.queued.append(write.oid)
    context.queued_bytes += write.size
    if context.queued_bytes >= SEND_THRESHOLD_BYTES:
        send_stores(cluster, context)


def send_stores(cluster: ClusterConnection, context: TransactionContext) -> None:
    """Send every queued write to every writable cell of its partition that
    has not taken it yet."""
    if not context.queued:
        return
    table = cluster.table
    per_node: dict[int, list[ObjectWrite]] = {}
    for oid in dict.fromkeys(context.queued):
        write = context.writes[oid]
        partition = table.partition_of(oid)
        context.touched.add(partition)
        nodes = [n for n in table.writable_nodes(partition) if n not in context.failed]
        if not nodes:
            raise ClusterUnavailableError(f"partition {partition} has no writable replica left")
        for node_id in nodes:
            if context.taken.get(node_id, {}).get(oid) is not write:
                per_node.setdefault(node_id, []).append(write)
    context.queued.clear()
    context.queued_bytes = 0
    for node_id, writes in per_node.items():
        stub, peer = cluster.storage_stub(node_id, table)
        for chunk in _chunks(writes):
            request = storage_pb2.StoreRequest(
                ttid=context.ttid, table_version=table.version,
                objects=[_encode_write(w) for w in chunk],
            )
            partitions = frozenset(table.partition_of(w.oid) for w in chunk)
            context.contacted.add(node_id)
            context.in_flight.append(
                _InFlight(node_id, peer, partitions, chunk, stub.Store.future(request, timeout=STORE_TIMEOUT))
            )


def _chunks(writes: list[ObjectWrite]) -> list[list[ObjectWrite]]:
    chunks: list[list[ObjectWrite]] = [[]]
    size = 0
    for write in writes:
        if chunks[-1] and size + write.size > MAX_REQUEST_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(write)
        size += write.size
    return chunks


def _encode_write(write: ObjectWrite) -> storage_pb2.ObjectStore:
    message = storage_pb2.ObjectStore(
        oid=write.oid, serial=write.serial, data_serial=write.data_serial,
        undone_creation=write.undone_creation, check_only=write.check_only,
    )
    if write.record is not None:
        write.record.to_proto(message.record)
    return message


def _drop_node(context: TransactionContext, node_id: int, reason: str) -> None:
    """A node that missed a store or a vote takes no further part: it may
    lack some of the transaction's objects, so it must not count as a voter
    (the master then marks its cells OUT_OF_DATE)."""
    context.failed[node_id] = reason
    context.stored_on.pop(node_id, None)
    context.taken.pop(node_id, None)
    context.votes.pop(node_id, None)
    context.voted.discard(node_id)
    context.metadata_on.discard(node_id)


def collect_stores(context: TransactionContext) -> None:
    """Wait for every store in flight; record conflicts and failed nodes."""
    in_flight, context.in_flight = context.in_flight, []
    for item in in_flight:
        try:
            reply = rpc.result(item.future, peer=item.peer)
        except (errors.LockDied, errors.LockTimeout) as error:
            context.fatal = context.fatal or POSException.ConflictError(
                f"transaction {context.ttid.hex()} must be retried: {error}")
            continue
        except (errors.Unavailable, errors.NotOwner) as error:
            _drop_node(context, item.node_id, str(error))
            continue
        except errors.NeoError as error:
            context.fatal = context.fatal or to_zodb_error(error)
            continue
        conflicted = {conflict.oid for conflict in reply.conflicts}
        if item.node_id not in context.failed:
            context.stored_on.setdefault(item.node_id, set()).update(item.partitions)
            taken = context.taken.setdefault(item.node_id, {})
            taken.update((w.oid, w) for w in item.writes if w.oid not in conflicted)
        for conflict in reply.conflicts:
            context.conflicts[conflict.oid] = conflict


# -- 3. vote -------------------------------------------------------------------


def vote(
    cluster: ClusterConnection, context: TransactionContext, resolve: Resolver
) -> list[bytes]:
    """Send what every writable cell lacks with its vote; resolve conflicts
    and vote again until every node involved voted (or was dropped)."""
    if context.phase is not Phase.BEGUN:
        raise POSException.StorageTransactionError("tpc_vote called twice")
    table = cluster.table
    if context.metadata_partition is None:
        context.metadata_partition = _metadata_partition(context, table.num_partitions)
    context.touched.add(context.metadata_partition)
    while True:
        collect_stores(context)  # stores sent before the vote (large transactions)
        if context.fatal is not None:
            raise context.fatal
        if context.conflicts:
            conflicts, context.conflicts = context.conflicts, {}
            for oid, conflict in conflicts.items():
                _resolve_conflict(cluster, context, resolve, oid, conflict)
            context.queued.clear()  # the round below sends them to whoever lacks them
            context.queued_bytes = 0
            continue
        if not _vote_round(cluster, context):
            break
    assert context.metadata_partition is not None
    # Every node that took a store or the metadata voted, or was dropped.
    context.votes = _whole_partitions(context, cluster.table, context.metadata_partition, context.metadata_on)
    for node_id, partitions in context.votes.items():
        context.unchecked[node_id] = context.unchecked.get(node_id, set()) & partitions
    _check_every_partition_kept_a_replica(context, context.votes)
    context.phase = Phase.VOTED
    return sorted(context.resolved)


def _metadata_partition(context: TransactionContext, num_partitions: int) -> int:
    """Where the transaction's metadata goes: a partition it writes anyway
    (that of its first changed object), so that no other node takes part;
    a restore's is that of the TID it commits under."""
    if context.requested_tid is not None:
        return partition_of(context.requested_tid, num_partitions)
    for write in context.writes.values():
        if not write.check_only:
            return partition_of(write.oid, num_partitions)
    for write in context.writes.values():
        return partition_of(write.oid, num_partitions)
    return partition_of(context.ttid, num_partitions)


def _vote_round(cluster: ClusterConnection, context: TransactionContext) -> bool:
    """One round of requests to the nodes that have not voted; whether any
    was sent (False: every node involved voted, or was dropped).

    Usually a *vote round*: each such node gets the writes it lacks with its
    vote (the metadata too, on the metadata partition's cells).  Stores
    that travel with a vote never wait for a lock held by an older
    transaction (storage_node/locks.py tells why): such a node answers the
    oids it did not store and does not vote.  Then, if no node voted yet,
    the next round is a *store round* of plain stores, which may wait, and
    the votes follow; if some node voted, waiting could deadlock: the
    transaction is given up (ConflictError: ZODB retries it).  A store
    round also comes first when a node lacks more than one message holds.
    A node holding an OUT_OF_DATE cell among its writes (it checks no
    conflict, so it must not vote before the others found none) gets plain
    stores in a vote round, and its vote in the next.
    """
    table = cluster.table
    meta = context.metadata_partition
    assert meta is not None
    lacking: dict[int, list[ObjectWrite]] = {}
    unchecking: set[int] = set()  # nodes with a cell among their writes that checks no conflict
    for oid, write in context.writes.items():
        partition = table.partition_of(oid)
        context.touched.add(partition)
        readable = table.readable_nodes(partition)
        for node_id in table.writable_nodes(partition):
            if node_id in context.failed or node_id in context.voted:
                continue  # a node that voted takes no more: it will not count for this partition
            if context.taken.get(node_id, {}).get(oid) is not write:
                lacking.setdefault(node_id, []).append(write)
                if node_id not in readable:
                    unchecking.add(node_id)
    oversized = {n for n, writes in lacking.items() if sum(w.size for w in writes) > MAX_REQUEST_BYTES}
    if lacking and not context.voted and (context.refused or oversized):
        context.refused = False
        for node_id, writes in lacking.items():
            _send_store(cluster, context, table, node_id, writes, voted_elsewhere=False)
        return True
    meta_nodes = [n for n in table.writable_nodes(meta) if n not in context.failed]
    if not meta_nodes:
        raise ClusterUnavailableError(f"partition {meta} has no writable replica left")
    targets = set(lacking) | {n for n in meta_nodes if n not in context.voted}
    targets |= {n for n in context.stored_on if n not in context.voted and n not in context.failed}
    if not targets:
        return False
    info = common_pb2.TransactionInfo(
        user=_as_bytes(context.meta.user), description=_as_bytes(context.meta.description),
        extension=context.meta.extension_bytes, oids=context.changed_oids,
    )
    calls = []
    for node_id in sorted(targets):
        writes = lacking.get(node_id, [])
        if node_id in unchecking or node_id in oversized:
            _send_store(cluster, context, table, node_id, writes, voted_elsewhere=True)
            continue
        try:
            stub, peer = cluster.storage_stub(node_id, table)
        except errors.NotOwner as error:  # the node left the cluster since it took stores
            _drop_node(context, node_id, str(error))
            continue
        with_meta = node_id in meta_nodes
        request = storage_pb2.VoteRequest(
            ttid=context.ttid, has_transaction=with_meta, metadata_partition=meta,
            table_version=table.version, objects=[_encode_write(w) for w in writes])
        if with_meta:
            request.transaction.CopyFrom(info)
        context.contacted.add(node_id)
        calls.append((node_id, writes, with_meta, (stub.Vote, request, VOTE_TIMEOUT, peer)))
    refused: list[str] = []
    replies = rpc.call_all([call for *_, call in calls])
    for (node_id, writes, with_meta, _), reply in zip(calls, replies):
        if isinstance(reply, (errors.LockDied, errors.LockTimeout)):
            context.fatal = context.fatal or POSException.ConflictError(
                f"transaction {context.ttid.hex()} must be retried: {reply}")
            continue
        if isinstance(reply, (errors.Unavailable, errors.NotOwner)):
            _drop_node(context, node_id, str(reply))
            continue
        if isinstance(reply, errors.NeoError):
            context.fatal = context.fatal or to_zodb_error(reply)
            continue
        not_taken = {conflict.oid for conflict in reply.conflicts} | set(reply.not_stored)
        taken = context.taken.setdefault(node_id, {})
        taken.update((w.oid, w) for w in writes if w.oid not in not_taken)
        context.stored_on.setdefault(node_id, set()).update(
            table.partition_of(w.oid) for w in writes if w.oid not in not_taken)
        for conflict in reply.conflicts:
            context.conflicts[conflict.oid] = conflict
        if reply.not_stored:
            refused.append(f"storage node {node_id}: object {reply.not_stored[0].hex()}")
        if reply.conflicts or reply.not_stored:
            continue
        context.voted.add(node_id)
        if with_meta:
            context.metadata_on.add(node_id)
        context.unchecked[node_id] = set(reply.unchecked_partitions)
    if context.fatal is not None:
        raise context.fatal
    if refused:
        if context.voted:
            raise POSException.ConflictError(
                f"transaction {context.ttid.hex()} must be retried: an older transaction holds the lock of "
                f"{', '.join(refused)}, and other nodes voted already (waiting could deadlock)")
        context.refused = True
    return True


def _send_store(cluster: ClusterConnection, context: TransactionContext, table: Any, node_id: int,
                writes: list[ObjectWrite], voted_elsewhere: bool) -> None:
    """Plain stores of ``writes`` to ``node_id``, in flight (collect_stores)."""
    try:
        stub, peer = cluster.storage_stub(node_id, table)
    except errors.NotOwner as error:  # the node left the cluster since it took stores
        _drop_node(context, node_id, str(error))
        return
    for chunk in _chunks(writes):
        request = storage_pb2.StoreRequest(
            ttid=context.ttid, table_version=table.version, objects=[_encode_write(w) for w in chunk],
            voted_elsewhere=voted_elsewhere)
        partitions = frozenset(table.partition_of(w.oid) for w in chunk)
        context.contacted.add(node_id)
        context.in_flight.append(_InFlight(
            node_id, peer, partitions, chunk, stub.Store.future(request, timeout=STORE_TIMEOUT)))


def _resolve_conflict(
    cluster: ClusterConnection, context: TransactionContext, resolve: Resolver,
    oid: bytes, conflict: storage_pb2.Conflict,
) -> None:
    write = context.writes[oid]
    if conflict.read_conflict or write.check_only:
        raise POSException.ReadConflictError(
            oid=oid, serials=(conflict.committed_serial, write.serial))
    if write.data is None:
        raise POSException.ConflictError(
            oid=oid, serials=(conflict.committed_serial, write.serial),
            message="an undone object was changed by a later transaction")
    # Raises ConflictError (with oid and serials) when it cannot resolve.
    data = resolve(oid, conflict.committed_serial, write.serial, write.data)
    resolved = ObjectWrite(oid, conflict.committed_serial, data, Record.pack(data))
    context.writes[oid] = resolved
    context.queued.append(oid)
    context.queued_bytes += resolved.size
    context.resolved.add(oid)


def _check_every_partition_kept_a_replica(context: TransactionContext, done: dict[int, set[int]]) -> None:
    covered = set().union(*done.values()) if done else set()
    lost = sorted(context.touched - covered)
    if lost:
        reasons = "; ".join(context.failed.values())
        raise ClusterUnavailableError(
            f"no replica of partition{'s' if len(lost) > 1 else ''} "
            f"{', '.join(map(str, lost))} took the transaction: {reasons}")


def _whole_partitions(
    context: TransactionContext, table: Any, meta_partition: int, meta_nodes: Collection[int]
) -> dict[int, set[int]]:
    """The partitions each node may vote for: those of which it took every
    write of the transaction (the very writes, as resolved), and for the
    metadata partition, the metadata too (``meta_nodes`` took it).

    A vote for a partition tells the master that the node's cell holds the
    whole transaction: a node that took only part of it (the table changed
    between its stores and the end of the vote, or it got only the
    metadata) must not count, so that the master marks its cell
    OUT_OF_DATE instead of trusting it.
    """
    writes: dict[int, list[ObjectWrite]] = {}
    for oid, write in context.writes.items():
        writes.setdefault(table.partition_of(oid), []).append(write)

    def whole(node_id: int, partition: int) -> bool:
        taken = context.taken.get(node_id, {})
        return all(taken.get(write.oid) is write for write in writes.get(partition, ()))

    candidates = {n: set(p) for n, p in context.stored_on.items()}
    for node_id in meta_nodes:
        if node_id not in context.failed:
            candidates.setdefault(node_id, set()).add(meta_partition)
    targets = {}
    for node_id, partitions in candidates.items():
        voted = {p for p in partitions if whole(node_id, p) and (p != meta_partition or node_id in meta_nodes)}
        if voted:
            targets[node_id] = voted
    return targets


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


# -- 4. finish -----------------------------------------------------------------


def finish(
    cluster: ClusterConnection, dispatcher: InvalidationDispatcher, client_id: str,
    context: TransactionContext, callback: Callable[[bytes], Any],
) -> bytes:
    if context.phase is not Phase.VOTED:
        raise POSException.StorageTransactionError("tpc_finish before tpc_vote")
    request = master_pb2.FinishRequest(
        client_id=client_id, ttid=context.ttid, oids=context.changed_oids,
        partitions=sorted(context.touched), table_version=cluster.table.version,
        metadata_partition=context.metadata_partition, last_tid=dispatcher.last_transaction(),
        votes=[master_pb2.Vote(node_id=n, partitions=sorted(p), unchecked_partitions=sorted(context.unchecked.get(n, ())))
               for n, p in sorted(context.votes.items())],
    )
    dispatcher.expect_own(context.ttid)
    since_last: list[tuple[bytes, bytes, list[bytes]]] | None = None
    try:
        # One try per master: Finish is not idempotent, a lost answer is
        # recovered below by asking what became of the TTID.
        reply = cluster.master_call("Finish", request, timeout=FINISH_TIMEOUT, retry_seconds=0, idempotent=False)
        tid = reply.tid
        if reply.catch_up.HasField("partition_table"):
            cluster.learn_table(reply.catch_up.partition_table)
        if reply.catch_up.complete:
            since_last = [(i.tid, i.ttid, list(i.oids)) for i in reply.catch_up.invalidations]
    except (errors.Unavailable, errors.NotLeader, errors.UnknownTransaction) as error:
        # The master died or leadership changed mid-finish: committed or not?
        # (Not when this client is closing: its stream is gone, nobody waits.)
        tid = None
        known = False  # that it did not commit
        if not cluster.closed:
            try:
                tid = transaction_outcome(cluster, client_id, context.ttid)
                known = True
            except errors.NeoError as failure:
                error = failure
        if tid is None:
            dispatcher.forget_own(context.ttid)
            _release_votes(cluster, client_id, context)
            if not known:
                raise to_zodb_error(error) from None
            raise TransactionNotCommittedError(
                f"transaction {tid_repr(context.ttid)} did not commit and never will "
                f"({error}): run it again") from None
    except errors.NeoError as error:
        dispatcher.forget_own(context.ttid)
        _release_votes(cluster, client_id, context)
        raise to_zodb_error(error) from None
    dispatcher.finish_own(context.ttid, tid, callback, since_last)
    context.phase = Phase.FINISHED
    return tid


def transaction_outcome(
    cluster: ClusterConnection, client_id: str, ttid: bytes, timeout: float = OUTCOME_TIMEOUT
) -> bytes | None:
    """The TID ``ttid`` committed as, or None if it did not and never will.

    Asks ``GetTransactionOutcome`` (every master in turn, following the
    leader) until a definite answer: a follower knows recent commits, the
    leader knows everything (it waits for a finish still in progress and
    makes sure an unknown TTID can never commit).  Raises Unavailable when
    no master could tell within ``timeout`` seconds.
    """
    request = master_pb2.TransactionOutcomeRequest(ttid=ttid, client_id=client_id)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = cluster.master_call("GetTransactionOutcome", request)
        except errors.Unavailable:
            if cluster.closed or time.monotonic() >= deadline:
                raise
            continue
        if reply.status == master_pb2.TransactionOutcome.COMMITTED:
            return bytes(reply.tid)
        if reply.status == master_pb2.TransactionOutcome.ABORTED:
            return None
        if time.monotonic() >= deadline:
            raise errors.Unavailable(f"the outcome of transaction {ttid.hex()} is unknown")
        time.sleep(0.1)


# -- 5. abort ------------------------------------------------------------------


def abort(cluster: ClusterConnection, client_id: str, context: TransactionContext,
          retry_seconds: float = MASTER_RETRY_SECONDS) -> None:
    if context.phase in (Phase.FINISHED, Phase.ABORTED):
        return
    for item in context.in_flight:
        try:
            item.future.result()
        except Exception:  # noqa: BLE001 - only waiting for it to end
            pass
    nodes = context.contacted | set(context.stored_on) | set(context.votes) | set(context.failed)
    nodes |= {item.node_id for item in context.in_flight}
    context.in_flight.clear()
    context.phase = Phase.ABORTED
    cluster.master_call("Abort", master_pb2.AbortRequest(
        client_id=client_id, ttid=context.ttid, node_ids=sorted(nodes)), retry_seconds=retry_seconds)


def _release_votes(cluster: ClusterConnection, client_id: str, context: TransactionContext) -> None:
    """A tpc_finish that failed: have the storage nodes drop the vote now.
    Until they do, they keep its locks (a voted transaction cannot be
    wounded), and a master that never knew the transaction (it began under
    a leader since gone) would not tell them.  The master refuses if the
    transaction committed after all; a failure here is only logged."""
    try:
        abort(cluster, client_id, context, retry_seconds=RELEASE_RETRY_SECONDS)
    except errors.NeoError as error:
        log.warning("could not release the votes of transaction %s: %s", tid_repr(context.ttid), error)
    context.phase = Phase.ABORTED
