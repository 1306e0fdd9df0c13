"""The master's gRPC services: ``Master`` (clients, storage nodes) and ``Admin``.

Servicers only decode, call domain code, and encode: registration, oids and
administration live in :mod:`~neostore.master_node.cluster`, the commit path
in :mod:`~neostore.master_node.commit`, the invalidation stream in
:mod:`~neostore.master_node.invalidations`.  Writes go to the components
:class:`~neostore.master_node.leadership.Leadership` holds while this master
leads (a follower answers them with ``NotLeader`` naming the leader); reads
and the invalidation stream are served by every master.  Errors are raised as
:class:`~neostore.errors.NeoError` and become gRPC statuses in the one
interceptor of :mod:`neostore.rpc`.

Streams (``Subscribe``, ``StorageSession``) register a cancel callback that
closes the domain stream, so that a peer going away is noticed at once, and
close it again when the generator ends for any other reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from neostore import errors
from neostore.master_node.cluster import Heartbeat
from neostore.master_node.invalidations import (
    Event,
    Invalidation,
    InvalidationPublisher,
    ResetCache,
    StartTid,
    TableChanged,
)
from neostore.master_node.leadership import Leadership
from neostore.master_node.state import NodeVote, PartitionTid
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc


class MasterInfo:
    """What GetClusterInfo tells of the masters: this one, all of them, the leader, the term."""

    def __init__(self, address: Callable[[], str], masters: Callable[[], list[str]],
                 leader: Callable[[], str], term: Callable[[], int]) -> None:
        self.address = address
        self.masters = masters
        self.leader = leader
        self.term = term


def cluster_info(leadership: Leadership, publisher: InvalidationPublisher,
                 info: MasterInfo) -> master_pb2.ClusterInfo:
    """GetClusterInfo's answer; ``last_tid`` is the last TID this master published."""
    state = leadership.state
    return master_pb2.ClusterInfo(
        cluster_name=state.cluster_name,
        state=int(state.status),
        num_partitions=state.num_partitions,
        num_replicas=state.num_replicas,
        table_version=state.table.version,
        last_oid=state.last_oid,
        last_tid=publisher.last_tid,
        masters=info.masters(),
        leader=info.leader(),
        term=info.term(),
    )


def client_event(event: Event) -> master_pb2.ClientEvent:
    """One invalidation-stream event as sent to clients."""
    if isinstance(event, StartTid):
        return master_pb2.ClientEvent(start_tid=event.tid)
    if isinstance(event, Invalidation):
        return master_pb2.ClientEvent(invalidation=master_pb2.Invalidation(
            tid=event.tid, ttid=event.ttid, oids=list(event.oids)))
    if isinstance(event, ResetCache):
        return master_pb2.ClientEvent(reset_cache_at=event.tid)
    if isinstance(event, TableChanged):
        return master_pb2.ClientEvent(partition_table=event.table.to_proto())
    raise TypeError(f"unknown event {event!r}")


def _close_on_cancel(context: grpc.ServicerContext, close: Callable[[], None]) -> None:
    if not context.add_callback(close):
        close()  # the rpc already ended


