"""The master's channels to storage nodes, for the orders it sends them.

The master sends storage nodes two orders, both idempotent and both fenced
by the master's term: ``Commit(term, decisions)`` once transactions are
decided (batched per node by :mod:`~neostore.master_node.commit_orders`),
and ``Abort(ttid, term)`` when a transaction is given up.  One
channel per storage address, made by :func:`neostore.rpc.make_channel`,
kept until the master stops; both orders go as frames
(:mod:`neostore.frames`) to a node that serves them (its frames address in
the partition table), a fifth of a gRPC call's cost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from neostore import errors, frames, rpc
from neostore.protocol import common_pb2, storage_pb2, storage_pb2_grpc

#: The orders sent as frames to a node that serves them.
FRAMED_ORDERS = frames.reply_classes(storage_pb2.DESCRIPTOR.services_by_name["Storage"], ("Commit", "Abort"))


class StorageLinks:
    """Cached stubs to storage nodes, by address; ``frames_address_of``
    names the frames address of the node at an address ("" if none)."""

    def __init__(self, config: rpc.RpcConfig, frames_address_of: Callable[[str], str] = lambda address: "") -> None:
        self._config = config
        self._frames_address_of = frames_address_of
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._frames: dict[str, frames.FramesChannel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._closed = False

    def stub(self, address: str) -> Any:
        """The node's stub: gRPC, or frames for the orders where it serves them."""
        frames_address = self._frames_address_of(address)
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the master is stopping")
            stub = self._stubs.get((address, frames_address))
            if stub is None:
                channel = self._channels.get(address)
                if channel is None:
                    channel = self._channels[address] = rpc.make_channel(self._config, address)
                stub = storage_pb2_grpc.StorageStub(channel)
                if frames_address:
                    framed = self._frames.get(frames_address)
                    if framed is None:
                        framed = self._frames[frames_address] = frames.FramesChannel(self._config, frames_address)
                    stub = frames.FramesStub(framed, stub, FRAMED_ORDERS, f"storage node at {frames_address}")
                self._stubs[address, frames_address] = stub
            return stub

    def commit(self, address: str, decisions: Sequence[tuple[bytes, bytes]], term: int,
               timeout: float) -> list[errors.NeoError | None]:
        """Order the node at ``address`` to apply each ``(ttid, tid)``; for
        each, None (applied) or the error that refused it.  Raises NeoError
        when the rpc as a whole fails."""
        request = storage_pb2.CommitRequest(
            term=term, decisions=[common_pb2.Decision(ttid=ttid, tid=tid) for ttid, tid in decisions])
        reply = rpc.call(self.stub(address).Commit, request, timeout=timeout, peer=address)
        if len(reply.results) != len(decisions):
            raise errors.BadRequest(
                f"storage node {address} answered {len(reply.results)} results for {len(decisions)} decisions")
        return [None if not result.error else errors.from_name(result.error, f"{result.message} (from {address})")
                for result in reply.results]

    def abort(self, address: str, ttid: bytes, term: int, timeout: float) -> None:
        """Order the node at ``address`` to drop ``ttid``; raises NeoError."""
        request = storage_pb2.AbortTransactionRequest(ttid=ttid, term=term)
        rpc.call(self.stub(address).Abort, request, timeout=timeout, peer=address)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = self._channels, {}
            framed, self._frames = self._frames, {}
            self._stubs.clear()
        for channel in channels.values():
            channel.close()
        for frames_channel in framed.values():
            frames_channel.close()
