"""Commits side by side: neostore, ZEO 6 + FileStorage, RelStorage 4 on PostgreSQL.

    python benchmarks/commit.py [--seconds 5] [--warmup 1] [--procs 1,8,16]
                                [--systems neostore,zeo,relstorage-pg]
                                [--objects 1000] [--repetitions 5]
                                [--server-sync] [--json] [--quick] [--keep]

One run, one machine, every server on 127.0.0.1 (TCP), measured in turn:

* neostore: 3 masters (Raft) and 3 storage nodes, 12 partitions, 2
  replicas (neostore.launcher.LocalCluster), clients through NeoStorage;
* ZEO 6 on a FileStorage: ``runzeo`` as its own process, clients through
  ZEO.ClientStorage;
* RelStorage 4 (history-preserving, psycopg2) on a PostgreSQL server this
  script starts in a temporary directory (initdb, then ``postgres`` as an
  unprivileged user when run as root), fsync and synchronous_commit left on
  (the defaults).  Skipped, with one line saying why, when no server can be
  started: PostgreSQL is never required.

Every client is a separate process (multiprocessing, 'spawn'), with its own
``ZODB.DB``, running the same code for every system:

a. small commits: 1, 8, 16 processes (``--procs``), each committing
   1-object transactions that increment a counter in its own
   PersistentMapping under its own root key (created beforehand), for
   ``--warmup`` seconds and then ``--seconds`` seconds measured, all starting
   at the same moment.  Counted: the commits whose ``commit()`` returned
   inside the measured window; commits/s is their total over the window,
   latency p50/p99 that of ``transaction.commit()`` alone;
b. zodbshootout-style add and update with c=1 and c=2 processes: "add"
   commits one transaction creating ``--objects`` new small persistent
   objects (one integer attribute each) in a new PersistentMapping under the
   process's own root key; "update" then commits one transaction changing
   every one of them.  Each repetition starts the c processes together;
   objects/s is c x objects / (last end - first start), the transaction
   timed whole (building it and committing it); one unmeasured repetition,
   then ``--repetitions`` measured: the median is reported (the best too,
   in the JSON);
c. CPU per committed transaction, over each small-commit window: user+sys
   of every process from /proc/PID/stat (all threads) at the start and the
   end of the window.  For each server process the process tree is counted:
   the process, its live descendants, and the cumulative times of its
   children that exited (cutime/cstime), so PostgreSQL's backends, which
   come and go, are all in the postmaster's figure.  Divided by the commits
   counted in the window.  neostore: leader master, followers (sum),
   storage nodes (sum); ZEO: runzeo; RelStorage: the postmaster and its
   children; and, for each system, the client processes (sum).

Prints one table per workload, a column per system and ratio columns
(neostore / ZEO, neostore / RelStorage-PG); ``--json`` prints the same
figures as JSON.  A benchmark, not a test: this machine is shared and noisy;
compare the columns of one run, never read a figure as a bound.  Linux only
(/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from typing import Any

import transaction
import ZODB
from persistent import Persistent
from persistent.mapping import PersistentMapping

from neostore.launcher import free_port  # a port below the ephemeral range: nothing takes it meanwhile

# The add/update objects' class must unpickle in every process: the script is
# "__main__" here and "__mp_main__" in the clients, so it is registered under
# one fixed name too, and the class says that name.
MODULE_ALIAS = "neostore_commit_benchmark"
if __name__ in sys.modules:
    sys.modules.setdefault(MODULE_ALIAS, sys.modules[__name__])

SYSTEMS = ("neostore", "zeo", "relstorage-pg")
LABELS = {"neostore": "neostore", "zeo": "ZEO+FS", "relstorage-pg": "RS-PG"}
CLUSTER_NAME = "commitbench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 180.0  # a server answering, the clients ready: generous, CI runs loaded
RESULT_TIMEOUT = 300.0  # beyond the planned end of a phase
START_MARGIN = 0.2  # seconds between sending a start time and that time
CONNECTIONS_CACHE = 5000  # ZODB object cache per connection: every added object stays in it


class PObject(Persistent):
    """zodbshootout's object: persistent, one small attribute."""

    __module__ = MODULE_ALIAS

    def __init__(self) -> None:
        self.attr = 1


