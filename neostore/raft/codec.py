"""Binary encoding of Raft values, so a transport and a disk can carry them.

A fixed big-endian layout made with ``struct`` (no pickle: decoding bytes
from the network runs no code).  Every top-level encoding starts with a
format byte, ``FORMAT_VERSION``; decoding checks it, checks every length
against the bytes present, rejects trailing bytes and raises
``DecodeError`` for anything malformed.

Layouts (``u8``/``u32``/``u64`` unsigned big-endian):

* entry: term u64, index u64, type u8, data length u32, data
* snapshot: index u64, term u64, voter count u32, voters u64…,
  data length u64, data
* message: type u8, source u64, target u64, term u64, log_term u64,
  index u64, commit u64, reject u8, reject_hint u64, leader_transfer u8,
  entry count u32, entries…, has snapshot u8, [snapshot], context length
  u32, context
* hard state: term u64, vote u64, commit u64
* conf change record: voter count u32, voters u64…, has change u8,
  [type u8, node id u64, context length u32, context]
"""

from __future__ import annotations

import enum
import struct
from typing import TypeVar

from .errors import DecodeError
from .types import (
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

FORMAT_VERSION = 1

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">QQBI")
_MESSAGE_HEAD = struct.Struct(">BQQQQQQBQB")
_HARD_STATE = struct.Struct(">QQQ")


