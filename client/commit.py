"""Two-phase commit, client side: the whole commit path, top to bottom.

ZODB drives a commit as ``tpc_begin``, ``store``/``checkCurrentSerialIn
Transaction``/``undo`` (any number), ``tpc_vote``, then ``tpc_finish`` or
``tpc_abort``.  Each step is one function below:

1. :func:`begin` — a temporary id, the TTID: the spare one the master
   reserved in its answer to this client's last Finish (or, with
   ``server_sync``, to the sync ZODB made when the transaction began:
   :class:`SpareTtid`), else one from the master leader's Begin.
2. :func:`store` — the data is packed (compressed, checksummed) and kept:
   every write goes to the storage nodes at vote.
3. :func:`vote` — picks the partition that keeps the transaction's
   metadata (one it writes anyway: the master gives the TID in it), then
   visits the nodes holding a writable cell of a partition written, *one
   at a time, in increasing node id*: each takes the writes it lacks and
   votes in one ``Vote`` rpc (a small transaction needs no ``Store``), the
   cells of the metadata partition take the metadata too.  Each node takes
   the oids' write locks for the TTID and reports a conflict when a serial
   is not the last committed one: it does not vote then; the conflict is
   resolved with ZODB's conflict resolution and the node is visited
   again.  Taking locks in one global node order is what keeps two
   transactions from each holding, voted, a lock the other waits for
   (``storage_node/locks.py``).  To save the round trip per node, a
   client first sends every node its vote at once, each lock wait bounded
   (``AT_ONCE_LOCK_WAIT``): a lock still busy then makes it abort the
   transaction and vote again node by node under a new TTID, and vote node
   by node for its next few transactions (:class:`AtOnceVotes`).  When a cell that checks nothing
   (OUT_OF_DATE) is among them, every node takes its stores first, in the
   same order, and all vote after (in parallel): such a node must not vote
   for a write a later conflict resolution replaces.  A node votes for a
   partition only if it took every write of the transaction to that
   partition (its vote tells the master that its cell holds the whole
   transaction: a cell that did not vote — it failed, or became writable
   behind the client — is marked OUT_OF_DATE and catches up).  A node that
   fails is dropped as long as every partition touched keeps one replica
   that voted.  Returns the oids whose conflicts were resolved.  A lock
   lost to an older transaction, or a TTID a node already dropped (the
   cluster aborted it: its leader was replaced, or took the client for
   gone), fails the vote with a ConflictError: ZODB runs it again.
4. :func:`finish` — the master decides, assigns the TID, publishes the
   invalidation and orders the storages to apply (they hold what they
   voted, locked, meanwhile), answers the TID with every commit
   since the client's last one (and the partition table if newer): the
   client hands them to ZODB, then calls ZODB's callback (see
   ``neostore.client.invalidations``; without them, it waits for its
   invalidation stream to deliver its TID).  When the Finish rpc fails
   without a definite answer (Unavailable, NotLeader, UnknownTransaction:
   the leader died or changed mid-finish), :func:`transaction_outcome` asks
   the masters what became of the TTID: committed, tpc_finish goes on as if
   the Finish had answered; aborted, it raises (nothing committed), except
   that a transaction the leader now never knew (it began under the one
   before) is voted and finished once more under a new TTID, with no
   conflict resolution this time (:func:`_commit_again`).
5. :func:`abort` — asks the master to abort the TTID on the storage nodes
   it reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ZODB import POSException

from neostore import errors, rpc
from neostore.client.cluster import ClusterConnection
from neostore.client.exceptions import ClusterUnavailableError, TransactionNotCommittedError, to_zodb_error
from neostore.client.invalidations import InvalidationDispatcher
from neostore.ids import partition_of, tid_repr
from neostore.protocol import common_pb2, master_pb2, storage_pb2
from neostore.records import Record

log = logging.getLogger(__name__)

#: How long a failed finish tries to have its votes dropped.
RELEASE_RETRY_SECONDS = 5.0
#: At most this many bytes of objects in one Store request.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
STORE_TIMEOUT = 120.0
VOTE_TIMEOUT = 120.0
FINISH_TIMEOUT = 120.0
#: How long a vote sent to every node at once waits for a lock before it
#: gives up and starts over, node by node (see _vote_at_once).
AT_ONCE_LOCK_WAIT = 0.3
#: After giving up on a vote at once, the next this many go node by node
#: (doubling while it keeps giving up, up to AT_ONCE_MAX_PAUSE).
AT_ONCE_FIRST_PAUSE = 4
AT_ONCE_MAX_PAUSE = 256
#: How long tpc_finish keeps asking what became of a transaction whose
#: Finish failed, at least (else the client's wait-timeout, if longer).
OUTCOME_TIMEOUT = 10.0
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
    """One object write of a transaction, as last stored for its oid."""

    oid: bytes
    serial: bytes
    data: bytes | None = None  # None for undo and check-only writes
    record: Record | None = None
    data_serial: bytes = b""  # undo: copy this revision's data
    undone_creation: bool = False
    restore: bool = False  # IStorageRestoreable: written as given, no conflict check
    check_only: bool = False

    @property
    def size(self) -> int:
        return len(self.record.data) if self.record is not None else 0


@dataclasses.dataclass
class TransactionContext:
    """Everything the client knows about one transaction in progress."""

    ttid: bytes
    meta: Any  # ZODB TransactionMetaData
    phase: Phase = Phase.BEGUN
    writes: dict[bytes, ObjectWrite] = dataclasses.field(default_factory=dict)
    # node id -> partitions it took stores for, without error
    stored_on: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    # node id -> oid -> the write it took (without conflict): the very object
    # of ``writes``, or an earlier version that a resolution replaced
    taken: dict[int, dict[bytes, ObjectWrite]] = dataclasses.field(default_factory=dict)
    failed: dict[int, str] = dataclasses.field(default_factory=dict)
    touched: set[int] = dataclasses.field(default_factory=set)  # partitions
    resolved: set[bytes] = dataclasses.field(default_factory=set)
    votes: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    # node id -> partitions it voted without checking conflicts (its cell was
    # not readable when it took the stores): the master needs another check
    unchecked: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    undone_oids: set[bytes] = dataclasses.field(default_factory=set)
    # The TID a restore commits under (IStorageRestoreable), else None.
    requested_tid: bytes | None = None
    packed: bool = False  # a restore of a transaction whose status is "p"
    # Where the metadata goes (chosen at vote): the TID will fall in it.
    metadata_partition: int | None = None
    voted: set[int] = dataclasses.field(default_factory=set)  # nodes whose vote succeeded
    metadata_on: set[int] = dataclasses.field(default_factory=set)  # voted nodes that took the metadata
    contacted: set[int] = dataclasses.field(default_factory=set)  # every node sent a store or vote
    # Locks are taken node by node in increasing node id: nodes below this
    # one were visited already (see vote).
    position: int = 0
    # The newest committed serial a conflict reported (until the client saw
    # it, its next sync asks the master: see NeoStorage.sync).
    newest_conflict: bytes = b""

    @property
    def changed_oids(self) -> list[bytes]:
        return [w.oid for w in self.writes.values() if not w.check_only]


# -- 1. begin ------------------------------------------------------------------


def begin(
    cluster: ClusterConnection, client_id: str, meta: Any, tid: bytes | None = None,
    spare: SpareTtid | None = None, packed: bool = False,
) -> TransactionContext:
    """A TTID: the ``spare`` one if fresh, else one from the master's
    ``Begin``; ``tid``: commit under this TID (restore); ``packed``: the
    restored transaction's status is "p"."""
    ttid = spare.take() if tid is None and spare is not None and not cluster.stopping else None
    if ttid is None:
        # A spare left (too old, or this is a restore) goes back with it.
        release = spare.drop() if spare is not None else None
        request = master_pb2.BeginRequest(client_id=client_id, tid=tid or b"", release_spare=release or b"")
        ttid = cluster.master_call("Begin", request).ttid
    cluster.unfinished(ttid)
    return TransactionContext(ttid=ttid, meta=meta, requested_tid=tid, packed=packed)


