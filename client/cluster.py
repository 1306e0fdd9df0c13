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
import threading
import time
from typing import Any, Protocol, TypeVar

import grpc

from neostore import errors, rpc
from neostore.ids import ZERO_TID
from neostore.partition_table import PartitionTable
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc, storage_pb2_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")

#: How long a call keeps trying other masters before giving up.
MASTER_RETRY_SECONDS = 30.0
RPC_TIMEOUT = 60.0


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
    ) -> None:
        if not masters:
            raise ValueError("at least one master address is needed")
        self._config = config
        self._masters = list(masters)
        self._client_id = client_id
        self._listener = listener
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._master_channels: dict[str, grpc.Channel] = {}
        self._preferred_master = 0
        self._storage_channels: dict[str, grpc.Channel] = {}
        self._storage_stubs: dict[str, storage_pb2_grpc.StorageStub] = {}
        self._table: PartitionTable | None = None
        self._closed = threading.Event()
        self._stream_started = threading.Event()
        self._stream_error: Exception | None = None
        self._stream_call: Any = None
        self._stream_thread = threading.Thread(
            target=self._run_stream, name=f"neostore-invalidations-{client_id[:8]}", daemon=True
        )
        self._last_stream_tid: bytes = b""

    # -- life cycle ---------------------------------------------------------

    def connect(self) -> None:
        """Wait for a running cluster, fetch the table, start the stream."""
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                info = self.master_call("GetClusterInfo", common_pb2.Empty(), retry_seconds=0)
                if info.leader in self._masters:  # any master answers: prefer the leader
                    self._preferred_master = self._masters.index(info.leader)
                if info.state == master_pb2.ClusterInfo.RUNNING:
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
        self.refresh_table()
        self._stream_thread.start()
        if not self._stream_started.wait(max(0.1, deadline - time.monotonic())):
            self.close()
            raise errors.Unavailable(
                f"invalidation stream from masters {', '.join(self._masters)} did not start"
            )
        if self._stream_error is not None:
            error = self._stream_error
            self.close()
            raise error

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call = self._stream_call
        if call is not None:
            call.cancel()
        if self._stream_thread.is_alive() and threading.current_thread() is not self._stream_thread:
            self._stream_thread.join(5)
        with self._lock:
            channels = list(self._master_channels.values()) + list(self._storage_channels.values())
            self._master_channels.clear()
            self._storage_channels.clear()
            self._storage_stubs.clear()
        for channel in channels:
            channel.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- masters ----------------------------------------------------------------

    def _master_stub(self, address: str) -> master_pb2_grpc.MasterStub:
        with self._lock:
            channel = self._master_channels.get(address)
            if channel is None:
                channel = rpc.make_channel(self._config, address)
                self._master_channels[address] = channel
        return master_pb2_grpc.MasterStub(channel)

    def master_call(self, method: str, request: Any, timeout: float = RPC_TIMEOUT,
                    retry_seconds: float = MASTER_RETRY_SECONDS) -> Any:
        """Call ``method`` on a master, trying every master until one answers."""
        deadline = time.monotonic() + retry_seconds
        tried: list[str] = []
        while True:
            for shift in range(len(self._masters)):
                index = (self._preferred_master + shift) % len(self._masters)
                address = self._masters[index]
                stub = self._master_stub(address)
                try:
                    reply = rpc.call(getattr(stub, method), request, timeout=timeout, peer=f"master {address}")
                except (errors.Unavailable, errors.NotLeader) as error:
                    tried.append(f"{address} ({error})")
                    continue
                self._preferred_master = index
                return reply
            if self._closed.is_set() or time.monotonic() >= deadline:
                raise errors.Unavailable("no master answered; tried: " + "; ".join(tried[-len(self._masters):]))
            time.sleep(0.2)

    # -- partition table and storage nodes -------------------------------------

    def refresh_table(self) -> PartitionTable:
        table = PartitionTable.from_proto(self.master_call("GetPartitionTable", common_pb2.Empty()))
        self._set_table(table)
        return table

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

    def storage_stub(self, node_id: int) -> tuple[storage_pb2_grpc.StorageStub, str]:
        """The stub of storage node ``node_id`` and a name for messages."""
        address = self.table.node(node_id).address
        with self._lock:
            stub = self._storage_stubs.get(address)
            if stub is None:
                channel = rpc.make_channel(self._config, address)
                self._storage_channels[address] = channel
                stub = storage_pb2_grpc.StorageStub(channel)
                self._storage_stubs[address] = stub
        return stub, f"storage node {node_id} at {address}"

    def read_call(self, partition: int, method: str, request: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Call a read rpc on a readable cell of ``partition``, failing over."""
        failures: list[str] = []
        for attempt in range(3):
            table = self.table
            nodes = table.readable_nodes(partition)
            random.shuffle(nodes)
            for node_id in nodes:
                stub, peer = self.storage_stub(node_id)
                try:
                    return rpc.call(getattr(stub, method), request, timeout=timeout, peer=peer)
                except (errors.Unavailable, errors.NotOwner) as error:
                    failures.append(str(error))
                    continue
            self.refresh_table()
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
                        log.warning("invalidation stream from master %s broke: %s", address, error)
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _follow_stream(self, address: str) -> None:
        stub = self._master_stub(address)
        request = master_pb2.SubscribeRequest(client_id=self._client_id, since_tid=self._last_stream_tid)
        call = stub.Subscribe(request)
        with self._lock:
            self._stream_call = call
        try:
            for event in rpc.stream(call, peer=f"master {address}"):
                kind = event.WhichOneof("event")
                if kind == "invalidation":
                    inv = event.invalidation
                    self._listener.on_invalidation(inv.tid, inv.ttid, list(inv.oids))
                    self._last_stream_tid = inv.tid
                elif kind == "start_tid":
                    tid = event.start_tid or ZERO_TID
                    if not self._last_stream_tid:
                        self._last_stream_tid = tid
                    self._listener.on_stream_start(tid)
                    self._stream_started.set()
                elif kind == "partition_table":
                    self._set_table(PartitionTable.from_proto(event.partition_table))
                elif kind == "reset_cache_at":
                    self._listener.on_reset_cache(event.reset_cache_at)
                    self._last_stream_tid = event.reset_cache_at
        finally:
            with self._lock:
                self._stream_call = None
        if not self._closed.is_set():
            raise errors.Unavailable(f"master {address} ended the invalidation stream")

