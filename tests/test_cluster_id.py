"""A cluster has an id fixed at creation; a data directory of another cluster
of the same name is refused (before, it took that cluster's node id and the
two nodes displaced each other in the partition table)."""

from __future__ import annotations

import json
import pathlib

import pytest

from neostore import errors, rpc
from neostore.master_node.state import is_cluster_id
from neostore.protocol import common_pb2, master_pb2_grpc
from neostore.storage_node.node import StorageConfig, StorageNode

from harness import ThreadCluster


def cluster_id(cluster: ThreadCluster) -> str:
    channel = rpc.make_channel(cluster.rpc, cluster.masters[0])
    try:
        return rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=10).cluster_id
    finally:
        channel.close()


def test_neoctl_prints_the_cluster_id(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neostore import neoctl

    with ThreadCluster(str(tmp_path), name="shown", num_storages=1, num_partitions=2, num_replicas=1) as cluster:
        assert neoctl.main(["--masters", cluster.masters[0], "--cluster", "shown", "--json", "print", "cluster"]) == 0
        assert json.loads(capsys.readouterr().out)["cluster_id"] == cluster_id(cluster)
        assert neoctl.main(["--masters", cluster.masters[0], "--cluster", "shown", "print", "cluster"]) == 0
        assert f"cluster_id      {cluster_id(cluster)}" in capsys.readouterr().out


def test_a_storage_directory_of_another_cluster_with_the_same_name_is_refused(tmp_path: pathlib.Path) -> None:
    first = ThreadCluster(str(tmp_path / "first"), name="same", num_storages=1, num_partitions=2, num_replicas=1)
    first.start()
    first_id = cluster_id(first)
    assert is_cluster_id(first_id)
    foreign = first.storages[0].database.path
    assert first.storages[0].database.cluster_id() == first_id  # kept at registration
    first.stop()

    with ThreadCluster(str(tmp_path / "second"), name="same", num_storages=1, num_partitions=2,
                       num_replicas=1) as second:
        second_id = cluster_id(second)
        assert is_cluster_id(second_id) and second_id != first_id
        impostor = StorageNode(StorageConfig(rpc=second.rpc, masters=second.masters, data_dir=foreign,
                                             register_timeout=30))
        with pytest.raises(errors.WrongCluster, match="another cluster with the same name") as refused:
            impostor.start()
        assert first_id in str(refused.value) and second_id in str(refused.value)
        impostor.stop()
        # The real node 1 keeps its place: nobody took its id or address.
        state = second.master.state
        assert [(n.node_id, n.address) for n in state.table.nodes] == [(1, second.storages[0].address)]
