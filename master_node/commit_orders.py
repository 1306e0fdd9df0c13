"""Commit orders to storage nodes: one queue per node, many decisions per rpc.

Once the masters decided a batch of transactions, every participant must
apply each of them (``Storage.Commit``).  Sending one rpc per transaction
and node made the orders a third of the leader's work; here each storage
node has one queue and one sender thread, which takes every order queued
for its node and sends them in ONE ``Commit(term, decisions)`` rpc (in TID
order; the node applies them in one fsynced write).  The answer says, per
decision, whether it was applied: :class:`CommitOrders` reports each to the
commit coordinator through ``on_applied`` / ``on_failed``.

An order whose rpc fails with ``Unavailable`` (the node is down, slow, or
cut off) is sent again with a doubling delay (from 20 ms, at most 0.5 s)
until its deadline (``commit_deadline`` after it was queued), then reported
failed as *unreachable*; any other refusal is reported failed at once.
``on_failed`` may submit Raft commands (marking the node DOWN), so it runs
on the coordinator's executor, never on a sender thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from neostore import errors
from neostore.master_node.storage_links import StorageLinks

log = logging.getLogger(__name__)

#: First delay before an order is sent again to a node that did not answer.
RETRY_DELAY = 0.02
#: The longest such delay.
MAX_RETRY_DELAY = 0.5


@dataclasses.dataclass(eq=False)
class Order:
    """One decision to apply on one node, as long as it is being tried."""

    ttid: bytes
    tid: bytes
    owner: Any  # what the coordinator gets back in its callbacks
    deadline: float
    due: float = 0.0  # monotonic time before which it is not sent again
    delay: float = RETRY_DELAY
    error: errors.NeoError = dataclasses.field(default_factory=lambda: errors.Unavailable("not sent yet"))


#: (order's owner, node id) -> None
Applied = Callable[[Any, int], None]
#: (order's owner, node id, error, unreachable) -> None
Failed = Callable[[Any, int, errors.NeoError, bool], None]


class _NodeQueue:
    """The orders of one storage node and the thread that sends them."""

    def __init__(self, owner: CommitOrders, node_id: int) -> None:
        self._owner = owner
        self.node_id = node_id
        self._orders: list[Order] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"commit-orders-{node_id}", daemon=True)
        self._thread.start()

    def add(self, order: Order) -> None:
        with self._condition:
            self._orders.append(order)
            self._condition.notify()

    def close(self) -> list[Order]:
        """Stop sending; the orders never sent."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            left, self._orders = self._orders, []
        return left

    def _take(self) -> list[Order] | None:
        """The orders due now, in TID order (None: closed)."""
        with self._condition:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                due = [order for order in self._orders if order.due <= now]
                if due:
                    self._orders = [order for order in self._orders if order.due > now]
                    due.sort(key=lambda order: order.tid)
                    return due
                wait = min((order.due for order in self._orders), default=now + 3600) - now
                self._condition.wait(wait)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._send(batch)
            except Exception:  # noqa: BLE001 - the queue must survive; the orders are retried
                log.exception("commit orders to storage node %d failed", self.node_id)
                self._retry(batch, errors.Unavailable("internal error while sending commit orders"))

    def _send(self, batch: list[Order]) -> None:
        owner = self._owner
        address = owner.address_of(self.node_id)
        if address is None:
            gone = errors.BadRequest(f"storage node {self.node_id} is no longer known")
            for order in batch:
                owner.failed(order, self.node_id, gone, False)
            return
        now = time.monotonic()
        timeout = max(0.05, min(owner.rpc_timeout, max(order.deadline for order in batch) - now))
        try:
            results = owner.links.commit(address, [(order.ttid, order.tid) for order in batch],
                                         owner.term(), timeout)
        except errors.Unavailable as error:
            self._retry(batch, error)
            return
        except errors.NeoError as error:  # refused as a whole (a stale term...)
            for order in batch:
                owner.failed(order, self.node_id, error, False)
            return
        for order, refusal in zip(batch, results, strict=True):
            if refusal is None:
                owner.applied(order, self.node_id)
            else:
                owner.failed(order, self.node_id, refusal, False)

    def _retry(self, batch: list[Order], error: errors.NeoError) -> None:
        now = time.monotonic()
        again = []
        for order in batch:
            order.error = error
            if now + order.delay >= order.deadline:
                self._owner.failed(order, self.node_id, error, True)
                continue
            order.due = now + order.delay
            order.delay = min(order.delay * 2, MAX_RETRY_DELAY)
            again.append(order)
        if again:
            with self._condition:
                if not self._closed:
                    self._orders.extend(again)
                    self._condition.notify()


class CommitOrders:
    """Batched ``Commit`` orders to every storage node (see the module docstring)."""

    def __init__(
        self,
        links: StorageLinks,
        address_of: Callable[[int], str | None],
        term: Callable[[], int],
        on_applied: Applied,
        on_failed: Failed,
        run_elsewhere: Callable[[Callable[[], None]], None],
        rpc_timeout: float = 2.0,
        deadline: float = 5.0,
    ) -> None:
        self.links = links
        self.address_of = address_of
        self.term = term
        self.rpc_timeout = rpc_timeout
        self._deadline = deadline
        self._on_applied = on_applied
        self._on_failed = on_failed
        self._run_elsewhere = run_elsewhere
        self._lock = threading.Lock()
        self._queues: dict[int, _NodeQueue] = {}
        self._closed = False

    def send(self, node_id: int, ttid: bytes, tid: bytes, owner: Any) -> bool:
        """Queue the order to apply ``ttid`` as ``tid`` on ``node_id``;
        False if closed (the master is stopping: nothing will be sent)."""
        with self._lock:
            if self._closed:
                return False
            queue = self._queues.get(node_id)
            if queue is None:
                queue = self._queues[node_id] = _NodeQueue(self, node_id)
        queue.add(Order(ttid, tid, owner, deadline=time.monotonic() + self._deadline))
        return True

    def applied(self, order: Order, node_id: int) -> None:
        self._on_applied(order.owner, node_id)

    def failed(self, order: Order, node_id: int, error: errors.NeoError, unreachable: bool) -> None:
        self._run_elsewhere(lambda: self._on_failed(order.owner, node_id, error, unreachable))

    def close(self) -> list[tuple[Any, int]]:
        """Stop every queue; (owner, node id) of the orders never applied."""
        with self._lock:
            self._closed = True
            queues, self._queues = self._queues, {}
        return [(order.owner, queue.node_id) for queue in queues.values() for order in queue.close()]
