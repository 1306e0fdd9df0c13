"""A cell as ranges of records, and the digest that compares two replicas.

Replication and the consistency check walk a cell range by range: first
its transactions (keys: tid), then its objects (keys: oid | tid), as
``Database.scan_range`` returns them, limited to transactions at or below a
TID every replica holds.  Two replicas hold the same range exactly when
their digests are equal: SHA-1 over each record's key and value,
length-prefixed, in key order.  :func:`walk_chunks` is that walk, over a
replica's ``ChecksumRange`` answers: the one loop both follow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator

from neostore import errors
from neostore.protocol import storage_pb2

_LENGTH = struct.Struct(">I")

#: The kinds of range, in the order a walk takes them.
KINDS = (storage_pb2.TRANSACTIONS, storage_pb2.OBJECTS)
KIND_NAMES = {storage_pb2.TRANSACTIONS: "transactions", storage_pb2.OBJECTS: "objects"}

Checksum = Callable[[storage_pb2.RangeRequest], storage_pb2.RangeChecksum]


@dataclasses.dataclass(frozen=True)
class RangeDigest:
    count: int
    size: int  # bytes of keys and values
    digest: bytes
    last_key: bytes  # empty when the range is empty


def range_digest(records: Iterable[tuple[bytes, bytes]]) -> RangeDigest:
    """The digest of ``records`` (key, value), in the order given."""
    sha = hashlib.sha1()
    count = size = 0
    last_key = b""
    for key, value in records:
        sha.update(_LENGTH.pack(len(key)))
        sha.update(key)
        sha.update(_LENGTH.pack(len(value)))
        sha.update(value)
        count += 1
        size += len(key) + len(value)
        last_key = key
    return RangeDigest(count, size, sha.digest(), last_key)


def walk_chunks(
    checksum: Checksum, partition: int, max_tid: bytes, *, kind: int = KINDS[0], after: bytes = b"",
    limit: int = 0, max_bytes: int = 0,
) -> Iterator[tuple[storage_pb2.RangeRequest, storage_pb2.RangeChecksum]]:
    """Each chunk of a cell, from the range of ``kind`` after key ``after``
    on: the request asked (its ``after_key`` is where the chunk starts) and
    the replica's answer, chunk after chunk until the last kind is complete.
    The next chunk is asked for only when the caller takes it."""
    for each in KINDS[KINDS.index(kind):]:
        start = after if each == kind else b""
        while True:
            request = storage_pb2.RangeRequest(partition=partition, kind=each, after_key=start, max_tid=max_tid,
                                               limit=limit, max_bytes=max_bytes)
            answer = checksum(request)
            if not answer.count and not answer.complete:  # the walk would never end
                raise errors.Unavailable(f"partition {partition}: a replica answered an empty chunk "
                                         f"that is not the last ({KIND_NAMES[each]})")
            yield request, answer
            if answer.complete:
                break
            start = answer.last_key
