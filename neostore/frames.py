"""Framed calls: the hot unary calls of a service over plain TCP (or TLS) connections.

A gRPC unary call costs about 0.44 ms of server CPU and 0.26 ms of client
CPU here, whatever it carries; a length-prefixed frame on a socket, read
and answered by a thread per connection, about 0.03 ms at each end
(``benchmarks/transport_floor.py``; design.md, "What a call costs").  So
a storage node serves the calls clients make most (loads, votes) on a
second port as well, with the same protobuf messages and the same
servicer methods; everything else stays on gRPC.

The protocol, over one connection (TCP_NODELAY; TLS when the cluster uses
it, with the same mutual certificates as gRPC):

* every frame is ``length`` (4 bytes, big-endian: what follows), ``kind``
  (1 byte), then the body;
* the caller opens with HELLO (body: the cluster name, UTF-8); the server
  answers WELCOME (empty), or ERROR and closes: a wrong cluster name is
  refused as gRPC refuses it, without naming the right one;
* then calls, one at a time: CALL (body: the method name's length, 1 byte,
  the name, e.g. ``LoadBefore``, and the serialized request) answered by
  REPLY (the serialized reply) or ERROR (body: the error class name's
  length, 1 byte, the name, then the message, UTF-8), which the caller
  raises as the same :class:`~neostore.errors.NeoError` class
  (:func:`neostore.errors.from_name`), as it would from gRPC;
* a server-streaming method (the invalidation stream) is called the same
  way and answered by any number of ITEM frames (a serialized message
  each), then END, or ERROR; the caller ends it by closing the
  connection, which the server notices at its next message (streams send
  heartbeats), and the connection serves nothing else.

One call at a time per connection keeps both ends simple (no call ids, no
hand-off: the connection's thread runs the servicer method itself); a
caller with several threads calling at once uses as many connections,
kept in a pool per address (:class:`FramesChannel`).  A frame larger than
the configured maximum message size is refused and its connection closed.
A call that times out closes its connection (its answer could still come).
A connection the pool kept that turns out dead when reused (the node
restarted) is replaced once, transparently: the request never reached a
live server.

Deadlines are the caller's (its socket timeout); a servicer method runs to
its end as it would under gRPC.  A unary method may answer before it ends
(its context's ``reply_now``, which gRPC's context lacks: check for it),
then go on with work its caller need not wait for.  A server-streaming
method the server *pumps* (``pumped``) holds no thread: its connection goes
to the port's one pump thread once the call is opened
(:mod:`neostore.frames_pump`).  Calls served are counted in the node's
RPC metrics under the same ``Service/Method`` names as gRPC's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from neostore import errors
from neostore.frames_pump import DEFAULT_MAX_BUFFERED, IdleConnections, PumpedSource, StreamPump, shut
from neostore.metrics import RpcMetrics, split_address
from neostore.rpc import Counted, RpcConfig, call, parallel_callers
from neostore.throttle import Throttle

log = logging.getLogger(__name__)

HELLO, WELCOME, CALL, REPLY, ERROR, ITEM, END = 1, 2, 3, 4, 5, 6, 7
_HEADER = struct.Struct("!IB")
#: How long a new connection may take to say HELLO (and a caller to connect).
HANDSHAKE_TIMEOUT = 10.0
#: A connection with no call for this long gives its thread back
#: (:class:`~neostore.frames_pump.IdleConnections`); its next call starts one.
IDLE_PARK = 5.0
#: Idle connections a pool keeps per address (more are closed when returned).
MAX_IDLE = 32


class _Closed(Exception):
    """The connection ended (EOF, reset): no whole frame came."""


class _Idle(Exception):
    """No call came within the idle time: nothing of a frame was read."""


def _receive_exactly(connection: socket.socket, size: int, idle: float | None = None) -> bytes:
    """``size`` bytes; with ``idle``, _Idle if none come within that many seconds."""
    data = bytearray()
    if idle is not None:
        connection.settimeout(idle)
        try:
            chunk = connection.recv(size)
        except TimeoutError:
            raise _Idle() from None
        finally:
            connection.settimeout(None)
        if not chunk:
            raise _Closed("connection closed")
        data += chunk
    while len(data) < size:
        chunk = connection.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise _Closed("connection closed")
        data += chunk
    return bytes(data)


def _receive_frame(connection: socket.socket, max_bytes: int, idle: float | None = None) -> tuple[int, bytes]:
    """(kind, body) of the next frame; TooLarge beyond ``max_bytes``; _Idle
    when none starts within ``idle`` seconds."""
    length, kind = _HEADER.unpack(_receive_exactly(connection, _HEADER.size, idle))
    if length - 1 > max_bytes:
        raise errors.TooLarge(f"a frame of {length - 1} bytes exceeds the {max_bytes}-byte limit")
    return kind, _receive_exactly(connection, length - 1) if length > 1 else b""


def _frame(kind: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return _HEADER.pack(len(body) + 1, kind) + body


def _error_frame(error: errors.NeoError) -> bytes:
    name = type(error).__name__.encode()
    return _frame(ERROR, bytes([len(name)]), name, str(error).encode("utf-8", "replace"))


def _parse_error(body: bytes, where: str) -> errors.NeoError:
    size = body[0] if body else 0
    name = body[1:1 + size].decode("ascii", "replace")
    message = body[1 + size:].decode("utf-8", "replace")
    return errors.from_name(name, f"{message}{where}")


def _tls_context(config: RpcConfig, server: bool) -> ssl.SSLContext | None:
    """Mutual TLS with the cluster's CA and this party's certificate (None
    without TLS): the server requires the caller's certificate, the caller
    checks the server's name against its certificate, as gRPC does."""
    if config.tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    context.load_verify_locations(config.tls.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- server ------------------------------------------------------------------


class FramesServer:
    """Serves the unary methods of each ``(service, servicer)`` of
    ``services`` (a protobuf service descriptor, the object whose methods
    serve it; method names must not repeat) on ``address`` (``host:0``:
    any port); a thread per connection, except the pumped streams' (one
    thread for all).  :meth:`start`, then :meth:`stop`."""

    def __init__(self, config: RpcConfig, address: str, services: Sequence[tuple[ServiceDescriptor, Any]],
                 metrics: RpcMetrics | None = None,
                 pumped: Mapping[str, Callable[[Any, Callable[[], None]], PumpedSource]] | None = None,
                 idle_park: float = IDLE_PARK) -> None:
        """``pumped``: server-streaming methods served from one thread for
        all their calls (:mod:`neostore.frames_pump`): method name ->
        ``open(request, wake)``, which validates the request (raising a
        NeoError answers it) and returns the call's source; ``wake()``
        asks the pump to poll its sources now."""
        self._config = config
        self._pumped = dict(pumped or {})
        self._pump: StreamPump | None = None
        self._idle_park = idle_park
        self._idle: IdleConnections | None = None
        self._tls = _tls_context(config, server=True)
        self._methods: dict[str, tuple[Callable[[Any, Any], Any], type[protobuf_message.Message], Any]] = {}
        self._streams: set[str] = set()  # the server-streaming ones among them
        for service, servicer in services:
            for method in service.methods:
                if method.client_streaming:
                    continue
                if method.name in self._methods:
                    raise ValueError(f"method {method.name} of {service.full_name} is served twice")
                series = metrics.series(f"/{service.full_name}/{method.name}") if metrics is not None else None
                self._methods[method.name] = (getattr(servicer, method.name),
                                              message_factory.GetMessageClass(method.input_type), series)
                if method.server_streaming:
                    self._streams.add(method.name)
        unknown = set(self._pumped) - self._streams
        if unknown:
            raise ValueError(f"pumped methods {sorted(unknown)} are not server-streaming methods served here")
        host, port = split_address(address, "frames address")
        self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                              backlog=1024)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopped = False
        self._refusals = Throttle(60.0)
        #: Calls answered, by method name.
        self.served: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._accept, name="frames-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end every connection (calls in flight fail
        at their callers as when a node goes away)."""
        with self._lock:
            self._stopped = True
            connections, self._connections = self._connections, set()
            pump, idle = self._pump, self._idle
        shut(self._listener)  # shutdown first: it wakes the thread blocked in accept()
        if self._thread.is_alive():
            self._thread.join(5)
        if pump is not None:
            pump.stop()
        if idle is not None:
            idle.stop()
        for connection in connections:
            shut(connection)

    @property
    def pumped_streams(self) -> int:
        """Pumped streams being served now."""
        pump = self._pump
        return pump.streams if pump is not None else 0

    def _pump_for_streams(self) -> StreamPump | None:
        with self._lock:
            if (self._pump is None or not self._pump.alive) and not self._stopped:  # a failed pump is replaced
                self._pump = StreamPump(_frame, ITEM, END, self._forget_connection,
                                        max_buffered=max(DEFAULT_MAX_BUFFERED, 4 * self._config.max_message_bytes))
            return self._pump

    @property
    def parked_connections(self) -> int:
        """Connections waiting for a call without a thread."""
        idle = self._idle
        return idle.parked if idle is not None else 0

    def _park(self, connection: socket.socket) -> bool:
        """Hand an idle connection to the watcher; False when stopping."""
        with self._lock:
            if (self._idle is None or not self._idle.alive) and not self._stopped:  # a failed one is replaced
                self._idle = IdleConnections(self._resume, self._forget_connection)
            idle = self._idle
        return idle is not None and idle.park(connection)

    def _resume(self, connection: socket.socket) -> None:
        """A parked connection became readable (a call, or its end): serve it on this new thread."""
        try:
            peer: Any = connection.getpeername()
        except OSError:
            peer = "?"
        self._serve(connection, peer, resumed=True)

    def _forget_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _accept(self) -> None:
        while True:
            try:
                connection, peer = self._listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                if self._stopped:
                    shut(connection)
                    return
                self._connections.add(connection)
            try:
                threading.Thread(target=self._serve, args=(connection, peer), name="frames-connection",
                                 daemon=True).start()
            except RuntimeError as error:  # no thread to be had: this caller uses gRPC (NoFrames)
                self._refused(peer, errors.Unavailable(f"cannot start a thread for the connection: {error}"))
                with self._lock:
                    self._connections.discard(connection)
                shut(connection)

    def _serve(self, connection: socket.socket, peer: Any, resumed: bool = False) -> None:
        """Serve a connection's calls (after its handshake, unless ``resumed``
        from the idle watcher) until it closes, goes to the pump, or idles."""
        handed_over = False  # to the pump or the idle watcher
        try:
            if not resumed:
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.settimeout(HANDSHAKE_TIMEOUT)
                if self._tls is not None:
                    tls_connection = self._tls.wrap_socket(connection, server_side=True)
                    with self._lock:
                        self._connections.discard(connection)
                        self._connections.add(tls_connection)
                    connection = tls_connection
                if not self._handshake(connection, peer):
                    return
                connection.settimeout(None)
            max_bytes = self._config.max_message_bytes
            while True:
                try:
                    kind, body = _receive_frame(connection, max_bytes, self._idle_park)
                except _Idle:
                    handed_over = self._park(connection)
                    return
                if kind != CALL or not body:
                    raise errors.BadRequest(f"expected a call, got a frame of kind {kind}")
                size = body[0]
                name, payload = body[1:1 + size].decode("ascii", "replace"), body[1 + size:]
                if name in self._pumped:
                    handed_over = self._hand_to_pump(connection, name, payload)
                    return  # its connection serves nothing else; this thread ends
                if name in self._streams:
                    self._stream(connection, name, payload)
                    return  # a stream's connection serves nothing else
                answer = self._call(name, payload, _CallContext(connection))
                if answer:
                    connection.sendall(answer)
        except errors.NeoError as error:  # a malformed frame: say why, then hang up
            self._refused(peer, error)
            try:
                connection.sendall(_error_frame(error))
            except OSError:
                pass
        except (_Closed, OSError, ValueError):  # ValueError: TLS or struct garbage
            pass
        finally:
            if not handed_over:
                with self._lock:
                    self._connections.discard(connection)
                shut(connection)

    def _hand_to_pump(self, connection: socket.socket, name: str, payload: bytes) -> bool:
        """Open a pumped stream's source and hand its connection over; an
        error opening it is answered (ERROR).  Whether handed over."""
        _, request_class, series = self._methods[name]
        with self._lock:
            self.served[name] += 1
        pump = self._pump_for_streams()
        if pump is None:
            raise _Closed()  # stopping
        try:
            source = self._pumped[name](_request(name, request_class, payload), pump.wake)
        except errors.NeoError as error:
            if series is not None:
                series.done(type(error).__name__, time.perf_counter())
            connection.sendall(_error_frame(error))
            return False
        except Exception as error:  # noqa: BLE001 - answered, as gRPC answers INTERNAL
            log.exception("unexpected error opening %s", name)
            if series is not None:
                series.done("INTERNAL", time.perf_counter())
            connection.sendall(_error_frame(errors.NeoError(f"INTERNAL: {type(error).__name__}: {error}")))
            return False
        pump.add(connection, source, series)
        return True

    def _handshake(self, connection: socket.socket, peer: Any) -> bool:
        kind, body = _receive_frame(connection, 1024)
        if kind != HELLO:
            raise errors.BadRequest(f"expected HELLO, got a frame of kind {kind}")
        theirs = body.decode("utf-8", "replace")
        if theirs != self._config.cluster_name:
            error = errors.WrongCluster(f"wrong cluster name {theirs!r}: this node belongs to another cluster")
            self._refused(peer, error)
            connection.sendall(_error_frame(error))
            return False
        connection.sendall(_frame(WELCOME))
        return True

    def _call(self, name: str, payload: bytes, context: _CallContext | None = None) -> bytes:
        """The answer frame to a CALL of ``name`` with the serialized request
        ``payload``; empty when the method answered already (``reply_now``)."""
        found = self._methods.get(name)
        if found is None:
            return _error_frame(errors.BadRequest(f"no method {name!r} on this port"))
        handler, request_class, series = found
        with self._lock:
            self.served[name] += 1
        started = time.perf_counter() if series is not None else 0.0
        code = "OK"
        try:
            reply = handler(_request(name, request_class, payload), context)
            return b"" if context is not None and context.replied else _frame(REPLY, reply.SerializeToString())
        except errors.NeoError as error:
            code = type(error).__name__
            return _error_frame(error) if context is None or not context.replied else b""
        except Exception as error:  # noqa: BLE001 - answered, as gRPC answers INTERNAL
            code = "INTERNAL"
            log.exception("unexpected error in %s", name)
            if context is not None and context.replied:
                return b""
            return _error_frame(errors.NeoError(f"INTERNAL: {type(error).__name__}: {error}"))
        finally:
            if series is not None:
                series.done(code, started)

    def _stream(self, connection: socket.socket, name: str, payload: bytes) -> None:
        """Serve a server-streaming CALL: an ITEM frame per message, then
        END or ERROR.  The caller hanging up fails the next send: the
        method's generator is closed then (its ``finally`` runs) and the
        callbacks it registered on its context are called."""
        handler, request_class, series = self._methods[name]
        with self._lock:
            self.served[name] += 1
        started = time.perf_counter() if series is not None else 0.0
        code = "OK"
        context = _StreamContext()
        messages: Any = None
        try:
            messages = handler(_request(name, request_class, payload), context)
            for message in messages:
                connection.sendall(_frame(ITEM, message.SerializeToString()))
                if series is not None:
                    series.sent()
            connection.sendall(_frame(END))
        except errors.NeoError as error:
            code = type(error).__name__
            with contextlib.suppress(OSError):
                connection.sendall(_error_frame(error))
        except OSError:
            code = "CANCELLED"  # the caller hung up
        except Exception as error:  # noqa: BLE001 - answered, as gRPC answers INTERNAL
            code = "INTERNAL"
            log.exception("unexpected error in %s", name)
            with contextlib.suppress(OSError):
                connection.sendall(_error_frame(errors.NeoError(f"INTERNAL: {type(error).__name__}: {error}")))
        finally:
            if messages is not None and hasattr(messages, "close"):
                messages.close()
            context.end()
            if series is not None:
                series.done(code, started)

    def _refused(self, peer: Any, error: errors.NeoError) -> None:
        earlier = self._refusals.admit()
        if earlier is not None:
            log.warning("refused a framed connection from %s: %s%s", peer, error,
                        f"; {earlier} more since the last such line" if earlier else "")


def _request(name: str, request_class: type[protobuf_message.Message], payload: bytes) -> Any:
    """The request of a call of ``name``; BadRequest when it does not decode."""
    try:
        return request_class.FromString(payload)
    except protobuf_message.DecodeError as error:
        raise errors.BadRequest(f"a {name} request that does not decode: {error}") from None


class _CallContext:
    """A unary method's context over frames: :meth:`reply_now` answers
    before the method returns (what it returns then is dropped)."""

    __slots__ = ("_connection", "replied")

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.replied = False

    def reply_now(self, reply: protobuf_message.Message) -> None:
        """Send ``reply`` as the answer now, from the connection's own
        thread (the one running the method).  Never raises: a caller gone
        is noticed when the connection reads its next call."""
        if self.replied:
            return
        self.replied = True
        with contextlib.suppress(OSError):
            self._connection.sendall(_frame(REPLY, reply.SerializeToString()))


class _StreamContext:
    """What a streaming servicer method uses of gRPC's ServicerContext:
    ``add_callback`` (called when the stream ends, however it ends)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self._ended = False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._ended:
            return False
        self._callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return not self._ended

    def end(self) -> None:
        self._ended = True
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - as gRPC, a failing callback is logged only
                log.exception("stream end callback failed")


