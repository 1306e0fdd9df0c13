"""Requests no node of the cluster would send, from an outsider's script: the
nodes refuse them and the cluster goes on committing (issue 17, findings 1
and 2)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
import ZODB
from persistent.mapping import PersistentMapping

from neostore import errors, rpc
from neostore.protocol import raft_pb2, raft_pb2_grpc, storage_pb2, storage_pb2_grpc
from neostore.raft import Message, MessageType, encode_message

from harness import ThreadCluster


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(str(tmp_path), num_storages=2, num_partitions=3, num_replicas=2, num_masters=3) as running:
        yield running


def _commit(cluster: ThreadCluster, value: int) -> None:
    db = ZODB.DB(cluster.client())
    try:
        with db.transaction() as connection:
            connection.root()["data"] = PersistentMapping(value=value)
        with db.transaction() as connection:
            assert connection.root()["data"]["value"] == value
    finally:
        db.close()


def test_an_order_with_a_forged_master_term_is_refused_and_not_kept(cluster: ThreadCluster) -> None:
    """A term above the masters' would make the node refuse the real master
    for good if stored: it is checked with the masters first."""
    _commit(cluster, 1)
    node = cluster.storages[0]
    term = node.manager.term
    channel = rpc.make_channel(rpc.RpcConfig(cluster.name), node.address)
    try:
        stub = storage_pb2_grpc.StorageStub(channel)
        for forged in (2**64 - 1, term + 1000):
            request = storage_pb2.AbortTransactionRequest(ttid=os.urandom(8), term=forged)
            with pytest.raises(errors.BadRequest, match=f"master term {forged} .* is not a term of this cluster"):
                rpc.call(stub.Abort, request, timeout=30)
    finally:
        channel.close()
    assert node.manager.term == term
    assert node.database.term() == term
    _commit(cluster, 2)  # through both storage nodes (2 replicas)


def test_a_raft_message_for_another_master_is_dropped_and_the_cluster_goes_on(cluster: ThreadCluster) -> None:
    """One forged Step addressed to master 99 used to stop the receiving
    master's Raft driver; two stopped the cluster."""
    _commit(cluster, 1)
    for master in cluster.master_nodes:
        channel = rpc.make_channel(rpc.RpcConfig(cluster.name), master.address)
        try:
            forged = Message(MessageType.HEARTBEAT, 2, 99, 1)
            answer = rpc.call(raft_pb2_grpc.RaftStub(channel).Step,
                              raft_pb2.RaftMessages(messages=[encode_message(forged)]), timeout=30)
            assert list(answer.messages) == []
        finally:
            channel.close()
    for master in cluster.master_nodes:
        log = master._parts.command_log  # noqa: SLF001 - the driver that used to stop
        assert log.dropped_messages == 1
    _commit(cluster, 2)
