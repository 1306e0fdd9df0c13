"""Durability of the master's state: a log of commands, snapshots, replay.

:class:`CommandLog` is the narrow interface the rest of the master uses:
``submit`` a batch of commands and get their results, read ``state``, be
told of every change through a listener.  Two implementations share one
apply loop (:class:`_AppliedLog`):

* :class:`LmdbCommandLog` — one master on its own, durable:

  1. apply the batch to the current state (``state.apply`` is pure, so a
     rejected command costs nothing and is not logged);
  2. append the encoded commands that changed something, under consecutive
     indexes, in ONE LMDB write transaction, fsynced on commit (group
     commit: one fsync for a whole batch of decisions);
  3. every ``snapshot_every`` entries, write the state as a snapshot in
     that same transaction and delete the entries it covers;
  4. only then publish the new state and call the listeners, in order.

  On open it loads the snapshot and replays the entries after it.  Each
  open raises the stored ``term`` by one: orders a master sends to storage
  nodes carry it, so a previous incarnation's late orders can be refused.
  A lock file keeps a second process off the same data directory.

* :class:`MemoryCommandLog` — the same without a disk, for tests.

With several masters, :class:`~neostore.master_node.raft_driver.RaftCommandLog`
replaces the LMDB log behind the same interface: ``submit`` then returns
once the entry is committed by a majority and applied, and ``term`` is
Raft's (the term in which the master became leader).
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Protocol

import lmdb

from neostore import errors
from neostore.ids import p64, u64
from neostore.lmdb_files import check_data_file
from neostore.master_node.codec import decode_command, decode_state, encode_command, encode_state
from neostore.master_node.state import (
    ClusterState,
    Command,
    apply,
    initial_state,
)

log = logging.getLogger(__name__)

#: Called with (old state, new state) after every change, in log order, while
#: the log's lock is held: listeners must be quick and must not submit.
StateListener = Callable[[ClusterState, ClusterState], None]

DEFAULT_SNAPSHOT_EVERY = 1000
DEFAULT_MAP_SIZE = 1 << 30

_LOG_DB = b"log"
_META_DB = b"meta"
_SNAPSHOT_KEY = b"snapshot"
_SNAPSHOT_INDEX_KEY = b"snapshot_index"
_TERM_KEY = b"term"
_LOCK_FILE = "master.lock"


class CommandLog(Protocol):
    """What the master needs of its replicated (or local) command log."""

    @property
    def state(self) -> ClusterState:
        """The state after every command applied so far."""

    @property
    def term(self) -> int:
        """Fencing number sent with every order to storage nodes."""

    def submit(self, commands: Sequence[Command]) -> list[Any]:
        """Apply and make durable, in order; one result per command.

        A rejected command's slot holds the :class:`~neostore.errors.NeoError`
        that refused it (it changed nothing); other commands still apply.
        Raises only when the batch could not be made durable (nothing applied),
        or :class:`~neostore.errors.InDoubt` when it was proposed but did
        not commit in time: it may still apply (its ``pending`` tells).
        """

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(old, new)`` after every state change."""

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener`` (a component that ended)."""

    def close(self) -> None:
        """Release the log; later submits raise Unavailable."""


def submit_one(command_log: CommandLog, command: Command) -> Any:
    """Submit one command; its result, or raise the error that refused it."""
    (result,) = command_log.submit([command])
    if isinstance(result, errors.NeoError):
        raise result
    return result


class _AppliedLog:
    """The apply loop both logs share; subclasses persist in ``_persist``."""

    def __init__(self, state: ClusterState, term: int) -> None:
        self._lock = threading.Lock()
        self._state = state
        self._term = term
        self._listeners: list[StateListener] = []
        self._closed = False

    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def term(self) -> int:
        return self._term

    def add_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def submit(self, commands: Sequence[Command]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise errors.Unavailable("the master is stopping: its command log is closed")
            old = state = self._state
            results: list[Any] = []
            changes: list[bytes] = []
            for command in commands:
                try:
                    new_state, result = apply(state, command)
                except errors.NeoError as error:
                    results.append(error)
                    continue
                if new_state is not state:
                    changes.append(encode_command(command))
                    state = new_state
                results.append(result)
            if changes:
                self._persist(changes, state)
                self._state = state
                for listener in self._listeners:
                    try:
                        listener(old, state)
                    except Exception:  # noqa: BLE001 - a listener must not break the log
                        log.exception("state listener failed")
            return results

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _persist(self, entries: list[bytes], state: ClusterState) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free resources (called once, under the lock)."""