# -- statistics ----------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 (nearest rank) and mean of ``samples`` (seconds), in ms."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "mean_ms": math.nan}

    def rank(p: float) -> float:
        return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)] * 1000

    return {"p50_ms": rank(50), "p99_ms": rank(99), "mean_ms": statistics.fmean(ordered) * 1000}


# -- CPU from /proc ------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, int, int]]:
    """Every process: pid -> (ppid, own utime+stime, exited children's cutime+cstime), in ticks."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except OSError:  # gone meanwhile
            continue
        # Fields 4, 14-17 of proc(5): ppid, utime, stime, cutime, cstime.
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return table


def tree_cpu(table: dict[int, tuple[int, int, int]], root: int) -> float:
    """CPU seconds of process ``root`` and its descendants, live or exited and reaped."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            ticks += table[pid][1] + table[pid][2]
            todo.extend(children.get(pid, ()))
    return ticks / CLK_TCK


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of process trees."""
    table = proc_table()
    return {name: sum(tree_cpu(table, pid) for pid in pids) for name, pids in groups.items()}


# -- client processes ----------------------------------------------------------


def open_storage(spec: dict[str, Any]) -> Any:
    """A new storage client for the server described by ``spec`` (picklable)."""
    kind = spec["kind"]
    if kind == "neostore":
        from neostore.client import NeoStorage

        return NeoStorage(spec["masters"], spec["name"], server_sync=spec.get("server_sync", False))
    if kind == "zeo":
        from ZEO.ClientStorage import ClientStorage

        return ClientStorage((spec["host"], spec["port"]), wait_timeout=START_TIMEOUT,
                             server_sync=spec.get("server_sync", False))
    if kind == "relstorage-pg":
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage

        options = Options(keep_history=True, driver="psycopg2")
        return RelStorage(PostgreSQLAdapter(dsn=spec["dsn"], options=options), options=options)
    raise ValueError(kind)


def wait_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left)


def small_commits(tm: Any, connection: Any, key: str, start: float, t0: float, t1: float) -> dict[str, Any]:
    """Commit 1-object transactions from ``start`` until one returns at or after ``t1``."""
    tm.begin()
    counter = connection.root()[key]
    wait_until(start)
    latencies = []
    while True:
        tm.begin()
        counter["n"] += 1
        began = time.monotonic()
        tm.commit()
        ended = time.monotonic()
        if t0 <= ended <= t1:
            latencies.append(ended - began)
        if ended >= t1:
            return {"latencies": latencies}


def add_or_update(tm: Any, connection: Any, key: str, op: str, objects: int, start: float) -> dict[str, float]:
    """One transaction adding ``objects`` new objects under root[key], or changing them all."""
    wait_until(start)
    began = time.monotonic()
    tm.begin()
    holder = connection.root()[key]
    if op == "add":
        container = PersistentMapping()
        for i in range(objects):
            container[i] = PObject()
        holder["objects"] = container
    else:
        for obj in holder["objects"].values():
            obj.attr += 1
    tm.commit()
    return {"began": began, "ended": time.monotonic()}


def client_main(spec: dict[str, Any], pipe: multiprocessing.connection.Connection) -> None:
    """A client process: opens its DB, says ready, then runs the commands it is sent."""
    sys.stdout = sys.stderr  # never into the coordinator's (JSON) output
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the coordinator stops us
    db = connection = tm = None
    try:
        db = ZODB.DB(open_storage(spec), cache_size=CONNECTIONS_CACHE)
        tm = transaction.TransactionManager()
        connection = db.open(tm)
        pipe.send(("ok", os.getpid()))
        while True:
            command, kwargs = pipe.recv()
            if command == "quit":
                break
            run = {"small": small_commits, "add_update": add_or_update}[command]
            pipe.send(("ok", run(tm, connection, **kwargs)))
    except BaseException:  # noqa: BLE001 - reported by the coordinator
        with contextlib.suppress(Exception):
            pipe.send(("error", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            if tm is not None:
                tm.abort()
            if connection is not None:
                connection.close()
            if db is not None:
                db.close()


class ClientFailed(RuntimeError):
    pass


class Clients:
    """``count`` client processes of one system, driven through pipes."""

    def __init__(self, spec: dict[str, Any], count: int, label: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.label = label
        self.pipes = []
        self.processes = []
        try:
            for index in range(count):
                parent, child = context.Pipe()
                process = context.Process(target=client_main, args=(spec, child), daemon=True,
                                          name=f"{label}-client-{index}")
                self.pipes.append(parent)
                self.processes.append(process)
                process.start()
                child.close()  # the process has its own: a process that dies is an EOF here
            self.pids = self.replies(time.monotonic() + START_TIMEOUT, "start")
        except BaseException:
            self.close(kill=True)
            raise

    def send(self, command: str, kwargs_list: list[dict[str, Any]]) -> None:
        for pipe, kwargs in zip(self.pipes, kwargs_list, strict=True):
            pipe.send((command, kwargs))

    def replies(self, deadline: float, what: str) -> list[Any]:
        """Every process's answer; a failure raises ClientFailed with its traceback."""
        results: list[Any] = [None] * len(self.pipes)
        pending = set(range(len(self.pipes)))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientFailed(f"{self.label}: {len(pending)} client process(es) did not answer "
                                   f"({what}) within the deadline")
            waitables = [self.pipes[i] for i in pending] + [self.processes[i].sentinel for i in pending]
            multiprocessing.connection.wait(waitables, timeout=min(left, 5.0))
            for index in sorted(pending):
                pipe, process = self.pipes[index], self.processes[index]
                if pipe.poll():
                    try:
                        status, value = pipe.recv()
                    except EOFError:
                        process.join(5)
                        raise ClientFailed(f"{self.label}: client process {index} exited "
                                           f"(code {process.exitcode}) during {what}") from None
                    if status == "error":
                        raise ClientFailed(f"{self.label}: client process {index} failed during {what}:\n{value}")
                    results[index] = value
                    pending.discard(index)
                elif not process.is_alive():
                    raise ClientFailed(f"{self.label}: client process {index} exited "
                                       f"(code {process.exitcode}) during {what}")
        return results

    def close(self, kill: bool = False) -> None:
        """Ask every process to quit (close its DB) and wait; ``kill``: SIGKILL them at once."""
        for pipe, process in zip(self.pipes, self.processes, strict=False):
            if process.is_alive():
                if kill:
                    process.kill()
                    continue
                with contextlib.suppress(Exception):
                    pipe.send(("quit", {}))
        deadline = time.monotonic() + 30
        for process in self.processes:
            if process.pid is None:  # never started
                continue
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                process.kill()
                process.join(10)
        for pipe in self.pipes:
            pipe.close()


