"""The client's object cache: revisions, invalidations, races, bounds."""

from __future__ import annotations

from neostore.client.cache import ObjectCache
from neostore.ids import p64

OID = p64(1)


def t(n: int) -> bytes:
    return p64(n)


def test_current_revision_answers_up_to_the_last_seen_tid() -> None:
    cache = ObjectCache(1 << 20)
    cache.store(OID, b"v5", t(5), None)
    assert cache.load_before(OID, t(8), last_seen=t(7)) == (b"v5", t(5), None)
    # Beyond what the stream told us, the cache cannot know.
    assert cache.load_before(OID, t(9), last_seen=t(7)) is None


def test_invalidation_ends_the_current_revision() -> None:
    cache = ObjectCache(1 << 20)
    cache.store(OID, b"v5", t(5), None)
    cache.invalidate([OID], t(9))
    assert cache.load_before(OID, t(9), last_seen=t(20)) == (b"v5", t(5), t(9))
    assert cache.load_before(OID, t(10), last_seen=t(20)) is None


def test_a_load_racing_with_an_invalidation_is_not_cached_as_current() -> None:
    cache = ObjectCache(1 << 20)
    cache.begin_load(OID)
    cache.invalidate([OID], t(9))  # arrives while the load is in flight
    cache.end_load(OID, b"v5", t(5), None)  # the storage said "current"
    assert cache.load_before(OID, t(20), last_seen=t(20)) is None
    assert cache.load_before(OID, t(9), last_seen=t(20)) == (b"v5", t(5), t(9))


def test_the_cache_stays_within_its_size() -> None:
    cache = ObjectCache(10_000)
    for i in range(1, 200):
        cache.store(p64(i), b"x" * 500, t(i), None)
    assert cache.size <= 10_000
    assert cache.load_before(p64(199), t(300), last_seen=t(300)) is not None
    assert cache.load_before(p64(1), t(300), last_seen=t(300)) is None


def test_clear_forgets_everything_and_poisons_loads_in_flight() -> None:
    cache = ObjectCache(1 << 20)
    cache.store(OID, b"v5", t(5), None)
    cache.begin_load(p64(2))
    cache.clear()
    cache.end_load(p64(2), b"w", t(3), None)
    assert len(cache) == 0
    assert cache.load_before(OID, t(6), last_seen=t(6)) is None
    assert cache.load_before(p64(2), t(10), last_seen=t(10)) is None


def test_load_serial_uses_any_cached_revision() -> None:
    cache = ObjectCache(1 << 20)
    cache.store(OID, b"v5", t(5), t(7))
    assert cache.load_serial(OID, t(5)) == b"v5"
    assert cache.load_serial(OID, t(7)) is None
