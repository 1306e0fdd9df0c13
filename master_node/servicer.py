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

import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import grpc

from neostore import errors
from neostore.master_node.cluster import Heartbeat, Shutdown
from neostore.master_node.commit import CommitCoordinator
from neostore.master_node.invalidations import (
    Event,
    Invalidation,
    InvalidationPublisher,
    ResetCache,
    StartTid,
    StoppingChanged,
    Subscription,
    TableChanged,
)
from neostore.master_node.leadership import Leadership
from neostore.master_node.state import NodeVote, PartitionTid
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc


def _no_membership(address: str) -> int:
    raise errors.MembershipRefused("this master runs alone, without Raft: start the cluster with "
                                   "several masters to change their membership")


#: An idle invalidation stream carries a heartbeat this often (seconds).
STREAM_HEARTBEAT_INTERVAL = 1.0
#: A busy invalidation stream carries at most one message this often
#: (seconds): the transactions committed meanwhile share it (the first one
#: after a quiet spell goes at once).  A client that commits gets what it
#: needs in its Finish answer, without waiting for it; one that conflicted
#: asks with a Sync.  Every client receives every commit, so this bounds
#: the messages the leader sends (and each client receives) per second:
#: 0.03 rather than 0.01 s gave 15-30% more commits/s with 8 clients
#: (benchmarks/commit.py).
DEFAULT_STREAM_INTERVAL = 0.03


class MasterInfo:
    """What GetClusterInfo tells of the masters: this one, all of them (id, address),
    the leader, the term; and the membership changes (leader only)."""

    def __init__(self, address: Callable[[], str], masters: Callable[[], list[tuple[int, str]]],
                 leader: Callable[[], str], term: Callable[[], int],
                 add_master: Callable[[str], int] = _no_membership,
                 remove_master: Callable[[str], int] = _no_membership,
                 frames_address: Callable[[], str] = lambda: "") -> None:
        self.address = address
        self.frames_address = frames_address
        self.masters = masters
        self.leader = leader
        self.term = term
        self.add_master = add_master
        self.remove_master = remove_master

    def members(self) -> list[master_pb2.MasterMember]:
        return [master_pb2.MasterMember(node_id=node_id, address=address) for node_id, address in self.masters()]


def cluster_info(leadership: Leadership, publisher: InvalidationPublisher,
                 info: MasterInfo) -> master_pb2.ClusterInfo:
    """GetClusterInfo's answer; ``last_tid`` is the last TID this master published."""
    state = leadership.state
    members = info.members()
    return master_pb2.ClusterInfo(
        cluster_name=state.cluster_name,
        state=(master_pb2.ClusterInfo.STOPPING if state.running and state.stopping
               else cast("master_pb2.ClusterInfo.State", int(state.status))),
        num_partitions=state.num_partitions,
        num_replicas=state.num_replicas,
        table_version=state.table.version,
        last_oid=state.last_oid,
        last_tid=publisher.last_tid,
        masters=[member.address for member in members],
        leader=info.leader(),
        term=info.term(),
        members=members,
        cluster_id=state.cluster_id,
        frames_address=info.frames_address(),
    )


def invalidation_message(invalidation: Invalidation) -> master_pb2.Invalidation:
    return master_pb2.Invalidation(tid=invalidation.tid, ttid=invalidation.ttid, oids=list(invalidation.oids))


def client_messages(events: list[Event]) -> Iterator[master_pb2.ClientEvent]:
    """The stream messages for ``events``, in order: consecutive
    invalidations share one message."""
    batch: list[master_pb2.Invalidation] = []
    for event in events:
        if isinstance(event, Invalidation):
            batch.append(invalidation_message(event))
            continue
        if batch:
            yield master_pb2.ClientEvent(invalidations=master_pb2.Invalidations(items=batch))
            batch = []
        yield client_event(event)
    if batch:
        yield master_pb2.ClientEvent(invalidations=master_pb2.Invalidations(items=batch))