class SpareTtid:
    """The TTID the master reserved ahead for this client's next tpc_begin,
    so that tpc_begin usually needs no round trip: the answer to the
    client's last ``Finish`` brings it, or with ``server_sync`` the
    ``Sync`` that ZODB makes when a transaction begins.  Used only within
    ``SPARE_LIFETIME`` seconds of its arrival (a cluster that became
    STOPPING meanwhile must refuse the transaction: the client drops its
    spare when the stream says so); an unused one is handed back with the
    next ``Sync`` or ``Begin``."""

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
    """Record one write: writes go to the storage nodes at vote."""
    if context.phase is not Phase.BEGUN:
        raise POSException.StorageTransactionError("store after vote")
    previous = context.writes.get(write.oid)
    if previous is not None and write.check_only and not previous.check_only:
        return  # already written in this transaction: the store checks it
    context.writes[write.oid] = write


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
        undone_creation=write.undone_creation, check_only=write.check_only, restore=write.restore,
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


# -- 3. vote -------------------------------------------------------------------


def vote(
    cluster: ClusterConnection, context: TransactionContext, resolve: Resolver,
    at_once: AtOnceVotes | None = None,
) -> list[bytes]:
    """Have every writable cell of the partitions written take its writes
    and vote, node by node in increasing node id (see the module
    docstring), or first every node at once if ``at_once`` says so (see
    :func:`_vote_at_once`); the oids whose conflicts were resolved."""
    if context.phase is not Phase.BEGUN:
        raise POSException.StorageTransactionError("tpc_vote called twice")
    table = cluster.table
    if context.metadata_partition is None:
        context.metadata_partition = _metadata_partition(context, table.num_partitions)
    meta = context.metadata_partition
    context.touched.add(meta)
    context.touched.update(table.partition_of(oid) for oid in context.writes)
    stores_first = _some_cell_checks_nothing(context, table)
    fits = sum(write.size for write in context.writes.values()) <= MAX_REQUEST_BYTES
    if not stores_first and fits and at_once is not None and at_once.wanted():
        if _vote_at_once(cluster, context, resolve):
            at_once.worked()
        else:
            at_once.gave_up()
            _start_over(cluster, context)
    while True:  # nothing left to do here once every node voted at once
        table = cluster.table
        node_id, writes, with_meta = _next_node(context, table, stores_first)
        if node_id is None:
            break
        if stores_first:
            _store_on(cluster, context, table, resolve, node_id, writes)
        else:
            _vote_on(cluster, context, table, resolve, node_id, writes, with_meta)
    if stores_first:
        _vote_everywhere(cluster, context)
    # Every node that took a store or the metadata voted, or was dropped.
    context.votes = _whole_partitions(context, cluster.table, meta, context.metadata_on)
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


