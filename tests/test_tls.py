"""Mutual TLS: every node and client proves it holds a certificate of the
cluster's CA; a plaintext or foreign-CA peer is refused."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest
from ZODB import POSException
from ZODB.Connection import TransactionMetaData
from ZODB.utils import maxtid, z64

from neostore.client import NeoStorage
from neostore.rpc import TlsConfig

from harness import ThreadCluster


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


def test_a_client_with_a_cluster_certificate_commits_and_reads(tls_cluster: Any) -> None:
    cluster, _ = tls_cluster
    storage = cluster.client()
    oid = storage.new_oid()
    txn = TransactionMetaData()
    storage.tpc_begin(txn)
    storage.store(oid, z64, b"over tls", "", txn)
    storage.tpc_vote(txn)
    tid = storage.tpc_finish(txn)
    assert storage.loadBefore(oid, maxtid) == (b"over tls", tid, None)
    storage.close()


def test_a_plaintext_client_is_refused(tls_cluster: Any) -> None:
    cluster, _ = tls_cluster
    with pytest.raises(POSException.StorageError, match="cannot connect to cluster 'secure'"):
        NeoStorage(cluster.masters, cluster.name, connect_timeout=2)


def test_a_client_certified_by_another_ca_is_refused(tls_cluster: Any) -> None:
    cluster, base = tls_cluster
    foreign = _authority(base / "foreign-ca", "foreign")
    with pytest.raises(POSException.StorageError, match="cannot connect to cluster 'secure'"):
        NeoStorage(cluster.masters, cluster.name, tls=foreign, connect_timeout=2)
