"""Majority arithmetic: committed index and election results.

Pure functions over a set of voters.  A majority of ``n`` voters is
``n // 2 + 1``; two majorities of the same configuration always share a
voter, and so do a majority of a configuration and one of a configuration
that differs from it by a single server [dissertation 4.1], which is what
makes single-server membership changes safe.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    """Outcome of an election so far."""

    PENDING = "pending"
    """Neither a majority of grants nor of rejections yet."""
    WON = "won"
    LOST = "lost"


def majority(num_voters: int) -> int:
    """How many voters form a majority."""
    return num_voters // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index stored by a majority of ``voters``.

    ``match[v]`` is the last index known to be durable on voter ``v``
    (missing means 0).  With no voters nothing can commit: 0.
    """
    if not voters:
        return 0
    indexes = sorted((match.get(voter, 0) for voter in voters), reverse=True)
    return indexes[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Whether the ``votes`` received (voter → granted) win or lose an election."""
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    rejected = sum(1 for voter in voters if votes.get(voter) is False)
    needed = majority(len(voters))
    if granted >= needed:
        return VoteResult.WON
    if len(voters) - rejected < needed:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], responders: Collection[int]) -> bool:
    """Whether ``responders`` include a majority of ``voters``."""
    if not voters:
        return False
    return sum(1 for voter in voters if voter in responders) >= majority(len(voters))