def _some_cell_checks_nothing(context: TransactionContext, table: Any) -> bool:
    """Whether a writable cell of a partition written is not readable
    (OUT_OF_DATE: it takes writes without lock nor conflict check).  Such a
    node must not vote before the readable ones found no conflict, or it
    would vote for a write that a conflict resolution then replaces: every
    node then takes its stores first, and votes after."""
    partitions = {table.partition_of(oid) for oid in context.writes} | {context.metadata_partition}
    return any(set(table.writable_nodes(p)) - set(table.readable_nodes(p)) for p in partitions)


def _next_node(
    context: TransactionContext, table: Any, stores_first: bool
) -> tuple[int | None, list[ObjectWrite], bool]:
    """The node to visit next: the lowest id, not below ``position``, that
    lacks some write of a partition it holds a writable cell of (or, unless
    ``stores_first``, has not voted); with the writes it lacks and whether
    it takes the metadata.

    A node below ``position`` that lacks a write (the table changed behind
    the client, or a conflict resolution replaced a write it took) is not
    visited again unless it holds that oid's lock already (storing
    first): taking a lock out of node order could deadlock.  It then does
    not count for that partition (the master marks its cell OUT_OF_DATE).
    """
    lacking, meta_nodes = _to_visit(context, table, stores_first, context.position)
    if not lacking:
        return None, [], False
    node_id = min(lacking)
    return node_id, lacking[node_id], node_id in meta_nodes


