"""ZODB's prefetch: many objects as of one snapshot, one call per storage node.

``Connection.prefetch(objects)`` (IPrefetchStorage) names the objects a
request is about to read.  Each one the cache cannot answer is loaded from
a readable replica of its partition, grouped by node: one
``LoadBeforeMany`` per node (at most ``BATCH`` oids each), all in parallel
(``rpc.call_all``), instead of a round trip per object as the reads would
make.  Each answer is cached as a load's would be
(``ObjectCache.begin_load``/``end_load``: an invalidation processed while
it travels still ends the revision it names), so the reads that follow
find them in the cache, as of the same snapshot.

Best effort: an object that does not come (its node failed or moved its
cell, the answer was full) is simply loaded on demand later; nothing is
raised.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from neostore import errors, rpc
from neostore.client.cache import ObjectCache
from neostore.client.cluster import ClusterConnection
from neostore.ids import oid_repr
from neostore.protocol import storage_pb2
from neostore.records import Record

log = logging.getLogger(__name__)

#: At most this many oids in one LoadBeforeMany (the nodes take 1000).
BATCH = 500
PREFETCH_TIMEOUT = 30.0


def prefetch(cluster: ClusterConnection, cache: ObjectCache, last_seen: Callable[[], bytes],
             oids: Iterable[bytes], before_tid: bytes, max_bytes: int = 0, cohort: int = 0,
             ) -> tuple[list[bytes], int]:
    """Load the revisions of ``oids`` current just before ``before_tid``
    into ``cache``; (the data of each that came, in the order asked, and
    how many calls were made).
    ``last_seen()``: the last TID whose invalidations the cache has
    processed; ``max_bytes``: of data per node (0: the nodes' limit);
    ``cohort``: read-ahead's (:meth:`ObjectCache.new_cohort`), not a
    prefetch the application asked for: the cache counts what it brings,
    as one cohort in the order asked, and the nodes leave out what they
    would have to wait for."""
    wanted = [oid for oid in dict.fromkeys(oids)
              if len(oid) == 8 and cache.load_before(oid, before_tid, last_seen()) is None]
    batches, calls = load_many_calls(cluster, wanted, before_tid, PREFETCH_TIMEOUT, max_bytes, no_wait=bool(cohort))
    for batch in batches:
        for oid in batch:
            cache.begin_load(oid)
    outcomes: list[object] = []
    try:
        outcomes = rpc.call_all(calls)
    finally:
        revisions: dict[bytes, tuple[bytes | None, bytes | None, bytes | None]] = {}
        for index, batch in enumerate(batches):
            outcome = outcomes[index] if index < len(outcomes) else None
            if isinstance(outcome, errors.NeoError):
                log.debug("prefetch from %s failed: %s", calls[index][3], outcome)
            answers = outcome.replies if isinstance(outcome, storage_pb2.LoadManyReply) else ()
            for position, oid in enumerate(batch):
                revisions[oid] = _revision(oid, answers[position] if position < len(answers) else None)
        loaded: list[bytes] = []
        for oid in wanted:  # in the order asked (a cohort's order); each begun load ends once
            if oid in revisions:
                data, start, end = revisions[oid]
                cache.end_load(oid, data, start, end, cohort)
                if data is not None:
                    loaded.append(data)
    return loaded, len(calls)


def load_many_calls(cluster: ClusterConnection, oids: Iterable[bytes], before_tid: bytes, timeout: float,
                    max_bytes: int = 0, no_wait: bool = False) -> tuple[list[list[bytes]], list[tuple[Any, ...]]]:
    """``LoadBeforeMany`` calls for ``oids`` as of ``before_tid``: each oid
    asked of a readable replica of its partition (one at random), grouped
    per node, at most ``BATCH`` per call; (the oids of each call, the calls
    for :func:`neostore.rpc.call_all`).  A node the table no longer lists
    is left out."""
    table = cluster.table
    by_node: dict[int, list[bytes]] = {}
    for oid in oids:
        nodes = table.readable_nodes(table.partition_of(oid))
        if nodes:
            by_node.setdefault(random.choice(nodes), []).append(oid)
    batches: list[list[bytes]] = []
    calls: list[tuple[Any, ...]] = []
    for node_id, node_oids in sorted(by_node.items()):
        try:
            stub, peer = cluster.storage_stub(node_id, table)
        except errors.NotOwner:
            continue
        for start in range(0, len(node_oids), BATCH):
            batch = node_oids[start:start + BATCH]
            request = cluster.name_unfinished(storage_pb2.LoadBeforeManyRequest(
                oids=batch, before_tid=before_tid, table_version=table.version, max_bytes=max_bytes,
                no_wait=no_wait))
            batches.append(batch)
            calls.append((stub.LoadBeforeMany, request, timeout, peer))
    return batches, calls


def _revision(oid: bytes, answer: storage_pb2.LoadReply | None) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(data, start, end) of a FOUND answer, else Nones (nothing to cache)."""
    if answer is None or answer.status != storage_pb2.LoadReply.FOUND:
        return None, None, None
    try:
        data = Record.from_proto(answer.record).unpack(f"object {oid_repr(oid)}")
    except errors.NeoError as error:  # a damaged record: the load on demand reports it
        log.warning("prefetch of object %s: %s", oid_repr(oid), error)
        return None, None, None
    return data, answer.serial, answer.next_serial or None
