"""ReadIndex: linearizable reads without writing to the log (dissertation 6.4).

1. The leader must have committed an entry of its current term, so that its
   commit index is at least that of any earlier leader; until then read
   requests wait (``Raft.pending_reads``).
2. It records its commit index as the request's *read index*.
3. It sends a heartbeat carrying the request's context; once a majority
   (itself included) answered that heartbeat in the same term, no other
   leader can have been elected before the request arrived, so the read
   index covers every write committed before the request.
4. The requester serves the read once its state machine has applied the
   read index.

Requests are queued in arrival order; an acknowledgement of a later request
also confirms the earlier ones (its heartbeat was sent after they arrived).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from . import quorum


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A read index request: from this node (``source`` is its own id) or a follower."""

    source: int
    context: bytes


@dataclass(slots=True)
class ReadIndexStatus:
    request: ReadRequest
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """The leader's ReadIndex requests waiting for a heartbeat quorum."""

    def __init__(self) -> None:
        self.pending: OrderedDict[bytes, ReadIndexStatus] = OrderedDict()

    def add_request(self, index: int, request: ReadRequest) -> bool:
        """Queue ``request`` with read index ``index``; False if its context is already queued."""
        if request.context in self.pending:
            return False
        self.pending[request.context] = ReadIndexStatus(request, index)
        return True

    def receive_ack(self, voter: int, context: bytes) -> set[int] | None:
        """Record that ``voter`` answered the heartbeat of ``context``; the acks so far."""
        status = self.pending.get(context)
        if status is None:
            return None
        status.acks.add(voter)
        return status.acks

    def advance(self, context: bytes, voters: frozenset[int]) -> list[ReadIndexStatus]:
        """If ``context`` has a quorum of acks, release it and every request before it."""
        status = self.pending.get(context)
        if status is None or not quorum.has_quorum(voters, status.acks):
            return []
        released: list[ReadIndexStatus] = []
        while self.pending:
            key, queued = self.pending.popitem(last=False)
            released.append(queued)
            if key == context:
                break
        return released

    def last_pending_context(self) -> bytes | None:
        if not self.pending:
            return None
        return next(reversed(self.pending))

    def reset(self) -> None:
        self.pending.clear()