def _to_visit(
    context: TransactionContext, table: Any, stores_first: bool, position: int
) -> tuple[dict[int, list[ObjectWrite]], list[int]]:
    """Every node still to visit at or above ``position`` (see
    :func:`_next_node`) with the writes it lacks; and the writable nodes of
    the metadata partition."""
    meta = context.metadata_partition
    lacking: dict[int, list[ObjectWrite]] = {}
    nodes_of: dict[int, list[int]] = {}  # partition -> its writable nodes
    for oid, write in context.writes.items():
        partition = table.partition_of(oid)
        nodes = nodes_of.get(partition)
        if nodes is None:
            nodes = nodes_of[partition] = table.writable_nodes(partition)
        for node_id in nodes:
            if node_id in context.failed or node_id in context.voted:
                continue
            taken = context.taken.get(node_id, {})
            if taken.get(oid) is write:
                continue
            if node_id < position and not (stores_first and oid in taken):
                continue
            lacking.setdefault(node_id, []).append(write)
    meta_nodes = [n for n in table.writable_nodes(meta) if n not in context.failed]
    if not meta_nodes:
        raise ClusterUnavailableError(f"partition {meta} has no writable replica left")
    if not stores_first:
        for node_id in meta_nodes:
            if node_id >= position and node_id not in context.voted:
                lacking.setdefault(node_id, [])
    return lacking, meta_nodes


def _store_on(cluster: ClusterConnection, context: TransactionContext, table: Any, resolve: Resolver,
              node_id: int, writes: list[ObjectWrite]) -> None:
    """Plain stores of ``writes`` on ``node_id`` (stores first, votes after)."""
    try:
        stub, peer = cluster.storage_stub(node_id, table)
    except errors.NotOwner as error:  # the node left the cluster since it took stores
        _drop_node(context, node_id, str(error))
        return
    conflicts: list[storage_pb2.Conflict] = []
    for chunk in _chunks(writes):
        request = storage_pb2.StoreRequest(
            ttid=context.ttid, table_version=table.version, objects=[_encode_write(w) for w in chunk])
        context.contacted.add(node_id)
        reply = _request(context, node_id,
                         lambda request=request: rpc.call(  # type: ignore[misc]  # mypy: lambda defaults
                             stub.Store, request, timeout=STORE_TIMEOUT, peer=peer))
        if reply is None:
            return
        _took(context, table, node_id, chunk, reply.conflicts)
        conflicts.extend(reply.conflicts)
    for conflict in conflicts:
        _resolve_conflict(context, resolve, conflict)
    if not conflicts:
        context.position = max(context.position, node_id + 1)


def _vote_on(cluster: ClusterConnection, context: TransactionContext, table: Any, resolve: Resolver,
             node_id: int, writes: list[ObjectWrite], with_meta: bool) -> None:
    """``node_id`` takes ``writes`` and votes, in one Vote rpc (plain stores
    first for what does not fit in one message); on a conflict it does not
    vote: the conflict is resolved, and the node is visited again."""
    try:
        stub, peer = cluster.storage_stub(node_id, table)
    except errors.NotOwner as error:  # the node left the cluster since it took stores
        _drop_node(context, node_id, str(error))
        return
    context.contacted.add(node_id)
    chunks = _chunks(writes)
    conflicts: list[storage_pb2.Conflict] = []
    for chunk in chunks[:-1]:
        request = storage_pb2.StoreRequest(
            ttid=context.ttid, table_version=table.version, objects=[_encode_write(w) for w in chunk])
        stored = _request(context, node_id,
                          lambda request=request: rpc.call(  # type: ignore[misc]  # mypy: lambda defaults
                              stub.Store, request, timeout=STORE_TIMEOUT, peer=peer))
        if stored is None:
            return
        _took(context, table, node_id, chunk, stored.conflicts)
        conflicts.extend(stored.conflicts)
    if conflicts:
        for conflict in conflicts:
            _resolve_conflict(context, resolve, conflict)
        return
    last = chunks[-1]
    vote_request = storage_pb2.VoteRequest(
        ttid=context.ttid, has_transaction=with_meta, metadata_partition=context.metadata_partition,
        table_version=table.version, objects=[_encode_write(w) for w in last])
    if with_meta:
        vote_request.transaction.CopyFrom(_transaction_info(context))
    reply = _request(context, node_id, lambda: rpc.call(stub.Vote, vote_request, timeout=VOTE_TIMEOUT, peer=peer))
    if reply is None:
        return
    _took(context, table, node_id, last, reply.conflicts)
    if reply.conflicts:
        for conflict in reply.conflicts:
            _resolve_conflict(context, resolve, conflict)
        return
    _voted(context, node_id, with_meta, reply)
    context.position = max(context.position, node_id + 1)


