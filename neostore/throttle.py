"""At most once per interval for each key, counting the rest.

What the logging filters share (:class:`neostore.rpc.MalformedRequestLog`,
:class:`neostore.node_options.RepeatFilter`): a message that repeats is
written once per ``interval``, the next one written saying how many were
held back meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

#: Keys remembered at most (templates are few; the bound is a safety net).
MAX_KEYS = 10_000


class Throttle:
    """Thread-safe; ``clock`` is injectable for tests."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Hashable, tuple[float, int]] = {}  # key → (last let through, held back since)

    def admit(self, key: Hashable = None) -> int | None:
        """None if ``key`` came less than ``interval`` ago (counted); else
        how many times it was held back since it was last let through."""
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._seen[key] = (last, held + 1)
                return None
            if len(self._seen) >= MAX_KEYS and key not in self._seen:
                self._seen.clear()
            self._seen[key] = (now, 0)
            return held

    def reset(self) -> None:
        """Forget every key: each is let through next time."""
        with self._lock:
            self._seen.clear()