# -- the systems ---------------------------------------------------------------


def kill_group(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL the process group of ``process`` (started with start_new_session)."""
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.wait(30)


def wait_listening(port: int, process: subprocess.Popen[Any], what: str, log_path: str) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} (log: {log_path}): {tail(log_path)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not listening after {START_TIMEOUT:.0f}s (log: {log_path})") from None
            time.sleep(0.05)


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as log:
            return " | ".join(line.strip() for line in log.readlines()[-lines:])
    except OSError:
        return "(no log)"


class System:
    """A server (or cluster) under test: start, the client spec, the processes to measure, stop."""

    key = ""
    spec: dict[str, Any]

    def start(self) -> None:
        raise NotImplementedError

    def server_groups(self) -> dict[str, list[int]]:
        """Named groups of server process ids whose CPU is counted."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return ""


class Neostore(System):
    key = "neostore"

    def __init__(self, workdir: str) -> None:
        from neostore.launcher import LocalCluster

        # Metrics on: the RPCs and fsyncs per commit come from the nodes' own counters.
        self.cluster = LocalCluster(os.path.join(workdir, "neostore"), name=CLUSTER_NAME, num_storages=3,
                                    num_partitions=12, num_replicas=2, num_masters=3, metrics=True)

    def start(self) -> None:
        self.cluster.start(timeout=START_TIMEOUT)
        self.spec = {"kind": "neostore", "masters": list(self.cluster.masters), "name": self.cluster.name}

    def masters(self) -> list[Any]:
        return [self.cluster.master, *self.cluster.other_masters]

    def leader(self) -> int:
        """Index of the leading master, once every master names the same one."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            leaders = set()
            for address in self.cluster.master_addresses:
                try:
                    info = self.cluster.cluster_info(timeout=2.0, address=address)
                    leaders.add(info.leader if info.state == info.RUNNING else "")
                except Exception:  # noqa: BLE001 - not answering (yet)
                    leaders.add("")
            if len(leaders) == 1 and (leader := leaders.pop()) in self.cluster.master_addresses:
                return self.cluster.master_addresses.index(leader)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the masters do not agree on a leader: {sorted(leaders)}")
            time.sleep(0.05)

    def server_groups(self) -> dict[str, list[int]]:
        leader = self.leader()
        groups = {f"master-{i}": [m.process.pid] for i, m in enumerate(self.masters())}
        groups.update({f"storage-{i}": [s.process.pid] for i, s in enumerate(self.cluster.storages)})
        self.current_leader = leader
        return groups

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            for node in [*self.masters(), *self.cluster.storages]:
                if node is not None:
                    kill_group(node.process)

    def describe(self) -> str:
        return "3 masters (Raft) + 3 storage nodes, 12 partitions, 2 replicas"

    def counts(self) -> dict[str, float]:
        """Calls served, stream messages sent and durable LMDB writes, summed over every node
        (from each node's Prometheus endpoint)."""
        from prometheus_client.parser import text_string_to_metric_families

        wanted = {"neostore_rpc_server_handled_total": "calls",
                  "neostore_rpc_server_stream_messages_total": "stream_messages",
                  "neostore_lmdb_durable_writes_total": "durable_writes"}
        totals = dict.fromkeys(wanted.values(), 0.0)
        for node in [*self.masters(), *self.cluster.storages]:
            if node is None or not node.metrics:
                continue
            with urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=10) as answer:
                text = answer.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in wanted:
                        totals[wanted[sample.name]] += sample.value
        return totals


class Zeo(System):
    key = "zeo"

    def __init__(self, workdir: str) -> None:
        self.dir = os.path.join(workdir, "zeo")
        os.makedirs(self.dir)
        self.log_path = os.path.join(self.dir, "runzeo.log")
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        port = free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
                 "-f", os.path.join(self.dir, "Data.fs")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_listening(port, self.process, "runzeo", self.log_path)
        self.spec = {"kind": "zeo", "host": "127.0.0.1", "port": port}

    def server_groups(self) -> dict[str, list[int]]:
        assert self.process is not None
        return {"runzeo": [self.process.pid]}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.process)

    def describe(self) -> str:
        return "runzeo, one FileStorage"


