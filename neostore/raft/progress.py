"""What the leader knows of each follower's log, and how fast it may send.

Each follower has a ``Progress``: ``match`` (the last index known to be on
its disk) and ``next`` (the next index to send), in one of three states, as
in etcd's raft:

* ``PROBE``: the leader does not know where the follower's log ends.  It
  sends one append at a time and waits for the answer (or for the next
  heartbeat answer) before sending another; a rejection moves ``next`` back
  (using the follower's hint to skip whole terms).
* ``REPLICATE``: the follower's log is known to match up to ``match``.  The
  leader streams appends optimistically, moving ``next`` past what it sent
  without waiting, up to a window of in-flight messages (``Inflights``);
  each acknowledgement frees the window up to the acknowledged index.
* ``SNAPSHOT``: the entries the follower needs were compacted away; a
  snapshot is on its way and nothing else is sent until it is acknowledged
  or given up on.

``recent_active`` records whether the follower answered during the current
election timeout; CheckQuorum reads and clears it.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The appends sent to one follower and not yet acknowledged.

    Each is remembered by the last index it carried and its size; the window
    is full at ``capacity`` messages or ``max_bytes`` bytes (0: no byte limit).
    """

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.sent: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def add(self, last_index: int, size: int) -> None:
        if self.sent and last_index <= self.sent[-1][0]:
            raise ValueError("inflight indexes must increase")
        self.sent.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget every append whose last index is at or below ``index``."""
        while self.sent and self.sent[0][0] <= index:
            self.bytes -= self.sent.popleft()[1]

    def free_first_one(self) -> None:
        if self.sent:
            self.bytes -= self.sent.popleft()[1]

    def full(self) -> bool:
        if len(self.sent) >= self.capacity:
            return True
        return self.max_bytes > 0 and self.bytes >= self.max_bytes

    def count(self) -> int:
        return len(self.sent)

    def reset(self) -> None:
        self.sent.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one follower (or of itself)."""

    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """In PROBE: an append is out, wait for its answer or a heartbeat answer."""
        self.pending_snapshot = 0
        """In SNAPSHOT: the index of the snapshot sent."""
        self.snapshot_ticks = 0
        """In SNAPSHOT: ticks since it was sent; the leader gives up after an election timeout."""
        self.recent_active = True
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        self.commit_sent = 0
        """The highest commit index an append or heartbeat told this follower."""

    def __repr__(self) -> str:
        return (
            f"Progress(state={self.state.value}, match={self.match}, next={self.next}, "
            f"inflight={self.inflights.count()}, probe_sent={self.probe_sent})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """Go back to one append at a time from just after ``match``.

        Coming out of SNAPSHOT, the follower has at least the snapshot.
        """
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to ``index``; False if it tells nothing new."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Move ``next`` back after the follower rejected the append after ``rejected``.

        ``match_hint`` is the largest index that may match.  Returns False
        for a stale rejection (one about an append sent before a later move).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold back appends to this follower."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_append(self, last_index: int, num_entries: int, size: int) -> None:
        """Record an append just sent (``last_index``: index of its last entry)."""
        if self.state is ProgressState.REPLICATE:
            if num_entries:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