class _Reader:
    """Reads fields from a bytes buffer, raising ``DecodeError`` on short input."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        end = self.offset + layout.size
        if end > len(self.data):
            raise DecodeError("truncated input")
        values = layout.unpack_from(self.data, self.offset)
        self.offset = end
        return values

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def raw(self, length: int) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise DecodeError("truncated input")
        value = bytes(self.data[self.offset : end])
        self.offset = end
        return value

    def version(self) -> None:
        version = self.u8()
        if version != FORMAT_VERSION:
            raise DecodeError(f"unknown format version {version}")

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise DecodeError(f"{len(self.data) - self.offset} trailing bytes")


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(f"unknown {kind.__name__} {value}") from None


def _bool(value: int) -> bool:
    if value > 1:
        raise DecodeError(f"invalid boolean {value}")
    return value == 1


# --- entries ------------------------------------------------------------------


def _write_entry(out: list[bytes], entry: Entry) -> None:
    out.append(_ENTRY_HEAD.pack(entry.term, entry.index, entry.type, len(entry.data)))
    out.append(entry.data)


def _read_entry(reader: _Reader) -> Entry:
    term, index, entry_type, length = reader.unpack(_ENTRY_HEAD)
    return Entry(term, index, _enum(EntryType, entry_type), reader.raw(length))


def encode_entry(entry: Entry) -> bytes:
    """Bytes for one entry (used by the LMDB log store)."""
    out = [_U8.pack(FORMAT_VERSION)]
    _write_entry(out, entry)
    return b"".join(out)


def decode_entry(data: bytes) -> Entry:
    reader = _Reader(data)
    reader.version()
    entry = _read_entry(reader)
    reader.finish()
    return entry


# --- membership ---------------------------------------------------------------


def _write_voters(out: list[bytes], conf_state: ConfState) -> None:
    voters = sorted(conf_state.voters)
    out.append(_U32.pack(len(voters)))
    out.extend(_U64.pack(voter) for voter in voters)


def _read_voters(reader: _Reader) -> ConfState:
    count = reader.u32()
    if count * _U64.size > len(reader.data) - reader.offset:
        raise DecodeError("truncated input")
    try:
        return ConfState(frozenset(reader.u64() for _ in range(count)))
    except ValueError as error:
        raise DecodeError(str(error)) from None


def encode_conf_change_record(record: ConfChangeRecord) -> bytes:
    """The data of a ``CONF_CHANGE`` entry."""
    out = [_U8.pack(FORMAT_VERSION)]
    _write_voters(out, record.conf_state)
    change = record.change
    if change is None:
        out.append(_U8.pack(0))
    else:
        out.append(_U8.pack(1))
        out.append(_U8.pack(change.type))
        out.append(_U64.pack(change.node_id))
        out.append(_U32.pack(len(change.context)))
        out.append(change.context)
    return b"".join(out)


def decode_conf_change_record(data: bytes) -> ConfChangeRecord:
    reader = _Reader(data)
    reader.version()
    conf_state = _read_voters(reader)
    change = None
    if _bool(reader.u8()):
        change_type = _enum(ConfChangeType, reader.u8())
        node_id = reader.u64()
        change = ConfChange(change_type, node_id, reader.raw(reader.u32()))
    reader.finish()
    return ConfChangeRecord(conf_state, change)


# --- snapshots and hard state --------------------------------------------------


def _write_snapshot(out: list[bytes], snapshot: Snapshot) -> None:
    out.append(_U64.pack(snapshot.metadata.index))
    out.append(_U64.pack(snapshot.metadata.term))
    _write_voters(out, snapshot.metadata.conf_state)
    out.append(_U64.pack(len(snapshot.data)))
    out.append(snapshot.data)


def _read_snapshot(reader: _Reader) -> Snapshot:
    index = reader.u64()
    term = reader.u64()
    conf_state = _read_voters(reader)
    data = reader.raw(reader.u64())
    return Snapshot(SnapshotMetadata(index, term, conf_state), data)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    out = [_U8.pack(FORMAT_VERSION)]
    _write_snapshot(out, snapshot)
    return b"".join(out)


def decode_snapshot(data: bytes) -> Snapshot:
    reader = _Reader(data)
    reader.version()
    snapshot = _read_snapshot(reader)
    reader.finish()
    return snapshot


def encode_hard_state(hard_state: HardState) -> bytes:
    return _U8.pack(FORMAT_VERSION) + _HARD_STATE.pack(
        hard_state.term, hard_state.vote, hard_state.commit
    )


def decode_hard_state(data: bytes) -> HardState:
    reader = _Reader(data)
    reader.version()
    term, vote, commit = reader.unpack(_HARD_STATE)
    reader.finish()
    return HardState(term, vote, commit)


# --- messages -----------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """Bytes for one message, for a transport to carry."""
    out = [_U8.pack(FORMAT_VERSION)]
    out.append(
        _MESSAGE_HEAD.pack(
            message.type,
            message.source,
            message.target,
            message.term,
            message.log_term,
            message.index,
            message.commit,
            message.reject,
            message.reject_hint,
            message.leader_transfer,
        )
    )
    out.append(_U32.pack(len(message.entries)))
    for entry in message.entries:
        _write_entry(out, entry)
    if message.snapshot is None:
        out.append(_U8.pack(0))
    else:
        out.append(_U8.pack(1))
        _write_snapshot(out, message.snapshot)
    out.append(_U32.pack(len(message.context)))
    out.append(message.context)
    return b"".join(out)


def decode_message(data: bytes) -> Message:
    """The message encoded by ``encode_message``; ``DecodeError`` if malformed."""
    reader = _Reader(data)
    reader.version()
    (
        message_type,
        source,
        target,
        term,
        log_term,
        index,
        commit,
        reject,
        reject_hint,
        leader_transfer,
    ) = reader.unpack(_MESSAGE_HEAD)
    count = reader.u32()
    if count * _ENTRY_HEAD.size > len(reader.data) - reader.offset:
        raise DecodeError("truncated input")
    entries = tuple(_read_entry(reader) for _ in range(count))
    snapshot = _read_snapshot(reader) if _bool(reader.u8()) else None
    context = reader.raw(reader.u32())
    reader.finish()
    return Message(
        type=_enum(MessageType, message_type),
        source=source,
        target=target,
        term=term,
        log_term=log_term,
        index=index,
        entries=entries,
        commit=commit,
        reject=_bool(reject),
        reject_hint=reject_hint,
        snapshot=snapshot,
        context=context,
        leader_transfer=_bool(leader_transfer),
    )
