"""How neostore errors reach a ZODB application: the one mapping.

Storage nodes and masters raise :mod:`neostore.errors` classes, which cross
gRPC intact (``neostore.rpc``); the client turns them into the ZODB
exceptions applications already handle.  Transient ones (a lock lost to an
older transaction) become ``ConflictError`` so that the usual retry loops
retry them.
"""

from __future__ import annotations

from ZODB import POSException

from neostore import errors


class ClusterUnavailableError(POSException.StorageError):
    """The cluster cannot serve this now: no replica left, no master..."""


class TransactionNotCommittedError(POSException.ConflictError):
    """tpc_vote or tpc_finish could not commit the transaction (a leader
    change, the cluster aborted it, or the replicas that voted for it were
    lost), and the masters guarantee it never will: nothing of it is
    visible.  A ConflictError, so that applications retry it as they retry
    conflicts."""

    def __str__(self) -> str:
        return str(self.message)


def to_zodb_error(error: errors.NeoError, oid: bytes | None = None) -> Exception:
    """The ZODB exception for a neostore error."""
    if isinstance(error, errors.NotCommitted):
        return TransactionNotCommittedError(str(error))
    if isinstance(error, errors.NotFound):
        return POSException.POSKeyError(oid) if oid is not None else POSException.POSKeyError(str(error))
    if isinstance(error, errors.ReadOnly):
        return POSException.ReadOnlyError(str(error))
    if isinstance(error, (errors.LockDied, errors.LockTimeout)):
        return POSException.ConflictError(str(error))
    if isinstance(error, (errors.Unavailable, errors.NotLeader)):
        return ClusterUnavailableError(str(error))
    return POSException.StorageError(f"{type(error).__name__}: {error}")
