"""What the engine needs of a worker, and an in-process worker for tests and examples.

The scheduler only ever sees this :class:`Worker` protocol; HTTP workers (``bndl.local``,
``bndl.k8s``) and the in-process :class:`ThreadWorker` implement it. A :class:`WorkerSet` is the
live view of the workers a context can use, which :meth:`ExecutionContext.await_workers` watches.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bndl.execute.exceptions import TaskCancelled

if TYPE_CHECKING:
    from bndl.execute.job import Task


@dataclass(frozen=True, slots=True)
class Lane:
    """Runs that share ``slots`` on a worker: at most that many of them run at once there, the
    others wait in the worker's queue, in the order they came (the scheduler dispatches ahead).
    One lane per job and driver, named by the job's key."""

    name: str
    slots: int


def queues_ahead(worker: object) -> bool:
    """Whether ``worker`` keeps lanes: its ``run`` takes ``lane=`` and queues runs beyond the
    lane's slots (a ``queues_ahead = True`` attribute says so)."""
    return getattr(worker, "queues_ahead", False) is True


def pipelines(worker: object) -> bool:
    """Whether ``worker`` resolves a task's inputs when the task starts, not when it is sent
    (a ``pipelines = True`` attribute says so): a task may then be queued on it behind the runs
    that compute its inputs (see :mod:`bndl.execute.core`)."""
    return getattr(worker, "pipelines", False) is True


@runtime_checkable
class Worker(Protocol):
    """A place where tasks run. Methods must not block (except :meth:`call`)."""

    @property
    def name(self) -> str: ...

    @property
    def connected_on(self) -> float:
        """``time.monotonic()`` when the worker became available."""
        ...

    def run(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        keep: bool,
        reply: bool = True,
    ) -> Future[Any]:
        """Start ``fn(*args, **kwargs)``; keep the result under ``key`` when ``keep``.

        With ``reply=False`` the future's value is meaningless: only the outcome comes back and
        the result stays on the worker (workers that can send it later have ``fetch(key)``).
        """
        ...

    def cancel(self, key: str) -> None:
        """Stop the run of ``key`` (best effort; it completes with TaskCancelled)."""
        ...

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a small function on the worker and wait for its result (profiling, probes)."""
        ...

    def reference(self, dep: Task, holder: Worker | None) -> Any:
        """What stands in a task's arguments for the result of ``dep`` held by ``holder``."""
        ...

    def release(self, prefix: str) -> None:
        """Forget the results kept under keys starting with ``prefix`` (best effort)."""
        ...


class WorkerSet(Protocol):
    """The workers a context can use right now."""

    @property
    def workers(self) -> list[Worker]: ...

    @property
    def expected(self) -> int | None:
        """How many workers this set is meant to have (None: unknown)."""
        ...


class StaticWorkers:
    """A fixed list of workers."""

    def __init__(self, workers: Iterable[Worker]) -> None:
        self._workers = list(workers)

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    @property
    def expected(self) -> int | None:
        return len(self._workers)


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next Python bytecode.

    Returns False when no such thread is running. Blocking C calls delay the exception.
    """
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )
    if n > 1:  # pragma: no cover - would hit several threads: undo, as CPython's docs advise
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return bool(n == 1)


class _LaneQueue:
    """The runs of one lane on a :class:`ThreadWorker`: how many run, and those waiting."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.waiting: dict[str, tuple[Callable[[], None], Future[Any]]] = {}


class ThreadWorker:
    """A worker inside this process: each task runs on its own thread.

    For tests and the in-process example; it has no network and shares the driver's memory, so
    results are referenced directly. It always replies with the result (``reply`` is ignored),
    and keeps results run with ``keep`` until :meth:`release`, for :meth:`fetch`. It keeps
    lanes: runs beyond a lane's slots wait, in order, for a run of the lane to end.
    """

    queues_ahead = True

    def __init__(self, name: str) -> None:
        self._name = name
        self._connected_on = time.monotonic()
        self._lock = threading.Lock()
        self._threads: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._started: set[str] = set()
        self._kept: dict[str, Any] = {}
        self._lanes: dict[str, _LaneQueue] = {}
        self.runs = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected_on(self) -> float:
        return self._connected_on

    def run(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        keep: bool,
        reply: bool = True,
        lane: Lane | None = None,
    ) -> Future[Any]:
        future: Future[Any] = Future()
        self.runs += 1

        def body() -> None:
            try:
                work()
            finally:
                if lane is not None:
                    self._next_in(lane.name)

        def start() -> None:
            threading.Thread(target=body, name=f"task-{key}", daemon=True).start()

        def work() -> None:
            try:
                with self._lock:
                    self._started.add(key)
                    if key in self._cancelled:
                        self._cancelled.discard(key)
                        raise TaskCancelled(key)
                    self._threads[key] = threading.get_ident()
                try:
                    result = fn(*args, **kwargs)
                finally:
                    with self._lock:
                        self._threads.pop(key, None)
            except BaseException as e:  # a task's BaseException must not kill the worker
                future.set_exception(e)
            else:
                if keep:
                    with self._lock:
                        self._kept[key] = result
                future.set_result(result)

        if lane is not None:
            with self._lock:
                queue = self._lanes.setdefault(lane.name, _LaneQueue())
                if queue.running >= lane.slots:
                    queue.waiting[key] = (start, future)
                    return future
                queue.running += 1

        start()
        return future

    def _next_in(self, lane: str) -> None:
        """A run of ``lane`` ended: start the first waiting one, if any."""
        with self._lock:
            queue = self._lanes[lane]
            if queue.waiting:
                first = next(iter(queue.waiting))
                start, _ = queue.waiting.pop(first)
            else:
                queue.running -= 1
                if queue.running == 0:
                    del self._lanes[lane]
                return
        start()

    def withdraw(self, key: str) -> None:
        """Take run ``key`` out of its lane's queue if it waits there (it then fails with
        ``TaskCancelled``); a run that started goes on."""
        with self._lock:
            for queue in self._lanes.values():
                waiting = queue.waiting.pop(key, None)
                if waiting is not None:
                    waiting[1].set_exception(TaskCancelled(f"{key} was withdrawn"))
                    return

    def cancel(self, key: str) -> None:
        with self._lock:
            for queue in self._lanes.values():
                waiting = queue.waiting.pop(key, None)
                if waiting is not None:
                    waiting[1].set_exception(TaskCancelled(key))
                    return
            ident = self._threads.get(key)
            if ident is not None:
                raise_in_thread(ident, TaskCancelled)
            elif key not in self._started:  # the cancel won the race with the start
                self._cancelled.add(key)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def reference(self, dep: Task, holder: Worker | None) -> Any:
        return dep.result()

    def fetch(self, key: str) -> Any:
        """The result kept under ``key``; KeyError when there is none."""
        with self._lock:
            return self._kept[key]

    def release(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._kept if k.startswith(prefix)]:
                del self._kept[key]

    def __repr__(self) -> str:
        return f"<ThreadWorker {self._name}>"
