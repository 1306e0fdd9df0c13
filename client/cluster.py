"""The client's view of the cluster: masters, partition table, storage nodes.

:class:`ClusterConnection` holds every master address and follows whichever
answers (the leader, once masters run Raft), keeps the partition table
current, keeps one channel per storage node, and runs the invalidation
stream in a background thread.  The stream is the client's session with
the master: it delivers every committed TID in TID order, and partition
table changes; the :class:`StreamListener` (the ZODB adapter) turns them
into cache and ZODB invalidations.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from neostore import errors, frames, leaders, rpc
from neostore.ids import ZERO_TID
from neostore.partition_table import PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, storage_pb2, storage_pb2_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")

#: How long a call keeps trying other masters before giving up.
MASTER_RETRY_SECONDS = 30.0
#: The storage node calls a client makes as frames (neostore/frames.py) to
#: a node that serves them: the loads and the votes, its most frequent.
FRAMED_METHODS = frames.reply_classes(storage_pb2.DESCRIPTOR.services_by_name["Storage"], (
    "LoadBefore", "LoadSerial", "LoadBeforeMany", "History", "ListTransactions", "Store", "Vote"))
#: The master calls a client makes as frames to a master that serves them.
FRAMED_MASTER_METHODS = frames.reply_classes(master_pb2.DESCRIPTOR.services_by_name["Master"], (
    "Begin", "Finish", "Sync", "NewOids"))
#: How long a master found to serve no frames (or not answering whether it
#: does) is called over gRPC only before it is asked again.
FRAMES_ASK_AGAIN = 60.0
RPC_TIMEOUT = 60.0
_ADDRESS = re.compile(r"[\w.\-\[\]:]+:\d+")
#: A master call slower than this makes the client ask the other masters
#: who leads (every LEADER_CHECK_INTERVAL): a leader that hangs (paused,
#: overloaded, cut off) must not hold a commit until its deadline once
#: another master leads.
LEADER_CHECK_AFTER = 5.0
LEADER_CHECK_INTERVAL = 1.0
#: An idempotent master call waits at most until its retry deadline (the
#: wait-timeout), but never less than this: a master that hangs (SIGSTOP,
#: a full disk) fails such a call in about the wait-timeout, not RPC_TIMEOUT.
MIN_CALL_SECONDS = 5.0
#: Masters send a heartbeat on an idle invalidation stream every second: a
#: stream silent this long comes from a master that hangs; the client
#: follows another master's stream.
STREAM_SILENCE_LIMIT = 5.0


class StreamListener(Protocol):
    def on_invalidation(self, tid: bytes, ttid: bytes, oids: list[bytes]) -> None: ...
    def on_reset_cache(self, tid: bytes) -> None: ...
    def on_stream_start(self, tid: bytes) -> None: ...


class ClusterConnection:
    """Connections of one client to one cluster."""

    def __init__(
        self,
        config: rpc.RpcConfig,
        masters: list[str],
        client_id: str,
        listener: StreamListener,
        connect_timeout: float = 30.0,
        wait_timeout: float = MASTER_RETRY_SECONDS,
    ) -> None:
        if not masters:
            raise ValueError("at least one master address is needed")
        self._config = config
        self._masters = list(masters)
        self._client_id = client_id
        self._listener = listener
        self._connect_timeout = connect_timeout
        #: How long a call keeps trying the masters (and a read the replicas
        #: and masters) before it fails: the ``wait-timeout`` option.
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._master_stubs: dict[str, master_pb2_grpc.MasterStub] = {}
        #: By master address: its FramesStub, or when to ask again whether it serves frames.
        self._master_frames: dict[str, frames.FramesStub | float] = {}
        self._master_frames_asked: dict[str, float] = {}  # when a failing FramesStub may be replaced
        self._preferred_master = 0
        #: By (address, frames address): a gRPC stub, or a FramesStub over it.
        self._storage_stubs: dict[tuple[str, str], Any] = {}
        self._table: PartitionTable | None = None
        self._unfinished: set[bytes] = set()
        self._closed = threading.Event()
        self._stream_started = threading.Event()
        self._stream_error: Exception | None = None
        self._stream_call: Any = None
        self._stream_thread = threading.Thread(
            target=self._run_stream, name=f"neostore-invalidations-{client_id[:8]}", daemon=True
        )
        self._last_stream_tid: bytes = b""
        #: Masters whose frames port serves no streams (an older version): gRPC streams there.
        self._streams_over_grpc: set[str] = set()
        self._stream_broken_since: float | None = None  # time.monotonic() of the break, None while it works
        #: Whether the cluster is STOPPING, as the stream last said.
        self.stopping = False
        #: Called (on the stream's thread) when the cluster becomes STOPPING.
        self.on_stopping: Callable[[], None] = lambda: None

    # -- life cycle ---------------------------------------------------------

    def connect(self, resume: Callable[[Any], bytes | None] | None = None) -> None:
        """Wait for a running cluster, fetch the table, start the stream.
        ``resume(cluster_info)``, before the stream starts: the TID after
        which the stream must bring every commit (the client's cache was
        current as of it), or None to start from now."""
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                info = self.master_call("GetClusterInfo", common_pb2.Empty(), retry_seconds=0)
                self.learn_masters(info.masters)
                if info.leader in self._masters:  # any master answers: prefer the leader
                    self._preferred_master = self._masters.index(info.leader)
                if info.state in (master_pb2.ClusterInfo.RUNNING, master_pb2.ClusterInfo.STOPPING):
                    break
                reason = f"cluster {self._config.cluster_name!r} is not running yet"
            except errors.Unavailable as error:
                reason = str(error)
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"cannot connect to cluster {self._config.cluster_name!r} "
                    f"through masters {', '.join(self._masters)}: {reason}"
                )
            time.sleep(0.1)
        if resume is not None:
            since = resume(info)
            if since is not None:
                self._last_stream_tid = since
        self.refresh_table()
        self._stream_thread.start()
        if not self._stream_started.wait(max(0.1, deadline - time.monotonic())):
            self.close()
            raise errors.Unavailable(
                f"invalidation stream from masters {', '.join(self._masters)} did not start"
            )
        if self._stream_error is not None:
            stream_error = self._stream_error
            self.close()
            raise stream_error

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call = self._stream_call
        if call is not None:
            call.cancel()
        if self._stream_thread.is_alive() and threading.current_thread() is not self._stream_thread:
            self._stream_thread.join(5)
        with self._lock:
            addresses = list(self._master_stubs) + [address for address, _ in self._storage_stubs]
            frames_addresses = [framed for _, framed in self._storage_stubs if framed] + [
                stub.channel.address for stub in self._master_frames.values() if isinstance(stub, frames.FramesStub)]
            self._master_frames.clear()
            self._master_stubs.clear()
            self._storage_stubs.clear()
        for address in addresses:
            rpc.shared_channels.release(self._config, address)
        for address in frames_addresses:
            frames.shared_channels.release((self._config, address))

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- masters ----------------------------------------------------------------

    def _master_stub(self, address: str) -> master_pb2_grpc.MasterStub:
        with self._lock:
            stub = self._master_stubs.get(address)
            if stub is None:
                if self._closed.is_set():
                    raise errors.Unavailable("the client is closed")
                stub = rpc.shared_channels.acquire(self._config, address, master_pb2_grpc.MasterStub)
                self._master_stubs[address] = stub
        return stub

    def _framed_master_stub(self, address: str) -> Any:
        """The master's stub for :data:`FRAMED_MASTER_METHODS`: frames where
        it serves them (its ClusterInfo names its frames address: asked
        once), else its gRPC stub."""
        stub = self._master_stub(address)
        with self._lock:
            known = self._master_frames.get(address)
            if isinstance(known, frames.FramesStub):
                if known.channel.reachable or time.monotonic() < self._master_frames_asked.get(address, 0.0):
                    return known
                # Its frames port failed: the master may have restarted on another one.
                self._master_frames_asked[address] = time.monotonic() + FRAMES_ASK_AGAIN
                del self._master_frames[address]
                frames.shared_channels.release((self._config, known.channel.address))
            elif known is not None and time.monotonic() < known:
                return stub
        try:
            frames_address = rpc.call(stub.GetClusterInfo, common_pb2.Empty(), timeout=2.0,
                                      peer=f"master {address}").frames_address
        except errors.NeoError:
            frames_address = ""
        with self._lock:
            known = self._master_frames.get(address)
            if isinstance(known, frames.FramesStub):
                return known
            if not frames_address or self._closed.is_set():
                self._master_frames[address] = time.monotonic() + FRAMES_ASK_AGAIN
                return stub
            framed = self._master_frames[address] = frames.FramesStub(
                frames.shared_channels.acquire((self._config, frames_address)), stub, FRAMED_MASTER_METHODS,
                f"master {address}")
            return framed

    def learn_masters(self, addresses: Any) -> None:
        """Add masters this client was not given (masters added to the cluster since)."""
        for address in addresses:
            if address and address not in self._masters:
                log.info("client: learnt of master %s", address)
                self._masters.append(address)

    def master_call(self, method: str, request: Any, timeout: float = RPC_TIMEOUT,
                    retry_seconds: float | None = None, idempotent: bool = True) -> Any:
        """Call ``method`` on a master, trying every master until one answers
        or ``retry_seconds`` (default: :attr:`wait_timeout`) have passed.

        ``idempotent`` False: a call that may have been served must not be
        sent again to the same master (Finish: what became of it is asked
        with GetTransactionOutcome instead), and it waits its whole
        ``timeout``; an idempotent one waits at most until the deadline
        (``MIN_CALL_SECONDS`` at least)."""
        deadline = time.monotonic() + (self.wait_timeout if retry_seconds is None else retry_seconds)
        tried: list[str] = []
        while True:
            for shift in range(len(self._masters)):
                index = (self._preferred_master + shift) % len(self._masters)
                address = self._masters[index]
                stub = (self._framed_master_stub(address) if method in FRAMED_MASTER_METHODS
                        else self._master_stub(address))
                call_timeout = timeout
                if idempotent:
                    call_timeout = min(timeout, max(deadline - time.monotonic(), MIN_CALL_SECONDS))
                try:
                    reply = self._call_watching_leader(stub, method, request, call_timeout, address, idempotent)
                except (errors.Unavailable, errors.NotLeader) as error:
                    tried.append(f"{address} ({error})")
                    if isinstance(error, errors.NotLeader):  # the leader may be a master added since
                        self.learn_masters(_ADDRESS.findall(str(error)))
                    continue
                self._preferred_master = index
                return reply
            if self._closed.is_set() or time.monotonic() >= deadline:
                raise errors.Unavailable("no master answered; tried: " + "; ".join(tried[-len(self._masters):]))
            time.sleep(0.2)

    def _call_watching_leader(self, stub: master_pb2_grpc.MasterStub, method: str, request: Any,
                              timeout: float, address: str, idempotent: bool) -> Any:
        """The call, given up (Unavailable) when it has not answered after
        ``LEADER_CHECK_AFTER`` seconds and another master names a different
        leader (or at once then, if the call may not be sent twice).

        A plain blocking call in slices of ``LEADER_CHECK_AFTER``: it costs
        far less than a future (no channel thread to wake).  A slice that
        runs out cancels the call; an idempotent one is sent again to the
        same master while it still leads.
        """
        peer = f"master {address}"
        call = getattr(stub, method)
        if len(self._masters) < 2:  # nobody to ask: one plain blocking call
            return rpc.call(call, request, timeout=timeout, peer=peer)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return rpc.call(call, request, timeout=max(0.001, min(remaining, LEADER_CHECK_AFTER)), peer=peer)
            except errors.DeadlineExceeded:
                if time.monotonic() >= deadline:
                    raise
            leader = leaders.leader_elsewhere(self._master_stub, self._masters, address, LEADER_CHECK_INTERVAL)
            if leader is not None or not idempotent:
                raise errors.Unavailable(
                    f"master {address} did not answer {method} within {LEADER_CHECK_AFTER:.0f}s"
                    + (f" and master {leader} leads now" if leader is not None else ""))

    # -- partition table and storage nodes -------------------------------------

    def refresh_table(self, retry_seconds: float | None = None) -> PartitionTable:
        table = PartitionTable.from_proto(self.master_call("GetPartitionTable", common_pb2.Empty(),
                                                           retry_seconds=retry_seconds))
        self._set_table(table)
        return table

    def learn_table(self, message: Any) -> None:
        """A partition table an answer carried (kept if newer)."""
        self._set_table(PartitionTable.from_proto(message))

    def _set_table(self, table: PartitionTable) -> None:
        with self._lock:
            if self._table is None or table.version >= self._table.version:
                self._table = table

    @property
    def table(self) -> PartitionTable:
        table = self._table
        if table is None:
            raise errors.Unavailable("not connected")
        return table

    def storage_stub(self, node_id: int, table: PartitionTable | None = None,
                     ) -> tuple[storage_pb2_grpc.StorageStub, str]:
        """The stub of storage node ``node_id`` (its address in ``table``, by
        default the latest) and a name for messages."""
        table = table or self.table
        try:
            node = table.node(node_id)
        except KeyError:  # dropped from the cluster (neoctl drop-node) since the client routed to it
            raise errors.NotOwner(f"storage node {node_id} is no longer in the partition table "
                                  f"(version {table.version})") from None
        address, frames_address = node.address, node.frames_address
        key = (address, frames_address)
        with self._lock:
            stub: Any = self._storage_stubs.get(key)  # a FramesStub stands for a StorageStub
            if stub is None:
                if self._closed.is_set():
                    raise errors.Unavailable("the client is closed")
                stub = rpc.shared_channels.acquire(self._config, address, storage_pb2_grpc.StorageStub)
                if frames_address:
                    stub = frames.FramesStub(frames.shared_channels.acquire((self._config, frames_address)), stub,
                                             FRAMED_METHODS, f"storage node {node_id} at {frames_address}")
                self._storage_stubs[key] = stub
        return stub, f"storage node {node_id} at {address}"

    def unfinished(self, ttid: bytes, finished: bool = False) -> None:
        """Track this client's transactions whose Finish has not answered:
        they cannot be in what it reads, so its reads tell the storage nodes
        not to wait for them (a read there waits for what may be decided)."""
        with self._lock:
            if finished:
                self._unfinished.discard(ttid)
            else:
                self._unfinished.add(ttid)

    def name_unfinished(self, request: Any) -> Any:
        """``request`` (a read) naming this client's unfinished transactions."""
        with self._lock:
            unfinished = sorted(self._unfinished)
        del request.unfinished_ttids[:]
        request.unfinished_ttids.extend(unfinished)
        return request

    def read_call(self, partition: int, method: str, request: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Call a read rpc on a readable cell of ``partition``, failing over."""
        self.name_unfinished(request)
        failures: list[str] = []
        deadline = time.monotonic() + self.wait_timeout
        for attempt in range(3):
            table = self.table
            nodes = table.readable_nodes(partition)
            random.shuffle(nodes)
            for node_id in nodes:
                stub, peer = self.storage_stub(node_id)
                try:
                    return rpc.call(getattr(stub, method), request,
                                    timeout=max(0.001, min(timeout, deadline - time.monotonic())), peer=peer)
                except (errors.Unavailable, errors.NotOwner) as error:
                    failures.append(str(error))
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.refresh_table(retry_seconds=remaining)
            time.sleep(0.05 * attempt)
        raise errors.Unavailable(
            f"no readable replica of partition {partition} answered"
            + (": " + "; ".join(failures[-3:]) if failures else "")
        )

    # -- invalidation stream ---------------------------------------------------

    def _run_stream(self) -> None:
        backoff = 0.05
        while not self._closed.is_set():
            # From the preferred master on (the leader, once known): any
            # master serves the stream, the leader with the least delay.
            start = self._preferred_master
            for address in self._masters[start:] + self._masters[:start]:
                if self._closed.is_set():
                    return
                try:
                    self._follow_stream(address)
                    backoff = 0.05
                except errors.WrongCluster as error:
                    self._stream_error = error
                    self._stream_started.set()
                    return
                except errors.NeoError as error:
                    if not self._closed.is_set():
                        # Once per outage, not once per retry (a second each).
                        if self._stream_broken_since is None:
                            self._stream_broken_since = time.monotonic()
                            log.warning("invalidation stream from master %s broke: %s (retrying every "
                                        "master; logged again once it is back)", address, error)
                        else:
                            log.debug("invalidation stream from master %s: %s", address, error)
                    if self._masters[self._preferred_master % len(self._masters)] != address:
                        break  # the leader is known to be another master: go there first
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _subscribe(self, address: str, request: master_pb2.SubscribeRequest) -> Any:
        """The master's invalidation stream: over frames where it serves
        them (a message costs a tenth of a gRPC stream's), else gRPC."""
        stub = self._framed_master_stub(address)
        if isinstance(stub, frames.FramesStub) and address not in self._streams_over_grpc:
            try:
                return stub.channel.stream("Subscribe", request, master_pb2.ClientEvent, f"master {address}")
            except frames.NoFrames:
                pass
        return self._master_stub(address).Subscribe(request)

    def _follow_stream(self, address: str) -> None:
        request = master_pb2.SubscribeRequest(client_id=self._client_id, since_tid=self._last_stream_tid)
        call = self._subscribe(address, request)
        with self._lock:
            self._stream_call = call
        if self._closed.is_set():  # closed meanwhile: close() found no call to cancel
            call.cancel()

        def another_leads() -> bool:
            if self._closed.is_set():
                return False
            leader = leaders.replaced_leader(self._master_stub, self._masters, address,
                                             2 * LEADER_CHECK_INTERVAL, LEADER_CHECK_INTERVAL)
            if leader is not None and leader in self._masters:
                self._preferred_master = self._masters.index(leader)
            return leader is not None

        watchdog = rpc.SilenceWatchdog(call, STREAM_SILENCE_LIMIT, lambda: log.warning(
            "invalidation stream from master %s silent for %.0fs, not answering, another master leads: moving on",
            address, STREAM_SILENCE_LIMIT), confirm=another_leads)
        heard = False
        try:
            for event in rpc.stream(call, peer=f"master {address}"):
                heard = True
                watchdog.heard()
                kind = event.WhichOneof("event")
                if kind == "invalidations":
                    for inv in event.invalidations.items:
                        self._listener.on_invalidation(inv.tid, inv.ttid, list(inv.oids))
                        self._last_stream_tid = inv.tid
                elif kind == "start_tid":
                    self.stopping = False  # until this stream says otherwise
                    tid = event.start_tid or ZERO_TID
                    if not self._last_stream_tid:
                        self._last_stream_tid = tid
                    self._listener.on_stream_start(tid)
                    self._stream_started.set()
                    if self._stream_broken_since is not None:
                        log.warning("invalidation stream from master %s back after %.1fs",
                                    address, time.monotonic() - self._stream_broken_since)
                        self._stream_broken_since = None
                elif kind == "partition_table":
                    self._set_table(PartitionTable.from_proto(event.partition_table))
                elif kind == "stopping":
                    self.stopping = event.stopping
                    if event.stopping:
                        self.on_stopping()
                elif kind == "reset_cache_at":
                    self._listener.on_reset_cache(event.reset_cache_at)
                    self._last_stream_tid = event.reset_cache_at
        except errors.BadRequest as error:
            if heard or not isinstance(call, frames.FramesStream) or "no method" not in str(error):
                raise
            # A master of an older version serves unary frames only: its streams go over gRPC.
            self._streams_over_grpc.add(address)
            raise errors.Unavailable(f"master {address} serves no stream as frames ({error}): using gRPC") from None
        finally:
            watchdog.stop()
            with self._lock:
                self._stream_call = None
        if not self._closed.is_set():
            raise errors.Unavailable(f"master {address} ended the invalidation stream")

