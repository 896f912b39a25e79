"""Transient API errors are weather, not verdicts: which errors to retry, and how.

A connection error, a timeout, 429 (throttled), 5xx and 409 (a conflicting update) pass: they are
retried with capped exponential backoff and reported as a condition and an event, never as a
failed job. 403 (RBAC), 422 (invalid) and other 4xx are permanent answers: the caller fails the job
with the API's message. 404 is the caller's to interpret (gone, or not created yet).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bndl.k8s.kube import KubeError

log = logging.getLogger(__name__)

T = TypeVar("T")

INITIAL = 0.5
"""First backoff in seconds."""
CAP = 15.0
"""Longest backoff in seconds."""


class Tally:
    """How many API calls this process retried (every backoff taken), for ``/metrics``."""

    def __init__(self) -> None:
        self.retries = 0


TALLY = Tally()


def transient(error: KubeError) -> bool:
    """Whether an API error may go away by itself."""
    return error.status in (0, 408, 409, 429) or error.status >= 500


class Backoff:
    """Capped exponential backoff with jitter (pure but for the random jitter)."""

    def __init__(self, initial: float = INITIAL, cap: float = CAP) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2.0**self.failures)
        self.failures += 1
        TALLY.retries += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0


async def retrying(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    on_transient: Callable[[KubeError], Awaitable[None] | None] | None = None,
    backoff: Backoff | None = None,
) -> T:
    """``await call()`` until it succeeds or fails permanently (the KubeError is raised).

    ``on_transient`` is told of every transient failure (to set a condition, post an event).
    """
    backoff = backoff or Backoff()
    while True:
        try:
            return await call()
        except KubeError as e:
            if not transient(e):
                raise
            delay = backoff.next()
            log.info("%s: transient API error, retrying in %.1f s: %s", what, delay, e)
            if on_transient is not None:
                result = on_transient(e)
                if result is not None:
                    await result
            await asyncio.sleep(delay)