class MasterServicer(master_pb2_grpc.MasterServicer):
    """service Master (master.proto): clients and storage nodes."""

    def __init__(self, leadership: Leadership, publisher: InvalidationPublisher, info: MasterInfo) -> None:
        self._leadership = leadership
        self._publisher = publisher
        self._info = info

    def GetClusterInfo(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> master_pb2.ClusterInfo:
        return cluster_info(self._leadership, self._publisher, self._info)

    def GetPartitionTable(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> common_pb2.PartitionTable:
        return self._leadership.state.table.to_proto()

    def NewOids(self, request: master_pb2.NewOidsRequest, context: grpc.ServicerContext) -> master_pb2.NewOidsReply:
        first, count = self._leadership.cluster().new_oids(request.count)
        return master_pb2.NewOidsReply(first_oid=first, count=count)

    def Begin(self, request: master_pb2.BeginRequest, context: grpc.ServicerContext) -> master_pb2.BeginReply:
        self._leadership.cluster().require_running()
        coordinator = self._leadership.coordinator()
        return master_pb2.BeginReply(ttid=coordinator.begin(request.client_id, request.tid or None))

    def Finish(self, request: master_pb2.FinishRequest, context: grpc.ServicerContext) -> master_pb2.FinishReply:
        self._leadership.cluster().require_running()
        votes = [NodeVote(vote.node_id, tuple(vote.partitions)) for vote in request.votes]
        tid = self._leadership.coordinator().finish(
            request.client_id, request.ttid, list(request.oids), list(request.partitions), votes)
        return master_pb2.FinishReply(tid=tid)

    def Abort(self, request: master_pb2.AbortRequest, context: grpc.ServicerContext) -> common_pb2.Empty:
        self._leadership.coordinator().abort(request.client_id, request.ttid, list(request.node_ids))
        return common_pb2.Empty()

    def GetTransactionOutcome(self, request: master_pb2.TransactionOutcomeRequest,
                              context: grpc.ServicerContext) -> master_pb2.TransactionOutcome:
        committed = master_pb2.TransactionOutcome.COMMITTED
        coordinator = self._leadership.coordinator_if_leader()
        if coordinator is None:  # a follower: the replicated record only proves a commit
            tid = self._leadership.state.outcome_of(request.ttid, request.client_id)
            if tid is not None:
                return master_pb2.TransactionOutcome(status=committed, tid=tid)
            coordinator = self._leadership.coordinator()  # NotLeader naming the leader
        tid = coordinator.outcome(request.client_id, request.ttid)
        if tid is None:
            return master_pb2.TransactionOutcome(status=master_pb2.TransactionOutcome.ABORTED)
        return master_pb2.TransactionOutcome(status=committed, tid=tid)

    def Subscribe(self, request: master_pb2.SubscribeRequest,
                  context: grpc.ServicerContext) -> Iterator[master_pb2.ClientEvent]:
        if not request.client_id:
            raise errors.BadRequest("Subscribe: client_id is required")
        since_tid = request.since_tid or None
        if since_tid is not None and len(since_tid) != 8:
            raise errors.BadRequest(f"since_tid must be 8 bytes, got {len(since_tid)}")
        subscription = self._publisher.subscribe(since_tid)
        # The client's session: only the leader aborts what a departed client left.
        coordinator = self._leadership.coordinator_if_leader()
        if coordinator is not None:
            coordinator.client_connected(request.client_id)
        try:
            _close_on_cancel(context, subscription.close)
            for event in subscription:
                yield client_event(event)
        finally:
            subscription.close()
            if coordinator is not None:
                coordinator.client_disconnected(request.client_id)

    def RegisterStorage(self, request: master_pb2.RegisterStorageRequest,
                        context: grpc.ServicerContext) -> master_pb2.RegisterStorageReply:
        registration = self._leadership.cluster().register_storage(
            cluster_name=request.cluster_name,
            node_id=request.node_id,
            address=request.address,
            label=request.label,
            pending_ttids=list(request.pending_ttids),
            partition_last_tids=[PartitionTid(held.partition, held.tid) for held in request.partition_last_tids],
        )
        return master_pb2.RegisterStorageReply(
            node_id=registration.node_id,
            partition_table=registration.table.to_proto(),
            last_tid=registration.last_tid,
            term=registration.term,
            decided=[common_pb2.Decision(ttid=ttid, tid=tid) for ttid, tid in registration.decided],
        )

    def StorageSession(self, request: master_pb2.StorageSessionRequest,
                       context: grpc.ServicerContext) -> Iterator[master_pb2.StorageEvent]:
        session = self._leadership.cluster().open_session(request.node_id)
        try:
            _close_on_cancel(context, session.close)
            for event in session:
                if isinstance(event, Heartbeat):
                    yield master_pb2.StorageEvent(heartbeat=True)
                else:
                    yield master_pb2.StorageEvent(partition_table=event.to_proto())
        finally:
            session.close()


class AdminServicer(master_pb2_grpc.AdminServicer):
    """service Admin (master.proto): neoctl."""

    def __init__(self, leadership: Leadership, publisher: InvalidationPublisher, info: MasterInfo) -> None:
        self._leadership = leadership
        self._publisher = publisher
        self._info = info

    def GetClusterInfo(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> master_pb2.ClusterInfo:
        return cluster_info(self._leadership, self._publisher, self._info)

    def GetPartitionTable(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> common_pb2.PartitionTable:
        return self._leadership.state.table.to_proto()

    def AddNodes(self, request: master_pb2.AddNodesRequest, context: grpc.ServicerContext) -> common_pb2.PartitionTable:
        return self._leadership.cluster().add_nodes(list(request.node_ids)).to_proto()
