"""Named errors of the Raft core and of its storage contract."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by ``neostore.raft``."""


class NotLeaderError(RaftError):
    """The request needs the leader; ``leader_id`` is the one known (0: none)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for now (for example during a transfer); retry later."""


class ConfChangeRefusedError(RaftError):
    """A membership change was refused; the message says why."""


class StorageError(RaftError):
    """Base class of the errors of a ``RaftLogStore``."""


class CompactedError(StorageError):
    """The requested index is below the first index kept: compacted into the snapshot."""


class UnavailableError(StorageError):
    """The requested index is beyond the last index stored."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than (or as old as) the one held was offered."""


class DecodeError(RaftError):
    """Bytes that are not a valid encoding of the expected value."""
