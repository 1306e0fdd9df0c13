"""``neo-cluster``: a whole neostore cluster on 127.0.0.1, one command.

Starts the masters and the storage nodes as separate processes (each one
``neo-master`` / ``neo-storage``, exactly as in production), waits until
the cluster is running, prints how to connect, and then either waits for
Ctrl-C or runs the command given after ``--`` with ``NEOSTORE_MASTERS`` and
``NEOSTORE_CLUSTER`` set, and stops the cluster when it exits::

    neo-cluster --data ./neostore-data
    neo-cluster --data /tmp/demo -- python examples/demo.py

Data stays in ``--data`` (one directory per node), so the next start finds
the database as it was.  Logs go to ``DATA/logs/``.

:class:`LocalCluster` is the same, as a Python object, for tests.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from neostore import add_version_argument, rpc
from neostore.protocol import common_pb2, master_pb2, master_pb2_grpc

READY_TIMEOUT = 60.0
#: neo-cluster's supervision: a node dying this soon after its start, more
#: than MAX_QUICK_RESTARTS times in a row, is not restarted again.
QUICK_DEATH = 10.0
MAX_QUICK_RESTARTS = 3


#: Ports free_port handed out lately: never twice in a row of clusters.
_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=256)
_PORTS_LOCK = threading.Lock()


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections and port-0 binds."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = (int(value) for value in ports.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``, for a server started later
    (a master's address, which its peers know before it binds it).

    Taken below the kernel's ephemeral range when there is room: in between,
    an outgoing connection (or a bind to port 0) is given an ephemeral port,
    and took a port chosen this way from a test's master once ("Address
    already in use").  Random, checked free by a bind, never one of the last
    ports handed out here."""
    low, _ = _ephemeral_range()
    if low > 11000:
        for _ in range(200):
            port = random.randrange(10000, low)
            with _PORTS_LOCK:
                if port in _RECENT_PORTS:
                    continue
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            with _PORTS_LOCK:
                _RECENT_PORTS.append(port)
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class NodeProcess:
    """One node process; its first stdout line ``... ready ...`` says it serves."""

    def __init__(self, role: str, args: list[str], log_path: str, die_with_parent: bool = False) -> None:
        self.role = role
        self.args = args
        self.log_path = log_path
        #: The node gets SIGTERM when the thread that started it ends (the
        #: whole process, for neo-cluster's main thread): never orphaned.
        self.die_with_parent = die_with_parent
        self.started_at = 0.0
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self.node_id = 0
        self.metrics = ""  # host:port of its metrics endpoint, if it serves one
        self._log: IO[str] | None = None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in wait()/stop()
        self.process = subprocess.Popen(
            node_command(self.role, self.args), stdout=subprocess.PIPE, stderr=self._log, text=True,
            start_new_session=True, preexec_fn=_die_with_parent if self.die_with_parent else None)
        self.started_at = time.monotonic()
        ready: list[str] = []

        def read_ready() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                if " ready " in f" {line} ":
                    ready.append(line.strip())
                    break
            # Keep draining so the process never blocks on a full pipe.
            for _ in self.process.stdout:
                pass

        threading.Thread(target=read_ready, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.role} exited with code {self.process.returncode}: {self.last_log_line()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.role} not ready after {timeout:.0f}s: {self.last_log_line()}")
            time.sleep(0.02)
        fields = dict(part.split("=", 1) for part in ready[0].split() if "=" in part)
        self.address = fields.get("address", "")
        self.node_id = int(fields.get("node_id", "0"))
        self.metrics = fields.get("metrics", "")

    def last_log_line(self) -> str:
        try:
            with open(self.log_path) as log:
                lines = [line.strip() for line in log if line.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def kill(self) -> None:
        """kill -9."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def node_command(role: str, args: list[str]) -> list[str]:
    """How to start a ``master`` or ``storage`` node: its console script
    (``neo-master``/``neo-storage`` beside this Python, so that ``ps`` says
    what runs), or the module when the scripts are not installed."""
    script = os.path.join(os.path.dirname(sys.executable), f"neo-{role}")
    if os.access(script, os.X_OK):
        return [sys.executable, script, *args]
    module = {"master": "neostore.master_node.main", "storage": "neostore.storage_node.main"}[role]
    return [sys.executable, "-m", module, *args]


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the parent: the child between fork and exec
    must not import or take locks that another thread may hold."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux: nodes stop with neo-cluster's own stop
        return None


_prctl = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent goes (Linux's
    PR_SET_PDEATHSIG), however it goes — kill -9 included."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class LocalCluster:
    """Masters and storage nodes as processes on 127.0.0.1."""

    def __init__(
        self,
        data_dir: str,
        name: str = "neostore",
        num_storages: int = 3,
        num_partitions: int = 12,
        num_replicas: int = 2,
        host: str = "127.0.0.1",
        master_port: int = 0,
        num_masters: int = 1,
        metrics: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        if num_masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.data_dir = os.path.abspath(data_dir)
        self.name = name
        self.num_storages = num_storages
        self.num_partitions = num_partitions
        self.num_replicas = num_replicas
        self.host = host
        self.master_port = master_port
        self.num_masters = num_masters
        #: Every node serves Prometheus metrics on a port of its own (NodeProcess.metrics).
        self.metrics = metrics
        #: Nodes get SIGTERM when the thread that started them ends (neo-cluster:
        #: its main thread, so the process); tests start nodes from many threads.
        self.die_with_parent = die_with_parent
        self.rpc = rpc.RpcConfig(cluster_name=name)
        self.log_dir = os.path.join(self.data_dir, "logs")
        self.master: NodeProcess | None = None
        self.other_masters: list[NodeProcess | None] = []  # masters 2.. (Raft), by index - 1
        self.master_addresses: list[str] = []  # every master's host:port (Raft), by index
        self.joined: set[int] = set()  # indexes of masters added with add_master (--join)
        self.removed: set[int] = set()  # indexes of masters removed with remove_master
        self.storages: list[NodeProcess] = []
        self._quick_deaths: dict[str, int] = {}  # supervise(): deaths soon after a start, in a row
        self._given_up: set[str] = set()

    @property
    def masters(self) -> list[str]:
        if self.num_masters > 1:
            return [address for index, address in enumerate(self.master_addresses) if index not in self.removed]
        return [self.master.address] if self.master is not None else []

    def master_process(self, index: int = 0) -> NodeProcess:
        """Master ``index`` (from 0); with several masters, each knows them all (Raft)."""
        if self.num_masters == 1:
            port = self.master_port or free_port(self.host)
            self.master_port = port
            raft: list[str] = []
        else:
            if not self.master_addresses:
                first = self.master_port or free_port(self.host)
                self.master_port = first
                self.master_addresses = [f"{self.host}:{first}"] + [
                    f"{self.host}:{free_port(self.host)}" for _ in range(self.num_masters - 1)]
            port = int(self.master_addresses[index].rsplit(":", 1)[1])
            if index in self.joined:
                others = [address for address in self.masters if address != self.master_addresses[index]]
                raft = ["--join", "--masters", ",".join(others)]
            else:
                raft = ["--masters", ",".join(self.master_addresses[:self.num_masters]), "--node-id", str(index + 1)]
        return NodeProcess("master", [
            "--cluster", self.name, "--data", os.path.join(self.data_dir, f"master-{index}"),
            "--bind", f"{self.host}:{port}", "--partitions", str(self.num_partitions),
            "--replicas", str(self.num_replicas), "--autostart", str(self.num_storages), *raft,
            *self._metrics_arguments(),
        ], os.path.join(self.log_dir, f"master-{index}.log"), self.die_with_parent)

    def storage_process(self, index: int) -> NodeProcess:
        return NodeProcess("storage", [
            "--cluster", self.name, "--masters", ",".join(self.masters),
            "--data", os.path.join(self.data_dir, f"storage-{index}"), "--bind", f"{self.host}:0",
            *self._metrics_arguments(),
        ], os.path.join(self.log_dir, f"storage-{index}.log"), self.die_with_parent)

    def _metrics_arguments(self) -> list[str]:
        return ["--metrics", f"{self.host}:0"] if self.metrics else []

    def start(self, timeout: float = READY_TIMEOUT) -> LocalCluster:
        os.makedirs(self.log_dir, exist_ok=True)
        self.master = self.master_process()
        self.master.start(timeout)
        self.other_masters = [self.master_process(index) for index in range(1, self.num_masters)]
        for master in self.other_masters:
            assert master is not None
            master.start(timeout)
        self.storages = [self.storage_process(i) for i in range(self.num_storages)]
        for storage in self.storages:
            storage.start(timeout)
        self.wait_running(timeout)
        return self

    def cluster_info(self, timeout: float = 5.0, address: str = "") -> master_pb2.ClusterInfo:
        """GetClusterInfo from ``address`` (default: the first master); any master answers."""
        channel = rpc.make_channel(self.rpc, address or self.masters[0])
        try:
            stub = master_pb2_grpc.MasterStub(channel)
            return rpc.call(stub.GetClusterInfo, common_pb2.Empty(), timeout=timeout)
        finally:
            channel.close()

    def wait_running(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cluster_info().state == master_pb2.ClusterInfo.RUNNING:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster {self.name!r} not running after {timeout:.0f}s")
            time.sleep(0.05)

    def restart_master(self, timeout: float = READY_TIMEOUT, index: int = 0) -> None:
        process = self.master_process(index)
        process.start(timeout)
        if index == 0:
            self.master = process
        else:
            self.other_masters[index - 1] = process

    def add_master(self, timeout: float = READY_TIMEOUT) -> int:
        """Add a master to the running Raft group: ``neoctl add-master`` on a new
        address, then ``neo-master --join``.  Its index (``master_process``)."""
        if self.num_masters < 2:
            raise ValueError("only a cluster started with several masters (Raft) can add one")
        address = f"{self.host}:{free_port(self.host)}"
        self._neoctl("add-master", address)
        index = len(self.master_addresses)
        self.master_addresses.append(address)
        self.joined.add(index)
        process = self.master_process(index)
        self.other_masters.append(process)
        process.start(timeout)
        return index

    def remove_master(self, index: int) -> None:
        """``neoctl remove-master`` of master ``index``; its process (if any) stops by itself."""
        self._neoctl("remove-master", self.master_addresses[index])
        self.removed.add(index)

    def _neoctl(self, *args: str) -> str:
        """Run a neoctl command on this cluster; its JSON output (not printed)."""
        from neostore import neoctl

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = neoctl.main(["--masters", ",".join(self.masters), "--cluster", self.name, "--json", *args])
        if status != neoctl.EXIT_OK:
            raise RuntimeError(f"neoctl {' '.join(args)} failed with status {status}: {err.getvalue().strip()}")
        return out.getvalue()

    def restart_storage(self, index: int, timeout: float = READY_TIMEOUT) -> None:
        self.storages[index] = self.storage_process(index)
        self.storages[index].start(timeout)

    def _nodes(self) -> list[tuple[str, NodeProcess, Callable[[], None]]]:
        """Every node process: its name (as its log's), itself, how to restart it."""
        nodes: list[tuple[str, NodeProcess, Callable[[], None]]] = []
        if self.master is not None:
            nodes.append(("master-0", self.master, lambda: self.restart_master(index=0)))
        for index, master in enumerate(self.other_masters, 1):
            if master is not None:
                nodes.append((f"master-{index}", master, functools.partial(self.restart_master, index=index)))
        for index, storage in enumerate(self.storages):
            nodes.append((f"storage-{index}", storage, functools.partial(self.restart_storage, index)))
        return nodes

    def supervise(self, report: Callable[[str], None]) -> None:
        """Restart every node that died (reaping it: no ``<defunct>``), and
        say so.  A node that exited with code 0 stopped on purpose (dropped,
        removed, told to by ``neoctl kill``): it is reported, not restarted.
        One that dies again within ``QUICK_DEATH`` seconds of its start, more
        than ``MAX_QUICK_RESTARTS`` times in a row, is left down."""
        for name, node, restart in self._nodes():
            process = node.process
            if process is None or name in self._given_up or process.poll() is None:
                continue
            code = process.returncode
            node._close_log()
            if code == 0:
                report(f"{name} (pid {process.pid}) stopped by itself (exit code 0): not restarted; "
                       f"log {node.log_path}")
                self._given_up.add(name)
                continue
            quick = time.monotonic() - node.started_at < QUICK_DEATH
            self._quick_deaths[name] = self._quick_deaths.get(name, 0) + 1 if quick else 0
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if self._quick_deaths[name] > MAX_QUICK_RESTARTS:
                report(f"{name} (pid {process.pid}) died again ({how}) within {QUICK_DEATH:.0f}s of its start: "
                       f"left down; see {node.log_path}")
                self._given_up.add(name)
                continue
            report(f"{name} (pid {process.pid}) died ({how}): restarting it; log {node.log_path}")
            try:
                restart()
            except RuntimeError as error:
                report(f"{name} did not restart: {error}")

    def stop(self) -> None:
        # The masters first, so that they do not mark storage nodes down.
        for master in self.other_masters:
            if master is not None:
                master.stop()
        if self.master is not None:
            self.master.stop()
        for storage in self.storages:
            storage.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, command = argv[:index], argv[index + 1:]
    parser = argparse.ArgumentParser(
        prog="neo-cluster",
        description="Start a neostore cluster on this machine (M masters, N storage nodes).",
        epilog="With `-- COMMAND...`, run COMMAND against the cluster "
               "(NEOSTORE_MASTERS and NEOSTORE_CLUSTER set), then stop.",
    )
    parser.add_argument("--data", default="neostore-data", help="data directory (default: %(default)s)")
    add_version_argument(parser)
    parser.add_argument("--name", default="neostore", help="cluster name (default: %(default)s)")
    parser.add_argument("--storages", type=int, default=3, help="storage nodes (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas per partition (default: %(default)s)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5551,
                        help="first master's port, 0 for any (default: %(default)s)")
    parser.add_argument("--masters", type=int, default=1,
                        help="masters, agreeing through Raft when more than one (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.storages < 1 or args.replicas < 1 or args.partitions < 1 or args.masters < 1:
        parser.error("--masters, --storages, --replicas and --partitions must be at least 1")
    if args.replicas > args.storages:
        parser.error(f"--replicas {args.replicas} needs at least as many storage nodes (--storages {args.storages})")
    cluster = LocalCluster(args.data, args.name, args.storages, args.partitions, args.replicas,
                           master_port=args.port, num_masters=args.masters, die_with_parent=True)
    stop = threading.Event()
    # Handled explicitly: a shell may start us with SIGINT ignored; a closed
    # terminal (SIGHUP) must stop the cluster like Ctrl-C, not orphan it —
    # unless SIGHUP is ignored on purpose (nohup neo-cluster &).
    for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal_number != signal.SIGHUP or signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            signal.signal(signal_number, lambda *_: stop.set())
    say = _Output()
    try:
        try:
            cluster.start()
        except (RuntimeError, OSError) as error:
            say.error(f"neo-cluster: {error} (logs in {cluster.log_dir})")
            return 1
        masters = ",".join(cluster.masters)
        say(f"neostore cluster {args.name!r} running: {args.masters} master{'s' if args.masters > 1 else ''} "
            f"at {masters}, {args.storages} storage nodes, {args.partitions} partitions x {args.replicas} replicas")
        say(f"  data: {cluster.data_dir}   logs: {cluster.log_dir}")
        say(f"  zodburi:  neostore://{args.name}@{masters}")
        say(f"  ZConfig:  %import neostore / <neostore> master-nodes {masters} name {args.name} </neostore>")
        report = functools.partial(say.error, prefix="neo-cluster: ")
        if command:
            env = dict(os.environ, NEOSTORE_MASTERS=masters, NEOSTORE_CLUSTER=args.name)
            child = subprocess.Popen(command, env=env)
            while child.poll() is None:
                if stop.wait(0.5):
                    child.terminate()
                    return child.wait()
                cluster.supervise(report)
            return child.returncode
        say("Ctrl-C to stop.")
        while not stop.wait(0.5):
            cluster.supervise(report)
        return 0
    finally:
        # Stop first: a closed stdout (neo-cluster | head) must not skip it.
        say("stopping the cluster...")
        cluster.stop()
        say("stopped.")


class _Output:
    """neo-cluster's messages: once stdout or stderr is gone (a closed pipe,
    a closed terminal) they are dropped, never an error that skips the stop."""

    def __call__(self, text: str) -> None:
        self._write(sys.stdout, text)

    def error(self, text: str, prefix: str = "") -> None:
        self._write(sys.stderr, prefix + text)

    @staticmethod
    def _write(stream: IO[str], text: str) -> None:
        try:
            print(text, file=stream, flush=True)
        except (OSError, ValueError):  # BrokenPipeError, EIO from a gone terminal, a closed file
            with contextlib.suppress(OSError, ValueError):
                # No flush error at exit either: the stream goes to /dev/null.
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


if __name__ == "__main__":
    sys.exit(main())
