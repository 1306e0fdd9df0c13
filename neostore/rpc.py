"""The one factory for every gRPC channel and server in neostore.

Masters, storage nodes, clients and ``neoctl`` all create their channels
with :func:`make_channel` and their servers with :func:`make_server`, so
that, by construction, everywhere:

* TLS with mutual authentication applies when a :class:`TlsConfig` is given
  (plain TCP only when none is, for development and tests);
* messages are bounded in size (``max_message_bytes``), both ways;
* every call carries the cluster name, and every server refuses a call for
  another cluster with :class:`~neostore.errors.WrongCluster`;
* a :class:`~neostore.errors.NeoError` raised by a servicer becomes a gRPC
  status with the error's class in the trailing metadata, and
  :func:`call` turns it back into the same exception on the caller's side.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2_grpc

from neostore import errors
from neostore.throttle import Throttle

if TYPE_CHECKING:  # prometheus_client is imported by the nodes only, not by every client
    from neostore.metrics import CallSeries, RpcMetrics

log = logging.getLogger(__name__)

CLUSTER_METADATA_KEY = "neostore-cluster"
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """PEM files: the cluster CA, this party's certificate and key."""

    ca_file: str
    cert_file: str
    key_file: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        return (
            pathlib.Path(self.ca_file).read_bytes(),
            pathlib.Path(self.cert_file).read_bytes(),
            pathlib.Path(self.key_file).read_bytes(),
        )


@dataclasses.dataclass(frozen=True)
class RpcConfig:
    """What every connection of one process shares."""

    cluster_name: str
    tls: TlsConfig | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not self.cluster_name or not self.cluster_name.isprintable():
            raise ValueError(f"invalid cluster name {self.cluster_name!r}")


def add_tls_arguments(parser: Any, who: str = "this node") -> None:
    """The ``--ca``/``--cert``/``--key`` options every command shares."""
    parser.add_argument("--ca", help="TLS: the cluster CA certificate (PEM)")
    parser.add_argument("--cert", help=f"TLS: {who}'s certificate (PEM)")
    parser.add_argument("--key", help=f"TLS: {who}'s private key (PEM)")


def tls_from_arguments(arguments: Any) -> TlsConfig | None:
    """The TlsConfig the ``--ca``/``--cert``/``--key`` options name, if any."""
    files = (arguments.ca, arguments.cert, arguments.key)
    if not any(files):
        return None
    if not all(files):
        raise ValueError("TLS needs all of --ca, --cert and --key")
    return TlsConfig(arguments.ca, arguments.cert, arguments.key)


def _options(config: RpcConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.enable_retries", 0),
    ]


# -- server side -------------------------------------------------------------


class _ServerInterceptor(grpc.ServerInterceptor):
    """Checks the cluster name; maps NeoError to a status (one place)."""

    def __init__(self, cluster_name: str, metrics: RpcMetrics | None = None) -> None:
        self._cluster_name = cluster_name
        self._metrics = metrics
        # The wrapped handler of each registered one (built once, not per call).
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler_call_details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler  # health probes (Docker, Kubernetes) send no cluster name
        theirs = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == CLUSTER_METADATA_KEY:
                theirs = value
                break
        if theirs != self._cluster_name:
            # The answer does not name this node's cluster: a stranger learns
            # nothing it could use to pass the check.
            message = (
                f"wrong cluster name {theirs!r}: this node belongs to another cluster"
                if theirs is not None
                else "no cluster name sent: this node belongs to a named cluster"
            )
            series = self._metrics.series(handler_call_details.method) if self._metrics is not None else None
            return _refusing_handler(handler, errors.WrongCluster(message), series)
        cached = self._wrapped.get(id(handler))
        if cached is None or cached[0] is not handler:
            series = self._metrics.series(handler_call_details.method) if self._metrics is not None else None
            cached = self._wrapped[id(handler)] = (handler, _wrap_handler(handler, series))
        return cached[1]


def _abort(context: grpc.ServicerContext, error: Exception) -> None:
    if isinstance(error, errors.NeoError):
        context.set_trailing_metadata(((errors.ERROR_METADATA_KEY, type(error).__name__),))
        context.abort(error.code, str(error))
    log.exception("unexpected error in servicer")
    context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


def _code(error: Exception, context: grpc.ServicerContext) -> str:
    """The outcome label of a call that raised ``error``."""
    if isinstance(error, errors.NeoError):
        return type(error).__name__
    code = context.code()
    return code.name if code is not None else "INTERNAL"


