"""Domain errors, and how they cross gRPC.

Every error a neostore node raises on purpose is a :class:`NeoError`
subclass carrying a gRPC status code.  One server interceptor
(``neostore.rpc``) turns them into a status with the class name in the
trailing metadata; :func:`from_rpc_error` turns that back into the same
class on the calling side.  The ZODB adapter maps them to ZODB exceptions in
one place (``neostore.client.storage``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

ERROR_METADATA_KEY = "neostore-error"


class NeoError(Exception):
    """Base of all neostore errors; ``code`` is the gRPC status sent."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class BadRequest(NeoError):
    """A malformed request: wrong field sizes, missing fields, bad values."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class WrongCluster(NeoError):
    """A peer, a request or a data directory belongs to another cluster."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(NeoError):
    """An oid (or a revision) the storage has never held: POSKeyError."""

    code = grpc.StatusCode.NOT_FOUND


class NotOwner(NeoError):
    """This storage node holds no usable cell of the partition asked for.

    The client refreshes its partition table and routes again.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION


class LockDied(NeoError):
    """Wound-wait: an older transaction took a lock this one held.

    The transaction must abort and be retried (ZODB: a ConflictError).
    """

    code = grpc.StatusCode.ABORTED


class LockTimeout(NeoError):
    """A lock was not granted in time (its holder may be stuck)."""

    code = grpc.StatusCode.ABORTED


class ReadOnly(NeoError):
    """A write through a read-only role or to a read-only cluster."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnknownTransaction(NeoError):
    """A TTID this node does not know (finished, aborted, or never begun)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(NeoError):
    """The cluster cannot serve this now: no replica left, not started..."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Unavailable):
    """The call did not answer within its timeout (it may still be served)."""


class InDoubt(Unavailable):
    """A batch of master commands was proposed but not committed in time:
    it may still commit (or never will).  ``pending`` waits for its
    outcome: ``pending(timeout)`` returns the results once applied, None
    if the timeout passed, and raises if it will never commit."""

    def __init__(self, message: str, pending: Callable[[float], list[Any] | None] | None = None) -> None:
        super().__init__(message)
        self.pending = pending


class NotLeader(NeoError):
    """This master is not the leader; the message names the leader if known."""

    code = grpc.StatusCode.UNAVAILABLE


class StorageFull(NeoError):
    """The storage node's disk or LMDB map is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Corrupted(NeoError):
    """A record failed its checksum."""

    code = grpc.StatusCode.DATA_LOSS


class TooLarge(NeoError):
    """A message or a record is larger than the configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MembershipRefused(NeoError):
    """A change of the masters' membership was refused: another change is
    pending, the address is unknown or already a member, or the change would
    leave the masters without a reachable majority."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotCommitted(NeoError):
    """The masters refused to commit the transaction, and never will: every
    storage node that voted for one of its partitions lost that vote (it
    registered again), or committing would leave a partition unreadable.
    Nothing of it is visible: the client may run it again."""

    code = grpc.StatusCode.ABORTED


class Refused(NeoError):
    """An administrative change cannot be made as things stand now
    (transactions in flight, decisions not applied yet...): retry later."""

    code = grpc.StatusCode.FAILED_PRECONDITION


_BY_NAME: dict[str, type[NeoError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest,
        WrongCluster,
        NotFound,
        NotOwner,
        LockDied,
        LockTimeout,
        ReadOnly,
        UnknownTransaction,
        Unavailable,
        DeadlineExceeded,
        InDoubt,
        NotLeader,
        StorageFull,
        Corrupted,
        TooLarge,
        MembershipRefused,
        NotCommitted,
        Refused,
    )
}


def from_name(name: str, message: str) -> NeoError:
    """The error of class ``name`` (as an answer names it), or a generic one."""
    cls = _BY_NAME.get(name)
    return cls(message) if cls is not None else NeoError(f"{name}: {message}")


def from_rpc_error(error: grpc.RpcError, peer: str = "") -> NeoError:
    """The :class:`NeoError` a failed call carries (or a generic one)."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = ""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY:
            name = value
    cls = _BY_NAME.get(name)
    where = f" (from {peer})" if peer else ""
    if cls is not None:
        return cls(f"{details}{where}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{peer or 'peer'} unreachable: {code.name}: {details}")
    if code is not None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable(f"{peer or 'peer'} unreachable: {code.name}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return TooLarge(f"{details}{where}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(f"{details}{where}")
    error_name = code.name if code is not None else "error"
    return NeoError(f"{error_name}: {details}{where}")
