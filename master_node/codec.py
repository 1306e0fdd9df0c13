"""Bytes for the master's commands and state: what the log stores and Raft ships.

Commands and the state (:mod:`neostore.master_node.state`) encode to
deterministic JSON: sorted keys, no spaces, bytes as hex, enums by name,
dataclasses as objects of their fields, tuples as lists; no pickle.  A
command is ``{"command": <class name>, "fields": {...}}``, a snapshot
``{"format": STATE_FORMAT, "state": {...}}``.

The codec is driven by the dataclasses' type hints, so a new command needs
no codec code of its own.  Reading the hints on every value was a fifth of
a Raft follower's time, so each type is turned once into an encoder and a
decoder (closures over its fields' own), kept in a cache: decoding checks
exactly what it checked before (the kind of every value, no unknown field)
and raises ``ValueError`` for anything malformed.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from neostore.master_node.state import COMMAND_TYPES, ClusterState, Command, Outcome, OutcomeLog

STATE_FORMAT = 1

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]
_ENCODERS: dict[type, _Encoder] = {}
_DECODERS: dict[Any, _Decoder] = {}


def encode_command(command: Command) -> bytes:
    """Deterministic bytes for a command (what the log stores and Raft ships)."""
    name = type(command).__name__
    if COMMAND_TYPES.get(name) is not type(command):
        raise TypeError(f"not a command: {command!r}")
    return _dumps({"command": name, "fields": _to_json(command)})


def decode_command(data: bytes) -> Command:
    """The command :func:`encode_command` encoded; ValueError if malformed."""
    try:
        document = json.loads(data)
        cls = COMMAND_TYPES[document["command"]]
        command: Command = _decoder(cls)(document["fields"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"undecodable command: {error}") from None
    return command


def encode_state(state: ClusterState) -> bytes:
    """Deterministic bytes for a snapshot of the state."""
    return _dumps({"format": STATE_FORMAT, "state": _to_json(state)})


def decode_state(data: bytes) -> ClusterState:
    """The state :func:`encode_state` encoded; ValueError if malformed."""
    try:
        document = json.loads(data)
        if document.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported snapshot format {document.get('format')!r}")
        state: ClusterState = _decoder(ClusterState)(document["state"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"undecodable state snapshot: {error}") from None
    return state


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# -- encoding ---------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        encoder = _ENCODERS[type(value)] = _make_encoder(type(value))
    return encoder(value)


def _same(value: Any) -> Any:
    return value


def _hex(value: bytes) -> str:
    return value.hex()


def _enum_name(value: enum.Enum) -> str:
    return value.name


def _sequence(value: tuple[Any, ...] | list[Any]) -> list[Any]:
    if value and type(value[0]) is bytes and all(type(item) is bytes for item in value):
        return [item.hex() for item in value]  # oids of a decision: the common long list
    return [_to_json(item) for item in value]


def _make_encoder(cls: type) -> _Encoder:
    if issubclass(cls, enum.Enum):
        return _enum_name
    if cls in (bool, int, str, type(None)):
        return _same
    if cls is bytes:
        return _hex
    if issubclass(cls, (tuple, list, OutcomeLog)):
        return _sequence
    if dataclasses.is_dataclass(cls):
        names = tuple(field.name for field in dataclasses.fields(cls))

        def encode_dataclass(value: Any) -> dict[str, Any]:
            return {name: _to_json(getattr(value, name)) for name in names}

        return encode_dataclass
    raise TypeError(f"cannot encode {cls.__name__}")


# -- decoding ---------------------------------------------------------------------


def _decoder(kind: Any) -> _Decoder:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = _make_decoder(kind)
    return decoder


def _expect(python_type: type, what: str) -> _Decoder:
    def decode(data: Any) -> Any:
        if type(data) is not python_type:
            raise ValueError(f"expected {what}")
        return data

    return decode


def _decode_int(data: Any) -> int:
    if not isinstance(data, int) or isinstance(data, bool):
        raise ValueError("expected an integer")
    return data


def _decode_bytes(data: Any) -> bytes:
    if not isinstance(data, str):
        raise ValueError("expected hex bytes")
    return bytes.fromhex(data)


def _decode_oids(data: Any) -> tuple[bytes, ...]:
    if not isinstance(data, list):
        raise ValueError("expected a list of hex bytes")
    if not all(type(item) is str for item in data):
        raise ValueError("expected hex bytes")
    return tuple(map(bytes.fromhex, data))


def _make_decoder(kind: Any) -> _Decoder:
    origin = typing.get_origin(kind)
    if origin is Union or origin is types.UnionType:
        options = typing.get_args(kind)
        (option,) = [o for o in options if o is not type(None)]
        inner = _decoder(option)
        if type(None) not in options:
            return inner
        return lambda data: None if data is None else inner(data)
    if origin is tuple:
        return _tuple_decoder(kind)
    if kind is OutcomeLog:
        outcomes = _tuple_decoder(tuple[Outcome, ...])
        return lambda data: OutcomeLog.of(outcomes(data))
    if kind is bytes:
        return _decode_bytes
    if kind is bool:
        return _expect(bool, "a boolean")
    if kind is int:
        return _decode_int
    if kind is str:
        return _expect(str, "a string")
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind.__getitem__
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _dataclass_decoder(kind)
    raise TypeError(f"cannot decode {kind}")


def _tuple_decoder(kind: Any) -> _Decoder:
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        if args[0] is bytes:
            return _decode_oids
        item_decoder = _decoder(args[0])

        def decode_items(data: Any) -> tuple[Any, ...]:
            if not isinstance(data, list):
                raise ValueError(f"expected a list for {kind}")
            return tuple(map(item_decoder, data))

        return decode_items
    decoders = tuple(_decoder(arg) for arg in args)

    def decode_fixed(data: Any) -> tuple[Any, ...]:
        if not isinstance(data, list):
            raise ValueError(f"expected a list for {kind}")
        if len(decoders) != len(data):
            raise ValueError(f"expected {len(decoders)} items for {kind}")
        return tuple(decoder(item) for decoder, item in zip(decoders, data, strict=True))

    return decode_fixed


def _dataclass_decoder(cls: type) -> _Decoder:
    names = frozenset(field.name for field in dataclasses.fields(cls))
    fields: dict[str, _Decoder] = {}  # filled on first use: a type may refer to one not yet compiled

    def decode_dataclass(data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {cls.__name__}")
        if not names.issuperset(data):
            raise ValueError(f"unknown fields {sorted(set(data) - names)} for {cls.__name__}")
        if not fields:
            hints = typing.get_type_hints(cls)
            fields.update((name, _decoder(hints[name])) for name in names)
        return cls(**{name: fields[name](value) for name, value in data.items()})

    return decode_dataclass