def _voted(context: TransactionContext, node_id: int, with_meta: bool, reply: storage_pb2.VoteReply) -> None:
    """``node_id`` voted (and took the metadata if ``with_meta``)."""
    context.voted.add(node_id)
    if with_meta:
        context.metadata_on.add(node_id)
    context.unchecked[node_id] = set(reply.unchecked_partitions)


def _vote_at_once(cluster: ClusterConnection, context: TransactionContext, resolve: Resolver) -> bool:
    """Every node that lacks a write or has not voted takes its writes and
    votes, all in parallel, in rounds until none is left (a conflict:
    resolved, and its nodes visited again in the next round); True once
    done, False if some lock was not free within ``AT_ONCE_LOCK_WAIT``.

    Out of node order, so a lock wait could close a cycle of waits
    (``storage_node/locks.py``): each one is bounded, and False makes the
    caller start over, one node at a time.  The rest is as
    :func:`_vote_on`: a node that fails is dropped, a lock lost to an older
    transaction fails the vote as a ConflictError.  Only for transactions
    whose writes fit in one message (:func:`vote` checks); should conflict
    resolutions make a node's writes outgrow it, it gives up too.
    """
    while True:
        table = cluster.table
        lacking, meta_nodes = _to_visit(context, table, False, 0)
        if not lacking:
            return True
        calls = []
        for node_id, writes in sorted(lacking.items()):
            if len(_chunks(writes)) > 1:
                return False
            try:
                stub, peer = cluster.storage_stub(node_id, table)
            except errors.NotOwner as error:  # the node left the cluster since it took stores
                _drop_node(context, node_id, str(error))
                continue
            with_meta = node_id in meta_nodes
            request = storage_pb2.VoteRequest(
                ttid=context.ttid, has_transaction=with_meta, metadata_partition=context.metadata_partition,
                table_version=table.version, objects=[_encode_write(w) for w in writes],
                lock_timeout=AT_ONCE_LOCK_WAIT)
            if with_meta:
                request.transaction.CopyFrom(_transaction_info(context))
            context.contacted.add(node_id)
            calls.append((node_id, writes, with_meta, (stub.Vote, request, VOTE_TIMEOUT, peer)))
        conflicts: list[storage_pb2.Conflict] = []
        waited_too_long = False
        replies = rpc.call_all([call for *_, call in calls])
        for (node_id, writes, with_meta, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, errors.LockTimeout):
                waited_too_long = True
                continue
            if isinstance(reply, errors.NeoError):
                reply = _request(context, node_id, lambda reply=reply: _raise(reply))  # type: ignore[misc]
                if reply is None:
                    continue
            _took(context, table, node_id, writes, reply.conflicts)
            if reply.conflicts:
                conflicts.extend(reply.conflicts)
                continue
            _voted(context, node_id, with_meta, reply)
        if waited_too_long:
            return False
        for conflict in conflicts:
            _resolve_conflict(context, resolve, conflict)


