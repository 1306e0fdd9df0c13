"""``neo-cluster`` never leaves its nodes behind, and restarts one that dies.

Each test starts a real ``neo-cluster`` (1 master, 1 storage node, as
processes), records its nodes' PIDs from ``/proc``, does to it what a
terminal, a pipe or an operator does, and checks by PID that no node is
left running.  A node that dies is reported and restarted.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from neostore.launcher import free_port

from waiting import wait_until

WAIT = 90.0  # seconds for an event on a busy machine; each wait ends as soon as it happens


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z...), None once it is gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class NeoCluster:
    def __init__(self, data: pathlib.Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neostore.launcher", "--data", str(data), "--name", "supervised",
             "--storages", "1", "--replicas", "1", "--partitions", "2", "--port", str(free_port())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self.process.stdout is not None
        self.banner = []
        for line in self.process.stdout:
            self.banner.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert any("running" in line for line in self.banner), (self.banner, self.stderr())
        self.nodes = children(self.process.pid)
        assert len(self.nodes) == 2, self.nodes  # the master and the storage node

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in children(self.process.pid) + self.nodes:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def neo_cluster(tmp_path: pathlib.Path) -> Iterator[NeoCluster]:
    cluster = NeoCluster(tmp_path / "data")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("signal_number", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_node(neo_cluster: NeoCluster, signal_number: int) -> None:
    neo_cluster.process.send_signal(signal_number)
    assert neo_cluster.process.wait(WAIT) == 0
    assert not [pid for pid in neo_cluster.nodes if alive(pid)]
    assert "Traceback" not in neo_cluster.stderr()


def test_a_closed_stdout_pipe_still_stops_every_node(neo_cluster: NeoCluster) -> None:
    # `neo-cluster | head -3`, then Ctrl-C: the messages after it have nowhere to go.
    assert neo_cluster.process.stdout is not None
    neo_cluster.process.stdout.close()
    neo_cluster.process.send_signal(signal.SIGINT)
    assert neo_cluster.process.wait(WAIT) == 0
    assert not [pid for pid in neo_cluster.nodes if alive(pid)]
    assert "Traceback" not in neo_cluster.stderr()


def test_nodes_die_with_a_killed_neo_cluster(neo_cluster: NeoCluster) -> None:
    neo_cluster.process.kill()
    neo_cluster.process.wait(WAIT)
    wait_until(lambda: not [pid for pid in neo_cluster.nodes if alive(pid)], "the nodes to stop", timeout=WAIT,
               interval=0.1)


def test_a_node_that_dies_is_reported_and_restarted(neo_cluster: NeoCluster) -> None:
    storage = max(neo_cluster.nodes)  # started after the master
    os.kill(storage, signal.SIGKILL)
    wait_until(lambda: len([pid for pid in children(neo_cluster.process.pid) if alive(pid)]) == 2
               and storage not in children(neo_cluster.process.pid), "a new storage node process", timeout=WAIT,
               interval=0.1)  # a walk of /proc per look
    assert process_state(storage) is None  # reaped, not <defunct>
    neo_cluster.process.send_signal(signal.SIGTERM)
    assert neo_cluster.process.wait(WAIT) == 0
    errors = neo_cluster.stderr()
    assert f"storage-0 (pid {storage}) died (killed by SIGKILL): restarting it" in errors, errors


def test_ports_chosen_for_later_are_outside_the_kernels_ephemeral_range_and_not_repeated() -> None:
    """A port free_port chooses is bound later (a master's address); an
    outgoing connection meanwhile gets an ephemeral port, so the chosen one
    lies below that range, where nothing takes it unasked."""
    from neostore.launcher import _ephemeral_range

    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    if low > 11000:
        assert all(10000 <= port < low for port in ports), (low, high, sorted(ports)[:5], sorted(ports)[-5:])
