"""Configuration of one Raft node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class RandomSource(Protocol):
    """Where election timeouts get their randomness: ``random.Random(seed)`` fits.

    The core never creates randomness itself, so a seeded source makes a run
    reproducible.
    """

    def randint(self, a: int, b: int) -> int:
        """An integer ``n`` with ``a <= n <= b``."""
        ...


@dataclass(frozen=True)
class Config:
    """Parameters of one node; time is counted in ticks of the driver's clock."""

    node_id: int
    rng: RandomSource
    election_ticks: int = 10
    """A follower that hears from no leader for a random number of ticks in
    ``[election_ticks, 2 * election_ticks)`` starts an election; a leader
    with CheckQuorum steps down after ``election_ticks`` without hearing
    from a majority."""
    heartbeat_ticks: int = 1
    """The leader sends heartbeats every ``heartbeat_ticks``."""
    pre_vote: bool = True
    """Ask for pre-votes before disrupting the cluster with a new term (dissertation 9.6)."""
    check_quorum: bool = True
    """A leader steps down when a majority was silent for an election timeout,
    and voters ignore vote requests while they hear from a leader (4.2.3)."""
    max_entries_per_append: int = 64
    """At most this many entries in one append message."""
    max_bytes_per_append: int = 1 << 20
    """At most about this many bytes of entries in one append message (at least one entry)."""
    max_inflight_appends: int = 64
    """Pipelining window: appends sent to a follower and not yet acknowledged."""
    max_inflight_bytes: int = 0
    """Pipelining window in bytes (0: unlimited)."""
    max_committed_bytes_per_ready: int = 0
    """At most about this many bytes of committed entries in one Ready (0: unlimited)."""
    lazy_commit_broadcast: bool = False
    """A leader does not send an append of its own just to tell followers a
    new commit index: the next append or heartbeat carries it (etcd sends
    one at once).  Followers then apply a little later, and a round of
    commits costs one message per follower instead of two."""
    lazy_followers: bool = False
    """A leader sends each new entry at once only to as many followers as
    a quorum needs (the *eager* ones: those in step, most up to date first,
    then by node id); the others get theirs when the driver calls
    ``flush_lazy`` (after a short wait), with a heartbeat's answer, or at
    once if far behind.  A round of commits then costs one message per
    eager follower instead of one per follower; a commit waits for a lazy
    follower only while an eager one is not answering (until the next
    flush)."""
    applied: int = 0
    """The last index the state machine already applied, when restarting with a
    state machine that survived; committed entries after it are delivered again."""

    def validate(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be positive")
        if self.heartbeat_ticks <= 0:
            raise ValueError("heartbeat_ticks must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_entries_per_append <= 0 or self.max_inflight_appends <= 0:
            raise ValueError("append limits must be positive")
        if not isinstance(self.rng, RandomSource):
            raise TypeError("rng needs a randint(a, b) method")
