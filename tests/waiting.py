"""Waiting in tests for something to happen: for the event, never a guess.

One helper for the tests written since; the older modules still carry
their own (issue 18 asks to bring them here).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after
    ``timeout`` seconds (generous: a loaded machine must not fail it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)
