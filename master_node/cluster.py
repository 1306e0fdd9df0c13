"""Storage nodes joining and leaving the cluster, oids, administration.

Registration (:meth:`ClusterManager.register_storage`), in order:

1. the request's cluster name must be this cluster's (``WrongCluster``
   naming both);
2. :class:`RegisterNode`: a new node gets the next id (RUNNING while the
   cluster is EMPTY, PENDING once a table exists: an admin admits it); a
   known node comes back RUNNING (a never-admitted one stays PENDING); an
   unknown non-zero id is refused (``WrongCluster``);
3. while the cluster is EMPTY, once ``autostart`` nodes are RUNNING:
   :class:`CreatePartitionTable` on all of them (the cluster is RUNNING);
4. for each partition where the node's cell is OUT_OF_DATE but missed no
   transaction (the partition saw no commit while the node was away):
   :class:`MarkUpToDate`; the other OUT_OF_DATE cells catch up by
   replication (``storage_node/replication.py``);
5. the reply names, among the node's pending TTIDs, those decided: the node
   applies them before serving and drops every other pending TTID.  Steps
   2-5 hold the commit decider (:meth:`CommitCoordinator.registering`), so
   that a transaction is either decided in time to be in that answer, or
   decided without the votes the node is about to drop.

A storage node's session (:meth:`ClusterManager.open_session`) streams the
partition table: at once, then on every change, with a heartbeat every
``heartbeat_interval`` seconds.  When the stream ends — the node went away,
or the master marked it DOWN (the session then ends so that the node
registers again) — the node is marked DOWN, unless it registered again
meanwhile.  When a session opens, the commit coordinator re-sends the
decisions the node still has to apply.

Registrations and admin changes are serialized by one lock, so that two
nodes registering together cannot both try to create the table.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence

from neostore import errors, rpc
from neostore.ids import ZERO_TID, tid_repr
from neostore.master_node.check import ConsistencyCheck
from neostore.master_node.command_log import CommandLog, submit_one
from neostore.master_node.commit import CommitCoordinator
from neostore.master_node.rebalance import describe_moves, plan_rows
from neostore.master_node.replication import ReplicationTracker
from neostore.master_node.state import (
    AdmitNodes,
    AllocateOids,
    ChangeTable,
    ClusterState,
    ClusterStatus,
    CreatePartitionTable,
    MarkUpToDate,
    PartitionTid,
    RegisterNode,
    SetClusterState,
    SetNodeState,
    Truncate,
    Truncation,
)
from neostore.master_node.storage_links import StorageLinks
from neostore.partition_table import READABLE_STATES, CellState, NodeState, PartitionTable
from neostore.protocol import common_pb2, master_pb2, storage_pb2

log = logging.getLogger(__name__)

_HOST_PORT = re.compile(r"[^\s:]+(:[^\s:]+)*:[0-9]{1,5}|\[[0-9a-fA-F:.]+\]:[0-9]{1,5}")

#: The most oids one NewOids call hands out (clients ask 100 at a time).
MAX_OIDS_PER_REQUEST = 1000
DEFAULT_HEARTBEAT_INTERVAL = 2.0


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """A storage session's keep-alive event."""


@dataclasses.dataclass(frozen=True)
class Shutdown:
    """A storage session's last event: the node must exit (neoctl kill)."""

    reason: str


#: How long ``kill_node`` waits for the node to end its session.
KILL_WAIT_SECONDS = 10.0
#: How long a truncation waits for transactions in flight, and for each node.
TRUNCATE_WAIT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Registration:
    """What a registering storage node is told."""

    node_id: int
    table: PartitionTable
    last_tid: bytes
    term: int
    decided: tuple[tuple[bytes, bytes], ...]  # (ttid, tid) of its pending TTIDs
    truncations: tuple[Truncation, ...] = ()


SessionEvent = PartitionTable | Heartbeat | Shutdown


