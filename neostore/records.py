"""Object data on the wire and on disk: compression flag and checksum.

The client compresses (zlib, only when it shrinks the data) and checksums
(CRC-32 of the bytes as stored); storage nodes verify the checksum when they
take a record and keep it as it came; the client verifies it again when it
loads.  So a record is checked at every hop and never recompressed.
"""

from __future__ import annotations

import dataclasses
import zlib

from neostore import errors

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
