"""The master's channels to storage nodes, for the orders it sends them.

The master sends storage nodes two orders, both idempotent and both fenced
by the master's term: ``Commit(term, decisions)`` once transactions are
decided (batched per node by :mod:`~neostore.master_node.commit_orders`),
and ``Abort(ttid, term)`` when a transaction is given up.  One
channel per storage address, made by :func:`neostore.rpc.make_channel`,
kept until the master stops.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import grpc

from neostore import errors, rpc
from neostore.protocol import common_pb2, storage_pb2, storage_pb2_grpc


class StorageLinks:
    """Cached stubs to storage nodes, by address."""

    def __init__(self, config: rpc.RpcConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._links: dict[str, tuple[grpc.Channel, storage_pb2_grpc.StorageStub]] = {}
        self._closed = False

    def stub(self, address: str) -> storage_pb2_grpc.StorageStub:
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the master is stopping")
            link = self._links.get(address)
            if link is None:
                channel = rpc.make_channel(self._config, address)
                link = self._links[address] = (channel, storage_pb2_grpc.StorageStub(channel))
            return link[1]

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
            links, self._links = self._links, {}
        for channel, _ in links.values():
            channel.close()