def _start_over(cluster: ClusterConnection, context: TransactionContext) -> None:
    """A vote at once gave up: abort the transaction on every node it
    reached and go on under a new TTID, as if nothing had been sent.  The
    writes stay, conflict resolutions included (each is checked again)."""
    client_id = cluster.client_id
    log.debug("transaction %s: a lock was not free in time for a vote at once: voting again node by node",
              tid_repr(context.ttid))
    try:
        cluster.master_call("Abort", master_pb2.AbortRequest(
            client_id=client_id, ttid=context.ttid, node_ids=sorted(context.contacted | set(context.failed))))
    finally:
        cluster.unfinished(context.ttid, finished=True)
    request = master_pb2.BeginRequest(client_id=client_id, tid=context.requested_tid or b"")
    context.ttid = cluster.master_call("Begin", request).ttid
    cluster.unfinished(context.ttid)
    context.stored_on.clear()
    context.taken.clear()
    context.failed.clear()
    context.votes.clear()
    context.unchecked.clear()
    context.voted.clear()
    context.metadata_on.clear()
    context.contacted.clear()
    context.position = 0


class AtOnceVotes:
    """Whether a client's next vote goes to every node at once.

    At once saves a round trip per node but may find a lock busy for long
    (objects other clients write too) and then start over: after it gave
    up, this client votes node by node for the next few transactions, twice
    as many after each further giving up (at most ``AT_ONCE_MAX_PAUSE``),
    and once it works again, it is tried every time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pause = 0  # how many votes to skip after the next giving up
        self._skip = 0  # votes still to go node by node

    def wanted(self) -> bool:
        with self._lock:
            if self._skip:
                self._skip -= 1
                return False
            return True

    def worked(self) -> None:
        with self._lock:
            self._pause = 0

    def gave_up(self) -> None:
        with self._lock:
            self._pause = min(max(2 * self._pause, AT_ONCE_FIRST_PAUSE), AT_ONCE_MAX_PAUSE)
            self._skip = self._pause


def _vote_everywhere(cluster: ClusterConnection, context: TransactionContext) -> None:
    """Stores first: now every node that took them votes (in parallel: a
    vote takes no lock), the metadata partition's cells with the metadata."""
    table = cluster.table
    meta = context.metadata_partition
    assert meta is not None  # chosen by vote() before any node is visited
    meta_nodes = {n for n in table.writable_nodes(meta) if n not in context.failed}
    targets = sorted((set(context.stored_on) | meta_nodes) - set(context.failed) - context.voted)
    calls = []
    for node_id in targets:
        try:
            stub, peer = cluster.storage_stub(node_id, table)
        except errors.NotOwner as error:
            _drop_node(context, node_id, str(error))
            continue
        with_meta = node_id in meta_nodes
        request = storage_pb2.VoteRequest(
            ttid=context.ttid, has_transaction=with_meta, metadata_partition=meta, table_version=table.version)
        if with_meta:
            request.transaction.CopyFrom(_transaction_info(context))
        context.contacted.add(node_id)
        calls.append((node_id, with_meta, (stub.Vote, request, VOTE_TIMEOUT, peer)))
    for (node_id, with_meta, _), reply in zip(calls, rpc.call_all([call for *_, call in calls]), strict=True):
        if isinstance(reply, errors.NeoError):
            _request(context, node_id, lambda reply=reply: _raise(reply))  # type: ignore[misc]
            continue
        _voted(context, node_id, with_meta, reply)


def _raise(error: Exception) -> Any:
    raise error


def _request(context: TransactionContext, node_id: int, call: Callable[[], Any]) -> Any:
    """The reply of ``call``, or None when the node failed (it is dropped:
    the others may still hold every partition); a lock lost to an older
    transaction raises ConflictError (ZODB retries the transaction), and so
    does a TTID that the node already dropped: the cluster aborted it (the
    leader that handed it out was replaced, or took this client for gone),
    so it can never commit."""
    try:
        return call()
    except (errors.LockDied, errors.LockTimeout) as error:
        raise POSException.ConflictError(f"transaction {context.ttid.hex()} must be retried: {error}") from None
    except errors.UnknownTransaction as error:
        raise TransactionNotCommittedError(
            f"transaction {tid_repr(context.ttid)} was aborted by the cluster while it voted ({error}): "
            "run it again") from None
    except (errors.Unavailable, errors.NotOwner) as error:
        _drop_node(context, node_id, str(error))
        return None
    except errors.NeoError as error:
        raise to_zodb_error(error) from None


