"""The client cache kept on disk between runs (``cache-path``).

The file format on its own (round trip, damage detected, kill -9 of a
writer never leaves a file that is served), then real clients of an
in-process cluster: a reopened client serves what did not change from the
file, gets what changed from the masters, and drops what it must (another
cluster, a cluster older than the file, a history that does not reach back
to the file).
"""

from __future__ import annotations

import glob
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
import ZODB
from persistent.mapping import PersistentMapping

from neostore.client import cache_file
from neostore.client.cache_file import CacheEntry
from neostore.ids import MAX_TID, p64

from harness import ThreadCluster
from waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRIES = [CacheEntry(p64(1), p64(10), None, b"current"), CacheEntry(p64(1), p64(5), p64(10), b"history"),
           CacheEntry(p64(2), p64(7), None, b"")]


def test_a_saved_cache_loads_back_whole(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "cache")
    size = cache_file.save(path, "cluster", "0123abcd", p64(12), ENTRIES)
    assert size == os.path.getsize(path)
    assert cache_file.load(path) == cache_file.SavedCache("cluster", "0123abcd", p64(12), ENTRIES)
    assert not glob.glob(path + ".*")  # no temporary file left
    assert cache_file.load(str(tmp_path / "none")) is None


@pytest.mark.parametrize("damage", ["truncated", "a byte changed", "another file", "empty"])
def test_a_damaged_file_is_dropped_never_served(tmp_path: pathlib.Path, damage: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache"
    cache_file.save(str(path), "cluster", "", p64(12), ENTRIES)
    content = path.read_bytes()
    if damage == "truncated":
        content = content[:len(content) // 2]
    elif damage == "a byte changed":
        content = content[:40] + bytes([content[40] ^ 1]) + content[41:]
    elif damage == "another file":
        content = b"#!/bin/sh\n" + content
    else:
        content = b""
    path.write_bytes(content)
    assert cache_file.load(str(path)) is None
    assert f"client cache file {path} is damaged" in caplog.text


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from neostore.client.cache_file import CacheEntry, save
    from neostore.ids import p64
    generation = 0
    while True:  # a new file, of 40 MB, again and again, until killed
        generation += 1
        entries = [CacheEntry(p64(i), p64(generation), None, bytes([generation % 256]) * 4000)
                   for i in range(10_000)]
        save(sys.argv[1], "cluster", "id", p64(generation), entries)
""")


def test_kill_9_of_a_writer_leaves_the_previous_file_whole(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "cache")
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path, ROOT])
        try:
            # Killed while it writes a file, one written before it in place.
            wait_until(lambda writer=writer: (os.path.exists(path) and glob.glob(path + ".*.tmp"))
                       or writer.poll() is not None,
                       "the writer to be writing its next cache file", timeout=120, interval=0.001)
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(30)
        assert writer.returncode == -signal.SIGKILL
        saved = cache_file.load(path)  # the file of a finished write: never the torn one
        assert saved is not None
        generation = int.from_bytes(saved.last_tid, "big")
        assert len(saved.entries) == 10_000
        assert all(entry.data == bytes([generation % 256]) * 4000 for entry in saved.entries)
        for leftover in glob.glob(path + ".*.tmp"):
            os.unlink(leftover)  # what the killed writer left: never read


def _hits_and_misses(storage: object) -> tuple[int, int]:
    cache = storage._cache  # type: ignore[attr-defined]
    return cache.hits, cache.misses


def test_a_reopened_client_starts_warm_and_sees_what_changed_meanwhile(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "client.cache")
    with ThreadCluster(str(tmp_path / "cluster"), num_storages=2, num_partitions=4, num_replicas=2) as cluster:
        writer = ZODB.DB(cluster.client())
        with writer.transaction() as conn:
            for key in ("kept", "changed"):
                conn.root()[key] = PersistentMapping(value=f"{key} 1")
        writer.close()
        db = ZODB.DB(cluster.client(cache_path=path))
        with db.transaction() as conn:  # loaded, so cached
            assert [conn.root()[key]["value"] for key in ("kept", "changed")] == ["kept 1", "changed 1"]
        db.close()  # writes the file
        assert os.path.exists(path)

        other = ZODB.DB(cluster.client())
        with other.transaction() as conn:
            conn.root()["changed"]["value"] = "changed 2"
        other.close()

        storage = cluster.client(cache_path=path)
        db = ZODB.DB(storage)
        with db.transaction() as conn:
            root = conn.root()
            before = _hits_and_misses(storage)
            assert root["kept"]["value"] == "kept 1"
            after = _hits_and_misses(storage)
            assert after[1] == before[1] and after[0] > before[0]  # from the file: no load sent
            assert root["changed"]["value"] == "changed 2"  # the stream said it changed
        db.close()


def test_a_file_of_another_cluster_or_newer_than_the_cluster_is_not_used(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "client.cache")
    with ThreadCluster(str(tmp_path / "cluster"), name="mine", num_storages=2, num_partitions=4,
                       num_replicas=2) as cluster:
        db = ZODB.DB(cluster.client())
        with db.transaction() as conn:
            conn.root()["x"] = PersistentMapping(value=1)
        db.close()
        cluster_id = cluster.master.state.cluster_id
        root_oid = p64(0)
        # Another cluster's file, and this cluster's file from after its last transaction
        # (as if the cluster had been restored from an older copy): each would serve a wrong root.
        for name, identity, last_tid, reason in (
                ("other", cluster_id, p64(1), "belongs to cluster 'other'"),
                ("mine", "f" * 32, p64(1), "belongs to cluster 'mine' (id " + "f" * 32),
                ("mine", cluster_id, MAX_TID, "is newer")):
            cache_file.save(path, name, identity, last_tid, [CacheEntry(root_oid, p64(1), None, b"not a pickle")])
            storage = cluster.client(cache_path=path)
            assert _hits_and_misses(storage) == (0, 0) and len(storage._cache) == 0
            assert reason in caplog.text
            db = ZODB.DB(storage)
            with db.transaction() as conn:
                assert conn.root()["x"]["value"] == 1
            db.close()


def test_a_history_that_does_not_reach_back_to_the_file_resets_the_cache(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "client.cache")
    with ThreadCluster(str(tmp_path / "cluster"), num_storages=2, num_partitions=4, num_replicas=2,
                       history_size=3) as cluster:
        db = ZODB.DB(cluster.client(cache_path=path))
        with db.transaction() as conn:
            conn.root()["x"] = PersistentMapping(value=0)
        db.close()
        other = ZODB.DB(cluster.client())
        for value in range(1, 6):  # more commits than the masters' history holds
            with other.transaction() as conn:
                conn.root()["x"]["value"] = value
        other.close()
        storage = cluster.client(cache_path=path)
        wait_until(lambda: len(storage._cache) == 0, "the stream's cache reset")
        db = ZODB.DB(storage)
        with db.transaction() as conn:
            assert conn.root()["x"]["value"] == 5
        db.close()