def client_event(event: Event) -> master_pb2.ClientEvent:
    """One invalidation-stream event as sent to clients."""
    if isinstance(event, StartTid):
        return master_pb2.ClientEvent(start_tid=event.tid)
    if isinstance(event, Invalidation):
        return master_pb2.ClientEvent(invalidations=master_pb2.Invalidations(items=[invalidation_message(event)]))
    if isinstance(event, ResetCache):
        return master_pb2.ClientEvent(reset_cache_at=event.tid)
    if isinstance(event, TableChanged):
        return master_pb2.ClientEvent(partition_table=event.table.to_proto())
    if isinstance(event, StoppingChanged):
        return master_pb2.ClientEvent(stopping=event.stopping)
    raise TypeError(f"unknown event {event!r}")


class ClientStream:
    """A client's invalidation stream served by a stream pump: what
    :meth:`MasterServicer.Subscribe` yields, asked for instead of waited
    for.  Messages at most every ``interval`` (what comes meanwhile goes in
    the next one), a heartbeat after ``STREAM_HEARTBEAT_INTERVAL`` of
    silence, the end once the subscription ended (the master stopping)."""

    def __init__(self, publisher: InvalidationPublisher, subscription: Subscription,
                 coordinator: CommitCoordinator | None, client_id: str, wake: Callable[[], None],
                 interval: float) -> None:
        self._publisher = publisher
        self._subscription = subscription
        self._coordinator = coordinator
        self._client_id = client_id
        self._wake = wake
        self._interval = interval
        self._sent = float("-inf")  # the last message with events
        self._heard = time.monotonic()  # the last message of any kind
        publisher.add_listener(wake)

    def poll(self, now: float) -> tuple[list[master_pb2.ClientEvent] | None, float]:
        heartbeat_at = self._heard + STREAM_HEARTBEAT_INTERVAL
        if now < self._sent + self._interval:
            return [], min(self._sent + self._interval, heartbeat_at)  # news wait for the interval
        events = self._subscription.next_events(timeout=0)
        if events:
            self._sent = self._heard = now
            return list(client_messages(events)), now + STREAM_HEARTBEAT_INTERVAL
        if self._subscription.ended:
            return None, now
        if now >= heartbeat_at:
            self._heard = now
            return [master_pb2.ClientEvent(heartbeat=True)], now + STREAM_HEARTBEAT_INTERVAL
        return [], heartbeat_at

    def end(self) -> None:
        """End the stream from any thread (its caller went): the next poll says so."""
        self._subscription.close()

    def close(self) -> None:
        """The stream ended: release its subscription and session (once)."""
        self._subscription.close()
        self._publisher.remove_listener(self._wake)
        coordinator = self._coordinator
        if coordinator is not None:  # may abort the client's transactions: not on the pump's thread
            threading.Thread(target=coordinator.client_disconnected, args=(self._client_id,),
                             name="client-departed", daemon=True).start()


def _close_on_cancel(context: grpc.ServicerContext, close: Callable[[], None]) -> None:
    """Call ``close`` when the rpc ends.  gRPC runs such callbacks on the
    server's one polling thread, which must never block: closing a storage
    session marks the node DOWN, a Raft commit that needs this very server to
    take the other masters' answers (blocking here stalled the leader until
    the commit timed out and the followers deposed it).  So ``close`` runs on
    a thread of its own."""
    def close_elsewhere() -> None:
        threading.Thread(target=close, name="close-stream", daemon=True).start()

    if not context.add_callback(close_elsewhere):
        close()  # the rpc already ended


