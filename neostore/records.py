"""Object data on the wire and on disk: compression flag and checksum.

The client compresses (zlib, only when it shrinks the data) and checksums
(CRC-32 of the bytes as stored); storage nodes verify the checksum when they
take a record and keep it as it came; the client verifies it again when it
loads.  So a record is checked at every hop and never recompressed.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

from ZODB.serialize import referencesf

from neostore import errors

log = logging.getLogger(__name__)

#: Below this size compression rarely pays off.
COMPRESS_MIN_BYTES = 64


@dataclasses.dataclass(frozen=True)
class Record:
    """Object data as stored: ``data`` is compressed when ``compressed``."""

    data: bytes
    compressed: bool
    checksum: int

    @classmethod
    def pack(cls, data: bytes, compress: bool = True) -> Record:
        """The record for ``data``, compressed when that makes it smaller."""
        stored, compressed = data, False
        if compress and len(data) >= COMPRESS_MIN_BYTES:
            candidate = zlib.compress(data)
            if len(candidate) < len(data):
                stored, compressed = candidate, True
        return cls(stored, compressed, zlib.crc32(stored))

    def verify(self, what: str = "record") -> None:
        """Raise :class:`~neostore.errors.Corrupted` if the checksum fails."""
        if zlib.crc32(self.data) != self.checksum:
            raise errors.Corrupted(f"checksum mismatch in {what}")

    def unpack(self, what: str = "record") -> bytes:
        """The object's data, checksum verified."""
        self.verify(what)
        return zlib.decompress(self.data) if self.compressed else self.data

    def to_proto(self, message) -> None:  # type: ignore[no-untyped-def]
        message.data = self.data
        message.compressed = self.compressed
        message.checksum = self.checksum

    @classmethod
    def from_proto(cls, message) -> Record:  # type: ignore[no-untyped-def]
        return cls(message.data, message.compressed, message.checksum)


def references(data: bytes) -> list[bytes]:
    """The oids an object's data (a ZODB record's pickles) refers to, weak
    and cross-database references aside (``referencesf``); none if it is
    not such a pickle (read-ahead on both sides follows them)."""
    try:
        return referencesf(data)
    except Exception:  # noqa: BLE001 - not a ZODB pickle: nothing to follow
        log.debug("references of a record could not be read", exc_info=True)
        return []
