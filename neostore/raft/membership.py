"""Single-server membership changes, as in Ongaro's dissertation (chapter 4).

A membership change is an ordinary log entry (``CONF_CHANGE``) holding the
complete new membership.  A node uses the *latest* membership in its log,
committed or not, from the moment the entry is appended; if the entry is
later removed by a conflicting append, the node falls back to the previous
one.  Because consecutive memberships differ by one voter, a majority of the
old and a majority of the new always intersect, so two leaders cannot be
elected in one term whichever of the two memberships each node uses.

The leader accepts a new change only when (a) the previous one is committed
(one pending change at a time) and (b) it has committed an entry of its own
term (the fix, published by Ongaro in 2015, for a leader changing membership
before it knows which previous change won).

``MembershipLog`` remembers the membership entries above a base (the
snapshot, or the last change known applied) so it can answer "which
membership is in force at index i" and undo a truncated suffix.
"""

from __future__ import annotations

from .codec import decode_conf_change_record
from .errors import ConfChangeRefusedError
from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType


def apply_conf_change(conf_state: ConfState, change: ConfChange) -> ConfState:
    """The membership after ``change``; ``ConfChangeRefusedError`` if it changes nothing
    or would leave no voter."""
    if change.node_id <= 0:
        raise ConfChangeRefusedError(f"invalid node id {change.node_id}")
    voters = set(conf_state.voters)
    if change.type is ConfChangeType.ADD_VOTER:
        if change.node_id in voters:
            raise ConfChangeRefusedError(f"node {change.node_id} is already a voter")
        voters.add(change.node_id)
    elif change.type is ConfChangeType.REMOVE_VOTER:
        if change.node_id not in voters:
            raise ConfChangeRefusedError(f"node {change.node_id} is not a voter")
        if len(voters) == 1:
            raise ConfChangeRefusedError("cannot remove the last voter")
        voters.remove(change.node_id)
    else:  # pragma: no cover - the enum has two members
        raise ConfChangeRefusedError(f"unknown change {change.type!r}")
    return ConfState(frozenset(voters))


def conf_state_of(entry: Entry) -> ConfState:
    """The membership a ``CONF_CHANGE`` entry establishes."""
    return decode_conf_change_record(entry.data).conf_state


class MembershipLog:
    """Memberships by log index; the latest one is in force."""

    def __init__(self, base_index: int, base: ConfState) -> None:
        self.base_index = base_index
        self.base = base
        self.changes: list[tuple[int, ConfState]] = []
        """Membership entries above ``base_index``, by increasing index."""

    def current(self) -> ConfState:
        return self.changes[-1][1] if self.changes else self.base

    def latest_index(self) -> int:
        """Index of the entry that established the current membership."""
        return self.changes[-1][0] if self.changes else self.base_index

    def at(self, index: int) -> ConfState:
        """The membership in force once the entry at ``index`` is applied."""
        result = self.base
        for change_index, conf_state in self.changes:
            if change_index > index:
                break
            result = conf_state
        return result

    def record_entries(self, entries: list[Entry]) -> None:
        """Take note of the membership entries among ``entries`` (just appended)."""
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE:
                if self.changes and entry.index <= self.changes[-1][0]:
                    raise AssertionError("membership entries recorded out of order")
                self.changes.append((entry.index, conf_state_of(entry)))

    def truncate_from(self, index: int) -> None:
        """Forget the membership entries at ``index`` and after (they were overwritten)."""
        while self.changes and self.changes[-1][0] >= index:
            self.changes.pop()

    def reset(self, base_index: int, base: ConfState) -> None:
        """Start over from a snapshot."""
        self.base_index = base_index
        self.base = base
        self.changes = []

    def forget_up_to(self, index: int) -> None:
        """Fold the changes at or below ``index`` (applied, so never undone) into the base."""
        while self.changes and self.changes[0][0] <= index:
            self.base_index, self.base = self.changes.pop(0)