def _took(context: TransactionContext, table: Any, node_id: int, writes: list[ObjectWrite],
          conflicts: Any) -> None:
    """``node_id`` took ``writes``, but for the ``conflicts``."""
    conflicted = {conflict.oid for conflict in conflicts}
    taken = [w for w in writes if w.oid not in conflicted]
    context.taken.setdefault(node_id, {}).update((w.oid, w) for w in taken)
    context.stored_on.setdefault(node_id, set()).update(table.partition_of(w.oid) for w in taken)


def _transaction_info(context: TransactionContext) -> common_pb2.TransactionInfo:
    return common_pb2.TransactionInfo(
        user=_as_bytes(context.meta.user), description=_as_bytes(context.meta.description),
        extension=context.meta.extension_bytes, oids=context.changed_oids, packed=context.packed,
    )


def _resolve_conflict(context: TransactionContext, resolve: Resolver, conflict: storage_pb2.Conflict) -> None:
    """Replace the write of a conflicting oid with ZODB's resolution of it
    (raises ConflictError or ReadConflictError if it cannot be resolved)."""
    oid = conflict.oid
    write = context.writes[oid]
    context.newest_conflict = max(context.newest_conflict, conflict.committed_serial)
    if write.serial == conflict.committed_serial and oid in context.resolved:
        return  # resolved already (a conflict answered by two nodes)
    if conflict.read_conflict or write.check_only:
        raise POSException.ReadConflictError(
            oid=oid, serials=(conflict.committed_serial, write.serial))
    if write.data is None:
        raise POSException.ConflictError(
            oid=oid, serials=(conflict.committed_serial, write.serial),
            message="database conflict error: an object undone or deleted was changed by a later transaction")
    # Raises ConflictError (with oid and serials) when it cannot resolve.
    data = resolve(oid, conflict.committed_serial, write.serial, write.data)
    context.writes[oid] = ObjectWrite(oid, conflict.committed_serial, data, Record.pack(data))
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
    context: TransactionContext, callback: Callable[[bytes], Any], spare: SpareTtid | None = None,
    again: bool = True,
) -> bytes:
    """Commit: the TID.  With ``spare``, the answer also brings the TTID of
    the client's next transaction (kept there).  A transaction that the
    masters guarantee will never commit because it began under a leader
    since replaced is run once more under a new TTID (``again``: see
    :func:`_commit_again`)."""
    if context.phase is not Phase.VOTED:
        raise POSException.StorageTransactionError("tpc_finish before tpc_vote")
    request = master_pb2.FinishRequest(
        client_id=client_id, ttid=context.ttid, oids=context.changed_oids,
        partitions=sorted(context.touched), table_version=cluster.table.version,
        metadata_partition=context.metadata_partition, last_tid=dispatcher.last_transaction(),
        want_spare=spare is not None and context.requested_tid is None,
        votes=[master_pb2.Vote(node_id=n, partitions=sorted(p),
                               unchecked_partitions=sorted(context.unchecked.get(n, ())))
               for n, p in sorted(context.votes.items())],
    )
    dispatcher.expect_own(context.ttid)
    since_last: list[tuple[bytes, bytes, list[bytes]]] | None = None
    try:
        # One try per master: Finish is not idempotent, a lost answer is
        # recovered below by asking what became of the TTID.
        reply = cluster.master_call("Finish", request, timeout=FINISH_TIMEOUT, retry_seconds=0, idempotent=False)
        tid = reply.tid
        if reply.spare_ttid and spare is not None:
            spare.put(reply.spare_ttid)
        if reply.catch_up.HasField("partition_table"):
            cluster.learn_table(reply.catch_up.partition_table)
        if reply.catch_up.complete:
            since_last = [(i.tid, i.ttid, list(i.oids)) for i in reply.catch_up.invalidations]
    except (errors.Unavailable, errors.NotLeader, errors.UnknownTransaction) as finish_error:
        # The master died or leadership changed mid-finish: committed or not?
        # (Not when this client is closing: its stream is gone, nobody waits.)
        error: errors.NeoError = finish_error
        tid = None
        known = False  # that it did not commit
        if not cluster.closed:
            try:
                tid = transaction_outcome(cluster, client_id, context.ttid,
                                          timeout=max(OUTCOME_TIMEOUT, cluster.wait_timeout))
                known = True
            except errors.NeoError as failure:
                error = failure
        if tid is None:
            dispatcher.forget_own(context.ttid)
            _release_votes(cluster, client_id, context)
            if not known:
                raise ClusterUnavailableError(
                    f"the outcome of transaction {tid_repr(context.ttid)} is unknown: it may have committed or "
                    f"not, and the masters could not tell ({error}); a new client will see it if it did") from None
            if again and not cluster.closed:
                return _commit_again(cluster, dispatcher, client_id, context, callback, spare, error)
            raise TransactionNotCommittedError(
                f"transaction {tid_repr(context.ttid)} did not commit and never will "
                f"({error}): run it again") from None
    except errors.NeoError as error:
        dispatcher.forget_own(context.ttid)
        _release_votes(cluster, client_id, context)
        raise to_zodb_error(error) from None
    finally:
        cluster.unfinished(context.ttid, finished=True)
    dispatcher.finish_own(context.ttid, tid, callback, since_last)
    context.phase = Phase.FINISHED
    return tid