# -- client ------------------------------------------------------------------


class NoFrames(errors.Unavailable):
    """The frames port cannot be reached (refused, filtered, not a frames
    port) although the node may be up: the caller uses gRPC instead."""


class FramesChannel:
    """Connections to one address, pooled: each call takes an idle one (or
    opens one) and gives it back when answered.  After a connection
    attempt that fails, :class:`NoFrames` is raised at once for
    ``RETRY_AFTER`` seconds (the caller uses gRPC meanwhile)."""

    RETRY_AFTER = 30.0

    def __init__(self, config: RpcConfig, address: str) -> None:
        self._config = config
        self.address = address
        self._host, self._port = split_address(address, "frames address")
        self._tls = _tls_context(config, server=False)
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._closed = False
        self._unreachable_until = 0.0
        #: Calls answered over this channel (a REPLY or an ERROR frame).
        self.calls = 0

    @property
    def reachable(self) -> bool:
        """False while calls go to gRPC because a connection attempt failed."""
        return time.monotonic() >= self._unreachable_until

    def call(self, method: str, request: Any, reply_class: type[protobuf_message.Message],
             timeout: float | None, peer: str) -> Any:
        """The reply of ``method``; a failure raises the NeoError it is."""
        return self.start(method, request, reply_class, timeout, peer).result()

    def start(self, method: str, request: Any, reply_class: type[protobuf_message.Message],
              timeout: float | None, peer: str) -> PendingCall:
        """Send the request of ``method`` now; its :meth:`PendingCall.result`
        waits for the answer (so that one thread can have calls to several
        nodes in flight at once).  NoFrames when the port cannot be reached."""
        name = method.encode("ascii")
        frame = _frame(CALL, bytes([len(name)]), name, request.SerializeToString())
        if len(frame) - _HEADER.size > self._config.max_message_bytes:
            raise errors.TooLarge(f"a {method} request of {len(frame) - _HEADER.size} bytes exceeds the "
                                  f"{self._config.max_message_bytes}-byte message limit")
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = PendingCall(self, method, frame, reply_class, timeout, deadline, peer)
        pending.send()
        return pending

    def stream(self, method: str, request: Any, reply_class: type[protobuf_message.Message],
               peer: str) -> FramesStream:
        """A server stream of ``method`` on a connection of its own (never
        pooled); NoFrames when the port cannot be reached."""
        name = method.encode("ascii")
        connection, _ = self._connection(time.monotonic() + HANDSHAKE_TIMEOUT, peer, pooled=False)
        try:
            connection.settimeout(None)
            connection.sendall(_frame(CALL, bytes([len(name)]), name, request.SerializeToString()))
        except OSError as error:
            shut(connection)
            raise errors.Unavailable(f"{peer or self.address} unreachable: {error}") from None
        return FramesStream(connection, reply_class, self._config.max_message_bytes, peer or self.address)

    def _connection(self, deadline: float | None, peer: str, pooled: bool = True) -> tuple[socket.socket, bool]:
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the client is closed")
            if self._idle and pooled:
                return self._idle.pop(), True
            if time.monotonic() < self._unreachable_until:
                raise NoFrames(f"frames port {self.address} of {peer or 'the node'} unreachable lately")
        timeout = min(HANDSHAKE_TIMEOUT, _remaining(deadline) or HANDSHAKE_TIMEOUT)
        connection: socket.socket | None = None
        try:
            connection = socket.create_connection((self._host, self._port), timeout=timeout)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_hostname=self._host)
            connection.sendall(_frame(HELLO, self._config.cluster_name.encode("utf-8")))
            kind, body = _receive_frame(connection, 1 << 16)
        except (_Closed, OSError, ssl.SSLError, errors.TooLarge) as error:  # socket.timeout is an OSError
            if connection is not None:
                shut(connection)
            with self._lock:
                self._unreachable_until = time.monotonic() + self.RETRY_AFTER
            raise NoFrames(f"frames port {self.address} of {peer or 'the node'} unreachable: {error}") from None
        if kind == ERROR:
            shut(connection)
            raise _parse_error(body, f" (from {peer})" if peer else "")
        if kind != WELCOME:
            shut(connection)
            with self._lock:
                self._unreachable_until = time.monotonic() + self.RETRY_AFTER
            raise NoFrames(f"{self.address} is not a neostore frames port (frame kind {kind})")
        return connection, False

    def _give_back(self, connection: socket.socket) -> None:
        """An answered call's connection, back to the pool (counted)."""
        with self._lock:
            self.calls += 1
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        shut(connection)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            shut(connection)


