"""``neo-master`` as a process: ready line, clean stop on SIGTERM, fatal errors."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

from neostore import rpc
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

pytestmark = pytest.mark.process


def start_master(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "neostore.master_node.main", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_the_master_process_serves_after_its_ready_line_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    process = start_master("--cluster", "proc", "--data", str(tmp_path), "--partitions", "3",
                           "--log-level", "WARNING")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("neo-master ready address=127.0.0.1:"), line
        address = line.split("address=", 1)[1].strip()
        channel = rpc.make_channel(rpc.RpcConfig("proc"), address)
        info = rpc.call(master_pb2_grpc.MasterStub(channel).GetClusterInfo, common_pb2.Empty(), timeout=5)
        channel.close()
        assert (info.cluster_name, info.num_partitions, info.state) == ("proc", 3, master_pb2.ClusterInfo.EMPTY)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_data_directory_of_another_cluster_is_a_one_line_fatal_error(tmp_path: pathlib.Path) -> None:
    first = start_master("--cluster", "first", "--data", str(tmp_path))
    assert first.stdout is not None
    assert first.stdout.readline().startswith("neo-master ready")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=10) == 0
    second = start_master("--cluster", "second", "--data", str(tmp_path))
    _, stderr = second.communicate(timeout=20)
    assert second.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"neo-master: error: data directory {tmp_path} belongs to cluster 'first', not 'second'"
    )