def _wrap_handler(handler: grpc.RpcMethodHandler, series: CallSeries | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with errors mapped to statuses (:func:`_abort`), and each
    call counted in ``series`` when the node serves metrics."""
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        def unary_unary(request, context):  # type: ignore[no-untyped-def]
            started = time.perf_counter() if series is not None else 0.0
            code = "OK"
            try:
                return inner_uu(request, context)
            except Exception as error:  # noqa: BLE001 - mapped to a status
                code = _code(error, context)
                if context.code() is not None:  # already aborted by the servicer
                    raise
                _abort(context, error)
            finally:
                if series is not None:
                    series.done(code, started)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def unary_stream(request, context):  # type: ignore[no-untyped-def]
            started = time.perf_counter() if series is not None else 0.0
            code = "OK"
            try:
                if series is None:
                    yield from inner_us(request, context)
                else:
                    for message in inner_us(request, context):
                        series.sent()
                        yield message
            except GeneratorExit:  # the caller went away (cancelled)
                code = "CANCELLED"
                raise
            except Exception as error:  # noqa: BLE001 - mapped to a status
                code = _code(error, context)
                if context.code() is not None:  # already aborted by the servicer
                    raise
                _abort(context, error)
            finally:
                if series is not None:
                    series.done(code, started)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _refusing_handler(handler: grpc.RpcMethodHandler, error: errors.NeoError,
                      series: CallSeries | None = None) -> grpc.RpcMethodHandler:
    def refuse(request, context):  # type: ignore[no-untyped-def]
        if series is not None:
            series.done(type(error).__name__, time.perf_counter())
        _abort(context, error)

    def refuse_stream(request, context):  # type: ignore[no-untyped-def]
        if series is not None:
            series.done(type(error).__name__, time.perf_counter())
        _abort(context, error)
        yield  # pragma: no cover - never reached

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MalformedRequestLog(logging.Filter):
    """gRPC logs every request it cannot decode as an ERROR with a
    traceback (megabytes of log under a fuzzer or a confused client): one
    WARNING line instead, at most every ``interval`` seconds, saying how
    many more there were."""

    PREFIX = "Exception deserializing"

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def reset(self) -> None:
        """Report the next one at once (as if none came before)."""
        self._throttle.reset()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        earlier = self._throttle.admit()
        if earlier is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused a request that does not decode (%s)%s"
        record.args = (error or "no detail", f"; {earlier} more since the last such line" if earlier else "")
        record.exc_info = record.exc_text = None
        return True


#: Installed on grpc's logger by :func:`make_server`.
malformed_request_log = MalformedRequestLog()


def make_server(config: RpcConfig, address: str, max_workers: int = 64,
                metrics: RpcMetrics | None = None) -> tuple[grpc.Server, int]:
    """A started-later server bound to ``address`` (``host:0`` picks a port).

    Returns the server and the port it is bound to.  Add servicers, then
    call ``server.start()``.  With ``metrics``, every call served is counted
    there (:mod:`neostore.metrics`).
    """
    grpc_log = logging.getLogger("grpc._common")
    if malformed_request_log not in grpc_log.filters:
        grpc_log.addFilter(malformed_request_log)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[_ServerInterceptor(config.cluster_name, metrics)],
        options=_options(config) + [("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=None,
    )
    if config.tls is None:
        port = server.add_insecure_port(address)
    else:
        ca, cert, key = config.tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    # The standard health service (grpc.health.v1): "" answers SERVING for as
    # long as the server serves, to any caller (the one call that needs no
    # cluster name: probes know none).
    health_pb2_grpc.add_HealthServicer_to_server(grpc_health.HealthServicer(), server)
    return server, port


# -- client side -------------------------------------------------------------


class _WithMetadata:
    """A multi-callable that sends the cluster name with every call.

    (What ``grpc.intercept_channel`` would do, at a fraction of its cost
    per call: no call-details objects, no continuation.)
    """

    __slots__ = ("_inner", "_metadata")

    def __init__(self, inner: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._inner = inner
        self._metadata = metadata

    def _with(self, metadata: Any) -> Any:
        return self._metadata if not metadata else tuple(metadata) + self._metadata

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner(request, timeout=timeout, metadata=self._with(metadata), **kwargs)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner.with_call(request, timeout=timeout, metadata=self._with(metadata), **kwargs)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner.future(request, timeout=timeout, metadata=self._with(metadata), **kwargs)


class _ClusterChannel(grpc.Channel):
    """A channel whose every call carries the cluster name (metadata)."""

    def __init__(self, channel: grpc.Channel, cluster_name: str) -> None:
        self._channel = channel
        self._metadata = ((CLUSTER_METADATA_KEY, cluster_name),)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool = False) -> Any:
        return _WithMetadata(self._channel.unary_unary(
            method, request_serializer, response_deserializer, _registered_method), self._metadata)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _WithMetadata(self._channel.unary_stream(
            method, request_serializer, response_deserializer, _registered_method), self._metadata)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool = False) -> Any:
        return _WithMetadata(self._channel.stream_unary(
            method, request_serializer, response_deserializer, _registered_method), self._metadata)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool = False) -> Any:
        return _WithMetadata(self._channel.stream_stream(
            method, request_serializer, response_deserializer, _registered_method), self._metadata)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> _ClusterChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_channel(config: RpcConfig, address: str, max_reconnect_backoff: float | None = None) -> grpc.Channel:
    """A channel to ``address`` that sends the cluster name on every call.

    ``max_reconnect_backoff`` (seconds) caps how long the channel waits
    before trying to reconnect to a peer that was down (gRPC's default grows
    to minutes); calls made meanwhile fail at once.
    """
    options = _options(config)
    if max_reconnect_backoff is not None:
        backoff_ms = max(1, int(max_reconnect_backoff * 1000))
        options += [
            ("grpc.initial_reconnect_backoff_ms", min(backoff_ms, 100)),
            ("grpc.min_reconnect_backoff_ms", min(backoff_ms, 100)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
    if config.tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        ca, cert, key = config.tls.read()
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.secure_channel(address, credentials, options=options)
    return _ClusterChannel(channel, config.cluster_name)


Stub = TypeVar("Stub")


Key = TypeVar("Key", bound=Hashable)
Shared = TypeVar("Shared")


class Counted(Generic[Key, Shared]):
    """Objects shared by key and counted: :meth:`acquire` makes one
    (``make(key)``, under the lock: never two for a key) or counts one more
    user; the last :meth:`release` removes it and calls ``close`` on it,
    after the lock."""

    def __init__(self, make: Callable[[Key], Shared], close: Callable[[Shared], None]) -> None:
        self._make = make
        self._close = close
        self._lock = threading.Lock()
        self._shared: dict[Key, tuple[Shared, int]] = {}

    def acquire(self, key: Key) -> Shared:
        """The object for ``key``; pair each call with a :meth:`release`."""
        with self._lock:
            shared, users = self._shared.get(key, (None, 0))
            if shared is None:
                shared = self._make(key)
            self._shared[key] = (shared, users + 1)
            return shared

    def release(self, key: Key) -> None:
        with self._lock:
            shared, users = self._shared[key]
            if users > 1:
                self._shared[key] = (shared, users - 1)
                return
            del self._shared[key]
        self._close(shared)

    def values(self) -> list[Shared]:
        """Every object in use now."""
        with self._lock:
            return [shared for shared, _ in self._shared.values()]


class SharedChannels:
    """Channels and stubs shared by the clients of one process.

    A ZODB application may open and close many storages (ZODB's own race
    tests open hundreds): gRPC already shares TCP connections between
    channels of the same target and options, and sharing the channel and
    stub objects too spares each new client the cost of building them.
    One channel per (configuration, address), with its stubs, counted
    (:class:`Counted`): the last :meth:`release` closes it.
    """

    def __init__(self) -> None:
        self._channels: Counted[tuple[RpcConfig, str], tuple[grpc.Channel, dict[Any, Any]]] = Counted(
            lambda key: (make_channel(*key), {}), lambda shared: shared[0].close())

    def acquire(self, config: RpcConfig, address: str, stub_class: Callable[[grpc.Channel], Stub]) -> Stub:
        """A ``stub_class`` stub on the shared channel to ``address``; pair
        each call with a :meth:`release`."""
        channel, stubs = self._channels.acquire((config, address))
        stub = stubs.get(stub_class)
        if stub is None:  # two threads may build one each: the first one kept serves both
            stub = stubs.setdefault(stub_class, stub_class(channel))
        return stub  # type: ignore[no-any-return]

    def release(self, config: RpcConfig, address: str) -> None:
        self._channels.release((config, address))


#: The channels of every client of this process.
shared_channels = SharedChannels()


Reply = TypeVar("Reply")


def call(method: Callable[..., Reply], request: Any, timeout: float | None = None, peer: str = "") -> Reply:
    """Call a unary rpc; a failure raises the matching NeoError."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise errors.from_rpc_error(error, peer) from None


def call_all(calls: list[tuple[Callable[..., Any], Any, float | None, str]]) -> list[Any]:
    """Call unary rpcs ``(method, request, timeout, peer)`` in parallel:
    each one's reply, or the NeoError it raised.  All but the last run as
    blocking calls on this process's :data:`parallel_callers`; the last is
    a blocking call in this thread.  (Not ``.future()``: a channel with no
    call in flight starts a new thread for its next future, which cost a
    client more than the call itself.)

    A framed method (:class:`neostore.frames.FramesStub`'s, which have a
    ``start``) needs no thread: its request is sent from this thread with
    the others', then its answer is awaited here."""
    if not any(hasattr(method, "start") for method, *_ in calls):
        jobs = [parallel_callers.submit(_outcome, method, request, timeout, peer)
                for method, request, timeout, peer in calls[:-1]]
        outcomes = [_outcome(*calls[-1])] if calls else []
        return [job.result() for job in jobs] + outcomes
    in_flight: list[Any] = []
    for method, request, timeout, peer in calls:
        start = getattr(method, "start", None)
        if start is None:
            in_flight.append(parallel_callers.submit(call, method, request, timeout, peer))
            continue
        try:
            in_flight.append(start(request, timeout))
        except errors.NeoError as error:
            in_flight.append(error)
    outcomes = []
    for job in in_flight:
        if isinstance(job, errors.NeoError):
            outcomes.append(job)
            continue
        try:
            outcomes.append(job.result())
        except errors.NeoError as error:
            outcomes.append(error)
    return outcomes


def _outcome(method: Callable[..., Any], request: Any, timeout: float | None, peer: str) -> Any:
    """The reply of a unary call, or the NeoError it raised."""
    try:
        return call(method, request, timeout=timeout, peer=peer)
    except errors.NeoError as error:
        return error


#: Long-lived threads (started as needed, at most 16) that make
#: :func:`call_all`'s parallel calls.
parallel_callers = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc-caller")


def stream(iterator: Iterator[Any], peer: str = "") -> Iterator[Any]:
    """Iterate a server stream; a failure raises the matching NeoError."""
    try:
        yield from iterator
    except grpc.RpcError as error:
        raise errors.from_rpc_error(error, peer) from None


class SilenceWatchdog:
    """Cancels a server stream that stays silent for ``limit`` seconds.

    Peers send heartbeats on idle streams; a stream that brings nothing for
    longer comes from a peer that hangs without closing its connection
    (paused, swapping, cut off).  Silence alone is weak evidence on a busy
    machine, so after ``limit`` seconds ``confirm()`` is asked (e.g. "does
    another master lead now?"): the stream is cancelled if it says so, or
    in any case after ``hard_limit`` seconds.  Every watchdog of the
    process is checked once a second by one shared thread (a process with
    many clients must not run a thread per stream); a check that comes
    late (this process was starved of CPU, so the streams may have been
    too) restarts every count.  ``confirm`` runs in a thread of its own,
    as it may call peers.  Call :meth:`heard` on every message and
    :meth:`stop` when the stream ends.
    """

    def __init__(self, call: Any, limit: float, on_silence: Callable[[], None],
                 confirm: Callable[[], bool] = lambda: True, hard_limit: float = 60.0) -> None:
        self._call = call
        self._limit = limit
        self._hard_limit = hard_limit
        self._on_silence = on_silence
        self._confirm = confirm
        self._last = time.monotonic()
        self._ended = False
        self._confirming = False
        _WATCHDOGS.add(self)

    def heard(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._ended = True
        _WATCHDOGS.discard(self)

    def _restart_count(self, now: float) -> None:
        self._last = max(self._last, now)

    def _check(self, now: float) -> None:
        """Called by the shared thread once a second."""
        silence = now - self._last
        if self._ended or self._confirming or silence <= self._limit:
            return
        if silence > self._hard_limit:
            self._fire()
            return
        self._confirming = True
        threading.Thread(target=self._confirm_then_fire, name="neostore-stream-confirm", daemon=True).start()

    def _confirm_then_fire(self) -> None:
        try:
            confirmed = self._confirm()
        except Exception:  # noqa: BLE001 - a failed second opinion is no opinion
            log.debug("stream watchdog: confirmation failed", exc_info=True)
            confirmed = False
        finally:
            self._confirming = False
        if confirmed and time.monotonic() - self._last > self._limit:
            self._fire()

    def _fire(self) -> None:
        if self._ended:
            return
        self.stop()
        self._on_silence()
        self._call.cancel()


class _WatchdogThread:
    """The one thread that checks every :class:`SilenceWatchdog` of the process."""

    INTERVAL = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchdogs: set[SilenceWatchdog] = set()
        self._thread: threading.Thread | None = None

    def add(self, watchdog: SilenceWatchdog) -> None:
        with self._lock:
            self._watchdogs.add(watchdog)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="neostore-stream-watchdog", daemon=True)
                self._thread.start()

    def discard(self, watchdog: SilenceWatchdog) -> None:
        with self._lock:
            self._watchdogs.discard(watchdog)

    def _run(self) -> None:
        checked = time.monotonic()
        while True:
            time.sleep(self.INTERVAL)
            now = time.monotonic()
            starved = now - checked > 2 * self.INTERVAL  # nobody could have heard anything
            checked = now
            with self._lock:
                watchdogs = list(self._watchdogs)
            for watchdog in watchdogs:
                if starved:
                    watchdog._restart_count(now)
                else:
                    try:
                        watchdog._check(now)
                    except Exception:  # noqa: BLE001 - one broken stream must not stop the others' watch
                        log.exception("stream watchdog failed")


_WATCHDOGS = _WatchdogThread()
