"""Jobs and tasks: what the caller builds and the scheduler runs.

A :class:`Job` is a list of :class:`Task` objects whose ``dependencies``/``dependents`` sets form a
DAG. A task's state lives in its ``future``; the scheduler attaches to the future it installs in
:meth:`Task.execute`, so a task may complete on any thread. :class:`RmiTask` runs a Python callable
on a worker; :class:`ResultOf` inside its arguments stands for the result of another task.

Run keys name a run of an :class:`RmiTask` on its worker (the worker keeps the result under it):
``"<job key>/<task id>.<attempt>"``, e.g. ``"1a2b3c4d.x7/reduce-0.2"``. The task id appears as
is when every task id of the job is a string of letters, digits, ``-``, ``_`` and ``.`` (the
ids of a BndlJob manifest), else every task is named by its position in the job. The job key
contains no ``/``. So a driver that knows the job's key prefix maps a key a worker reports back
to its task (:func:`parse_run_key`), also a key made by an earlier driver with another job key.

Results need not come back to the driver: an RmiTask with ``reply=False`` leaves its result on
its worker, and :meth:`RmiTask.result` fetches it from there on each call (nothing is cached, so
the driver's memory does not grow with the job's data). Such results live as long as the worker
keeps them, which is until the job ends.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from bndl.execute.context import ExecutionContext
    from bndl.execute.core import Counts
    from bndl.execute.workers import Lane, Worker

_job_ids = itertools.count(1)


class SchedulerHandle(Protocol):
    """What a task may ask of the scheduler that runs it."""

    def holder_of(self, task: Task) -> Worker | None:
        """The worker holding ``task``'s output in this job (None: not computed by it)."""

    def lane_on(self, worker: Worker) -> Lane | None:
        """The lane of the job's runs on ``worker`` (None: the worker runs what it gets)."""


@dataclass(frozen=True, slots=True)
class ResultOf:
    """Stands for the result of task ``task_id`` anywhere inside an :class:`RmiTask`'s arguments.

    The task must also be among the RmiTask's dependencies. On a worker it is replaced by the
    value, fetched from the worker that computed it.
    """

    task_id: Hashable


class Job:
    """A set of tasks executed together by :meth:`ExecutionContext.execute`."""

    def __init__(
        self,
        ctx: ExecutionContext | None,
        tasks: Sequence[Task] | None = None,
        name: str | None = None,
        desc: str | None = None,
    ) -> None:
        self.id = next(_job_ids)
        self.ctx = ctx
        self.tasks: list[Task] = list(tasks or ())
        self.name = name or f"job {self.id}"
        self.desc = desc
        self._groups: dict[str, list[Task]] = {}
        self.counter: Callable[[], Counts] | None = None  # set while (and after) it executes

    def counts(self) -> Counts | None:
        """Progress of the job's latest execution: done, running, retried, recomputed..."""
        return self.counter() if self.counter is not None else None

    def group(self, name: str) -> list[Task]:
        """The tasks whose ``group`` is ``name``."""
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = [t for t in self.tasks if t.group == name]
        return group

    def cancel(self) -> None:
        """Cancel every task that has not finished."""
        for task in self.tasks:
            task.cancel()

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name!r} tasks={len(self.tasks)}>"