class ClusterManager:
    """The master's dealings with storage nodes and administrators."""

    def __init__(
        self,
        command_log: CommandLog,
        coordinator: CommitCoordinator,
        autostart: int = 1,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        storages: StorageLinks | None = None,
    ) -> None:
        if autostart < 0:
            raise ValueError("autostart must be 0 (never) or a number of storage nodes")
        self._log = command_log
        self._coordinator = coordinator
        self._autostart = autostart
        self._heartbeat_interval = heartbeat_interval
        self._admin_lock = threading.Lock()  # serializes registrations and admin changes
        self._condition = threading.Condition()  # guards the attributes below
        self._table = command_log.state.table
        self._sessions: dict[int, StorageSession] = {}
        self._stopping = False
        self._killing: set[int] = set()  # nodes told to exit (neoctl kill)
        command_log.add_listener(self._on_state_change)
        #: Catch-up replication plans and progress (master_node/replication.py).
        self.replication = ReplicationTracker(command_log)
        self._checker = ConsistencyCheck(command_log, storages) if storages is not None else None
        self._storages = storages

    @property
    def state(self) -> ClusterState:
        return self._log.state

    def stop(self) -> None:
        """End every storage session without marking its node DOWN; stop
        following the state (a master builds a new manager each time it
        leads: the old one must not be called, nor kept alive, for ever)."""
        self._log.remove_listener(self._on_state_change)
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

    def _on_state_change(self, old: ClusterState, new: ClusterState) -> None:
        if new.table is not old.table:
            with self._condition:
                self._table = new.table
                self._condition.notify_all()

    def check(self, partitions: Sequence[int], repair: bool = False) -> master_pb2.CheckReply:
        """``neoctl check [--repair]``: compare replicas, rebuild CORRUPTED
        cells (master_node/check.py)."""
        if self._checker is None:
            raise errors.Unavailable("this master has no links to storage nodes: it cannot check")
        return self._checker.run(partitions, repair=repair)

    # -- availability ---------------------------------------------------------------

    def require_running(self) -> ClusterState:
        """The state, or Unavailable saying what the cluster waits for."""
        state = self._log.state
        if state.running:
            return state
        if self._autostart == 0:
            waiting = "waiting for an administrator to add storage nodes (neoctl add)"
        else:
            running = len(state.nodes_in_state(NodeState.RUNNING))
            waiting = f"waiting for {max(1, self._autostart - running)} storage nodes"
        raise errors.Unavailable(f"cluster {state.cluster_name!r} is not running: {waiting}")

    # -- storage nodes ----------------------------------------------------------------

    def register_storage(
        self,
        cluster_name: str,
        node_id: int,
        address: str,
        label: str,
        pending_ttids: Sequence[bytes],
        partition_last_tids: Sequence[PartitionTid],
        cluster_id: str = "",
        frames_address: str = "",
    ) -> Registration:
        """Steps 1-5 of the module docstring."""
        state = self._log.state
        if cluster_name != state.cluster_name:
            raise errors.WrongCluster(
                f"the storage node belongs to cluster {cluster_name!r}; this master serves another cluster"
            )
        if cluster_id and state.cluster_id and cluster_id != state.cluster_id:
            # Same name, another cluster: its data would pass for this one's
            # (a copied or leftover data directory), its node id with them.
            log.warning("refused storage node at %s: its data directory belongs to another cluster named "
                        "%r (id %s; this one's is %s)", address, cluster_name, cluster_id, state.cluster_id)
            raise errors.WrongCluster(
                f"the data directory of the storage node at {address} belongs to another cluster with the "
                f"same name (cluster id {cluster_id}, this cluster's is {state.cluster_id})")
        if not address:
            raise errors.BadRequest("a storage node must give the address of its Storage service")
        if frames_address and not _HOST_PORT.fullmatch(frames_address):
            raise errors.BadRequest(f"frames address {frames_address!r} is not host:port")
        for ttid in pending_ttids:
            if len(ttid) != 8:
                raise errors.BadRequest(f"pending ttid must be 8 bytes, got {len(ttid)}")
        for held in partition_last_tids:
            if held.partition >= state.num_partitions or len(held.tid) != 8:
                raise errors.BadRequest(
                    f"bad partition last tid: partition {held.partition} "
                    f"(of {state.num_partitions}), tid of {len(held.tid)} bytes"
                )
        with self._admin_lock, self._coordinator.registering() as registered:
            node_id = submit_one(self._log, RegisterNode(node_id, address, label, frames_address))
            registered(node_id)
            with self._condition:
                stale = self._sessions.pop(node_id, None)  # its end must not mark the node DOWN
            if stale is not None:
                stale.close()
            state = self._log.state
            if state.status == ClusterStatus.EMPTY and self._autostart > 0:
                running = state.nodes_in_state(NodeState.RUNNING)
                if len(running) >= self._autostart:
                    log.info("%d storage nodes running: creating the partition table", len(running))
                    submit_one(self._log, CreatePartitionTable(running))
                    state = self._log.state
            if state.running:
                # A cell that missed no transaction while the node was away
                # is up to date again; the others catch up by replication.
                caught_up = tuple(
                    PartitionTid(partition, ZERO_TID)
                    for partition in state.table.partitions_of_node(node_id, [CellState.OUT_OF_DATE])
                    if state.missed_tid(partition, node_id) is None
                )
                if caught_up:
                    marked = submit_one(self._log, MarkUpToDate(node_id, caught_up))
                    if marked:
                        log.info("storage node %d is up to date again for partitions %s", node_id, marked)
                    state = self._log.state
            decided = []
            for ttid in pending_ttids:
                decision = state.decision_of_ttid(ttid)
                if decision is not None:
                    decided.append((ttid, decision.tid))
        log.info("storage node %d registered from %s (%d decided of %d pending)",
                 node_id, address, len(decided), len(pending_ttids))
        return Registration(
            node_id=node_id,
            table=state.table,
            last_tid=state.last_tid,
            term=self._log.term,
            decided=tuple(decided),
            truncations=state.truncations,
        )

    def open_session(self, node_id: int) -> StorageSession:
        """The session of a registered node; it replaces any earlier one."""
        info = self._log.state.known_node(node_id)
        if info is None:
            raise errors.WrongCluster(f"node {node_id} is not known to this cluster")
        if info.state == NodeState.DOWN:
            raise errors.Unavailable(f"storage node {node_id} is marked down: register again")
        session = StorageSession(self, node_id)
        with self._condition:
            if self._stopping:
                raise errors.Unavailable("the master is stopping")
            previous = self._sessions.get(node_id)
            self._sessions[node_id] = session
        if previous is not None:
            previous.close()
        self._coordinator.redrive_node(node_id)
        return session

    def _session_ended(self, session: StorageSession) -> None:
        with self._condition:
            if self._sessions.get(session.node_id) is not session:
                return  # replaced, or the node registered again
            del self._sessions[session.node_id]
            self._condition.notify_all()  # kill_node waits for the session to end
            if self._stopping:
                return
        info = self._log.state.known_node(session.node_id)
        if info is not None and info.state == NodeState.RUNNING:
            log.warning("storage node %d left: marking it down", session.node_id)
            try:
                submit_one(self._log, SetNodeState(session.node_id, NodeState.DOWN))
            except errors.NeoError as error:
                log.error("cannot mark storage node %d down: %s", session.node_id, error)

    # -- clients ------------------------------------------------------------------------

    def new_oids(self, count: int) -> tuple[bytes, int]:
        """``count`` fresh oids (capped): the first one and how many."""
        if count < 1:
            raise errors.BadRequest("NewOids: ask for at least one oid")
        self.require_running()
        count = min(count, MAX_OIDS_PER_REQUEST)
        first = submit_one(self._log, AllocateOids(count))
        return first, count

    # -- administration -------------------------------------------------------------------

    def add_nodes(self, node_ids: Sequence[int]) -> PartitionTable:
        """Admit PENDING nodes (all of them when ``node_ids`` is empty); with
        no table yet, create it on those nodes (every node not DOWN)."""
        with self._admin_lock:
            state = self._log.state
            if state.status == ClusterStatus.EMPTY:
                chosen = tuple(node_ids) or tuple(
                    n.node_id for n in state.table.nodes if n.state != NodeState.DOWN)
                if not chosen:
                    raise errors.Unavailable(
                        f"cluster {state.cluster_name!r}: no storage node has registered yet")
                submit_one(self._log, CreatePartitionTable(chosen))
            else:
                chosen = tuple(node_ids) or state.nodes_in_state(NodeState.PENDING)
                admitted = submit_one(self._log, AdmitNodes(chosen))
                log.info("admitted storage nodes %s", list(admitted))
            return self._log.state.table

    def tweak(self, drop: Sequence[int] = (), replicas: int = 0, dry_run: bool = False,
              force: bool = False) -> tuple[PartitionTable, list[str]]:
        """Rebalance over the RUNNING admitted nodes (minus ``drop``), with
        ``replicas`` replicas (0: unchanged); the new table and what moves."""
        with self._admin_lock:
            state = self.require_running()
            for node_id in drop:
                if state.known_node(node_id) is None:
                    raise errors.BadRequest(f"storage node {node_id} is not known to this cluster")
            wanted = replicas or state.num_replicas
            dropping = set(state.dropping) | set(drop)
            members = [n.node_id for n in state.table.nodes
                       if n.state != NodeState.PENDING and n.node_id not in dropping
                       and (n.state == NodeState.RUNNING or state.table.partitions_of_node(n.node_id, list(CellState)))]
            if len(members) < wanted and not force:
                raise errors.BadRequest(
                    f"{len(members)} storage node(s) would remain ({', '.join(map(str, members)) or 'none'}) "
                    f"for {wanted} replicas per partition: add nodes first, or --force to accept less redundancy")
            if not members:
                raise errors.BadRequest("no storage node would remain to hold the data")
            rows = plan_rows(state.table.rows, members, wanted,
                             labels={n.node_id: n.label for n in state.table.nodes},
                             down=[n.node_id for n in state.table.nodes if n.state == NodeState.DOWN])
            moves = describe_moves(state.table.rows, rows)
            if dry_run:
                return state.table.with_rows(rows), moves
            if rows != state.table.rows or replicas or drop:
                submit_one(self._log, ChangeTable(state.table.version, rows, replicas, tuple(sorted(drop))))
                log.info("partition table rebalanced: %s", "; ".join(moves) or "no cell moved")
            return self._log.state.table, moves

    def set_stopping(self, stopping: bool) -> None:
        """``neoctl set cluster STOPPING|RUNNING``."""
        with self._admin_lock:
            self.require_running()
            submit_one(self._log, SetClusterState(stopping))
            log.info("cluster %s", "STOPPING: new transactions are refused" if stopping else "RUNNING")

    def kill_node(self, node_id: int, force: bool = False) -> PartitionTable:
        """``neoctl kill``: tell the node to exit and mark it DOWN (its cells
        OUT_OF_DATE); refused if a partition would be left with no readable
        cell on a running node, unless ``force``."""
        with self._admin_lock:
            state = self.require_running()
            info = state.known_node(node_id)
            if info is None:
                raise errors.BadRequest(f"storage node {node_id} is not known to this cluster")
            if info.state == NodeState.DOWN:
                raise errors.BadRequest(f"storage node {node_id} is already down")
            running = {n.node_id for n in state.table.nodes if n.state == NodeState.RUNNING} - {node_id}
            orphaned = [partition for partition, row in enumerate(state.table.rows)
                        if any(c.node_id == node_id and c.state in READABLE_STATES for c in row)
                        and not any(c.node_id in running and c.state in READABLE_STATES for c in row)]
            if orphaned and not force:
                shown = ", ".join(map(str, orphaned[:10])) + (" ..." if len(orphaned) > 10 else "")
                raise errors.BadRequest(
                    f"storage node {node_id} holds the only readable replica on a running node of "
                    f"partition(s) {shown}: killing it would make them unreadable (--force to accept)")
            with self._condition:
                self._killing.add(node_id)
                self._condition.notify_all()
                deadline = time.monotonic() + KILL_WAIT_SECONDS
                while node_id in self._sessions and time.monotonic() < deadline:
                    self._condition.wait(deadline - time.monotonic())
                self._killing.discard(node_id)
            if self._log.state.known_node(node_id).state != NodeState.DOWN:  # type: ignore[union-attr]
                submit_one(self._log, SetNodeState(node_id, NodeState.DOWN))
            log.warning("storage node %d killed by the administrator: marked down", node_id)
            return self._log.state.table

    def truncate(self, tid: bytes) -> master_pb2.TruncateReply:
        """``neoctl truncate``: once no transaction is in flight, record the
        truncation (:class:`Truncate`) and have every running storage node
        apply it; nodes down apply it when they register again."""
        with self._admin_lock:
            state = self.require_running()
            if not state.stopping:
                raise errors.BadRequest("a truncation needs a STOPPING cluster: run `neoctl set cluster "
                                        "STOPPING` first (neoctl truncate does it for you)")
            if tid >= state.last_tid:
                raise errors.BadRequest(f"nothing to truncate: no transaction after {tid_repr(tid)} "
                                        f"(the last TID is {tid_repr(state.last_tid)})")
            marker = self._coordinator.quiesce(TRUNCATE_WAIT_SECONDS)
            truncation = submit_one(self._log, Truncate(tid, marker))
            log.warning("database truncated after %s (new last TID %s)", tid_repr(tid), tid_repr(marker))
            reply = master_pb2.TruncateReply(
                truncation=common_pb2.Truncation(after=truncation.after, upto=truncation.upto))
            request = storage_pb2.StorageTruncateRequest(truncation=reply.truncation, term=self._log.term)
            for node in self._log.state.table.nodes:
                if node.state != NodeState.RUNNING or self._storages is None:
                    reply.later.append(node.node_id)
                    continue
                try:
                    done = rpc.call(self._storages.stub(node.address).Truncate, request,
                                    timeout=TRUNCATE_WAIT_SECONDS, peer=f"storage node {node.node_id}")
                except errors.NeoError as error:
                    # Marked DOWN, it registers again, and truncates then.
                    log.warning("storage node %d did not truncate now (%s): marking it down",
                                node.node_id, error)
                    submit_one(self._log, SetNodeState(node.node_id, NodeState.DOWN))
                    reply.later.append(node.node_id)
                    continue
                reply.truncated.append(node.node_id)
                reply.transactions_deleted += done.transactions
                reply.revisions_deleted += done.revisions
            return reply


