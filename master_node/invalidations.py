"""The invalidation publisher: committed transactions, in TID order, to clients.

ZODB clients learn of other processes' commits from this stream, and a
client must see every committed TID, once, in TID order (the MVCC adapter
hands them to the DB as they come).  The commit path calls :meth:`publish`
strictly in TID order, once every readable replica of the touched partitions
can serve the transaction; table changes come from the command log's
listener through :meth:`publish_table`.

The publisher keeps a bounded history (``history_size`` transactions) so
that a reconnecting client can ask "what changed since TID X":

* ``floor`` is the highest TID no longer in the history (at start, the
  highest TID published by a previous master incarnation); the history holds
  every published TID above it;
* a subscription with ``since_tid >= floor`` replays the history after it;
  one with an older ``since_tid`` gets a :class:`ResetCache` instead (the
  client drops its whole cache).

Every :class:`Subscription` yields, in order: :class:`StartTid` (the last
published TID when it started), the current :class:`TableChanged` if a
table exists, :class:`StoppingChanged` if the cluster is STOPPING, the replay (or
:class:`ResetCache`), then every new invalidation, table change and
cluster state change as it happens.  A subscriber that falls more
than ``history_size`` transactions behind gets a :class:`ResetCache` and
continues from the newest TID.  Fan-out is one condition variable: publishers
append and ``notify_all``; each subscriber, in its own thread (a gRPC
worker), takes what is past its position.  :meth:`close` ends every stream.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

from neostore.ids import ZERO_TID, tid_repr
from neostore.partition_table import PartitionTable

DEFAULT_HISTORY_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class StartTid:
    """First event of every stream: the last TID published when it began."""

    tid: bytes


@dataclasses.dataclass(frozen=True)
class Invalidation:
    """A committed transaction: ``oids`` changed in ``tid``."""

    tid: bytes
    ttid: bytes
    oids: tuple[bytes, ...]
    #: time.monotonic() when it was published (for the fan-out lag).
    published_at: float = dataclasses.field(default=0.0, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class ResetCache:
    """The history no longer reaches the subscriber: drop every cached object;
    the stream continues after ``tid``."""

    tid: bytes


@dataclasses.dataclass(frozen=True)
class TableChanged:
    """The partition table changed (the newest one; versions may skip)."""

    table: PartitionTable


@dataclasses.dataclass(frozen=True)
class StoppingChanged:
    """Whether the cluster is STOPPING (takes no new transaction)."""

    stopping: bool


Event = StartTid | Invalidation | ResetCache | TableChanged | StoppingChanged


class InvalidationPublisher:
    """Thread-safe fan-out of invalidations and table changes."""

    def __init__(
        self,
        last_tid: bytes = ZERO_TID,
        table: PartitionTable | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self._condition = threading.Condition()
        self._history: collections.deque[Invalidation] = collections.deque()
        self._history_size = history_size
        self._floor = last_tid
        self._last_tid = last_tid
        self._table = table
        self._closed = False
        #: client id -> its newest subscription (forgotten when it closes).
        self._by_client: dict[str, Subscription] = {}
        self._stopping = False
        self.published = 0  # transactions published since this master started (metrics)
        #: Told, for each batch of events a stream takes, how many seconds ago
        #: the oldest invalidation in it was published (metrics: fan-out lag).
        self.observe_lag: Callable[[float], None] | None = None
        #: Called (without the condition) after anything subscribers may want
        #: to hear of: a stream pump's wake, once for all the streams it
        #: serves.  Copied on change: read without the condition.
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._listener_uses: collections.Counter[Callable[[], None]] = collections.Counter()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change subscribers may want
        (added as many times as it is removed: one per stream)."""
        with self._condition:
            self._listener_uses[listener] += 1
            self._listeners = tuple(self._listener_uses)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._condition:
            self._listener_uses[listener] -= 1
            if self._listener_uses[listener] <= 0:
                del self._listener_uses[listener]
            self._listeners = tuple(self._listener_uses)

    def _tell_listeners(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def last_tid(self) -> bytes:
        """The last TID published: every TID up to it is visible to clients."""
        with self._condition:
            return self._last_tid

    @property
    def floor(self) -> bytes:
        with self._condition:
            return self._floor

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, tid: bytes, ttid: bytes, oids: tuple[bytes, ...]) -> None:
        """Publish a committed transaction; TIDs must strictly increase."""
        with self._condition:
            if tid <= self._last_tid:
                raise ValueError(
                    f"invalidation {tid_repr(tid)} is not after the last one {tid_repr(self._last_tid)}"
                )
            self._history.append(Invalidation(tid, ttid, tuple(oids), time.monotonic()))
            if len(self._history) > self._history_size:
                self._floor = self._history.popleft().tid
            self._last_tid = tid
            self.published += 1
            self._condition.notify_all()
        self._tell_listeners()

    @property
    def clients(self) -> int:
        """Clients with an open invalidation stream here."""
        with self._condition:
            return len(self._by_client)

    def skip_to(self, tid: bytes) -> None:
        """Transactions up to ``tid`` were committed but cannot be listed
        (a follower that caught up from a snapshot): every subscriber, and
        every new one asking for an older TID, gets a ResetCache."""
        with self._condition:
            if tid <= self._last_tid:
                return
            self._history.clear()
            self._floor = self._last_tid = tid
            self._condition.notify_all()
        self._tell_listeners()

    def publish_table(self, table: PartitionTable) -> None:
        """A new partition table (older versions than the current are ignored)."""
        with self._condition:
            if self._table is not None and table.version <= self._table.version:
                return
            self._table = table
            self._condition.notify_all()
        self._tell_listeners()

    def between(self, after: bytes, upto: bytes, limit: int = 1000) -> list[Invalidation] | None:
        """The published transactions with ``after < tid <= upto``, in TID
        order; None when the history no longer reaches ``after``, ``upto``
        is not published, or there are more than ``limit``."""
        with self._condition:
            if after < self._floor or upto > self._last_tid:
                return None
            found: list[Invalidation] = []
            for invalidation in reversed(self._history):
                if invalidation.tid <= after:
                    break
                if invalidation.tid <= upto:
                    if len(found) == limit:
                        return None
                    found.append(invalidation)
        found.reverse()
        return found

    def publish_stopping(self, stopping: bool) -> None:
        """The cluster became STOPPING, or RUNNING again."""
        with self._condition:
            if stopping == self._stopping:
                return
            self._stopping = stopping
            self._condition.notify_all()
        self._tell_listeners()

    def subscribe(self, since_tid: bytes | None = None, client_id: str = "") -> Subscription:
        """A stream of events; ``since_tid`` None means from now on.  The
        newest subscription of ``client_id`` skips what :meth:`caught_up`
        says the client has."""
        subscription = Subscription(self, since_tid)
        if client_id:
            with self._condition:
                self._by_client[client_id] = subscription
        return subscription

    def caught_up(self, client_id: str, tid: bytes) -> None:
        """Client ``client_id`` got every transaction up to ``tid`` by other
        means (a Finish or Sync answer): its stream need not send them."""
        with self._condition:
            subscription = self._by_client.get(client_id)
            if subscription is not None:
                subscription._skip_to(tid)

    def close(self) -> None:
        """End every subscription (master stopping)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._tell_listeners()

    # -- for Subscription (called with the condition held) -------------------

    def _start(self, subscription: Subscription, since_tid: bytes | None) -> list[Event]:
        events: list[Event] = [StartTid(self._last_tid)]
        if self._table is not None:
            events.append(TableChanged(self._table))
            subscription._table_version = self._table.version
        if self._stopping:  # a stream starts RUNNING unless told
            events.append(StoppingChanged(True))
        subscription._stopping = self._stopping
        subscription._position = self._last_tid
        if since_tid is not None:
            if since_tid >= self._floor:
                events.extend(i for i in self._history if i.tid > since_tid)
                subscription._position = max(self._last_tid, since_tid)
            else:
                events.append(ResetCache(self._last_tid))
        return events

    def _events_after(self, subscription: Subscription) -> list[Event]:
        events: list[Event] = []
        if self._table is not None and self._table.version > subscription._table_version:
            events.append(TableChanged(self._table))
            subscription._table_version = self._table.version
        if self._stopping != subscription._stopping:
            events.append(StoppingChanged(self._stopping))
            subscription._stopping = self._stopping
        position = subscription._position
        if position >= self._last_tid:
            return events
        if position < self._floor:
            events.append(ResetCache(self._last_tid))
        else:
            newer: list[Invalidation] = []
            for invalidation in reversed(self._history):
                if invalidation.tid <= position:
                    break
                newer.append(invalidation)
            events.extend(reversed(newer))
        subscription._position = self._last_tid
        return events


class Subscription(Iterator[Event]):
    """One subscriber's stream; iterate it (blocks), :meth:`close` to end it."""

    def __init__(self, publisher: InvalidationPublisher, since_tid: bytes | None) -> None:
        self._publisher = publisher
        self._position = ZERO_TID
        self._table_version = -1
        self._stopping = False
        self._buffer: collections.deque[Event] = collections.deque()
        self._closed = False
        with publisher._condition:  # the stream starts now, not at the first read
            self._buffer.extend(publisher._start(self, since_tid))

    @property
    def ended(self) -> bool:
        """Closed (by itself or by the publisher) and nothing left to read."""
        return (self._closed or self._publisher.closed) and not self._buffer

    def close(self) -> None:
        """End the stream (safe from any thread, e.g. a gRPC cancel callback)."""
        publisher = self._publisher
        with publisher._condition:
            self._closed = True
            for client_id, subscription in list(publisher._by_client.items()):
                if subscription is self:
                    del publisher._by_client[client_id]
            publisher._condition.notify_all()

    def _skip_to(self, tid: bytes) -> None:
        """Drop what the client has up to ``tid`` (publisher's condition held)."""
        if tid > self._position:
            self._position = min(tid, self._publisher._last_tid)
        if self._buffer:
            self._buffer = collections.deque(
                event for event in self._buffer if not (isinstance(event, Invalidation) and event.tid <= tid))

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        event = self.next_event()
        if event is None:
            raise StopIteration
        return event

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event; None when the stream ended or ``timeout`` passed."""
        publisher = self._publisher
        with publisher._condition:
            if not self._fill(timeout):
                return None
            return self._buffer.popleft()

    def next_events(self, timeout: float | None = None) -> list[Event]:
        """Every event there is, in order, waiting for one at most
        ``timeout``; [] when the stream ended or ``timeout`` passed."""
        publisher = self._publisher
        with publisher._condition:
            if not self._fill(timeout):
                return []
            self._buffer.extend(publisher._events_after(self))
            events = list(self._buffer)
            self._buffer.clear()
        observe = publisher.observe_lag
        if observe is not None:
            oldest = next((e.published_at for e in events if isinstance(e, Invalidation) and e.published_at), None)
            if oldest is not None:
                observe(time.monotonic() - oldest)
        return events

    def _fill(self, timeout: float | None) -> bool:
        """Wait until the buffer holds an event (condition held); False if
        the stream ended or ``timeout`` passed first."""
        publisher = self._publisher
        while not self._buffer:
            if self._closed or publisher._closed:
                return False
            self._buffer.extend(publisher._events_after(self))
            if self._buffer:
                break
            if (timeout is not None and timeout <= 0) or not publisher._condition.wait(timeout):
                return False  # timeout 0: a stream pump asking, never waiting
        return True