def _commit_again(
    cluster: ClusterConnection, dispatcher: InvalidationDispatcher, client_id: str,
    context: TransactionContext, callback: Callable[[bytes], Any], spare: SpareTtid | None, error: Exception,
) -> bytes:
    """``context`` did not commit and the masters guarantee it never will:
    it began under a leader that has been replaced since (its TTID a spare
    that the last Finish brought, or a Begin just before the change), so
    the leader now does not know it.  Its votes are released; run it once
    more, whole, under a TTID of the leader now: the same writes, each
    checked again against the revision it was based on.  A conflict now
    (another transaction committed one of its objects meanwhile) cannot be
    resolved any more (tpc_vote has told ZODB which objects it resolved):
    the transaction then fails as a ConflictError, to be run again."""
    log.info("transaction %s began under a leader since replaced (%s): committing it again",
             tid_repr(context.ttid), error)
    retry = begin(cluster, client_id, context.meta, context.requested_tid, packed=context.packed)
    retry.writes, retry.undone_oids = context.writes, context.undone_oids
    try:
        vote(cluster, retry, _refuse_resolution)
    except (POSException.POSError, errors.NeoError) as failure:
        if retry.newest_conflict:  # as tpc_vote does: the next sync asks until it is seen
            dispatcher.learn_committed(retry.newest_conflict)
        with contextlib.suppress(errors.NeoError):
            abort(cluster, client_id, retry, retry_seconds=RELEASE_RETRY_SECONDS)
        raise TransactionNotCommittedError(
            f"transaction {tid_repr(context.ttid)} did not commit and never will ({error}), "
            f"and could not be committed again as {tid_repr(retry.ttid)} ({failure}): run it again") from None
    return finish(cluster, dispatcher, client_id, retry, callback, spare, again=False)


def _refuse_resolution(oid: bytes, committed: bytes, old: bytes, data: bytes) -> bytes:
    raise POSException.ConflictError(oid=oid, serials=(committed, old))


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
          retry_seconds: float | None = None) -> None:
    if context.phase in (Phase.FINISHED, Phase.ABORTED):
        return
    try:
        _abort(cluster, client_id, context, retry_seconds)
    finally:
        cluster.unfinished(context.ttid, finished=True)


def _abort(cluster: ClusterConnection, client_id: str, context: TransactionContext,
           retry_seconds: float | None) -> None:
    nodes = context.contacted | set(context.stored_on) | set(context.votes) | set(context.failed)
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