class Task:
    """One unit of work; subclasses implement :meth:`execute`.

    ``priority``: lower runs first among ready tasks; None means the task's position in the job.
    Add dependencies with :meth:`depends_on` (it keeps both directions in step).
    """

    def __init__(
        self,
        ctx: ExecutionContext | None,
        task_id: Hashable,
        *,
        priority: Any = None,
        name: str | None = None,
        desc: str | None = None,
        group: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.id = task_id
        self.priority = priority
        self.name = name or f"task {_format_id(task_id)}"
        self.desc = desc or f"unknown task {_format_id(task_id)}"
        self.group = group
        self.future: Future[Any] | None = None
        self.dependencies: set[Task] = set()
        self.dependents: set[Task] = set()
        self.executed_on: list[str] = []
        self.attempts = 0  # executions so far
        self.max_attempts: int | None = None  # ordinary failures allowed (None: the job's)
        self.max_worker_losses: int | None = None  # charged worker losses (None: the job's)
        self.cancelled = False
        self._kept: Future[Any] | None = None  # first successful run, kept across re-runs
        self._listeners: list[Callable[[Task], None]] = []

    # -------------------------------------------------------------------------- dependencies

    def depends_on(self, *tasks: Task) -> Self:
        """Make this task depend on ``tasks``; returns self."""
        for task in tasks:
            self.dependencies.add(task)
            task.dependents.add(self)
        return self

    # ---------------------------------------------------------------------------- execution

    def execute(self, scheduler: SchedulerHandle, worker: Worker) -> None:
        """Start the task on ``worker``: call :meth:`set_executing`, install ``self.future``.

        Must not block; the future completes (on any thread) when the work is done.
        """
        raise NotImplementedError

    def attach(self, scheduler: SchedulerHandle, worker: Worker, key: str) -> None:
        """Take over the run ``key`` that an earlier driver started on ``worker``.

        Like :meth:`execute`, it must install ``self.future`` without blocking.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot attach to run {key!r}")

    def locality(self, workers: Iterable[Worker]) -> Iterable[tuple[Worker, float]]:
        """(worker, locality) pairs: 0 indifferent, negative forbidden, positive preferred."""
        return ()

    def set_executing(self, worker: Worker) -> None:
        if self.cancelled:
            raise CancelledError(f"{self!r} was cancelled")
        if self.pending:
            raise RuntimeError(f"{self!r} is already executing")
        if self.succeeded:
            self._kept = self.future
        self.executed_on.append(worker.name)
        self.attempts += 1

    # -------------------------------------------------------------------------------- state

    @property
    def started(self) -> bool:
        return self.future is not None

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    @property
    def pending(self) -> bool:
        return self.future is not None and not self.future.done()

    @property
    def succeeded(self) -> bool:
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None

    @property
    def failed(self) -> bool:
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is not None

    def mark_done(self, result: Any = None) -> None:
        """Complete the task with ``result`` unless it is done already."""
        if self.done:
            return
        future: Future[Any] = Future()
        future.set_result(result)
        self.future = future
        self._signal_stop()

    def mark_failed(self, exc: BaseException) -> None:
        """Fail the task with ``exc`` (for example ``FailedDependency()``: its output is lost)."""
        future: Future[Any] = Future()
        future.set_exception(exc)
        self.future = future
        self._signal_stop()

    def result(self) -> Any:
        """The task's result (blocks until available); raises the task's exception."""
        future = self._result_future()
        if future is None:
            raise RuntimeError(f"{self!r} has not been executed")
        return future.result()

    def exception(self) -> BaseException | None:
        future = self._result_future()
        if future is None:
            raise RuntimeError(f"{self!r} has not been executed")
        return future.exception()

    def _result_future(self) -> Future[Any] | None:
        f = self.future
        if self._kept is not None and not (f is not None and f.done() and self.succeeded):
            return self._kept
        return f

    def executed_on_last(self) -> str | None:
        return self.executed_on[-1] if self.executed_on else None

    def cancel(self) -> None:
        """Cancel the task: stop it if it is running, and never run it again."""
        if not self.done:
            self.cancelled = True
        self.stop_run()

    def stop_run(self) -> None:
        """Stop the current run, if any, without cancelling the task (best effort)."""

    def withdraw_run(self) -> None:
        """Take the current run back from its worker's queue if it has not started there (it
        then ends with ``TaskCancelled``); a run that started goes on. Best effort."""

    def release(self) -> None:
        """Drop references to other tasks after the job, keeping the result."""
        self.dependencies = set()
        self.dependents = set()
        del self.executed_on[:-1]
        self._listeners.clear()

    # ------------------------------------------------------------------------------ signals

    def add_listener(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener(task)`` when the task is marked done or failed from outside a run."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Task], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _signal_stop(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    def __repr__(self) -> str:
        state = ""
        if self.failed:
            state = " failed"
        elif self.done:
            state = " done"
        elif self.pending:
            state = " pending"
        return f"<{type(self).__name__} {_format_id(self.id)}{state}>"


class _OnWorker:
    """What a run's future holds when its result stayed on the worker: where to fetch it."""

    __slots__ = ("key", "worker")

    def __init__(self, worker: Worker, key: str) -> None:
        self.worker = worker
        self.key = key

    def fetch(self) -> Any:
        fetch = getattr(self.worker, "fetch", None)
        if not callable(fetch):
            raise RuntimeError(
                f"the result of run {self.key} stays on worker {self.worker.name}, which cannot "
                "send it to the driver (it has no fetch)"
            )
        return fetch(self.key)

    def __repr__(self) -> str:
        return f"<result of {self.key} on worker {self.worker.name}>"


