"""Waiting on a condition with a deadline: the tests' only way to synchronise with other threads,
processes and clusters (never a bare sleep).

:func:`wait_until` polls a condition and returns its first truthy value; on the deadline it fails
with :class:`WaitTimeout`, naming what it waited for (and the condition's last error, when it is
allowed to raise). :func:`wait_until_async` is its twin for a test running on an event loop (the
condition may be a coroutine function). :func:`wait_for_file` is a task function: it runs on a
worker and blocks until the test creates a file (this module imports nothing heavy, as a worker
imports it).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

INTERVAL = 0.01
"""Seconds between two polls of a cheap condition (a file, a flag, a process's state)."""
COMMAND_INTERVAL = 0.25
"""Seconds between two polls of a condition that runs a command each time (kubectl, crictl): a
tighter loop would keep a core busy with them on a small machine."""


class WaitTimeout(AssertionError, TimeoutError):
    """A condition did not hold in time: a test failure, and a ``TimeoutError`` for callers that
    give up waiting and carry on."""


def _timed_out(timeout: float, what: str, last: BaseException | None) -> WaitTimeout:
    extra = f" (last error: {last!r})" if last is not None else ""
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{extra}")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = INTERVAL,
    ignoring: type[Exception] | tuple[type[Exception], ...] = (),
) -> T:
    """Call ``condition`` until it returns a truthy value and return that value; raise
    :class:`WaitTimeout` after ``timeout`` seconds.

    ``ignoring``: exceptions of the condition that mean "not yet" (a resource that does not exist
    yet, a command that fails until it does not); the last one is named in the timeout error. Any
    other exception ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: BaseException | None = None
        try:
            result = condition()
            if result:
                return result
        except ignoring as e:
            last = e
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last)
        time.sleep(interval)


def wait_for_cluster(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """:func:`wait_until` for a condition that asks the cluster (kubectl, crictl, the API): any
    exception means "not yet" (the resource or the API itself may come and go), and it polls every
    :data:`COMMAND_INTERVAL`."""
    return wait_until(condition, timeout, what, ignoring=Exception, interval=COMMAND_INTERVAL)


async def wait_until_async(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = INTERVAL,
    ignoring: type[Exception] | tuple[type[Exception], ...] = (),
) -> Any:
    """:func:`wait_until` on an event loop, which keeps turning between polls: for a condition that
    only the loop's own work can make true. ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        last: BaseException | None = None
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except ignoring as e:
            last = e
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last)
        await asyncio.sleep(interval)


def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """A task function: block until the test creates ``path`` (its gate); returns
    ``"released"``."""
    wait_until(lambda: os.path.exists(path), timeout, f"the file {path}")
    return "released"
