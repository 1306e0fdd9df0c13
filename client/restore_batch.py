"""Restore batches: many source transactions committed as one (the import's bulk path).

An import restores a source's history transaction by transaction
(IStorageRestoreable).  One cluster commit per source transaction costs a
Begin, a vote on every replica, a Finish and a Raft entry: a few hundred
transactions per second at best, for transactions of a few records each.
A restore batch copies many of them in one commit:

1. ``Begin`` with ``tid`` = the batch's last TID (the commit's own) and
   ``restore_from`` = its first: the master refuses it unless both are
   above every committed TID (and checks again at Finish).
2. Every storage node holding a writable cell of a partition the batch
   writes takes, in parallel with the others, the revisions of its cells
   (each tagged with the TID of the transaction it belongs to,
   ``ObjectStore.tid``, but for the last transaction's), the metadata of
   the transactions whose TID falls in its partitions (``VoteRequest.
   carried``; the last one's as a transaction's own metadata), and votes:
   all of it is pending, fsynced, under the batch's TTID.
3. ``Finish`` as for any transaction (:func:`neostore.client.commit.
   finish`): one decision, one Raft entry; at commit each storage node
   writes every carried record under its own TID, in the same LMDB write
   as the rest.  A batch commits whole or not at all, so an interrupted
   import leaves a prefix of the source's history and resumes after it.

Nothing is checked for conflicts (a restore writes history as it was), so
every node is sent its share at once; the locks taken are those of any
restore, so a batch waits for an earlier one writing the same objects to
be applied.  A node that fails is dropped, as in any vote, as long as each
partition written keeps a replica that voted; the others' cells are
marked OUT_OF_DATE by the master and catch up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ZODB import POSException

from neostore import errors, rpc
from neostore.client import commit
from neostore.client.cluster import ClusterConnection
from neostore.client.exceptions import to_zodb_error
from neostore.client.invalidations import InvalidationDispatcher
from neostore.ids import ZERO_TID, tid_repr
from neostore.protocol import common_pb2, master_pb2, storage_pb2
from neostore.records import Record


@dataclasses.dataclass
class RestoredTransaction:
    """One source transaction: its TID, status (" " or "p"), metadata
    (user, description, extension_bytes: ZODB's TransactionMetaData) and
    records ``(oid, data)``, data None for an undone creation."""

    tid: bytes
    status: str
    meta: Any
    records: list[tuple[bytes, bytes | None]]
    _stores: tuple[bool, list[storage_pb2.ObjectStore]] | None = dataclasses.field(
        default=None, repr=False, compare=False)

    def stores(self, compress: bool = True) -> list[storage_pb2.ObjectStore]:
        """Its records as restores, packed (compressed, checksummed) once:
        an importer packs them ahead, on the thread that reads the source
        (zlib lets other threads run meanwhile)."""
        if self._stores is None or self._stores[0] != compress:
            messages = []
            for oid, data in self.records:
                message = storage_pb2.ObjectStore(oid=oid, serial=ZERO_TID, restore=True)
                if data is None:
                    message.undone_creation = True
                else:
                    Record.pack(data, compress).to_proto(message.record)
                messages.append(message)
            self._stores = (compress, messages)
        return self._stores[1]


def restore_batch(
    cluster: ClusterConnection, dispatcher: InvalidationDispatcher, client_id: str,
    transactions: Sequence[RestoredTransaction], compress: bool = True,
) -> bytes:
    """Commit ``transactions`` (TID order, strictly increasing, all above
    the cluster's last TID) as one restore batch; the last one's TID."""
    if not transactions:
        raise POSException.StorageError("an empty restore batch")
    for earlier, later in zip(transactions, transactions[1:], strict=False):
        if later.tid <= earlier.tid:
            raise POSException.StorageError(
                f"a restore batch must be in TID order: {tid_repr(later.tid)} follows {tid_repr(earlier.tid)}")
    for restored in transactions:
        if restored.status not in (" ", "p"):
            raise POSException.StorageError(
                f"transaction status {restored.status!r} cannot be stored: neostore keeps ' ' or 'p'")
    own = transactions[-1]
    try:
        ttid = cluster.master_call("Begin", master_pb2.BeginRequest(
            client_id=client_id, tid=own.tid, restore_from=transactions[0].tid)).ttid
    except errors.NeoError as error:
        raise to_zodb_error(error) from None
    cluster.unfinished(ttid)
    context = commit.TransactionContext(ttid=ttid, meta=own.meta, requested_tid=own.tid, packed=own.status == "p")
    try:
        _vote(cluster, context, transactions, compress)
        return commit.finish(cluster, dispatcher, client_id, context, lambda tid: None, again=False)
    except BaseException:
        if context.phase is commit.Phase.BEGUN:  # finish releases the votes itself
            try:
                commit.abort(cluster, client_id, context, retry_seconds=commit.RELEASE_RETRY_SECONDS)
            except errors.NeoError:
                pass  # the master forgets it when this client's session ends
        raise


@dataclasses.dataclass
class _Share:
    """What one storage node takes of a batch."""

    stores: list[storage_pb2.ObjectStore] = dataclasses.field(default_factory=list)
    partitions: set[int] = dataclasses.field(default_factory=set)
    carried: list[common_pb2.TransactionInfo] = dataclasses.field(default_factory=list)
    own_metadata: bool = False


def _vote(cluster: ClusterConnection, context: commit.TransactionContext,
          transactions: Sequence[RestoredTransaction], compress: bool) -> None:
    """Every node takes its share and votes, all at once (step 2)."""
    table = cluster.table
    own = transactions[-1]
    context.metadata_partition = table.partition_of(own.tid)
    shares: dict[int, _Share] = {}

    def share_of(partition: int) -> list[_Share]:
        nodes = table.writable_nodes(partition)
        if not nodes:
            raise errors.Unavailable(f"partition {partition} has no writable replica")
        context.touched.add(partition)
        found = [shares.setdefault(node_id, _Share()) for node_id in nodes]
        for share in found:
            share.partitions.add(partition)
        return found

    for restored in transactions:
        carried = restored is not own
        for message in restored.stores(compress):
            message.tid = restored.tid if carried else b""
            oid = message.oid
            context.writes[oid] = commit.ObjectWrite(oid, ZERO_TID, restore=True)  # Finish lists every oid
            for share in share_of(table.partition_of(oid)):
                share.stores.append(message)
        info = _transaction_info(restored, carried) if carried else None
        for share in share_of(table.partition_of(restored.tid)):
            if info is not None:
                share.carried.append(info)
            else:
                share.own_metadata = True
    own_info = _transaction_info(own, False)
    requests = {node_id: _requests(context, table.version, share, own_info) for node_id, share in shares.items()}
    calls_made = 0
    while True:  # round k: the k-th request of every node that has one left
        calls = []
        for node_id, pending in sorted(requests.items()):
            if calls_made >= len(pending) or node_id in context.failed:
                continue
            try:
                stub, peer = cluster.storage_stub(node_id, table)
            except errors.NotOwner as error:
                commit._drop_node(context, node_id, str(error))
                continue
            context.contacted.add(node_id)
            request = pending[calls_made]
            method = stub.Vote if isinstance(request, storage_pb2.VoteRequest) else stub.Store
            calls.append((node_id, (method, request, commit.VOTE_TIMEOUT, peer)))
        if not calls:
            break
        replies = rpc.call_all([call for _, call in calls])
        for (node_id, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, errors.NeoError):
                commit._request(context, node_id, lambda reply=reply: commit._raise(reply))  # type: ignore[misc]
                continue
            if reply.conflicts:  # a restore is never checked: a node that says otherwise is broken
                raise POSException.StorageError(
                    f"storage node {node_id} reported a conflict on a restore of {reply.conflicts[0].oid.hex()}")
            if isinstance(reply, storage_pb2.VoteReply):
                context.voted.add(node_id)
                context.unchecked[node_id] = set(reply.unchecked_partitions)
        calls_made += 1
    context.votes = {node_id: shares[node_id].partitions for node_id in context.voted}
    commit._check_every_partition_kept_a_replica(context, context.votes)
    context.phase = commit.Phase.VOTED


def _requests(context: commit.TransactionContext, table_version: int, share: _Share,
              own_info: common_pb2.TransactionInfo) -> list[Any]:
    """A node's Store requests (for what does not fit in one message), then its Vote."""
    requests: list[Any] = []
    chunk: list[storage_pb2.ObjectStore] = []
    size = 0
    for message in share.stores:
        length = message.ByteSize()
        if chunk and size + length > commit.MAX_REQUEST_BYTES:
            requests.append(storage_pb2.StoreRequest(ttid=context.ttid, table_version=table_version, objects=chunk))
            chunk, size = [], 0
        chunk.append(message)
        size += length
    vote = storage_pb2.VoteRequest(
        ttid=context.ttid, has_transaction=share.own_metadata, metadata_partition=context.metadata_partition,
        table_version=table_version, objects=chunk, carried=share.carried)
    if share.own_metadata:
        vote.transaction.CopyFrom(own_info)
    requests.append(vote)
    return requests


def _transaction_info(restored: RestoredTransaction, carried: bool) -> common_pb2.TransactionInfo:
    """Its metadata; with its TID if ``carried`` (else the batch's own)."""
    meta = restored.meta
    return common_pb2.TransactionInfo(
        tid=restored.tid if carried else b"", user=commit._as_bytes(meta.user),
        description=commit._as_bytes(meta.description), extension=meta.extension_bytes,
        oids=[oid for oid, _ in restored.records], packed=restored.status == "p")