class PendingCall:
    """A call whose request is sent (:meth:`FramesChannel.start`): its
    answer, once, from :meth:`result`.  A connection kept from before the
    node restarted (it fails unused) is replaced once: the request never
    reached a live server."""

    def __init__(self, channel: FramesChannel, method: str, frame: bytes,
                 reply_class: type[protobuf_message.Message], timeout: float | None, deadline: float | None,
                 peer: str) -> None:
        self._channel = channel
        self._method = method
        self._frame = frame
        self._reply_class = reply_class
        self._timeout = timeout
        self._deadline = deadline
        self._peer = peer
        self._connection: socket.socket | None = None
        self._reused = False
        self._send_error: OSError | None = None

    def send(self) -> None:
        self._connection, self._reused = self._channel._connection(self._deadline, self._peer)
        try:
            self._connection.settimeout(_remaining(self._deadline))
            self._connection.sendall(self._frame)
            self._send_error = None
        except OSError as error:  # reported by result(), which may send once more
            self._send_error = error

    def result(self) -> Any:
        channel, peer = self._channel, self._peer
        where = f" (from {peer})" if peer else ""
        for attempt in range(2):
            if attempt:
                self.send()
            connection = self._connection
            assert connection is not None
            try:
                if self._send_error is not None:
                    raise self._send_error
                kind, body = _receive_frame(connection, channel._config.max_message_bytes)
            except TimeoutError:
                shut(connection)
                raise errors.DeadlineExceeded(f"{peer or channel.address} unreachable: DEADLINE_EXCEEDED: "
                                              f"no answer to {self._method} within {self._timeout}s") from None
            except (_Closed, OSError) as error:
                shut(connection)
                if self._reused and attempt == 0:
                    continue  # a connection kept from before the node restarted: once more on a new one
                raise errors.Unavailable(f"{peer or channel.address} unreachable: {error}") from None
            except errors.TooLarge as error:
                shut(connection)
                raise errors.TooLarge(f"{error}{where}") from None
            channel._give_back(connection)
            if kind == REPLY:
                return self._reply_class.FromString(body)
            if kind == ERROR:
                raise _parse_error(body, where)
            raise errors.NeoError(f"unexpected frame of kind {kind}{where}")
        raise AssertionError("unreachable")