class _Completed(Future[Any]):
    """A future done from birth, without a lock of its own.

    A job keeps one future per task until it ends; ``Future()`` allocates a ``threading.Condition``
    (about 1.5 KB), which made 100,000 finished tasks cost 150 MB. Nobody ever waits on a finished
    future, so these share one condition.
    """

    def __init__(self, value: Any) -> None:  # no Future.__init__: no condition of its own
        self._condition = _SHARED_CONDITION
        self._state = _FINISHED
        self._result = value
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []


_SHARED_CONDITION = threading.Condition()
_FINISHED = "FINISHED"  # concurrent.futures' state of a future that has its result


def _settle(task: RmiTask, worker: Worker, key: str, reply: bool, run: Future[Any]) -> None:
    """Once ``run`` succeeded, the task keeps a light completed future instead of it: the value,
    or where to fetch it (:class:`_OnWorker`) when it stayed on the worker."""
    if task.future is not run or run.cancelled() or run.exception() is not None:
        return
    task.future = _Completed(run.result() if reply else _OnWorker(worker, key))


class RmiTask(Task):
    """Runs ``method(*args, **kwargs)`` on a worker.

    ``method`` and its arguments travel with cloudpickle, so the worker needs the modules they
    refer to. :class:`ResultOf` markers in ``args``/``kwargs`` are replaced by those results.

    ``keep``: the worker keeps the result after the run (None: when the task has dependents).
    ``reply``: the result is sent back to the driver; with False only the outcome is, the worker
    keeps the result (whatever ``keep`` says) and :meth:`result` fetches it from there.
    """

    def __init__(
        self,
        ctx: ExecutionContext | None,
        task_id: Hashable,
        method: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: Any = None,
        name: str | None = None,
        desc: str | None = None,
        group: str | None = None,
    ) -> None:
        super().__init__(
            ctx,
            task_id,
            priority=priority,
            name=name or getattr(method, "__name__", None),
            desc=desc,
            group=group,
        )
        self.method = method
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.key: str = ""  # set by the scheduler: unique in the job, prefixed by the job's key
        self.run_key: str = ""  # the key of the latest run: where its worker keeps the result
        self.keep: bool | None = None
        self.reply: bool = True
        self._worker: Worker | None = None
        self._has_refs = _contains_refs(self.args) or _contains_refs(self.kwargs)

    def execute(self, scheduler: SchedulerHandle, worker: Worker) -> None:
        self.set_executing(worker)
        args: Any = self.args
        kwargs: Any = self.kwargs
        if self._has_refs:
            deps = {d.id: d for d in self.dependencies}

            def resolve(ref: ResultOf) -> Any:
                dep = deps.get(ref.task_id)
                if dep is None:
                    raise ValueError(
                        f"{self!r} uses the result of {ref.task_id!r} without depending on it"
                    )
                return worker.reference(dep, scheduler.holder_of(dep))

            args = _replace_refs(args, resolve)
            kwargs = _replace_refs(kwargs, resolve)
        self._worker = worker
        self.run_key = key = f"{self.key or _format_id(self.id)}.{self.attempts}"
        keep = self.keep if self.keep is not None else bool(self.dependents)
        options: dict[str, Any] = {} if self.reply else {"reply": False}
        lane = scheduler.lane_on(worker)
        if lane is not None:
            options["lane"] = lane
        run = worker.run(key, self.method, args, kwargs, keep or not self.reply, **options)
        self.future = run
        run.add_done_callback(partial(_settle, self, worker, key, self.reply))

    def attach(self, scheduler: SchedulerHandle, worker: Worker, key: str) -> None:
        """Take over run ``key`` on ``worker`` through ``worker.attach(key, reply)``."""
        attach = getattr(worker, "attach", None)
        if not callable(attach):
            raise NotImplementedError(f"worker {worker.name} cannot attach to run {key!r}")
        self.set_executing(worker)
        self._worker = worker
        self.run_key = key
        run: Future[Any] = attach(key, self.reply)
        self.future = run
        run.add_done_callback(partial(_settle, self, worker, key, self.reply))

    def adopt_result(self, worker: Worker, key: str) -> None:
        """The result of this task is on ``worker`` under ``key`` (computed by another driver)."""
        self.future = _Completed(_OnWorker(worker, key))
        self._worker = worker
        self.run_key = key
        self.executed_on.append(worker.name)

    def result(self) -> Any:
        """The task's result; one its worker kept is fetched from there (on every call)."""
        value = super().result()
        if isinstance(value, _OnWorker):
            return value.fetch()
        return value

    def stop_run(self) -> None:
        if self.pending and self._worker is not None:
            self._worker.cancel(self.run_key)

    def withdraw_run(self) -> None:
        withdraw = getattr(self._worker, "withdraw", None)
        if self.pending and callable(withdraw):
            withdraw(self.run_key)

    def release(self) -> None:
        super().release()
        self._worker = None


