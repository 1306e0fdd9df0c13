"""The image's entry point and health check, without docker (fast).

``docker/entrypoint.py`` turns NEOSTORE_* variables (or a mounted file of
them) into ``neo-master`` / ``neo-storage`` / ``neoctl`` command lines, and
its ``health`` command asks a node ``grpc.health.v1.Health/Check``, which
every server made by :func:`neostore.rpc.make_server` answers, to any
caller: probes send no cluster name.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neostore import rpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRYPOINT = os.path.join(ROOT, "docker", "entrypoint.py")


@pytest.fixture(scope="module")
def entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("neostore_docker_entrypoint", ENTRYPOINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MASTERS = "127.0.0.1:5551,127.0.0.1:5552,127.0.0.1:5553"


def test_a_master_binds_the_port_of_its_own_entry_in_the_masters(entrypoint: ModuleType) -> None:
    command = entrypoint.master_command(
        {"NEOSTORE_MASTERS": MASTERS, "NEOSTORE_NODE_ID": "2", "NEOSTORE_AUTOSTART": "3"}, ["--log-level", "DEBUG"])
    assert command == ["neo-master", "--cluster", "neostore", "--data", "/data", "--bind", "0.0.0.0:5552",
                       "--masters", MASTERS, "--node-id", "2", "--autostart", "3", "--log-level", "DEBUG"]
    single = entrypoint.master_command({"NEOSTORE_CLUSTER": "prod"}, [])
    assert single[:7] == ["neo-master", "--cluster", "prod", "--data", "/data", "--bind", "0.0.0.0:5551"]
    assert "--masters" not in single


def test_a_storage_node_needs_the_masters(entrypoint: ModuleType) -> None:
    command = entrypoint.storage_command(
        {"NEOSTORE_MASTERS": MASTERS, "NEOSTORE_BIND": "0.0.0.0:5554", "NEOSTORE_ADVERTISE": "127.0.0.1:5554"}, [])
    assert command == ["neo-storage", "--cluster", "neostore", "--data", "/data", "--bind", "0.0.0.0:5554",
                       "--masters", MASTERS, "--advertise", "127.0.0.1:5554"]
    with pytest.raises(SystemExit, match="NEOSTORE_MASTERS"):
        entrypoint.storage_command({}, [])


def test_the_environment_wins_over_the_config_file(entrypoint: ModuleType, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "neostore.env")
    with open(path, "w") as file:
        file.write("# cluster\nNEOSTORE_CLUSTER=from-file\nexport NEOSTORE_MASTERS='10.0.0.1:5551'\n")
    settings = entrypoint.load_config({"NEOSTORE_CONFIG": path, "NEOSTORE_CLUSTER": "from-env", "HOME": "/"})
    assert settings["NEOSTORE_CLUSTER"] == "from-env"
    assert settings["NEOSTORE_MASTERS"] == "10.0.0.1:5551"
    assert "HOME" not in settings
    with open(path, "w") as file:
        file.write("OTHER=1\n")
    with pytest.raises(SystemExit, match="expected NEOSTORE_NAME=value"):
        entrypoint.load_config({"NEOSTORE_CONFIG": path})


def test_every_server_answers_the_standard_health_check_without_a_cluster_name() -> None:
    server, port = rpc.make_server(rpc.RpcConfig("health"), "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        done = subprocess.run([sys.executable, ENTRYPOINT, "health"], check=False, capture_output=True, text=True,
                              env={**os.environ, "NEOSTORE_HEALTH_ADDRESS": f"0.0.0.0:{port}"}, timeout=60)
        assert done.returncode == 0, done
        assert "SERVING" in done.stdout
    finally:
        server.stop(0)
    done = subprocess.run([sys.executable, ENTRYPOINT, "health"], check=False, capture_output=True, text=True,
                          env={**os.environ, "NEOSTORE_HEALTH_ADDRESS": f"127.0.0.1:{port}",
                               "NEOSTORE_HEALTH_TIMEOUT": "2"}, timeout=60)
    assert done.returncode == 1, done
    assert "unhealthy" in done.stdout
