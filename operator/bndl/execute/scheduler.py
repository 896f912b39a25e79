"""The thread-safe shell around the scheduler core for one job.

Events arrive on whatever thread completes a task's future (a worker's thread, the HTTP client's
event loop). The shell serialises them under one lock, feeds them to the pure
:class:`~bndl.execute.core.SchedulerCore`, and carries out its decisions: start a task on a
worker, stop a run, hand a task to the consumer (``done``), end the job. An event raised while
another is being handled on the same thread (a task that completes synchronously) is queued, not
handled recursively, so decisions are applied in order.

Runs are named by :func:`~bndl.execute.job.task_keys` (``"<job key>/<task id>.<attempt>"``,
see :mod:`bndl.execute.job`). A new driver adopts what an earlier one left on the workers with
``adopted``: a task whose result a worker holds is not run again (its result stays there), and
a run still going on a worker is attached to instead of started. A run that its worker no longer
knows (``RunNotFound``) is re-run, uncharged.

Dispatch ahead: with ``ahead`` each worker gets up to that many runs beyond its ``concurrency``
slots, queued on the worker, so it starts its next task without waiting a round trip for it.
The worker keeps the limit: every run of the job is sent in the job's :class:`Lane`, of
``concurrency`` slots. By default ``ahead`` is :data:`DEFAULT_AHEAD` (or ``concurrency`` when
that is more) when every worker keeps lanes (:func:`~bndl.execute.workers.queues_ahead`), else 0.
With one slot per worker, a task may also be queued behind the runs computing its inputs when
every worker resolves inputs as a task starts (:func:`~bndl.execute.workers.pipelines`; see
"pipelining" in :mod:`bndl.execute.core`).

When a task is charged ``max_worker_losses`` lost workers the job fails with
:class:`WorkerKilledByTask`; the shell then asks those workers why they were lost (an optional
``loss_cause()`` method of a worker: ``"exit code 3"``) and puts the answers in the error.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from functools import partial
from typing import Any

from bndl.execute import core
from bndl.execute.core import FailureKind, SchedulingError, TaskIds, WorkerKilledByTask
from bndl.execute.exceptions import DependenciesFailed, NotConnected, TaskCancelled
from bndl.execute.job import RmiTask, Task, parse_run_key, task_keys
from bndl.execute.workers import Lane, Worker, pipelines, queues_ahead

log = logging.getLogger(__name__)

__all__ = [
    "Adopted",
    "FailedDependency",
    "Scheduler",
    "SchedulingError",
    "WorkerKilledByTask",
    "parse_run_key",
    "root_exc",
]

DEFAULT_AHEAD = 16
"""Runs queued on each worker by default: enough to cover a round trip from the worker through
the driver and back for tasks of some tens of microseconds; longer tasks need fewer. Measured
with the workloads of ``bench/dispatch.py`` on 2 cores (median of 3, trivial tasks,
independent/chain): 4 gave 5,100/s and 3,500 hops/s, 8 gave 6,400/s and 3,800, 16 gave 7,800/s
and 5,000, 32 gave 13,600/s and 7,000. Deeper still pays for trivial tasks, but a queued run
holds its arguments on the worker and is placed (locality, priority) when it is queued, so the
default stays moderate; stealing moves queued runs to workers that would otherwise idle."""

# Seconds the shell waits, in all, for lost workers to say why they were lost.
LOSS_CAUSE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Adopted:
    """What a worker reported about a task of the job when the driver (re)started.

    ``running``: the run ``key`` still runs on ``worker``; else ``worker`` holds its result.
    """

    worker: str
    key: str
    running: bool


class FailedDependency(Exception):
    """Marks a task's output as lost; with ``worker``, that worker is lost too.

    ``task.mark_failed(FailedDependency())`` on a succeeded task makes the scheduler run it again
    before any of its dependents that still have to run.
    """

    def __init__(self, worker: str | None = None) -> None:
        super().__init__(worker)
        self.worker = worker


def _is_run_not_found(exc: BaseException) -> bool:
    """The worker does not know the run (``bndl.wire.errors.RunNotFound``; matched by name, so
    the engine needs no import of the wire protocol)."""
    return any(c.__name__ == "RunNotFound" for c in type(exc).__mro__)


def root_exc(exc: BaseException) -> BaseException:
    """The exception that a transport wrapper (remote invocation error) carries."""
    while getattr(exc, "wrapped_remote", False) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


Done = Callable[[Any], object]


class Scheduler:
    """Runs one job's tasks on ``workers``.

    ``done`` is called with each task on its first success, with an exception when the job fails,
    and finally with ``None``. ``max_worker_losses``: how many lost workers a task may be
    charged before the job fails (a per-task ``max_worker_losses`` overrides it). ``adopted``
    maps task ids to what workers reported about them (see the module docstring); entries for
    unknown tasks or workers are ignored. ``ahead``: runs queued on each worker beyond its
    ``concurrency`` (None: see the module docstring).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        done: Done,
        workers: Iterable[Worker],
        concurrency: int = 1,
        attempts: int = 1,
        *,
        wait_for_workers: bool = False,
        job_key: str | None = None,
        max_worker_losses: int = 3,
        adopted: Mapping[TaskIds, Adopted] | None = None,
        ahead: int | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("a job needs at least one task")
        self._workers: dict[str, Worker] = {}
        for w in workers:
            self._workers[w.name] = w
        if not self._workers and not wait_for_workers:
            raise SchedulingError("no workers available")
        self.tasks = list(tasks)
        self._tasks: dict[Hashable, Task] = {}
        for t in self.tasks:
            if t.id in self._tasks:
                raise ValueError(f"duplicate task id {t.id!r}")
            self._tasks[t.id] = t
        self.job_key = job_key or uuid.uuid4().hex[:12]
        self._done = done
        self._lock = threading.RLock()
        self._events: deque[tuple[Callable[..., list[core.Decision]], tuple[Any, ...]]] = deque()
        self._busy = False
        self._finished = threading.Event()
        self._detached = False
        self.error: BaseException | None = None
        held, running = self._adopt(adopted or {})
        if ahead is None:
            lanes = bool(self._workers) and all(map(queues_ahead, self._workers.values()))
            ahead = max(concurrency, DEFAULT_AHEAD) if lanes else 0
        self.lane = Lane(self.job_key, concurrency) if ahead else None
        pipeline = bool(self._workers) and all(map(pipelines, self._workers.values()))
        self._core = core.SchedulerCore(
            self._specs(pipeline),
            list(self._workers),
            concurrency=concurrency,
            attempts=attempts,
            locality=self._locality(list(self._workers.values())),
            succeeded=[t.id for t in self.tasks if t.succeeded and t.id not in held],
            wait_for_workers=wait_for_workers,
            max_worker_losses=max_worker_losses,
            held=held,
            running={tid: a.worker for tid, a in running.items()},
            ahead=ahead,
        )
        self._reattach = running
        keys = task_keys(self.job_key, [t.id for t in self.tasks])
        for t, key in zip(self.tasks, keys, strict=True):
            if isinstance(t, RmiTask):
                t.key = key
            t.add_listener(self._on_marked)

    def _adopt(
        self, adopted: Mapping[TaskIds, Adopted]
    ) -> tuple[dict[Hashable, str], dict[Hashable, Adopted]]:
        """Mark held results as succeeded on their workers; the held and the running tasks."""
        held: dict[Hashable, str] = {}
        running: dict[Hashable, Adopted] = {}
        for tid, a in adopted.items():
            task = self._tasks.get(tid)
            worker = self._workers.get(a.worker)
            if task is None or worker is None:
                log.debug("not adopting %r on %s: unknown task or worker", tid, a.worker)
                continue
            if not isinstance(task, RmiTask):
                raise ValueError(f"only an RmiTask can be adopted, not {task!r}")
            if a.running:
                running[tid] = a
            else:
                task.adopt_result(worker, a.key)
                held[tid] = a.worker
        return held, running

    def _specs(self, pipeline: bool) -> list[core.TaskSpec]:
        """The core's view of the tasks. With ``pipeline`` (every worker resolves inputs when a
        task starts), a task run on a worker whose inputs are all results of such tasks may be
        queued behind the runs computing them."""
        specs = []
        for t in self.tasks:
            deps = []
            for d in t.dependencies:
                if d.id in self._tasks and self._tasks[d.id] is d:
                    deps.append(d.id)
                elif not d.succeeded:
                    raise ValueError(
                        f"{t!r} depends on {d!r}, which is not part of the job and has not "
                        "succeeded: add it to the job"
                    )
            queued_behind = pipeline and isinstance(t, RmiTask)
            if queued_behind:
                queued_behind = all(isinstance(d, RmiTask) for d in t.dependencies)
            specs.append(
                core.TaskSpec(
                    t.id, deps, t.priority, t.max_attempts, t.max_worker_losses, queued_behind
                )
            )
        return specs

    def _locality(self, workers: list[Worker]) -> dict[Hashable, dict[str, float]]:
        locality: dict[Hashable, dict[str, float]] = {}
        for t in self.tasks:
            for worker, value in t.locality(workers):
                if worker.name not in self._workers:
                    raise ValueError(f"{t!r} gave a locality for unknown worker {worker.name!r}")
                if value:
                    locality.setdefault(t.id, {})[worker.name] = value
        return locality

    # --------------------------------------------------------------------------- public API

    def start(self) -> None:
        """Dispatch the first tasks; returns at once."""
        self._feed(self._core.start)

    def run(self) -> None:
        """Start and wait until the job finished, failed or was aborted."""
        self.start()
        self._finished.wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def abort(self, exc: BaseException | None = None) -> None:
        """Cancel every running task and start nothing more."""
        if exc is not None and self.error is None:
            self.error = exc
        self._feed(self._core.cancel)

    def add_worker(self, worker: Worker) -> None:
        """A worker joined (or came back)."""
        with self._lock:
            self._workers[worker.name] = worker
        locality = {t.id: v for t in self.tasks for w, v in t.locality([worker]) if v}
        self._feed(self._core.worker_added, worker.name, locality)

    def lose_worker(self, name: str, charge: bool = True) -> None:
        """A worker is gone: its runs are abandoned and run elsewhere.

        With ``charge`` each task running there is charged a worker loss; pass False when the
        worker was removed on purpose (its pod deleted or scaled away), not by a task.
        """
        self._feed(partial(self._core.worker_lost, charge=charge), name)

    def lane_on(self, worker: Worker) -> Lane | None:
        """The lane the job's runs on ``worker`` go in (None: the worker runs what it gets)."""
        return self.lane if self.lane is not None and queues_ahead(worker) else None

    def holder_of(self, task: Task) -> Worker | None:
        """The worker that holds the output of ``task``, or will (it runs there)."""
        name = self._core.source(task.id)
        return self._workers.get(name) if name is not None else None

    def counts(self) -> core.Counts:
        with self._lock:
            return self._core.counts()

    @property
    def workers(self) -> list[Worker]:
        with self._lock:
            return [self._workers[n] for n in self._core.workers]

    # ------------------------------------------------------------------------------ events

    def detach(self) -> None:
        """Leave the job to another driver: from now on nothing is dispatched, cancelled,
        reported or released. The workers keep what they run and hold, for the next driver to
        adopt (an operator that stops for an upgrade or loses its leadership)."""
        with self._lock:
            self._detached = True
            self._events.clear()
        for t in self.tasks:
            t.remove_listener(self._on_marked)

    @property
    def detached(self) -> bool:
        return self._detached

    def _feed(self, handler: Callable[..., list[core.Decision]], *args: Any) -> None:
        with self._lock:
            if self._detached:
                return
            self._events.append((handler, args))
            if self._busy:
                return
            self._busy = True
            try:
                while self._events and not self._detached:
                    handler, args = self._events.popleft()
                    if self._finished.is_set():
                        continue
                    try:
                        decisions = handler(*args)
                    except Exception as e:  # a bug in the core must end the job, not hang it
                        log.exception("scheduler failed")
                        decisions = [*self._core.cancel(), core.Failed(e)]
                    self._apply(decisions)
            finally:
                self._busy = False

    def _apply(self, decisions: list[core.Decision]) -> None:
        for d in decisions:
            kind = type(d)
            if kind is core.Dispatch:
                self._dispatch(d)  # type: ignore[arg-type]
            elif kind is core.Emit:
                self._done(self._tasks[d.task])  # type: ignore[union-attr]
            elif kind is core.Cancel:
                self._tasks[d.task].stop_run()  # type: ignore[union-attr]
            elif kind is core.Withdraw:
                self._tasks[d.task].withdraw_run()  # type: ignore[union-attr]
            elif kind is core.Finished:
                self._close(None)
            elif kind is core.Failed:
                error = d.error  # type: ignore[union-attr]
                if isinstance(error, WorkerKilledByTask):
                    self._explain(error)
                self._close(error)
            elif kind is core.Cancelled:
                self._close(self.error or CancelledError("the job was cancelled"))

    def _dispatch(self, d: core.Dispatch) -> None:
        task = self._tasks[d.task]
        worker = self._workers[d.worker]
        if task.pending:
            # The core abandoned the previous run (its worker was lost) before that run's future
            # completed: detach it. When it completes, its run number is stale and ignored.
            task.future = None
        adopted = self._reattach.pop(d.task, None) if d.run == 1 else None
        try:
            if adopted is not None and adopted.worker == d.worker:
                task.attach(self, worker, adopted.key)
            else:
                task.execute(self, worker)
            future = task.future
            if future is None:
                raise RuntimeError(f"{type(task).__name__}.execute installed no future")
        except CancelledError:
            if self.error is None:
                self.error = SchedulingError(f"{task!r} was cancelled and cannot run", d.task)
            self._events.append((self._core.cancel, ()))
            return
        except Exception as e:
            self._events.append((self._core.task_failed, (d.task, d.run, e, FailureKind.ERROR)))
            return
        future.add_done_callback(partial(self._on_run_done, d.task, d.run))

    def _on_run_done(self, task_id: Hashable, run: int, future: Future[Any]) -> None:
        if future.cancelled():
            self._feed(self._core.task_failed, task_id, run, CancelledError(), FailureKind.REQUEUE)
            return
        exc = future.exception()
        if exc is None:
            self._feed(self._core.task_succeeded, task_id, run)
            return
        root = root_exc(exc)
        if _is_run_not_found(root):
            self._feed(self._core.task_failed, task_id, run, exc, FailureKind.REQUEUE)
        elif isinstance(root, NotConnected):
            if root.timed_out:
                # Maybe only busy: lost (its runs go elsewhere), but nothing is charged.
                self._feed(partial(self._core.worker_lost, charge=False), root.worker)
                self._feed(self._core.task_failed, task_id, run, exc, FailureKind.REQUEUE)
            else:
                self._feed(self._core.task_failed, task_id, run, exc, FailureKind.LOST)
        elif isinstance(root, TaskCancelled):
            # Not a cancel of ours (those runs are abandoned, their outcomes ignored): the worker
            # is shutting down (its pod deleted or scaled away). Not the task's fault.
            self._feed(self._core.task_failed, task_id, run, exc, FailureKind.REQUEUE)
        elif isinstance(root, DependenciesFailed):
            self._feed(self._core.dependencies_failed, task_id, run, root.failures)
        elif isinstance(root, FailedDependency):
            if root.worker is not None:
                self._feed(self._core.worker_lost, root.worker)
            self._feed(self._core.task_failed, task_id, run, exc, FailureKind.REQUEUE)
        else:
            self._feed(self._core.task_failed, task_id, run, exc, FailureKind.ERROR)

    def _on_marked(self, task: Task) -> None:
        """A task was marked done or failed from outside a run."""
        if task.failed:
            root = root_exc(task.exception())  # type: ignore[arg-type]
            if isinstance(root, FailedDependency):
                if root.worker is not None:
                    self._feed(self._core.worker_lost, root.worker)
                self._feed(self._core.output_lost, task.id)

    def _explain(self, error: WorkerKilledByTask) -> None:
        """Ask the lost workers why they were lost (in parallel, within a deadline)."""
        probes: dict[str, Callable[[], str | None]] = {}
        for name in error.workers:
            probe = getattr(self._workers.get(name), "loss_cause", None)
            if callable(probe) and name not in probes:
                probes[name] = probe
        if not probes:
            return
        pool = ThreadPoolExecutor(len(probes), thread_name_prefix="bndl-loss-cause")
        try:
            asked = {name: pool.submit(probe) for name, probe in probes.items()}
            wait_futures(asked.values(), timeout=LOSS_CAUSE_TIMEOUT)
        finally:
            pool.shutdown(wait=False)
        causes: dict[str, str] = {}
        for name, future in asked.items():
            if not future.done():
                continue
            try:
                cause = future.result()
            except Exception as e:  # a probe that fails says nothing; the error stands
                log.debug("loss_cause of %s failed: %s", name, e)
                continue
            if cause:
                causes[name] = str(cause)
        error.add_causes(causes)

    def _close(self, error: BaseException | None) -> None:
        if self._finished.is_set():
            return
        if error is not None and self.error is None:
            self.error = error
        for t in self.tasks:
            t.remove_listener(self._on_marked)
        self._finished.set()
        try:
            if error is not None:
                self._done(error)
            self._done(None)
        finally:
            self._release_results()

    def _release_results(self) -> None:
        prefix = self.job_key + "/"
        log.info(
            "job %s ended: releasing its results on %d workers", self.job_key, len(self._workers)
        )
        for worker in self._workers.values():
            try:
                worker.release(prefix)
            except Exception:  # best effort: a gone worker holds nothing
                log.debug("release on %s failed", worker.name, exc_info=True)
