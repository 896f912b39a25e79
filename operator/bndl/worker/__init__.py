"""The worker: an aiohttp server that runs dispatched tasks, keeps their results for the driver
and for peers, and serves cancellation, health and profiling. Run it as ``python -m bndl.worker``.

Code running inside a task may call :func:`current_worker` and :func:`task_context`.
"""

from bndl.worker.announce import READY_PREFIX, Announcement, parse_ready_line
from bndl.worker.config import WorkerConfig
from bndl.worker.context import WorkerInfo, current_worker, task_context

__all__ = [
    "READY_PREFIX",
    "Announcement",
    "WorkerConfig",
    "WorkerInfo",
    "current_worker",
    "parse_ready_line",
    "task_context",
]
