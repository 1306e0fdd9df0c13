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


def to_zodb_error(error: errors.NeoError, oid: bytes | None = None) -> Exception:
    """The ZODB exception for a neostore error."""
    if isinstance(error, errors.NotFound):
        return POSException.POSKeyError(oid) if oid is not None else POSException.POSKeyError(str(error))
    if isinstance(error, errors.ReadOnly):
        return POSException.ReadOnlyError(str(error))
    if isinstance(error, (errors.LockDied, errors.LockTimeout)):
        return POSException.ConflictError(str(error))
    if isinstance(error, (errors.Unavailable, errors.NotLeader)):
        return ClusterUnavailableError(str(error))
    return POSException.StorageError(f"{type(error).__name__}: {error}")
