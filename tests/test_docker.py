"""`docker compose up` runs a real neostore cluster (marked ``docker``).

Builds the base image (docker/build-base.sh, from Debian packages: no
registry needed) and the neostore image, starts docker-compose.yml under
its own project name and ports, and drives it from this host as a ZODB
application would: commit and read back, stop one storage container and
the leader master's, commit and read again, restart them and wait until
every cell is UP_TO_DATE again (``neoctl``, through the compose service),
``down`` and ``up`` with the data kept, then ``down -v``.  Each step prints
how long it took.

Needs docker with Compose (``docker compose`` or ``docker-compose``): on a
machine without them the test fails, saying so; CI machines have them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from prometheus_client.parser import text_string_to_metric_families

from neostore.client import NeoStorage

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Own project name and image tag per run: another run of this test on the
# same docker engine (a shared machine) must not stop or replace this one's.
PROJECT = f"neostore-test-{os.getpid()}"
IMAGE = "neostore:test"  # what the build cache keeps
RUN_IMAGE = f"neostore:test-{os.getpid()}"  # what this run's compose project runs
BASE_IMAGE = "neostore-base:bookworm"
CLUSTER = "neostore"
NODES = ["master1", "master2", "master3", "storage1", "storage2", "storage3"]
HEALTHY_TIMEOUT = 120.0


def _compose_command() -> list[str]:
    if shutil.which("docker") is None:
        pytest.fail("the docker test group needs docker (with Compose) and this machine has no `docker` "
                    "command: install Docker Engine and Compose, or deselect with -m 'not docker'",
                    pytrace=False)
    if subprocess.run(["docker", "info"], check=False, capture_output=True).returncode != 0:
        pytest.fail("`docker info` fails: the Docker engine is not running or not reachable by this user",
                    pytrace=False)
    if subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    pytest.fail("the docker test group needs Compose: neither `docker compose` nor `docker-compose` works",
                pytrace=False)


PORT_PREFIXES = ("47", "48", "49", "46", "45", "44", "43", "42")


def _metrics_prefix(prefix: str) -> str:
    """The first digits of the metrics ports that go with node ports PP51-PP60."""
    return str(int(prefix) + 10)


def _ports_free(prefix: str) -> bool:
    """Whether the compose ports PP51-PP60 and their metrics ports are all free on 127.0.0.1."""
    sockets = []
    try:
        for first in (prefix, _metrics_prefix(prefix)):
            for last in range(51, 61):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", int(f"{first}{last}")))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


class Steps:
    """Prints each step with the time it took (outside pytest's capture)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.times: dict[str, float] = {}
        self._started = time.monotonic()

    def say(self, line: str) -> None:
        with self._capsys.disabled():
            print(f"[docker] {line}", flush=True)

    def run(self, name: str, function: Any, *args: Any) -> Any:
        started = time.monotonic()
        result = function(*args)
        self.times[name] = elapsed = time.monotonic() - started
        self.say(f"{name}: {elapsed:.1f}s")
        return result

    def total(self) -> float:
        return time.monotonic() - self._started


class Compose:
    def __init__(self, command: list[str]) -> None:
        self.command = [*command, "--project-directory", ROOT, "-f", os.path.join(ROOT, "docker-compose.yml"),
                        "-p", PROJECT]
        self.use_ports(next((prefix for prefix in PORT_PREFIXES if _ports_free(prefix)), PORT_PREFIXES[0]))

    def use_ports(self, prefix: str) -> None:
        self.prefix = prefix
        self.env = {**os.environ, "NEOSTORE_IMAGE": RUN_IMAGE, "BASE_IMAGE": BASE_IMAGE,
                    "NEOSTORE_PORT_PREFIX": prefix, "NEOSTORE_METRICS_PREFIX": _metrics_prefix(prefix),
                    "NEOSTORE_HOST": "127.0.0.1", "NEOSTORE_CLUSTER": CLUSTER}
        self.masters = ",".join(f"127.0.0.1:{prefix}{last}" for last in (51, 52, 53))

    def up(self) -> None:
        """``up -d``; on ports taken meanwhile (another cluster), the next free range."""
        tried = []
        while True:
            try:
                self("up", "-d")
                return
            except AssertionError as error:
                if "already allocated" not in str(error) and "address already in use" not in str(error):
                    raise
                tried.append(self.prefix)
                self("down", "-v", check=False)
                free = [prefix for prefix in PORT_PREFIXES if prefix not in tried and _ports_free(prefix)]
                if not free:
                    raise AssertionError(f"no free range of 10 ports for the compose cluster: {error}") from None
                self.use_ports(free[0])

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        done = subprocess.run([*self.command, *args], check=False, env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(self.command[-2:])} {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def neoctl(self, *args: str, timeout: float = 180) -> str:
        return self("run", "--rm", "-T", "neoctl", *args, timeout=timeout)

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def health(self, service: str) -> str:
        container = self.container(service)
        if not container:
            return "absent"
        status = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        done = subprocess.run(["docker", "inspect", "-f", status, container], check=False, capture_output=True,
                              text=True)
        return done.stdout.strip() or "absent"

    def wait_healthy(self, services: list[str], timeout: float = HEALTHY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {service: self.health(service) for service in services}
            if all(state == "healthy" for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout:.0f}s: {states}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "30", check=False)

    def leader(self) -> str:
        deadline = time.monotonic() + 60
        while True:
            info = json.loads(self.neoctl("print", "cluster", "--json"))
            if info["leader"]:
                return info["leader"]
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader: {info}")
            time.sleep(1)

    def master_service(self, address: str) -> str:
        return f"master{int(address.rsplit(':', 1)[1]) - int(self.prefix + '50')}"

    def wait_up_to_date(self) -> dict[str, Any]:
        self.neoctl("wait", "--timeout", "120", "--quiet", timeout=200)
        table = json.loads(self.neoctl("print", "pt", "--json"))
        states = {cell["state"] for row in table["rows"] for cell in row}
        assert states == {"UP_TO_DATE"}, table
        assert all(len(row) == table["num_replicas"] for row in table["rows"]), table
        return table

    def volumes(self) -> set[str]:
        names = subprocess.run(["docker", "volume", "ls", "-q"], check=False, capture_output=True,
                               text=True).stdout.split()
        return {name for name in names if name.startswith((PROJECT + "_", PROJECT.replace("-", "") + "_"))}


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    running = Compose(_compose_command())
    try:
        yield running
    finally:
        running("down", "-v", "--remove-orphans", check=False)
        subprocess.run(["docker", "rmi", RUN_IMAGE], check=False, capture_output=True)


def _build_images() -> None:
    done = subprocess.run([os.path.join(ROOT, "docker", "build-base.sh"), BASE_IMAGE],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"docker/build-base.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _build_image() -> None:
    done = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", IMAGE,
                           "-t", RUN_IMAGE, ROOT],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"docker build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _open(compose: Compose) -> ZODB.DB:
    return ZODB.DB(NeoStorage(compose.masters, CLUSTER))


def _commit(db: ZODB.DB, key: str, value: int) -> None:
    with db.transaction(f"docker test: {key}") as conn:
        root = conn.root()
        if "docker" not in root:
            root["docker"] = PersistentMapping()
        root["docker"][key] = value


def _check_metrics(compose: Compose) -> None:
    """Each node's /metrics answers on its published port; one master leads and counted the commit."""
    leaders = committed = 0.0
    for last in range(51, 57):  # master1-3, storage1-3
        url = f"http://127.0.0.1:{_metrics_prefix(compose.prefix)}{last}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if not sample.labels}
        if last <= 53:
            leaders += samples["neostore_master_leader"]
            committed = max(committed, samples["neostore_transactions_committed_total"])
        else:
            assert samples["neostore_storage_node_id"] >= 1, url
    assert leaders == 1
    assert committed >= 1


def _read(db: ZODB.DB) -> dict[str, int]:
    conn = db.open()
    try:
        conn.sync()
        return dict(conn.root()["docker"])
    finally:
        conn.close()
        transaction.abort()


def test_compose_cluster(compose: Compose, capsys: pytest.CaptureFixture[str]) -> None:
    steps = Steps(capsys)
    steps.say(f"compose: {' '.join(compose.command[:-6])}, project {PROJECT}, masters {compose.masters}")

    steps.run("build base image (docker/build-base.sh)", _build_images)
    steps.run("build image", _build_image)
    size = int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", RUN_IMAGE],
                              capture_output=True, text=True, check=True).stdout)
    steps.say(f"image {RUN_IMAGE}: {size / 1e6:.0f} MB")
    steps.run("docker compose config", compose, "config", "-q")
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", RUN_IMAGE],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user and user.split(":")[0] not in ("0", "root"), f"the image runs as {user!r}"

    # Up and healthy.
    started = time.monotonic()
    steps.run("docker compose up -d", compose.up)
    steps.run("wait healthy (6 nodes)", compose.wait_healthy, NODES)
    steps.run("wait cluster running, every cell UP_TO_DATE (neoctl wait)", compose.wait_up_to_date)
    steps.say(f"up -d to healthy cluster: {time.monotonic() - started:.1f}s")
    for service in NODES:
        uid = compose("exec", "-T", service, "id", "-u").strip()
        assert uid == "10001", f"{service} runs as uid {uid}"

    # A ZODB application on the host.
    db = _open(compose)
    try:
        steps.run("host client: commit", _commit, db, "first", 1)
        reader = _open(compose)
        assert steps.run("second host client: read back", _read, reader) == {"first": 1}
        reader.close()
        steps.run("scrape every node's Prometheus metrics from the host", _check_metrics, compose)

        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import docker_latency

        figures = steps.run("latency (30 rounds)", docker_latency.measure, compose.masters, CLUSTER, 30)
        steps.say("latency through compose:\n" + docker_latency.report(figures))

        # Stop one storage node and the leading master.
        leader = compose.leader()
        leader_service = compose.master_service(leader)
        steps.say(f"leader: {leader} ({leader_service})")
        steps.run(f"docker compose stop storage1 {leader_service}", compose, "stop", "storage1", leader_service)
        steps.run("commit with storage1 and the leader stopped", _commit, db, "degraded", 2)
        reader = _open(compose)
        assert steps.run("read back (new client)", _read, reader) == {"first": 1, "degraded": 2}
        reader.close()
        new_leader = compose.leader()
        assert new_leader != leader
        steps.say(f"new leader: {new_leader}")

        # Restart them: the storage node catches up.
        steps.run(f"docker compose start storage1 {leader_service}", compose, "start", "storage1", leader_service)
        steps.run("wait healthy again", compose.wait_healthy, NODES)
        table = steps.run("wait every cell UP_TO_DATE again", compose.wait_up_to_date)
        steps.say(f"partition table version {table['version']}: every cell UP_TO_DATE")
        steps.run("commit after the restart", _commit, db, "restarted", 3)
    finally:
        db.close()

    # down (volumes kept) and up again: the data is still there.
    steps.run("docker compose down (keep volumes)", compose, "down")
    assert len(compose.volumes()) >= len(NODES), compose.volumes()
    started = time.monotonic()
    steps.run("docker compose up -d (again)", compose, "up", "-d")
    steps.run("wait healthy", compose.wait_healthy, NODES)
    steps.say(f"up -d to healthy, existing data: {time.monotonic() - started:.1f}s")
    db = _open(compose)
    try:
        assert steps.run("read back after down/up", _read, db) == {"first": 1, "degraded": 2, "restarted": 3}
    finally:
        db.close()

    steps.run("docker compose down -v", compose, "down", "-v")
    assert compose.volumes() == set(), compose.volumes()
    steps.say(f"total: {steps.total():.1f}s")
