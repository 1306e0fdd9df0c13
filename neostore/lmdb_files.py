"""Refuse an LMDB data file shorter than its own metadata says it is.

LMDB maps ``data.mdb`` into memory: in a file cut short (a copy or a
restore that stopped half way, a disk that filled up), the first read of a
page past the end kills the process with SIGBUS, and nothing is logged.
:func:`check_data_file` reads the two meta pages at the start of the file
(the one with the higher transaction id is current), works out where the
last page in use ends, and raises :class:`~neostore.errors.Corrupted`
naming the file, its size and the size it needs, before anything maps it.

The layout read here (``lmdb.h``/``mdb.c``, unchanged since LMDB 0.9): a
16-byte page header, then ``MDB_meta``: magic ``0xBEEFC0DE``, version,
address, map size, the free and main databases' ``MDB_db`` records (the
free one's first field holds the page size), the last page number in use
and the transaction id.
"""

from __future__ import annotations

import os
import struct

from neostore import errors

MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")


def _meta(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(page size, last page number, transaction id) of the meta page at
    ``offset``, None if there is none there."""
    if len(data) < offset + _PAGE_HEADER + _META.size:
        return None
    fields = _META.unpack_from(data, offset + _PAGE_HEADER)
    if fields[0] != MAGIC:
        return None
    return fields[4], fields[-2], fields[-1]


def check_data_file(directory: str | os.PathLike[str]) -> None:
    """Raise Corrupted if ``directory``'s ``data.mdb`` is shorter than the
    pages its current meta page says are in use (a missing or empty file
    is a new environment: fine)."""
    path = os.path.join(os.fspath(directory), "data.mdb")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb") as file:
        head = file.read(_PAGE_HEADER + _META.size)
        first = _meta(head, 0)
        if first is None:
            raise errors.Corrupted(f"{path} is not an LMDB data file (no meta page at its start): "
                                   "restore it, or let the node copy its data again from a replica")
        page_size = first[0]
        file.seek(page_size)
        second = _meta(file.read(_PAGE_HEADER + _META.size), 0)
    metas = [meta for meta in (first, second) if meta is not None]
    _, last_page, _ = max(metas, key=lambda meta: meta[2])
    needed = (last_page + 1) * page_size
    if size < needed:
        raise errors.Corrupted(
            f"{path} is truncated: {size} bytes, but its pages in use need {needed} "
            f"(page {last_page} of {page_size} bytes): restore it from a backup, or start this node on an "
            "empty directory and let it copy its data from a replica")