class MasterServicer(master_pb2_grpc.MasterServicer):
    """service Master (master.proto): clients and storage nodes."""

    def __init__(self, leadership: Leadership, publisher: InvalidationPublisher, info: MasterInfo,
                 stream_interval: float = DEFAULT_STREAM_INTERVAL) -> None:
        self._leadership = leadership
        self._publisher = publisher
        self._info = info
        self._stream_interval = stream_interval

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
        if request.release_spare:
            coordinator.release_spare(request.client_id, request.release_spare)
        return master_pb2.BeginReply(ttid=coordinator.begin(
            request.client_id, request.tid or None, restore_from=request.restore_from or None))

    def Finish(self, request: master_pb2.FinishRequest, context: grpc.ServicerContext) -> master_pb2.FinishReply:
        self._leadership.cluster().require_running()
        votes = [NodeVote(vote.node_id, tuple(vote.partitions), tuple(vote.unchecked_partitions))
                 for vote in request.votes]
        tid = self._leadership.coordinator().finish(
            request.client_id, request.ttid, list(request.oids), list(request.partitions), votes,
            request.metadata_partition if request.HasField("metadata_partition") else None)
        reply = master_pb2.FinishReply(tid=tid)
        self._catch_up(reply.catch_up, request.client_id, request.last_tid, tid, request.table_version)
        coordinator = self._leadership.coordinator_if_leader() if request.want_spare else None
        if coordinator is not None:  # never an error here: the transaction is committed
            reply.spare_ttid = coordinator.reserve(request.client_id) or b""
        return reply

    def Sync(self, request: master_pb2.SyncRequest, context: grpc.ServicerContext) -> master_pb2.SyncReply:
        # Only the leader: it publishes each commit before acknowledging it,
        # a follower publishes later (NotLeader sends the client there).
        coordinator = self._leadership.coordinator()
        reply = master_pb2.SyncReply(last_tid=self._publisher.last_tid)
        self._catch_up(reply.catch_up, request.client_id, request.last_tid, reply.last_tid, request.table_version)
        if request.client_id:
            if request.release_spare:
                coordinator.release_spare(request.client_id, request.release_spare)
            reply.spare_ttid = coordinator.reserve(request.client_id) or b""
        return reply

    def _catch_up(self, message: master_pb2.CatchUp, client_id: str, last_tid: bytes, upto: bytes,
                  table_version: int) -> None:
        """Fill ``message`` with what the client missed after ``last_tid`` up to
        ``upto``; its invalidation stream then skips it."""
        if len(last_tid) == 8:
            invalidations = self._publisher.between(last_tid, upto)
            if invalidations is not None:
                message.complete = True
                message.invalidations.extend(invalidation_message(i) for i in invalidations)
                self._publisher.caught_up(client_id, upto)
        table = self._leadership.state.table
        if table.version > table_version:
            message.partition_table.CopyFrom(table.to_proto())

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

    def GetTransactionState(self, request: master_pb2.TransactionStateRequest,
                            context: grpc.ServicerContext) -> master_pb2.TransactionState:
        status, tid = self._leadership.coordinator().state_of(request.ttid)  # NotLeader on a follower
        return master_pb2.TransactionState(
            status=cast("master_pb2.TransactionState.Status", master_pb2.TransactionState.Status.Value(status.upper())),
            tid=tid or b"")

    def open_subscription(self, request: master_pb2.SubscribeRequest, wake: Callable[[], None]) -> ClientStream:
        """A client's invalidation stream begins: its source, polled by the
        frames port's pump (no thread of its own: :mod:`neostore.frames_pump`)
        or by :meth:`Subscribe`.  The session is told to the coordinator of
        the leader only: only the leader aborts what a departed client left."""
        if not request.client_id:
            raise errors.BadRequest("Subscribe: client_id is required")
        since_tid = request.since_tid or None
        if since_tid is not None and len(since_tid) != 8:
            raise errors.BadRequest(f"since_tid must be 8 bytes, got {len(since_tid)}")
        subscription = self._publisher.subscribe(since_tid, client_id=request.client_id)
        coordinator = self._leadership.coordinator_if_leader()
        if coordinator is not None:
            coordinator.client_connected(request.client_id)
        return ClientStream(self._publisher, subscription, coordinator, request.client_id, wake,
                            self._stream_interval)

    def Subscribe(self, request: master_pb2.SubscribeRequest,
                  context: grpc.ServicerContext) -> Iterator[master_pb2.ClientEvent]:
        """Over gRPC (a client whose master serves no frames streams): the
        same source a pump polls, polled by this worker between waits for
        the publisher's news; it holds the worker for the whole session."""
        woken = threading.Event()
        stream = self.open_subscription(request, woken.set)

        def cancelled() -> None:
            stream.end()
            woken.set()

        try:
            _close_on_cancel(context, cancelled)
            while True:
                woken.clear()  # news from now on wakes the wait below
                messages, next_at = stream.poll(time.monotonic())
                if messages is None:
                    return
                yield from messages
                woken.wait(max(0.0, next_at - time.monotonic()))
        finally:
            stream.close()

    def RegisterStorage(self, request: master_pb2.RegisterStorageRequest,
                        context: grpc.ServicerContext) -> master_pb2.RegisterStorageReply:
        registration = self._leadership.cluster().register_storage(
            cluster_name=request.cluster_name,
            node_id=request.node_id,
            address=request.address,
            label=request.label,
            pending_ttids=list(request.pending_ttids),
            partition_last_tids=[PartitionTid(held.partition, held.tid) for held in request.partition_last_tids],
            cluster_id=request.cluster_id,
            frames_address=request.frames_address,
        )
        return master_pb2.RegisterStorageReply(
            cluster_id=self._leadership.state.cluster_id,
            node_id=registration.node_id,
            partition_table=registration.table.to_proto(),
            last_tid=registration.last_tid,
            term=registration.term,
            decided=[common_pb2.Decision(ttid=ttid, tid=tid) for ttid, tid in registration.decided],
            truncations=[common_pb2.Truncation(after=t.after, upto=t.upto) for t in registration.truncations],
        )

    def StorageSession(self, request: master_pb2.StorageSessionRequest,
                       context: grpc.ServicerContext) -> Iterator[master_pb2.StorageEvent]:
        session = self._leadership.cluster().open_session(request.node_id)
        try:
            _close_on_cancel(context, session.close)
            for event in session:
                if isinstance(event, Heartbeat):
                    yield master_pb2.StorageEvent(heartbeat=True)
                elif isinstance(event, Shutdown):
                    yield master_pb2.StorageEvent(shutdown=event.reason)
                else:
                    yield master_pb2.StorageEvent(partition_table=event.to_proto())
        finally:
            session.close()

    def GetReplicationPlan(self, request: master_pb2.ReplicationPlanRequest,
                           context: grpc.ServicerContext) -> master_pb2.ReplicationPlan:
        return self._leadership.cluster().replication.plan(request.node_id)

    def ReportReplication(self, request: master_pb2.ReplicationProgress,
                          context: grpc.ServicerContext) -> master_pb2.ReplicationAck:
        return master_pb2.ReplicationAck(up_to_date=self._leadership.cluster().replication.report(request))


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

    def AddMaster(self, request: master_pb2.MasterAddress, context: grpc.ServicerContext) -> master_pb2.MembershipReply:
        node_id = self._info.add_master(request.address)
        return master_pb2.MembershipReply(node_id=node_id, members=self._info.members())

    def RemoveMaster(self, request: master_pb2.MasterAddress,
                     context: grpc.ServicerContext) -> master_pb2.MembershipReply:
        node_id = self._info.remove_master(request.address)
        return master_pb2.MembershipReply(node_id=node_id, members=self._info.members())

    def GetReplication(self, request: common_pb2.Empty, context: grpc.ServicerContext) -> master_pb2.ReplicationStatus:
        return self._leadership.cluster().replication.status()

    def Check(self, request: master_pb2.CheckRequest, context: grpc.ServicerContext) -> master_pb2.CheckReply:
        return self._leadership.cluster().check(list(request.partitions), request.repair)

    def Tweak(self, request: master_pb2.TweakRequest, context: grpc.ServicerContext) -> master_pb2.TweakReply:
        table, moves = self._leadership.cluster().tweak(
            list(request.drop), request.replicas, request.dry_run, request.force)
        return master_pb2.TweakReply(table=table.to_proto(), moves=moves)

    def SetClusterState(self, request: master_pb2.SetClusterStateRequest,
                        context: grpc.ServicerContext) -> master_pb2.ClusterInfo:
        if request.state not in (master_pb2.ClusterInfo.RUNNING, master_pb2.ClusterInfo.STOPPING):
            raise errors.BadRequest("the cluster state can be set to RUNNING or STOPPING only")
        self._leadership.cluster().set_stopping(request.state == master_pb2.ClusterInfo.STOPPING)
        return cluster_info(self._leadership, self._publisher, self._info)

    def KillNode(self, request: master_pb2.KillNodeRequest, context: grpc.ServicerContext) -> common_pb2.PartitionTable:
        return self._leadership.cluster().kill_node(request.node_id, request.force).to_proto()

    def Truncate(self, request: master_pb2.TruncateRequest, context: grpc.ServicerContext) -> master_pb2.TruncateReply:
        if len(request.tid) != 8:
            raise errors.BadRequest(f"the truncation TID must be 8 bytes, got {len(request.tid)}")
        return self._leadership.cluster().truncate(request.tid)
