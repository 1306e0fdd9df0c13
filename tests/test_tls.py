"""Mutual TLS: every node and client proves it holds a certificate of the
cluster's CA; a plaintext or foreign-CA peer is refused."""

from __future__ import annotations

import pathlib
import subprocess
import threading
from typing import Any

import pytest
from ZODB import POSException
from ZODB.Connection import TransactionMetaData
from ZODB.utils import maxtid, z64

from neostore import errors, frames
from neostore.client import NeoStorage
from neostore.protocol import storage_pb2
from neostore.rpc import RpcConfig, TlsConfig

from harness import ThreadCluster
from waiting import wait_until


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _authority(directory: pathlib.Path, name: str) -> TlsConfig:
    """A CA and one certificate it signed for 127.0.0.1."""
    directory.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", f"/CN={name} CA", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "node.pem", "-days", "2", "-extfile", "san.cnf", cwd=directory)
    return TlsConfig(str(directory / "ca.pem"), str(directory / "node.pem"), str(directory / "node.key"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("tls")
    tls = _authority(base / "cluster-ca", "cluster")
    with ThreadCluster(str(base / "data"), name="secure", tls=tls) as cluster:
        yield cluster, base


def _commit_new_object(storage: NeoStorage, data: bytes) -> tuple[bytes, bytes]:
    """(oid, tid) of a transaction creating one object holding ``data``."""
    oid = storage.new_oid()
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.store(oid, z64, data, "", txn)
    storage.tpc_vote(txn)
    return oid, storage.tpc_finish(txn)


def test_a_client_with_a_cluster_certificate_commits_and_reads(tls_cluster: Any) -> None:
    cluster, _ = tls_cluster
    storage = cluster.client()
    oid, tid = _commit_new_object(storage, b"over tls")
    assert storage.loadBefore(oid, maxtid) == (b"over tls", tid, None)
    # The vote and the load went as frames over TLS, not through the fallback to gRPC.
    framed = {node.frames_address for node in cluster.storages}
    assert sum(channel.calls for channel in frames.shared_channels.values() if channel.address in framed) >= 2
    assert sum(node.frames_served("Vote") for node in cluster.storages) >= 2
    storage.close()


def test_the_frames_port_refuses_plaintext_and_foreign_certificates(tls_cluster: Any) -> None:
    cluster, base = tls_cluster
    address = cluster.storages[0].frames_address
    request = storage_pb2.LoadBeforeRequest(oid=b"\0" * 8, before_tid=maxtid)
    foreign = _authority(base / "frames-foreign-ca", "foreign")
    for config in (RpcConfig(cluster_name="secure"), RpcConfig(cluster_name="secure", tls=foreign)):
        channel = frames.FramesChannel(config, address)
        try:
            with pytest.raises(frames.NoFrames):
                channel.call("LoadBefore", request, storage_pb2.LoadReply, 5, "node")
        finally:
            channel.close()


def test_a_plaintext_client_is_refused(tls_cluster: Any) -> None:
    cluster, _ = tls_cluster
    with pytest.raises(POSException.StorageError, match="cannot connect to cluster 'secure'"):
        NeoStorage(cluster.masters, cluster.name, connect_timeout=2)


def test_a_client_certified_by_another_ca_is_refused(tls_cluster: Any) -> None:
    cluster, base = tls_cluster
    foreign = _authority(base / "foreign-ca", "foreign")
    with pytest.raises(POSException.StorageError, match="cannot connect to cluster 'secure'"):
        NeoStorage(cluster.masters, cluster.name, tls=foreign, connect_timeout=2)


class _Echo:
    """Answers LoadBefore with the oid it was asked; refuses the rest."""

    def __getattr__(self, name: str) -> Any:
        def refuse(request: Any, context: Any) -> Any:
            raise errors.BadRequest(f"{name} is not served by this test servicer")
        return refuse

    def LoadBefore(self, request: storage_pb2.LoadBeforeRequest, context: Any) -> storage_pb2.LoadReply:
        return storage_pb2.LoadReply(serial=request.oid)


class _Told:
    """A DB stand-in: the TIDs the invalidation stream brings."""

    def __init__(self) -> None:
        self.tids: list[bytes] = []
        self.arrived = threading.Event()

    def invalidate(self, tid: bytes, oids: Any) -> None:
        self.tids.append(tid)
        self.arrived.set()

    def invalidateCache(self) -> None:  # noqa: N802 - ZODB's name
        pass

    def transform_record_data(self, data: bytes) -> bytes:
        return data

    untransform_record_data = transform_record_data


def test_over_tls_an_idle_connection_parks_and_the_invalidation_stream_is_pumped(tls_cluster: Any) -> None:
    cluster, base = tls_cluster
    config = RpcConfig(cluster_name="secure", tls=TlsConfig(str(base / "cluster-ca" / "ca.pem"),
                                                           str(base / "cluster-ca" / "node.pem"),
                                                           str(base / "cluster-ca" / "node.key")))
    server = frames.FramesServer(config, "127.0.0.1:0", [(storage_pb2.DESCRIPTOR.services_by_name["Storage"],
                                                          _Echo())], idle_park=0.05)
    server.start()
    channel = frames.FramesChannel(config, f"127.0.0.1:{server.port}")
    try:
        for round_ in range(3):
            oid = b"tls round %d" % round_
            assert channel.call("LoadBefore", storage_pb2.LoadBeforeRequest(oid=oid, before_tid=maxtid),
                                storage_pb2.LoadReply, 10, "node").serial == oid
            wait_until(lambda: server.parked_connections == 1, "the idle TLS connection to be parked")
    finally:
        channel.close()
        server.stop()
    # A client's invalidation stream over TLS frames, from the master's pump.
    watcher, writer = cluster.client(), cluster.client()
    told = _Told()
    watcher.registerDB(told)
    try:
        _, tid = _commit_new_object(writer, b"told over tls")
        wait_until(lambda: tid in told.tids, "the commit's invalidation over the TLS stream")
        assert cluster.master.frames_served("Subscribe") >= 2
    finally:
        watcher.close()
        writer.close()
