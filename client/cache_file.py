"""The client cache kept on disk between runs (``cache-path``, as ZEO's
``client``/``var``): a restarted process starts warm.

A file holds one snapshot of the object cache (:mod:`.cache`), taken when
the storage closes, with the TID up to which the client had processed
every invalidation then (``last_tid``: its current entries were current
as of that TID) and the identity of the cluster (name and id).  Opening a
storage with that path loads it back: the invalidation stream is then
asked for everything committed after ``last_tid``, which turns the current
entries that changed meanwhile into history, or, when the masters no
longer hold that far back (a restart, a truncation, more than their
history), resets the cache: only what must go goes.

The file is written whole to a temporary file, fsynced, then renamed over
the old one: a process killed mid-write leaves the previous file, never a
torn one.  It ends with a SHA-256 of everything before it, so a damaged or
foreign file is detected and dropped, never served.  A file of another
cluster (another name or id), or newer than the cluster (``last_tid``
beyond the masters': the cluster was restored from an older copy), is
dropped too.

Layout (big-endian): the magic ``NEOSTORE CACHE\\n``, a version (H), the
cluster name and id (each H length + UTF-8), ``last_tid`` (8 bytes), the
number of entries (Q); per entry, oldest used first: oid (8), start (8),
whether it has an end (B), end (8, zeros without one), data length (I),
data; then the digest (32).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
from collections.abc import Iterable

log = logging.getLogger(__name__)

MAGIC = b"NEOSTORE CACHE\n"
VERSION = 1
_ENTRY = struct.Struct(">8s8sB8sI")
_DIGEST_SIZE = 32


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cached revision: ``end`` None while it was current."""

    oid: bytes
    start: bytes
    end: bytes | None
    data: bytes


@dataclasses.dataclass(frozen=True)
class SavedCache:
    cluster_name: str
    cluster_id: str
    last_tid: bytes
    entries: list[CacheEntry]


def _text(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return struct.pack(">H", len(encoded)) + encoded


def save(path: str, cluster_name: str, cluster_id: str, last_tid: bytes, entries: Iterable[CacheEntry]) -> int:
    """Write the snapshot to ``path`` (atomically); the bytes written."""
    digest = hashlib.sha256()
    temporary = f"{path}.{os.getpid()}.tmp"
    written = 0
    try:
        with open(temporary, "wb") as file:
            def put(chunk: bytes) -> None:
                nonlocal written
                digest.update(chunk)
                file.write(chunk)
                written += len(chunk)

            listed = list(entries)
            put(MAGIC + struct.pack(">H", VERSION) + _text(cluster_name) + _text(cluster_id) + last_tid
                + struct.pack(">Q", len(listed)))
            for entry in listed:
                put(_ENTRY.pack(entry.oid, entry.start, entry.end is not None, entry.end or bytes(8),
                                len(entry.data)))
                put(entry.data)
            file.write(digest.digest())
            written += _DIGEST_SIZE
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return written


def load(path: str) -> SavedCache | None:
    """The snapshot in ``path``; None (said in the log) if there is none or
    it is damaged."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("client cache file %s cannot be read (%s): starting with an empty cache", path, error)
        return None
    try:
        return _parse(content)
    except (ValueError, struct.error, UnicodeDecodeError) as error:
        log.warning("client cache file %s is damaged (%s): starting with an empty cache", path, error)
        return None


def _parse(content: bytes) -> SavedCache:
    if not content.startswith(MAGIC):
        raise ValueError("not a neostore cache file")
    if len(content) < len(MAGIC) + 2 + _DIGEST_SIZE:
        raise ValueError("truncated")
    body, digest = content[:-_DIGEST_SIZE], content[-_DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("its checksum does not match (a torn or altered file)")
    view = memoryview(body)
    position = len(MAGIC)

    def take(size: int) -> bytes:
        nonlocal position
        if position + size > len(view):
            raise ValueError("truncated")
        chunk = bytes(view[position:position + size])
        position += size
        return chunk

    (version,) = struct.unpack(">H", take(2))
    if version != VERSION:
        raise ValueError(f"version {version}, this client reads version {VERSION}")
    name = take(struct.unpack(">H", take(2))[0]).decode("utf-8")
    cluster_id = take(struct.unpack(">H", take(2))[0]).decode("utf-8")
    last_tid = take(8)
    (count,) = struct.unpack(">Q", take(8))
    entries = []
    for _ in range(count):
        oid, start, has_end, end, size = _ENTRY.unpack(take(_ENTRY.size))
        entries.append(CacheEntry(oid, start, end if has_end else None, take(size)))
    if position != len(view):
        raise ValueError("bytes after the last entry")
    return SavedCache(name, cluster_id, last_tid, entries)
