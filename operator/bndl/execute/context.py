"""The caller's entry point: run jobs on the workers of a context and wait for workers."""

from __future__ import annotations

import itertools
import queue
import time
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from bndl.execute import AHEAD, ATTEMPTS, CONCURRENCY, MAX_WORKER_LOSSES
from bndl.execute.job import Job, Task
from bndl.execute.profile import CpuProfiling, MemoryProfiling
from bndl.execute.scheduler import Scheduler
from bndl.execute.workers import StaticWorkers, Worker, WorkerSet

DEFAULTS: dict[str, Any] = {CONCURRENCY: 1, ATTEMPTS: 1, MAX_WORKER_LOSSES: 3, AHEAD: None}

# How many finished jobs a context remembers (the original kept every job forever).
RECENT_JOBS = 100


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}") from e
    if number < 1 or (number != value and not isinstance(value, str)):
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return number


class ExecutionContext:
    """Runs jobs on a set of workers.

    ``workers`` is a :class:`WorkerSet` (a live view, e.g. a local cluster or the pods of a
    StatefulSet) or a fixed iterable of workers. ``config`` holds ``bndl.execute.*`` keys; the
    context keeps its own copy.
    """

    def __init__(
        self,
        workers: WorkerSet | Iterable[Worker] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if workers is None:
            workers = StaticWorkers(())
        elif not hasattr(workers, "expected"):
            workers = StaticWorkers(workers)
        self._source: WorkerSet = workers  # type: ignore[assignment]
        self.conf: dict[str, Any] = dict(DEFAULTS)
        self.conf.update(config or {})
        self.jobs: deque[Job] = deque(maxlen=RECENT_JOBS)
        self.running = True

    # ------------------------------------------------------------------------------ workers

    @property
    def workers(self) -> list[Worker]:
        """The workers connected right now."""
        return self._source.workers

    @property
    def worker_count(self) -> int:
        """How many workers are connected; waits for workers when there are none."""
        count = len(self.workers)
        return count if count else self.await_workers()

    def await_workers(
        self,
        worker_count: int | None = None,
        connect_timeout: float | timedelta = 5,
        stable_timeout: float | timedelta = 60,
    ) -> int:
        """Wait until the set of workers is complete or stable; return how many there are.

        With ``worker_count``: returns as soon as that many are connected, and raises
        :class:`RuntimeError` when they are not there within ``stable_timeout`` (the original
        returned fewer silently). Without it: returns when the worker set has its expected size,
        or when no worker connected for a while: after one recent connect, ``connect_timeout``
        seconds; after several, twice the largest gap between them (at least one second). A set
        still changing after ``stable_timeout`` gives a warning and the current count. No worker
        within ``connect_timeout`` raises :class:`RuntimeError`.
        """
        connect = _seconds(connect_timeout)
        stable = _seconds(stable_timeout)
        start = time.monotonic()
        expected = worker_count if worker_count is not None else self._source.expected
        delay = 0.01
        while True:
            workers = self.workers
            count = len(workers)
            now = time.monotonic()
            if expected is not None and count >= expected and (count or expected == 0):
                return count
            if count == 0:
                if now - start >= connect:
                    raise RuntimeError(
                        f"no workers available after {connect:g} s: are the workers running "
                        "and reachable?"
                    )
            elif worker_count is not None:
                if now - start >= stable:
                    raise RuntimeError(
                        f"only {count} of {worker_count} workers connected after {stable:g} s"
                    )
            else:
                if self._stable(workers, start, now, connect, stable):
                    return count
                if now - start >= stable:
                    warnings.warn(
                        f"worker count not stable after {stable:g} s; continuing with {count}",
                        stacklevel=2,
                    )
                    return count
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    @staticmethod
    def _stable(
        workers: list[Worker], start: float, now: float, connect: float, stable: float
    ) -> bool:
        recent = sorted(w.connected_on for w in workers if w.connected_on > start - stable)
        if not recent:
            return True
        if len(recent) == 1:
            return now - recent[0] > connect
        gap = max(b - a for a, b in itertools.pairwise(recent))
        return now - recent[-1] > max(2 * gap, 1.0)

    # ---------------------------------------------------------------------------- execution

    def execute(
        self,
        job: Job,
        workers: Iterable[Worker] | None = None,
        order_results: bool = True,
        concurrency: int | None = None,
        attempts: int | None = None,
        max_worker_losses: int | None = None,
        ahead: int | None = None,
    ) -> Generator[Task, None, None]:
        """Run ``job``; yields each task exactly once, after it succeeded.

        In ``job.tasks`` order when ``order_results``, else in completion order. Read results
        with ``task.result()``. A task failing ``attempts`` times, or a job that cannot complete,
        raises from the generator; so does a task running on ``max_worker_losses`` workers that
        were lost (:class:`~bndl.execute.core.WorkerKilledByTask`). Closing the generator early
        cancels what still runs. ``ahead``: tasks queued on each worker beyond ``concurrency``
        (see ``bndl.execute.ahead``).
        """
        if not self.running:
            raise RuntimeError("the execution context was stopped")
        concurrency = _positive(
            "concurrency", concurrency if concurrency is not None else self.conf[CONCURRENCY]
        )
        attempts = _positive("attempts", attempts if attempts is not None else self.conf[ATTEMPTS])
        max_worker_losses = _positive(
            "max_worker_losses",
            max_worker_losses if max_worker_losses is not None else self.conf[MAX_WORKER_LOSSES],
        )
        if ahead is None:
            ahead = self.conf.get(AHEAD)
        if ahead is not None and (
            not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 0
        ):
            raise ValueError(f"ahead must be a whole number of at least 0 or None, not {ahead!r}")
        if workers is None:
            self.await_workers()
            workers = self.workers
        if not job.tasks:
            return
        self.jobs.append(job)
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        scheduler = Scheduler(
            job.tasks,
            results.put,
            workers,
            concurrency,
            attempts,
            max_worker_losses=max_worker_losses,
            ahead=ahead,
        )
        job.counter = scheduler.counts
        scheduler.start()
        try:
            if order_results:
                yield from self._ordered(job, results)
            else:
                yield from self._unordered(results)
        finally:
            if not scheduler.finished:
                scheduler.abort()

    @staticmethod
    def _unordered(results: queue.SimpleQueue[Any]) -> Iterator[Task]:
        while True:
            item = results.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    @staticmethod
    def _ordered(job: Job, results: queue.SimpleQueue[Any]) -> Iterator[Task]:
        position = {id(t): n for n, t in enumerate(job.tasks)}
        buffered: dict[int, Task] = {}
        following = 0
        total = len(job.tasks)
        while following < total:
            item = results.get()
            if item is None:
                raise RuntimeError(
                    f"the job ended before task {job.tasks[following]!r} was yielded"
                )
            if isinstance(item, BaseException):
                raise item
            buffered[position[id(item)]] = item
            while following in buffered:
                yield buffered.pop(following)
                following += 1

    # ------------------------------------------------------------------------------ profiling

    @property
    def cpu_profiling(self) -> CpuProfiling:
        return CpuProfiling(self)

    @property
    def memory_profiling(self) -> MemoryProfiling:
        return MemoryProfiling(self)

    def stop(self) -> None:
        self.running = False
