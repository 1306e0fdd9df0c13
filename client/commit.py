"""Two-phase commit, client side: the whole commit path, top to bottom.

ZODB drives a commit as ``tpc_begin``, ``store``/``checkCurrentSerialIn
Transaction``/``undo`` (any number), ``tpc_vote``, then ``tpc_finish`` or
``tpc_abort``.  Each step is one function below:

1. :func:`begin` — the master leader hands out a temporary id, the TTID.
2. :func:`store` — the data is packed (compressed, checksummed) and queued;
   queued stores are sent (:func:`send_stores`) to every writable cell of
   the oid's partition, without waiting, when enough has piled up and at
   vote.  Each storage node takes the oid's write lock for the TTID and
   reports a conflict when the serial is not the last committed one.
3. :func:`vote` — waits for every store, resolves conflicts with ZODB's
   conflict resolution and stores the result again (the lock is still ours,
   so the second store cannot conflict with another transaction); a cell
   that became writable since the stores were sent (rebalancing) gets them
   too.  Then it asks every storage node involved to make the data durable;
   the cells of ``partition(ttid)`` also get the transaction's metadata.  A
   node votes for a partition only if it took every write of the
   transaction to that partition (its vote tells the master that its cell
   holds the whole transaction: a cell that did not vote is marked
   OUT_OF_DATE and catches up).  A node that fails is dropped as long as
   every partition touched keeps one replica that voted.  Returns the oids
   whose conflicts were resolved.
4. :func:`finish` — the master decides, assigns the TID, has the storages
   apply, publishes the invalidation, answers the TID; the client then waits
   for its invalidation stream to deliver that TID and calls ZODB's callback
   (see ``neostore.client.invalidations``).  When the Finish rpc fails
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
import time
from collections.abc import Callable
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

    @property
    def changed_oids(self) -> list[bytes]:
        return [w.oid for w in self.writes.values() if not w.check_only]


# -- 1. begin ------------------------------------------------------------------


def begin(
    cluster: ClusterConnection, client_id: str, meta: Any, tid: bytes | None = None
) -> TransactionContext:
    """A TTID from the master; ``tid``: commit under this TID (restore)."""
    request = master_pb2.BeginRequest(client_id=client_id, tid=tid or b"")
    reply = cluster.master_call("Begin", request)
    return TransactionContext(ttid=reply.ttid, meta=meta)


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
    if context.phase is not Phase.BEGUN:
        raise POSException.StorageTransactionError("tpc_vote called twice")
    while True:
        send_stores(cluster, context)
        collect_stores(context)
        if context.fatal is not None:
            raise context.fatal
        if context.conflicts:
            conflicts, context.conflicts = context.conflicts, {}
            for oid, conflict in conflicts.items():
                _resolve_conflict(cluster, context, resolve, oid, conflict)
        elif not _queue_missing(cluster, context):
            break
    _send_votes(cluster, context)
    context.phase = Phase.VOTED
    return sorted(context.resolved)


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


def _queue_missing(cluster: ClusterConnection, context: TransactionContext) -> bool:
    """Queue the writes that a writable cell lacks (it became writable after
    they were sent: rebalancing); whether there are any."""
    table = cluster.table
    for oid, write in context.writes.items():
        if any(context.taken.get(node_id, {}).get(oid) is not write
               for node_id in table.writable_nodes(table.partition_of(oid)) if node_id not in context.failed):
            context.queued.append(oid)
            context.queued_bytes += write.size
    return bool(context.queued)


def _check_every_partition_kept_a_replica(context: TransactionContext, done: dict[int, set[int]]) -> None:
    covered = set().union(*done.values()) if done else set()
    lost = sorted(context.touched - covered)
    if lost:
        reasons = "; ".join(context.failed.values())
        raise ClusterUnavailableError(
            f"no replica of partition{'s' if len(lost) > 1 else ''} "
            f"{', '.join(map(str, lost))} took the transaction: {reasons}")


def _send_votes(cluster: ClusterConnection, context: TransactionContext) -> None:
    table = cluster.table
    meta_partition = partition_of(context.ttid, table.num_partitions)
    context.touched.add(meta_partition)
    meta_nodes = table.writable_nodes(meta_partition)
    if not meta_nodes:
        raise ClusterUnavailableError(f"partition {meta_partition} has no writable replica")
    info = common_pb2.TransactionInfo(
        user=_as_bytes(context.meta.user), description=_as_bytes(context.meta.description),
        extension=context.meta.extension_bytes, oids=context.changed_oids,
    )
    targets = _whole_partitions(context, table, meta_partition, meta_nodes)
    _check_every_partition_kept_a_replica(context, targets)
    futures = []
    for node_id, partitions in targets.items():
        try:
            stub, peer = cluster.storage_stub(node_id)
        except errors.NotOwner as error:  # the node left the cluster since it took the stores
            _drop_node(context, node_id, str(error))
            continue
        with_meta = meta_partition in partitions
        request = storage_pb2.VoteRequest(ttid=context.ttid, has_transaction=with_meta)
        if with_meta:
            request.transaction.CopyFrom(info)
        futures.append((node_id, peer, partitions, stub.Vote.future(request, timeout=VOTE_TIMEOUT)))
    for node_id, peer, partitions, future in futures:
        try:
            reply = rpc.result(future, peer=peer)
        except (errors.Unavailable, errors.NotOwner) as error:
            _drop_node(context, node_id, str(error))
            continue
        except errors.NeoError as error:
            raise to_zodb_error(error) from None
        context.votes[node_id] = partitions
        context.unchecked[node_id] = set(reply.unchecked_partitions) & partitions
    _check_every_partition_kept_a_replica(context, context.votes)


def _whole_partitions(
    context: TransactionContext, table: Any, meta_partition: int, meta_nodes: list[int]
) -> dict[int, set[int]]:
    """The partitions each node may vote for: those of which it took every
    write of the transaction (the very writes, as resolved), and for the
    partition of the TTID, the metadata too.

    A vote for a partition tells the master that the node's cell holds the
    whole transaction: a node that took only part of it (the table changed
    between stores, or it gets only the metadata) must not vote, so that
    the master marks its cell OUT_OF_DATE instead of trusting it.
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
        votes=[master_pb2.Vote(node_id=n, partitions=sorted(p), unchecked_partitions=sorted(context.unchecked.get(n, ())))
               for n, p in sorted(context.votes.items())],
    )
    dispatcher.expect_own(context.ttid)
    try:
        # One try per master: Finish is not idempotent, a lost answer is
        # recovered below by asking what became of the TTID.
        tid = cluster.master_call("Finish", request, timeout=FINISH_TIMEOUT, retry_seconds=0).tid
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
    dispatcher.finish_own(context.ttid, tid, callback)
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
    nodes = set(context.stored_on) | set(context.votes) | set(context.failed)
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
