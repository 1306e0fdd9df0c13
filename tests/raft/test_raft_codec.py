"""Binary encoding of messages and entries, for the transport and the disk."""

from __future__ import annotations

import pytest

from neostore.raft import (
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    ConfState,
    DecodeError,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    decode_conf_change_record,
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot,
    encode_conf_change_record,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
)

SNAPSHOT = Snapshot(SnapshotMetadata(41, 7, ConfState.of(1, 2, 5)), b"\x00state\xff" * 3)

MESSAGES = [
    pytest.param(
        Message(
            MessageType.APPEND,
            1,
            2,
            7,
            log_term=6,
            index=40,
            entries=(
                Entry(7, 41, EntryType.NORMAL, b"payload"),
                Entry(7, 42, EntryType.CONF_CHANGE, b"\x01\x02"),
                Entry(7, 43),
            ),
            commit=39,
        ),
        id="append with entries",
    ),
    pytest.param(
        Message(
            MessageType.APPEND_RESPONSE, 2, 1, 7, index=40, reject=True, reject_hint=12, log_term=3
        ),
        id="rejected append",
    ),
    pytest.param(
        Message(MessageType.VOTE, 3, 1, 8, log_term=7, index=43, leader_transfer=True),
        id="transfer vote",
    ),
    pytest.param(Message(MessageType.PRE_VOTE_RESPONSE, 1, 3, 9), id="pre-vote grant"),
    pytest.param(
        Message(MessageType.HEARTBEAT, 1, 2, 7, commit=40, context=b"read-17"),
        id="heartbeat with read context",
    ),
    pytest.param(Message(MessageType.SNAPSHOT, 1, 4, 7, snapshot=SNAPSHOT), id="snapshot"),
    pytest.param(Message(MessageType.TIMEOUT_NOW, 1, 2, 7), id="timeout now"),
    pytest.param(
        Message(MessageType.READ_INDEX_RESPONSE, 1, 2, 7, index=40, context=b"c"),
        id="read index answer",
    ),
    pytest.param(
        Message(MessageType.APPEND, 2**63, 2**64 - 1, 2**64 - 1, index=2**64 - 1),
        id="largest ids and indexes",
    ),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_message_survives_encoding(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


def test_every_message_type_has_an_encoding() -> None:
    for message_type in MessageType:
        message = Message(message_type, 1, 2, 3)
        assert decode_message(encode_message(message)).type is message_type


@pytest.mark.parametrize(
    "value, encode, decode",
    [
        pytest.param(
            Entry(3, 9, EntryType.NORMAL, b"x" * 300), encode_entry, decode_entry, id="entry"
        ),
        pytest.param(HardState(5, 2, 17), encode_hard_state, decode_hard_state, id="hard state"),
        pytest.param(SNAPSHOT, encode_snapshot, decode_snapshot, id="snapshot"),
        pytest.param(
            ConfChangeRecord(
                ConfState.of(1, 2, 4), ConfChange(ConfChangeType.ADD_VOTER, 4, b"addr")
            ),
            encode_conf_change_record,
            decode_conf_change_record,
            id="membership change",
        ),
        pytest.param(
            ConfChangeRecord(ConfState.of(1, 2, 3)),
            encode_conf_change_record,
            decode_conf_change_record,
            id="bootstrap membership",
        ),
    ],
)
def test_value_survives_encoding(value: object, encode, decode) -> None:  # type: ignore[no-untyped-def]
    assert decode(encode(value)) == value


GOOD = encode_message(MESSAGES[0].values[0])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x02" + GOOD[1:], id="unknown format version"),
        pytest.param(GOOD[:-1], id="truncated"),
        pytest.param(GOOD + b"\x00", id="trailing byte"),
        pytest.param(GOOD[:1] + b"\x63" + GOOD[2:], id="unknown message type"),
        pytest.param(GOOD[:60] + b"\xff\xff\xff\xff" + GOOD[64:], id="absurd entry count"),
        pytest.param(b"\x01" + b"\x00" * 10, id="garbage"),
    ],
)
def test_malformed_message_is_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


def test_entry_with_unknown_type_is_rejected() -> None:
    data = bytearray(encode_entry(Entry(1, 1)))
    data[17] = 9
    with pytest.raises(DecodeError):
        decode_entry(bytes(data))