_KEY_ID = re.compile(r"[A-Za-z0-9_.-]+\Z")


def task_keys(job_key: str, task_ids: Sequence[Hashable]) -> list[str]:
    """The keys of a job's tasks (a run key adds ``.<attempt>``); see the module docstring."""
    if "/" in job_key:
        raise ValueError(f"a job key may not contain '/': {job_key!r}")
    if all(isinstance(t, str) and _KEY_ID.match(t) for t in task_ids):
        return [f"{job_key}/{t}" for t in task_ids]
    return [f"{job_key}/{n}" for n in range(len(task_ids))]


def parse_run_key(job_key_prefix: str, key: str) -> str | None:
    """The task id part of run ``key`` when its job key starts with ``job_key_prefix``, else None.

    ``parse_run_key("1a2b3c4d", "1a2b3c4d.x7/reduce-0.2") == "reduce-0"``. For a job whose
    tasks are named by position, the position comes back as a string.
    """
    job, slash, run = key.partition("/")
    if not slash or not job.startswith(job_key_prefix):
        return None
    task, dot, attempt = run.rpartition(".")
    if not dot or not task or not attempt.isdigit() or not _KEY_ID.match(task):
        return None
    return task


def _format_id(task_id: Hashable) -> str:
    if isinstance(task_id, tuple):
        return ".".join(map(str, task_id))
    return str(task_id)


def _contains_refs(value: Any) -> bool:
    if isinstance(value, ResultOf):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_refs(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_refs(v) for v in value.values())
    return False


def _replace_refs(value: Any, resolve: Callable[[ResultOf], Any]) -> Any:
    if isinstance(value, ResultOf):
        return resolve(value)
    if isinstance(value, list):
        return [_replace_refs(v, resolve) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace_refs(v, resolve) for v in value)
    if isinstance(value, dict):
        return {k: _replace_refs(v, resolve) for k, v in value.items()}
    return value
