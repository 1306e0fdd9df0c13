"""One thread for every long-lived stream of a frames port, and one for
its connections that wait for a call (:class:`IdleConnections`).

A server-streaming call over frames (:mod:`neostore.frames`) used to keep
its connection's thread for as long as it lasted: a master with 2,500
connected clients would keep 2,500 threads, each woken by every commit.
A method the server *pumps* instead is answered by a :class:`PumpedSource`
the servicer opens for the call; once the call is accepted, its
connection leaves its thread for the :class:`StreamPump`, which serves
every such stream from one thread:

* it sleeps in a selector over the streams' sockets and a wake-up socket;
* :meth:`StreamPump.wake` (called by whatever makes news, e.g. a commit
  published: once, however many streams there are) or the earliest
  ``next_at`` a source asked for ends the sleep; then each source due is
  asked for what to send (:meth:`PumpedSource.poll`): a list of messages
  (each becomes an ITEM frame), or None when its stream is over (END);
* sockets are non-blocking: what a socket does not take at once waits in
  that stream's buffer, sent when the socket is writable again; a reader
  so slow that its buffer passes ``max_buffered`` bytes is dropped (its
  client reconnects and catches up, as after any broken stream);
* a stream ends when its caller hangs up (or sends anything: the caller
  of a stream only listens), when its source says so, or when the server
  stops; its source is then closed, once (:meth:`PumpedSource.close`).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: The longest a pump sleeps without being asked (a source's own deadlines
#: are usually sooner: heartbeats).
MAX_SLEEP = 1.0
#: What a stream may hold unsent before its reader is dropped as too slow.
DEFAULT_MAX_BUFFERED = 8 << 20


class PumpedSource(Protocol):
    """What a pumped stream sends, decided by its servicer."""

    def poll(self, now: float) -> tuple[list[Any] | None, float]:
        """The messages to send now (None: the stream is over: END), and
        the latest time (``time.monotonic``) at which to be asked again
        even without a wake-up."""

    def close(self) -> None:
        """The stream ended (however): release what it holds.  Called once."""


class _SelectorThread:
    """A daemon thread sleeping in a selector over sockets and a wake-up
    socket (:meth:`_poke`); its subclass's ``_run`` is the loop."""

    def __init__(self, name: str) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        """Serving (not stopped, and its thread did not fail)."""
        with self._lock:
            return not self._stopping and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread; it closes whatever it holds."""
        with self._lock:
            self._stopping = True
        self._poke()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_writer.send(b"\0")

    def _drain_pokes(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_reader.recv(4096):
                pass

    def _close_selector(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()


def shut(connection: socket.socket) -> None:
    """Shut a connection down both ways and close it, whatever state it is in
    (the frames port's connections, pumped or parked or not)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        connection.close()


class _Stream:
    __slots__ = ("connection", "source", "outbox", "next_at", "series", "started", "writing", "ended")

    def __init__(self, connection: socket.socket, source: PumpedSource, series: Any) -> None:
        self.connection = connection
        self.source = source
        self.outbox = bytearray()
        self.next_at = 0.0  # asked at once: the first messages go out without waiting
        self.series = series  # the method's RPC metrics (sent messages; the call, once ended)
        self.started = time.perf_counter()
        self.writing = False  # registered for EVENT_WRITE (outbox not empty)
        self.ended = False


class StreamPump(_SelectorThread):
    """Serves pumped streams from one thread; see the module docstring.

    ``frame(kind, body)`` makes a frame; ``item``/``end`` are the frame
    kinds of a message and of the end; ``on_end(connection)`` is told when
    a stream's connection is closed (the server forgets it)."""

    def __init__(self, frame: Callable[[int, bytes], bytes], item: int, end: int,
                 on_end: Callable[[socket.socket], None], max_buffered: int = DEFAULT_MAX_BUFFERED,
                 name: str = "frames-pump") -> None:
        super().__init__(name)
        self._frame = frame
        self._item = item
        self._end = end
        self._on_end = on_end
        self._max_buffered = max_buffered
        self._added: list[_Stream] = []
        self._woken = False
        self._streams: dict[socket.socket, _Stream] = {}
        #: Streams served now (read without the lock: for metrics and tests).
        self.streams = 0
        self._thread.start()

    # -- from any thread -------------------------------------------------------

    def add(self, connection: socket.socket, source: PumpedSource, series: Any = None) -> None:
        """Serve ``source`` on ``connection`` (its handshake and call done) from now on."""
        connection.setblocking(False)
        stream = _Stream(connection, source, series)
        with self._lock:
            stopping = self._stopping
            if not stopping:
                self._added.append(stream)
        if stopping:
            self._finish(stream, "CANCELLED")
            return
        self.wake()

    def wake(self) -> None:
        """Ask every source for news now (cheap when already asked)."""
        with self._lock:
            if self._woken:
                return
            self._woken = True
        self._poke()

    # -- the pump's thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        break
                now = time.monotonic()
                deadline = min((stream.next_at for stream in self._streams.values()), default=now + MAX_SLEEP)
                woken = False
                for key, mask in self._selector.select(min(max(deadline - now, 0.0), MAX_SLEEP)):
                    if key.data is None:
                        woken = True
                        self._drain_pokes()
                        continue
                    stream: _Stream = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(stream)
                    if mask & selectors.EVENT_WRITE and not stream.ended:
                        self._flush(stream)
                if woken:
                    with self._lock:
                        self._woken = False
                        added, self._added = self._added, []
                    for stream in added:
                        self._start(stream)
                now = time.monotonic()
                for stream in list(self._streams.values()):
                    if not stream.ended and (woken or stream.next_at <= now):
                        self._poll(stream, now)
        except Exception:  # noqa: BLE001 - the pump must not die silently; its streams end
            log.exception("stream pump failed: ending its streams")
        finally:
            with self._lock:
                self._stopping = True
                added, self._added = self._added, []
            for stream in [*self._streams.values(), *added]:
                self._finish(stream, "CANCELLED")
            self._streams.clear()
            self.streams = 0
            self._close_selector()

    def _start(self, stream: _Stream) -> None:
        try:
            self._selector.register(stream.connection, selectors.EVENT_READ, stream)
        except (ValueError, OSError):  # closed meanwhile
            self._finish(stream, "CANCELLED")
            return
        self._streams[stream.connection] = stream
        self.streams = len(self._streams)

    def _poll(self, stream: _Stream, now: float) -> None:
        try:
            messages, stream.next_at = stream.source.poll(now)
        except Exception:  # noqa: BLE001 - one broken source ends its stream only
            log.exception("stream source failed: ending its stream")
            self._end_stream(stream, "INTERNAL")
            return
        if messages is None:
            stream.outbox += self._frame(self._end, b"")
            self._flush(stream)
            self._end_stream(stream, "OK")
            return
        if not messages:
            return
        for message in messages:
            stream.outbox += self._frame(self._item, message.SerializeToString())
        if stream.series is not None:
            for _ in messages:
                stream.series.sent()
        self._flush(stream)
        if len(stream.outbox) > self._max_buffered:
            log.warning("dropping a stream whose reader is too slow: %d bytes unsent", len(stream.outbox))
            self._end_stream(stream, "RESOURCE_EXHAUSTED")

    def _flush(self, stream: _Stream) -> None:
        while stream.outbox:
            try:
                sent = stream.connection.send(stream.outbox)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError:
                self._end_stream(stream, "CANCELLED")
                return
            if sent <= 0:
                break
            del stream.outbox[:sent]
        want_write = bool(stream.outbox)
        if want_write != stream.writing and stream.connection in self._streams:
            stream.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.modify(stream.connection, events, stream)

    def _read(self, stream: _Stream) -> None:
        """The caller of a stream only listens: anything readable is its end."""
        try:
            data = stream.connection.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_stream(stream, "CANCELLED")  # hung up
        else:
            log.warning("a stream's caller sent %d bytes: ending the stream", len(data))
            self._end_stream(stream, "CANCELLED")

    def _end_stream(self, stream: _Stream, code: str) -> None:
        if stream.ended:
            return
        if self._streams.pop(stream.connection, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(stream.connection)
            self.streams = len(self._streams)
        self._finish(stream, code)

    def _finish(self, stream: _Stream, code: str) -> None:
        """End ``stream`` for good: its source closed, its connection shut,
        its call counted with ``code`` (OK: the source ended it)."""
        if stream.ended:
            return
        stream.ended = True
        if stream.series is not None:
            stream.series.done(code, stream.started)
        try:
            stream.source.close()
        except Exception:  # noqa: BLE001 - as a stream's callbacks: logged only
            log.exception("closing a stream's source failed")
        shut(stream.connection)
        self._on_end(stream.connection)


class IdleConnections(_SelectorThread):
    """The connections of a frames port that wait for their next call,
    watched from one thread.

    A connection's thread serves its calls one after another with no
    hand-off; once it has waited ``idle`` seconds for the next call it
    parks the connection here and ends.  When the connection becomes
    readable (a call, or its caller hanging up), ``resume(connection)`` is
    called on a new thread, which serves it as before.  So a busy caller
    keeps its thread and an idle one (a client that only listens, a pooled
    connection kept for later) holds none.
    """

    def __init__(self, resume: Callable[[socket.socket], None], on_drop: Callable[[socket.socket], None],
                 name: str = "frames-idle") -> None:
        super().__init__(name)
        self._resume = resume
        self._on_drop = on_drop
        self._parking: list[socket.socket] = []
        #: Connections parked now (read without the lock: metrics and tests).
        self.parked = 0
        self._thread.start()

    def park(self, connection: socket.socket) -> bool:
        """Watch ``connection`` until its next call; False when stopping
        (the caller closes it)."""
        with self._lock:
            if self._stopping:
                return False
            self._parking.append(connection)
        self._poke()
        return True

    def _run(self) -> None:
        watched: set[socket.socket] = set()
        try:
            while True:
                ready = self._selector.select(MAX_SLEEP)
                with self._lock:
                    if self._stopping:
                        break
                    parking, self._parking = self._parking, []
                for connection in parking:
                    try:
                        self._selector.register(connection, selectors.EVENT_READ, connection)
                        watched.add(connection)
                    except (ValueError, OSError):  # closed meanwhile
                        self._drop(connection)
                for key, _ in ready:
                    if key.data is None:
                        self._drain_pokes()
                        continue
                    connection = key.data
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._selector.unregister(connection)
                    watched.discard(connection)
                    try:
                        threading.Thread(target=self._resume, args=(connection,), name="frames-connection",
                                         daemon=True).start()
                    except RuntimeError:  # no thread to be had: the caller reconnects
                        self._drop(connection)
                self.parked = len(watched)
        except Exception:  # noqa: BLE001 - logged; its connections are closed, callers reconnect
            log.exception("idle connection watcher failed: closing its connections")
        finally:
            with self._lock:
                self._stopping = True
                parking, self._parking = self._parking, []
            for connection in [*watched, *parking]:
                self._drop(connection)
            self.parked = 0
            self._close_selector()

    def _drop(self, connection: socket.socket) -> None:
        shut(connection)
        self._on_drop(connection)