class StorageSession(Iterator[SessionEvent]):
    """One storage node's stream of tables and heartbeats; ends when closed,
    when the master stops, or when the node is no longer RUNNING/PENDING."""

    def __init__(self, manager: ClusterManager, node_id: int) -> None:
        self.node_id = node_id
        self._manager = manager
        self._sent_version = -1
        self._closed = False
        self._shut_down = False

    def __iter__(self) -> StorageSession:
        return self

    def __next__(self) -> SessionEvent:
        manager = self._manager
        with manager._condition:
            deadline = time.monotonic() + manager._heartbeat_interval
            while True:
                if self._closed or manager._stopping:
                    raise StopIteration
                if self._shut_down:
                    raise StopIteration
                if self.node_id in manager._killing:
                    self._shut_down = True  # the node exits: this is the last event
                    return Shutdown("stopped by the administrator (neoctl kill): restart it to rejoin")
                table = manager._table
                info = next((n for n in table.nodes if n.node_id == self.node_id), None)
                if info is None and table.version != self._sent_version and self._sent_version >= 0:
                    # Dropped from the cluster: it learns so from the table (and
                    # reclaims its cells' space) before its session ends.
                    self._sent_version = table.version
                    return table
                if info is None or info.state == NodeState.DOWN:
                    raise StopIteration  # the node must register again
                if table.version != self._sent_version:
                    self._sent_version = table.version
                    return table
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Heartbeat()
                manager._condition.wait(remaining)

    def close(self) -> None:
        """End the stream (from any thread).  Closing the node's current
        session marks the node DOWN (not a replaced one, nor on master stop)."""
        manager = self._manager
        with manager._condition:
            if self._closed:
                return
            self._closed = True
            manager._condition.notify_all()
        manager._session_ended(self)
