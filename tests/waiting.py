"""Waiting on a condition with a deadline: the tests' only way to synchronise with other threads
and processes (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met in {timeout:g} s" + (f": {what}" if what else "")
            )
        time.sleep(0.005)
