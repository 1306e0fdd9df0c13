"""The chunk walk that replication and the consistency check share."""

from __future__ import annotations

import pytest

from neostore import errors
from neostore.protocol import storage_pb2
from neostore.storage_node.ranges import KINDS, walk_chunks

MAX_TID = b"\x00" * 7 + b"\x09"


def test_the_walk_takes_each_kind_chunk_by_chunk_from_where_it_resumes() -> None:
    answers = {  # (kind, after_key) -> the replica's answer
        (storage_pb2.OBJECTS, b"a"): storage_pb2.RangeChecksum(count=2, last_key=b"c"),
        (storage_pb2.OBJECTS, b"c"): storage_pb2.RangeChecksum(count=1, last_key=b"d", complete=True),
    }
    asked = []

    def checksum(request: storage_pb2.RangeRequest) -> storage_pb2.RangeChecksum:
        asked.append((request.kind, request.after_key, request.partition, request.max_tid, request.limit))
        return answers[request.kind, request.after_key]

    chunks = walk_chunks(checksum, 3, MAX_TID, kind=storage_pb2.OBJECTS, after=b"a", limit=2)
    assert [(request.after_key, answer.last_key) for request, answer in chunks] == [(b"a", b"c"), (b"c", b"d")]
    assert asked == [(storage_pb2.OBJECTS, b"a", 3, MAX_TID, 2), (storage_pb2.OBJECTS, b"c", 3, MAX_TID, 2)]
    # From the start: transactions first, then objects from their first key.
    kinds = [request.kind for request, _ in walk_chunks(
        lambda request: storage_pb2.RangeChecksum(complete=True), 0, MAX_TID)]
    assert kinds == list(KINDS)


def test_an_empty_chunk_that_is_not_the_last_is_an_error_not_an_endless_walk() -> None:
    chunks = walk_chunks(lambda request: storage_pb2.RangeChecksum(count=0, complete=False), 5, MAX_TID)
    with pytest.raises(errors.Unavailable, match="partition 5: a replica answered an empty chunk"):
        next(chunks)