class Skip(Exception):
    """This system cannot run here; the message says why."""


def postgresql_bindir() -> str:
    """A directory with PostgreSQL's initdb and postgres; Skip if none."""
    candidates = []
    for name in ("postgres", "initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))

    def version(path: str) -> tuple[int, ...]:
        parts = path.rstrip("/").split("/")
        return tuple(int(p) for p in parts[-2].split(".") if p.isdigit()) if len(parts) > 2 else ()

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    raise Skip("no PostgreSQL server binaries (initdb and postgres) found "
               "(looked on PATH, /usr/lib/postgresql/*/bin); `make bench` installs them with apt-get when it can")


class RelStoragePG(System):
    key = "relstorage-pg"

    def __init__(self, workdir: str) -> None:
        self.process: subprocess.Popen[Any] | None = None
        self.dir = ""
        self.version = ""
        self.user = ""

    def _account(self) -> tuple[str, int, int] | None:
        """The unprivileged account to run PostgreSQL as (None: as ourselves)."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            if entry.pw_uid != 0:
                return name, entry.pw_uid, entry.pw_gid
        raise Skip("running as root, and PostgreSQL refuses root, but there is no 'postgres' nor 'nobody' account")

    def start(self) -> None:
        try:
            import psycopg2
            import relstorage  # noqa: F401 - the client side must be there too
        except ImportError as error:
            raise Skip(f"{error.name} is not installed (pip install -e '.[bench]')") from None
        bindir = postgresql_bindir()
        account = self._account()
        run_as: dict[str, Any] = {}
        self.dir = tempfile.mkdtemp(prefix="commit-bench-pg-")
        if account is not None:
            self.user, uid, gid = account
            os.chown(self.dir, uid, gid)
            run_as = {"user": uid, "group": gid, "extra_groups": []}
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        data = os.path.join(self.dir, "data")
        log_path = os.path.join(self.dir, "postgresql.log")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        initdb = subprocess.run(
            [os.path.join(bindir, "initdb"), "-D", data, "-U", "bench", "-A", "trust", "-E", "UTF8", "--locale=C"],
            cwd=self.dir, env=env, capture_output=True, text=True, check=False, timeout=START_TIMEOUT, **run_as)
        if initdb.returncode != 0:
            raise Skip(f"initdb failed (as {self.user}): {(initdb.stderr or initdb.stdout).strip()[-300:]}")
        self.version = subprocess.run([os.path.join(bindir, "postgres"), "--version"], capture_output=True,
                                      text=True, check=False).stdout.strip()
        port = free_port()
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = subprocess.Popen(
                [os.path.join(bindir, "postgres"), "-D", data, "-p", str(port), "-k", self.dir,
                 "-c", "listen_addresses=127.0.0.1"],
                cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, **run_as)
        finally:
            os.close(log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise Skip(f"postgres exited with code {self.process.returncode}: {tail(log_path)}")
            try:
                admin = psycopg2.connect(dbname="postgres", user="bench", host="127.0.0.1", port=port,
                                         connect_timeout=5)
                break
            except psycopg2.OperationalError as error:
                if time.monotonic() > deadline:
                    raise Skip(f"postgres not accepting connections after {START_TIMEOUT:.0f}s: {error}") from None
                time.sleep(0.1)
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute("SHOW fsync")
                fsync = cursor.fetchone()[0]
                cursor.execute("SHOW synchronous_commit")
                synchronous = cursor.fetchone()[0]
                cursor.execute("CREATE DATABASE relstorage")
        finally:
            admin.close()
        if (fsync, synchronous) != ("on", "on"):
            raise RuntimeError(f"PostgreSQL runs with fsync={fsync}, synchronous_commit={synchronous}: not comparable")
        self.spec = {"kind": "relstorage-pg",
                     "dsn": f"dbname=relstorage user=bench host=127.0.0.1 port={port}"}

    def server_groups(self) -> dict[str, list[int]]:
        assert self.process is not None
        return {"postgres": [self.process.pid]}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.process)

    def describe(self) -> str:
        return f"{self.version or 'PostgreSQL'} as user {self.user}, history-preserving, fsync+synchronous_commit on"


# -- the workloads -------------------------------------------------------------


def small_key(procs: int, index: int) -> str:
    return f"small-{procs}-{index}"


def holder_key(procs: int, index: int) -> str:
    return f"shootout-{procs}-{index}"


def create_objects(system: System, procs_list: list[int], shootout_procs: list[int]) -> None:
    """Every client's counter and add/update holder, in one transaction, before any client starts."""
    db = ZODB.DB(open_storage(system.spec))
    try:
        with db.transaction() as connection:
            root = connection.root()
            for procs in procs_list:
                for index in range(procs):
                    root[small_key(procs, index)] = PersistentMapping(n=0)
            for procs in shootout_procs:
                for index in range(procs):
                    root[holder_key(procs, index)] = PersistentMapping()
    finally:
        db.close()


def measure_small(system: System, procs: int, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    clients = Clients(system.spec, procs, f"{LABELS[system.key]} x{procs}")
    try:
        groups = system.server_groups()
        groups.update({f"client-{i}": [pid] for i, pid in enumerate(clients.pids)})
        start = time.monotonic() + START_MARGIN
        t0 = start + args.warmup
        t1 = t0 + args.seconds
        clients.send("small", [{"key": small_key(procs, i), "start": start, "t0": t0, "t1": t1}
                               for i in range(procs)])
        wait_until(t0)
        before = cpu_snapshot(groups)
        counts_before = system.counts() if isinstance(system, Neostore) else None
        wait_until(t1)
        after = cpu_snapshot(groups)
        counts_after = system.counts() if isinstance(system, Neostore) else None
        results = clients.replies(t1 + RESULT_TIMEOUT, "small commits")
    except BaseException:
        clients.close(kill=True)
        raise
    clients.close()
    latencies = [s for result in results for s in result["latencies"]]
    commits = len(latencies)
    if commits == 0:
        raise RuntimeError(f"{system.key}: no commit returned within the {args.seconds}s window with {procs} procs")
    used = {name: after[name] - before[name] for name in groups}
    per_commit = {name: seconds / commits * 1000 for name, seconds in used.items()}
    clients_ms = sum(ms for name, ms in per_commit.items() if name.startswith("client-"))
    servers = {name: ms for name, ms in per_commit.items() if not name.startswith("client-")}
    cpu: dict[str, Any] = {}
    if isinstance(system, Neostore):
        leader = system.current_leader
        if system.leader() != leader:
            log(f"  note: the neostore leader changed during the window (was master-{leader})")
        masters = [name for name in servers if name.startswith("master-")]
        cpu["leader"] = servers[f"master-{leader}"]
        cpu["followers"] = sum(servers[name] for name in masters if name != f"master-{leader}")
        cpu["storages"] = sum(ms for name, ms in servers.items() if name.startswith("storage-"))
    cpu["per_server_process"] = servers
    cpu["servers"] = sum(servers.values())
    cpu["clients"] = clients_ms
    cpu["total"] = cpu["servers"] + clients_ms
    where: dict[str, Any] = {"leader": f"master-{system.current_leader}"} if isinstance(system, Neostore) else {}
    if counts_before is not None and counts_after is not None:
        # Counted from t0 to t1, like the CPU: commits in flight at either end make it approximate.
        where["per_commit"] = {key: (counts_after[key] - counts_before[key]) / commits for key in counts_after}
    return {"procs": procs, **where, "commits": commits, "seconds": args.seconds,
            "commits_per_s": commits / args.seconds,
            **percentiles(latencies), "cpu_ms_per_commit": cpu,
            "cpu_busy": sum(used.values()) / args.seconds}


def measure_shootout(system: System, procs: int, args: argparse.Namespace) -> dict[str, Any]:
    clients = Clients(system.spec, procs, f"{LABELS[system.key]} add/update x{procs}")
    rates: dict[str, list[float]] = {"add": [], "update": []}
    try:
        for repetition in range(args.repetitions + 1):  # the first one: a warm-up
            for op in ("add", "update"):
                start = time.monotonic() + START_MARGIN
                clients.send("add_update", [{"key": holder_key(procs, i), "op": op, "objects": args.objects,
                                             "start": start} for i in range(procs)])
                results = clients.replies(time.monotonic() + RESULT_TIMEOUT, op)
                elapsed = max(r["ended"] for r in results) - min(r["began"] for r in results)
                if repetition:
                    rates[op].append(procs * args.objects / elapsed)
    except BaseException:
        clients.close(kill=True)
        raise
    clients.close()
    return {op: {"procs": procs, "objects_per_txn": args.objects, "repetitions": args.repetitions,
                 "objects_per_s": statistics.median(samples), "objects_per_s_best": max(samples),
                 "samples": samples}
            for op, samples in rates.items()}


def run_system(system: System, args: argparse.Namespace, results: dict[str, Any], log: Any) -> None:
    label = LABELS[system.key]
    log(f"{label}: starting...")
    system.start()
    system.spec["server_sync"] = args.server_sync
    log(f"  {system.describe()}")
    results["systems"][system.key] = system.describe()
    create_objects(system, args.procs, args.shootout_procs)
    for procs in args.procs:
        log(f"{label}: small commits, {procs} process{'es' * (procs != 1)}...")
        entry = measure_small(system, procs, args, log)
        results["small_commits"].setdefault(system.key, {})[str(procs)] = entry
        log(f"  {entry['commits_per_s']:.0f} commits/s, p50 {entry['p50_ms']:.1f} ms, p99 {entry['p99_ms']:.1f} ms")
    for procs in args.shootout_procs:
        log(f"{label}: add/update of {args.objects} objects per transaction, c={procs}...")
        for op, entry in measure_shootout(system, procs, args).items():
            results[op].setdefault(system.key, {})[str(procs)] = entry
            log(f"  {op}: {entry['objects_per_s']:.0f} objects/s (median)")


# -- report --------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("grpcio", "ZODB", "ZEO", "RelStorage", "psycopg2-binary"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpus": os.cpu_count(), "cpu_model": model or platform.processor() or "unknown",
            "python": platform.python_version(), "versions": versions,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def add_ratios(results: dict[str, Any]) -> None:
    ratios: dict[str, Any] = {}

    def ratio(table: dict[str, Any], procs: str, value: Any) -> dict[str, float]:
        out = {}
        neo = table.get("neostore", {}).get(procs)
        for other in ("zeo", "relstorage-pg"):
            entry = table.get(other, {}).get(procs)
            if neo is not None and entry is not None and value(entry) > 0:
                out[f"neostore/{other}"] = value(neo) / value(entry)
        return out

    for workload, value in (("small_commits", lambda e: e["commits_per_s"]),
                            ("add", lambda e: e["objects_per_s"]), ("update", lambda e: e["objects_per_s"]),
                            ("cpu_ms_per_commit", lambda e: e["cpu_ms_per_commit"]["total"])):
        table = results["small_commits" if workload == "cpu_ms_per_commit" else workload]
        procs_seen = sorted({p for entries in table.values() for p in entries}, key=int)
        ratios[workload] = {p: r for p in procs_seen if (r := ratio(table, p, value))}
    results["ratios"] = ratios


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    machine = results["machine"]
    v = machine["versions"]
    print(f"\n{machine['date']}: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
          f"grpcio {v['grpcio']}, ZODB {v['ZODB']}, ZEO {v['ZEO']}, RelStorage {v['RelStorage']}")
    for key, description in results["systems"].items():
        print(f"  {LABELS[key]}: {description}")
    for key, reason in results["skipped"].items():
        print(f"  {LABELS[key]}: SKIPPED: {reason}")
    print("  ratios: neostore / the other system (throughput: > 1 is neostore faster; "
          "CPU: > 1 is neostore using more)")
    systems = [key for key in SYSTEMS if key in results["systems"]]
    if not systems:
        print("\nno system was measured")
        return
    others = [key for key in ("zeo", "relstorage-pg") if key in systems and "neostore" in systems]
    ratio_heads = "".join(f"{'neo/' + LABELS[o].split('+')[0]:>11}" for o in others)

    def ratio_cells(workload: str, procs: str) -> str:
        found = results["ratios"].get(workload, {}).get(procs, {})
        return "".join(f"{found[f'neostore/{o}']:>11.2f}" if f"neostore/{o}" in found else f"{'-':>11}"
                       for o in others)

    small = results["small_commits"]
    print(f"\nsmall commits (1-object), {args.seconds:g} s after {args.warmup:g} s warm-up: "
          "commits/s (commit() p50/p99 ms)")
    print(f"{'procs':<6}" + "".join(f"{LABELS[k]:<22}" for k in systems) + ratio_heads)
    for procs in map(str, args.procs):
        cells = ""
        for key in systems:
            entry = small.get(key, {}).get(procs)
            cells += (f"{entry['commits_per_s']:.0f} ({entry['p50_ms']:.1f}/{entry['p99_ms']:.1f})"
                      if entry else "-").ljust(22)
        print(f"{procs:<6}{cells}{ratio_cells('small_commits', procs)}")
    for op in ("add", "update"):
        print(f"\n{op} {args.objects} objects per transaction (zodbshootout-style): objects/s, all processes "
              f"together, median of {args.repetitions} repetitions")
        print(f"{'procs':<6}" + "".join(f"{LABELS[k]:<22}" for k in systems) + ratio_heads)
        for procs in map(str, args.shootout_procs):
            cells = "".join(
                (f"{e['objects_per_s']:.0f}" if (e := results[op].get(k, {}).get(procs)) else "-").ljust(22)
                for k in systems)
            print(f"{procs:<6}{cells}{ratio_cells(op, procs)}")
    print("\nCPU ms per commit (user+sys from /proc/PID/stat over the small-commit window; server = its "
          "process tree)")
    print(f"{'procs':<6}{'system':<10}{'servers':>9}{'clients':>9}{'total':>9}   servers in detail")
    for procs in map(str, args.procs):
        for key in systems:
            entry = small.get(key, {}).get(procs)
            if not entry:
                continue
            cpu = entry["cpu_ms_per_commit"]
            if key == "neostore":
                detail = (f"leader {cpu['leader']:.2f}, 2 followers {cpu['followers']:.2f}, "
                          f"3 storages {cpu['storages']:.2f}")
            else:
                detail = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu["per_server_process"].items())
            print(f"{procs:<6}{LABELS[key]:<10}{cpu['servers']:>9.2f}{cpu['clients']:>9.2f}{cpu['total']:>9.2f}"
                  f"   {detail}; {entry['cpu_busy']:.2f} of {machine['cpus']} CPUs busy")
        per_commit = small.get("neostore", {}).get(procs, {}).get("per_commit")
        if per_commit:
            print(f"{'':<6}{'neostore':<10} per commit, every node summed: {per_commit['calls']:.1f} rpcs served, "
                  f"{per_commit['stream_messages']:.1f} stream messages sent, "
                  f"{per_commit['durable_writes']:.1f} durable LMDB writes (fsyncs)")
        found = results["ratios"].get("cpu_ms_per_commit", {}).get(procs, {})
        for other in others:
            if f"neostore/{other}" in found:
                neo, them = small["neostore"][procs]["cpu_ms_per_commit"], small[other][procs]["cpu_ms_per_commit"]
                cells = "".join(f"{neo[part] / them[part]:>9.2f}" if them[part] > 0 else f"{'-':>9}"
                                for part in ("servers", "clients"))
                print(f"{'':<6}{'neo/' + LABELS[other].split('+')[0]:<10}{cells}"
                      f"{found[f'neostore/{other}']:>9.2f}")


# -- main ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per small-commit phase (5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each (1)")
    parser.add_argument("--procs", default=None, help="client processes for small commits (1,8,16)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset of %(default)s")
    parser.add_argument("--objects", type=int, default=None, help="objects per add/update transaction (1000)")
    parser.add_argument("--repetitions", type=int, default=None, help="measured add/update repetitions (5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 and 2 procs, 1 s (0.5 s warm-up), 100 objects, 2 repetitions")
    parser.add_argument("--server-sync", action="store_true",
                        help="neostore and ZEO clients ask the server at each transaction begin "
                             "(their server_sync option; off by default in both)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = parser.parse_args()
    quick = {"seconds": 1.0, "warmup": 0.5, "procs": "1,2", "objects": 100, "repetitions": 2}
    default = {"seconds": 5.0, "warmup": 1.0, "procs": "1,8,16", "objects": 1000, "repetitions": 5}
    for name, value in (quick if args.quick else default).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.procs = sorted({int(n) for n in str(args.procs).split(",") if n.strip()})
    except ValueError:
        parser.error("--procs: comma-separated integers, e.g. 1,8,16")
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := [s for s in args.systems if s not in SYSTEMS]:
        parser.error(f"--systems: unknown {', '.join(unknown)}; choose among {', '.join(SYSTEMS)}")
    if not args.procs or args.procs[0] < 1 or args.seconds <= 0 or args.warmup < 0 or args.objects < 1 \
            or args.repetitions < 1 or not args.systems:
        parser.error("--procs, --objects, --repetitions at least 1, --seconds > 0, --warmup >= 0, a system")
    args.shootout_procs = [1, 2]
    return args


def main() -> int:
    args = parse_args()
    # Ctrl-C and SIGTERM unwind, so that every server and client is stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    results: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "procs": args.procs,
                     "shootout_procs": args.shootout_procs, "objects_per_txn": args.objects,
                     "repetitions": args.repetitions, "shootout_statistic": "median",
                     "server_sync": args.server_sync,
                     "small_commits_counted": "commits whose commit() returned inside the window",
                     "ratios": "neostore / other: throughput > 1 is neostore faster, CPU > 1 neostore using more"},
        "systems": {}, "skipped": {}, "small_commits": {}, "add": {}, "update": {},
    }
    workdir = tempfile.mkdtemp(prefix="commit-bench-")
    pg_dirs: list[str] = []  # PostgreSQL's, a mkdtemp of its own (owned by its user)
    failed = False
    classes = {"neostore": Neostore, "zeo": Zeo, "relstorage-pg": RelStoragePG}
    try:
        for key in SYSTEMS:
            if key not in args.systems:
                continue
            system = classes[key](workdir)
            try:
                run_system(system, args, results, log)
            except Skip as skip:
                results["skipped"][key] = str(skip)
                log(f"{LABELS[key]}: SKIPPED: {skip}")
            finally:
                system.stop()
                if isinstance(system, RelStoragePG) and system.dir:
                    pg_dirs.append(system.dir)
    except KeyboardInterrupt:
        failed = True
        print("interrupted; every server and client process was stopped", file=sys.stderr)
        return 130
    except Exception:
        failed = True
        traceback.print_exc()
        return 1
    finally:
        dirs = [workdir, *pg_dirs]
        if args.keep or failed:
            log(f"data and logs kept in: {', '.join(dirs)}")
        else:
            for path in dirs:
                shutil.rmtree(path, ignore_errors=True)
    add_ratios(results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
