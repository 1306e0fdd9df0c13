"""The storage node's LMDB keys and values: round trips and key order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neostore.storage_node import layout
from neostore.storage_node.layout import PartitionStats, StoredObject, TransactionMetadata

identifiers = st.binary(min_size=8, max_size=8)
nonzero_identifiers = identifiers.filter(lambda value: value != layout.ZERO_ID)
partitions = st.integers(min_value=0, max_value=layout.MAX_PARTITION)
checksums = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def stored_objects(draw: st.DrawFn) -> StoredObject:
    kind = draw(st.sampled_from(["data", "back_pointer", "deletion"]))
    previous = draw(identifiers)
    if kind == "back_pointer":
        return StoredObject.back_pointer(draw(nonzero_identifiers), previous_tid=previous)
    if kind == "deletion":
        return StoredObject.deletion(previous_tid=previous)
    return StoredObject(draw(st.binary(max_size=300)), draw(st.booleans()), draw(checksums), previous_tid=previous)


transaction_metadata = st.builds(
    TransactionMetadata,
    user=st.binary(max_size=50),
    description=st.binary(max_size=50),
    extension=st.binary(max_size=50),
    oids=st.lists(identifiers, max_size=20).map(tuple),
    packed=st.booleans(),
)


@given(partitions, identifiers, identifiers)
def test_object_key_round_trips(partition: int, oid: bytes, tid: bytes) -> None:
    assert layout.decode_object_key(layout.object_key(partition, oid, tid)) == (partition, oid, tid)


@given(st.lists(st.tuples(partitions, identifiers, identifiers), min_size=2, max_size=30))
def test_object_key_order_is_tuple_order(triples: list[tuple[int, bytes, bytes]]) -> None:
    by_key = sorted(triples, key=lambda triple: layout.object_key(*triple))
    assert by_key == sorted(triples)


@given(st.lists(st.tuples(partitions, identifiers), min_size=2, max_size=30))
def test_transaction_key_order_is_tuple_order(pairs: list[tuple[int, bytes]]) -> None:
    by_key = sorted(pairs, key=lambda pair: layout.transaction_key(*pair))
    assert by_key == sorted(pairs)


@given(partitions, identifiers)
def test_transaction_key_round_trips(partition: int, tid: bytes) -> None:
    assert layout.decode_transaction_key(layout.transaction_key(partition, tid)) == (partition, tid)


@given(partitions, identifiers, identifiers)
def test_every_revision_of_an_object_shares_its_prefix(partition: int, oid: bytes, tid: bytes) -> None:
    key = layout.object_key(partition, oid, tid)
    assert key.startswith(layout.object_prefix(partition, oid))
    assert key.startswith(layout.object_prefix(partition))


@given(stored_objects())
def test_object_record_round_trips(stored: StoredObject) -> None:
    assert layout.decode_object(layout.encode_object(stored)) == stored


@given(transaction_metadata)
def test_transaction_metadata_round_trips(metadata: TransactionMetadata) -> None:
    assert layout.decode_transaction(layout.encode_transaction(metadata)) == metadata


@given(identifiers, partitions, identifiers)
def test_pending_object_key_round_trips(ttid: bytes, partition: int, oid: bytes) -> None:
    decoded = layout.decode_pending_key(layout.pending_object_key(ttid, partition, oid))
    assert decoded == layout.PendingKey(ttid, partition, oid)


@given(identifiers, partitions)
def test_pending_metadata_key_round_trips(ttid: bytes, partition: int) -> None:
    decoded = layout.decode_pending_key(layout.pending_metadata_key(ttid, partition))
    assert decoded == layout.PendingKey(ttid, partition, None)


@given(identifiers, partitions, identifiers, identifiers)
def test_carried_pending_keys_round_trip_and_sort_before_the_own_revision(
    ttid: bytes, partition: int, oid: bytes, tid: bytes
) -> None:
    """A restore batch's carried revisions come first in a commit's scan."""
    carried = layout.pending_object_key(ttid, partition, oid, tid)
    assert layout.decode_pending_key(carried) == layout.PendingKey(ttid, partition, oid, tid)
    assert carried < layout.pending_object_key(ttid, partition, oid)
    metadata = layout.pending_metadata_key(ttid, partition, tid)
    assert layout.decode_pending_key(metadata) == layout.PendingKey(ttid, partition, None, tid)


@given(identifiers, partitions, identifiers)
def test_pending_keys_of_a_transaction_share_its_prefix(ttid: bytes, partition: int, oid: bytes) -> None:
    prefix = layout.pending_prefix(ttid)
    assert layout.pending_object_key(ttid, partition, oid).startswith(prefix)
    assert layout.pending_metadata_key(ttid, partition).startswith(prefix)


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_stats_round_trip(object_count: int, size: int) -> None:
    stats = PartitionStats(object_count, size)
    assert layout.decode_stats(layout.encode_stats(stats)) == stats


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_u64_round_trips(value: int) -> None:
    assert layout.decode_u64(layout.encode_u64(value)) == value


@given(partitions)
def test_partition_meta_keys_round_trip(partition: int) -> None:
    key = layout.partition_last_tid_key(partition)
    assert layout.decode_partition_meta_key(key, layout.partition_last_tid_prefix()) == partition


def test_record_kinds_are_exclusive() -> None:
    with pytest.raises(layout.LayoutError):
        StoredObject(data=b"x", data_tid=b"\0" * 7 + b"\1")
    with pytest.raises(layout.LayoutError):
        StoredObject(data=b"x", undone_creation=True)
    with pytest.raises(layout.LayoutError):
        StoredObject(data_tid=b"\0" * 7 + b"\1", undone_creation=True)
    with pytest.raises(layout.LayoutError):
        StoredObject.back_pointer(layout.ZERO_ID)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x01\x00", id="shorter-than-header"),
        pytest.param(b"\x09" + b"\0" * 21, id="unknown-version"),
        pytest.param(b"\x01\x80" + b"\0" * 20, id="unknown-flag"),
    ],
)
def test_malformed_object_records_are_refused(value: bytes) -> None:
    with pytest.raises(layout.LayoutError):
        layout.decode_object(value)


def test_truncated_transaction_record_is_refused() -> None:
    encoded = layout.encode_transaction(TransactionMetadata(b"user", oids=(b"\0" * 8,)))
    with pytest.raises(layout.LayoutError):
        layout.decode_transaction(encoded[:-1])


def test_identifiers_must_be_eight_bytes() -> None:
    with pytest.raises(layout.LayoutError):
        layout.object_key(0, b"short", b"\0" * 8)
    with pytest.raises(layout.LayoutError):
        layout.transaction_key(0, b"\0" * 9)