class FramesStream:
    """The messages of a server stream (iterate it once), ended by the
    server (END; ERROR raises its NeoError) or by :meth:`cancel` from any
    thread (the iteration then raises Unavailable), as a gRPC stream call."""

    def __init__(self, connection: socket.socket, reply_class: type[protobuf_message.Message], max_bytes: int,
                 peer: str) -> None:
        self._connection = connection
        self._reply_class = reply_class
        self._max_bytes = max_bytes
        self._peer = peer
        self._cancelled = False

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                try:
                    kind, body = _receive_frame(self._connection, self._max_bytes)
                except (_Closed, OSError) as error:
                    why = "cancelled" if self._cancelled else str(error)
                    raise errors.Unavailable(f"{self._peer} stream ended: {why}") from None
                if kind == ITEM:
                    yield self._reply_class.FromString(body)
                elif kind == END:
                    return
                elif kind == ERROR:
                    raise _parse_error(body, f" (from {self._peer})")
                else:
                    raise errors.NeoError(f"unexpected frame of kind {kind} (from {self._peer})")
        finally:
            shut(self._connection)

    def cancel(self) -> None:
        self._cancelled = True
        shut(self._connection)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic())


class FramesStub:
    """A gRPC stub's stand-in: each method in ``framed`` (name -> reply
    class) goes over ``channel``, any other to the gRPC ``stub``.  Called
    as a gRPC method is, ``method(request, timeout=...)``; failures raise
    NeoError directly (:func:`neostore.rpc.call` passes them on)."""

    def __init__(self, channel: FramesChannel, stub: Any, framed: dict[str, type[protobuf_message.Message]],
                 peer: str) -> None:
        self.channel = channel
        self._stub = stub
        self._framed = framed
        self._peer = peer

    def __getattr__(self, name: str) -> Any:
        reply_class = self._framed.get(name)
        if reply_class is None:
            return getattr(self._stub, name)
        channel, peer = self.channel, self._peer

        grpc_method = getattr(self._stub, name)

        def method(request: Any, timeout: float | None = None) -> Any:
            started = time.monotonic()
            try:
                return channel.call(name, request, reply_class, timeout, peer)
            except NoFrames:  # the node may still answer on gRPC (a port not reachable from here)
                left = None if timeout is None else max(0.001, timeout - (time.monotonic() - started))
                return grpc_method(request, timeout=left)

        def start(request: Any, timeout: float | None = None) -> Any:
            """The call in flight (see :func:`neostore.rpc.call_all`): its
            ``result()`` is the reply or raises the NeoError."""
            try:
                return channel.start(name, request, reply_class, timeout, peer)
            except NoFrames:
                return parallel_callers.submit(call, grpc_method, request, timeout, peer)

        method.__name__ = name
        method.start = start  # type: ignore[attr-defined]
        self.__dict__[name] = method  # found directly from now on
        return method


#: The frames channels of every client of this process, one per
#: (configuration, address), counted as gRPC channels are
#: (:data:`neostore.rpc.shared_channels`): the last release closes it.
shared_channels: Counted[tuple[RpcConfig, str], FramesChannel] = Counted(
    lambda key: FramesChannel(*key), FramesChannel.close)


def reply_classes(service: ServiceDescriptor, names: tuple[str, ...]) -> dict[str, type[protobuf_message.Message]]:
    """The reply class of each unary method ``names`` of ``service``."""
    by_name = {method.name: method for method in service.methods}
    return {name: message_factory.GetMessageClass(by_name[name].output_type) for name in names}
