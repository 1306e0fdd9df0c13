"""Prometheus metrics of one node: its registry, its series, its endpoint.

Every node (``neo-master``, ``neo-storage``) serves its metrics over HTTP
when started with ``--metrics HOST:PORT`` (off unless asked); the text
format is Prometheus's, served by ``prometheus_client``.  Each node has its
own :class:`NodeMetrics` (its own registry), so that the nodes a test runs
in one process never mix their series.

Two kinds of series:

* **Counted on the way** — what happens too often to rebuild on a scrape:
  every gRPC call a node serves (:class:`RpcMetrics`, installed by
  :func:`neostore.rpc.make_server`: calls by method and outcome, handling
  time by method, messages sent on server streams).  A Storage ``Load*``
  histogram is the load latency; the leader's ``Master/Finish`` histogram
  is the commit latency as the cluster sees it.
* **Read on a scrape** — a node's state, through a collector function
  (:meth:`NodeMetrics.collect_with`) that the node registers: Raft term
  and indexes, leadership, cells per state, LMDB sizes and durable write
  transactions (each one an fsync: with the RPC counts, what decides the
  speed of a commit), transactions decided.  Nothing on the commit path
  pays for them.

Series names start with ``neostore_``; the README's "Metrics" section
lists them.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

#: Seconds: from a cached load (~0.1 ms) to a commit waiting on a lock (seconds).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class CallSeries:
    """The counts of one method, kept as plain numbers under one lock and
    turned into Prometheus series on a scrape (a prometheus_client Counter
    and Histogram take a lock per value: 2.05 us per call served, against
    0.78 us here)."""

    __slots__ = ("method", "_lock", "codes", "bucket_counts", "seconds_sum", "messages")

    def __init__(self, method: str) -> None:
        self.method = method
        self._lock = threading.Lock()
        self.codes: dict[str, int] = {}
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: beyond every bound
        self.seconds_sum = 0.0
        self.messages = 0

    def done(self, code: str, started: float) -> None:
        """A call ended with ``code`` (``OK`` or an error kind); ``started``: its time.perf_counter()."""
        elapsed = time.perf_counter() - started
        bucket = bisect.bisect_left(LATENCY_BUCKETS, elapsed)
        with self._lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            self.bucket_counts[bucket] += 1
            self.seconds_sum += elapsed

    def sent(self) -> None:
        """A message went out on this method's server stream."""
        with self._lock:
            self.messages += 1

    def snapshot(self) -> tuple[dict[str, int], list[int], float, int]:
        with self._lock:
            return dict(self.codes), list(self.bucket_counts), self.seconds_sum, self.messages


class RpcMetrics(Collector):
    """Calls a node served (gRPC and frames): by method and outcome, with their time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[str, CallSeries] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def series(self, full_method: str) -> CallSeries:
        """The counts of ``/package.Service/Method`` (as ``Service/Method``)."""
        method = full_method.rsplit(".", 1)[-1].lstrip("/")
        with self._lock:
            found = self._series.get(method)
            if found is None:
                found = self._series[method] = CallSeries(method)
            return found

    def collect(self) -> Iterable[Metric]:
        handled = CounterMetricFamily(
            "neostore_rpc_server_handled", "Calls this node served (gRPC and frames), by method and outcome "
            "(OK, or the neostore error kind: Unavailable, ConflictError, WrongCluster...)",
            labels=["method", "code"])
        seconds = HistogramMetricFamily(
            "neostore_rpc_server_handling_seconds", "Time from a call's arrival in its handler to its answer "
            "(a stream: to its end)", labels=["method"])
        messages = CounterMetricFamily(
            "neostore_rpc_server_stream_messages", "Messages this node sent on server streams, by method",
            labels=["method"])
        with self._lock:
            series = sorted(self._series.items())
        for method, one in series:
            codes, buckets, total, sent = one.snapshot()
            for code, count in sorted(codes.items()):
                handled.add_metric([method, code], count)
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                running += count
                cumulative.append((floatToGoString(bound), running))
            seconds.add_metric([method], cumulative, total)
            messages.add_metric([method], sent)
        return [handled, seconds, messages]


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._collect())
        except Exception:  # noqa: BLE001 - a scrape must answer with what it can
            log.exception("collecting metrics failed")
            return []


class NodeMetrics:
    """One node's registry and the HTTP endpoint that serves it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc = RpcMetrics(self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def histogram(self, name: str, documentation: str) -> Histogram:
        """A latency histogram (``LATENCY_BUCKETS``) in this node's registry."""
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=self.registry)

    def collect_with(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Call ``collect()`` on every scrape; it returns metric families."""
        self.registry.register(_FunctionCollector(collect))

    def serve(self, address: str) -> str:
        """Serve ``/metrics`` on ``address`` (``HOST:PORT``, port 0: any); the bound host:port."""
        host, port = split_address(address)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise OSError(f"cannot serve metrics on {address}: {error.strerror or error}") from None
        bound_port = self._server.server_port
        self.address = f"{host}:{bound_port}"
        log.info("metrics on http://%s/metrics", self.address)
        return self.address

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def split_address(address: str, what: str = "metrics address") -> tuple[str, int]:
    """``HOST:PORT`` → (host, port: an empty host is every interface); a
    ValueError naming ``what`` is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def gauges(name: str, documentation: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def lmdb_families(files: dict[str, tuple[Any, str, int]]) -> list[Metric]:
    """Size and durable writes of LMDB environments: ``{name: (env, directory, writes)}``."""
    used = GaugeMetricFamily("neostore_lmdb_used_bytes", "Bytes of an LMDB file in use (pages up to the last one "
                             "written); freed pages inside are reused", labels=["file"])
    size = GaugeMetricFamily("neostore_lmdb_file_bytes", "Size of an LMDB data file on disk", labels=["file"])
    writes = CounterMetricFamily("neostore_lmdb_durable_writes", "Durable LMDB write transactions or syncs "
                                 "(each one an fsync)", labels=["file"])
    for name, (env, directory, count) in sorted(files.items()):
        try:
            info, stat = env.info(), env.stat()
        except Exception:  # noqa: BLE001 - closed meanwhile (the node is stopping)
            continue
        used.add_metric([name], (info["last_pgno"] + 1) * stat["psize"])
        try:
            size.add_metric([name], os.path.getsize(os.path.join(directory, "data.mdb")))
        except OSError:
            pass
        writes.add_metric([name], count)
    return [used, size, writes]
