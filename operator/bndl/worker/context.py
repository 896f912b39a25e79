"""The task context: what code running inside a task may ask about where it runs.

Each task thread carries the worker's identity and a fresh per-task dict for as long as the task
runs; ``current_worker()`` and ``task_context()`` read them and refuse to work anywhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """The worker a task runs on."""

    name: str
    url: str


class _TaskLocal(threading.local):
    worker: WorkerInfo | None = None
    context: dict[str, Any] | None = None


_local = _TaskLocal()

_OUTSIDE = "working outside of task context"


def current_worker() -> WorkerInfo:
    """The worker running the current task; ``RuntimeError`` outside a task."""
    worker = _local.worker
    if worker is None:
        raise RuntimeError(_OUTSIDE)
    return worker


def task_context() -> dict[str, Any]:
    """A dict private to the current task (gone when it ends); ``RuntimeError`` outside a task."""
    context = _local.context
    if context is None:
        raise RuntimeError(_OUTSIDE)
    return context


@contextmanager
def running_on(worker: WorkerInfo) -> Iterator[None]:
    """Install a fresh task context on this thread for the duration of a task."""
    _local.worker, _local.context = worker, {}
    try:
        yield
    finally:
        _local.worker = _local.context = None
