"""Waiting in tests for something to happen: for the event, never a guess.

The one helper every test uses (issue 18 brought the modules' own copies
here).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` every ``interval`` seconds until true; fail the
    test naming ``what`` after ``timeout`` seconds (generous: a loaded
    machine must not fail it).  A predicate that costs (a subprocess, a
    walk of /proc, an rpc) takes a longer ``interval``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
