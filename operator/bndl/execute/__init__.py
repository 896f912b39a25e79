"""The execution engine: jobs of tasks, a pure scheduler core and the shells that drive it.

Configuration keys (read at the start of each job; per-call arguments override them):

- ``bndl.execute.concurrency`` (int, default 1): tasks of one job running at once on one worker.
- ``bndl.execute.attempts`` (int, default 1): ordinary failures a task may have before the job
  fails.
- ``bndl.execute.max_worker_losses`` (int, default 3): lost workers a task may be charged (it was
  running on them when they were lost) before the job fails with ``WorkerKilledByTask``.
- ``bndl.execute.ahead`` (int or None, default None): tasks of one job queued on a worker beyond
  its ``concurrency`` slots, so it never waits a round trip for its next task; None means 16 (or
  ``concurrency`` if more) on workers that keep a queue, 0 turns queueing off. With
  ``concurrency`` 1, a task may be queued behind the runs on one worker that compute its inputs
  (pipelining: a chain runs on one worker without a round trip per hop).
"""

from bndl.execute.exceptions import DependenciesFailed, TaskCancelled

CONCURRENCY = "bndl.execute.concurrency"
ATTEMPTS = "bndl.execute.attempts"
MAX_WORKER_LOSSES = "bndl.execute.max_worker_losses"
AHEAD = "bndl.execute.ahead"

__all__ = [
    "AHEAD",
    "ATTEMPTS",
    "CONCURRENCY",
    "MAX_WORKER_LOSSES",
    "DependenciesFailed",
    "TaskCancelled",
]
