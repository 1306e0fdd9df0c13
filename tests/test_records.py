"""Object records: compression flag and checksum."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neostore import errors
from neostore.protocol import common_pb2
from neostore.records import Record


@given(st.binary(max_size=5000), st.booleans())
def test_record_round_trip(data: bytes, compress: bool) -> None:
    record = Record.pack(data, compress)
    message = common_pb2.DataRecord()
    record.to_proto(message)
    assert Record.from_proto(message).unpack() == data
    assert len(record.data) <= len(data) or not record.compressed


def test_compression_only_when_it_shrinks() -> None:
    assert Record.pack(b"a" * 1000).compressed
    assert not Record.pack(bytes(range(50))).compressed


def test_a_corrupted_record_is_refused() -> None:
    record = Record.pack(b"hello world" * 20)
    damaged = Record(record.data[:-1] + bytes([record.data[-1] ^ 1]), record.compressed, record.checksum)
    with pytest.raises(errors.Corrupted, match="checksum"):
        damaged.unpack("object 0x01")