class MemoryCommandLog(_AppliedLog):
    """A command log in memory: same behaviour, no durability (tests)."""

    def __init__(self, state: ClusterState | None = None, term: int = 1) -> None:
        super().__init__(state if state is not None else initial_state(), term)
        self.entries: list[bytes] = []

    def _persist(self, entries: list[bytes], state: ClusterState) -> None:
        self.entries.extend(entries)


class LmdbCommandLog(_AppliedLog):
    """The durable log of one master, in an LMDB environment under ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        directory = pathlib.Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory
        self._snapshot_every = snapshot_every
        self._lock_file: BinaryIO = lock_directory(directory)
        try:
            check_data_file(directory)
            self._env = lmdb.open(
                str(directory), subdir=True, max_dbs=4, map_size=map_size,
                sync=True, metasync=True, readahead=False,
            )
        except BaseException:
            self._lock_file.close()
            raise
        try:
            self._log_db = self._env.open_db(_LOG_DB)
            self._meta_db = self._env.open_db(_META_DB)
            state, self._snapshot_index, self._last_index, term = self._load()
        except BaseException:
            self._env.close()
            self._lock_file.close()
            raise
        self.durable_writes = 0
        super().__init__(state, term)

    def lmdb_metrics(self) -> tuple[lmdb.Environment, str, int]:
        """The environment, its directory and its durable writes so far (:mod:`neostore.metrics`)."""
        return self._env, str(self.path), self.durable_writes

    @property
    def last_index(self) -> int:
        """Index of the last entry appended (snapshots keep counting)."""
        return self._last_index

    @property
    def snapshot_index(self) -> int:
        """Index of the last entry the snapshot covers (0: no snapshot)."""
        return self._snapshot_index

    def _load(self) -> tuple[ClusterState, int, int, int]:
        with self._env.begin(write=True) as txn:
            snapshot = txn.get(_SNAPSHOT_KEY, db=self._meta_db)
            try:
                state = decode_state(snapshot) if snapshot is not None else initial_state()
            except ValueError as error:
                raise errors.Corrupted(f"command log {self.path}: {error}") from None
            raw_index = txn.get(_SNAPSHOT_INDEX_KEY, db=self._meta_db)
            snapshot_index = u64(raw_index) if raw_index is not None else 0
            last_index = snapshot_index
            cursor = txn.cursor(db=self._log_db)
            if cursor.set_range(p64(snapshot_index + 1)):
                for key, value in cursor:
                    index = u64(key)
                    if index != last_index + 1:
                        raise errors.Corrupted(
                            f"command log {self.path}: entry {last_index + 1} missing (found {index})"
                        )
                    try:
                        state, _ = apply(state, decode_command(value))
                    except (ValueError, errors.NeoError) as error:
                        raise errors.Corrupted(
                            f"command log {self.path}: entry {index} does not replay: {error}"
                        ) from None
                    last_index = index
            raw_term = txn.get(_TERM_KEY, db=self._meta_db)
            term = (u64(raw_term) if raw_term is not None else 0) + 1
            txn.put(_TERM_KEY, p64(term), db=self._meta_db)
        log.info("command log %s: snapshot at %d, replayed up to %d, term %d",
                 self.path, snapshot_index, last_index, term)
        return state, snapshot_index, last_index, term

    def _persist(self, entries: list[bytes], state: ClusterState) -> None:
        index = self._last_index
        snapshot = index + len(entries) - self._snapshot_index >= self._snapshot_every
        try:
            with self._env.begin(write=True) as txn:
                for entry in entries:
                    index += 1
                    txn.put(p64(index), entry, db=self._log_db, append=True)
                if snapshot:
                    txn.put(_SNAPSHOT_KEY, encode_state(state), db=self._meta_db)
                    txn.put(_SNAPSHOT_INDEX_KEY, p64(index), db=self._meta_db)
                    cursor = txn.cursor(db=self._log_db)
                    cursor.first()
                    while cursor.key() and u64(cursor.key()) <= index:
                        cursor.delete()
        except lmdb.MapFullError:
            raise errors.StorageFull(f"command log {self.path} is full") from None
        except lmdb.Error as error:
            raise errors.Unavailable(f"command log {self.path}: {error}") from None
        self._last_index = index
        self.durable_writes += 1
        if snapshot:
            self._snapshot_index = index

    def _release(self) -> None:
        self._env.close()
        self._lock_file.close()


def lock_directory(directory: pathlib.Path) -> BinaryIO:
    """Lock ``directory`` for this process (``Unavailable`` if another holds it); close to unlock."""
    lock_file = open(directory / _LOCK_FILE, "ab")  # noqa: SIM115 - held until close
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise errors.Unavailable(f"data directory {directory} is in use by another master process") from None
    return lock_file
