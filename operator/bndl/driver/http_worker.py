"""A remote worker process as the scheduler sees it (the ``Worker`` protocol over HTTP).

Besides the ``Worker`` protocol it offers what a driver needs to adopt a worker after a restart:
:meth:`HttpWorker.held` (what the worker holds, runs and finished for nobody),
:meth:`HttpWorker.attach` (the outcome of a run started by an earlier driver) and
:meth:`HttpWorker.fetch` (a kept result).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from bndl.driver.loop import IoLoop
from bndl.execute.exceptions import NotConnected
from bndl.execute.job import RmiTask, Task
from bndl.execute.workers import Lane, Worker
from bndl.wire import Completion, Held, RemoteRef, TaskItem, WorkerClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a synchronous call (profiling, probes) may take before it counts as failed.
CALL_TIMEOUT = 60.0


class HttpWorker:
    """Runs tasks on a worker process through its :class:`WorkerClient`.

    Results come back with each completion (the driver hands them to the caller) and, for tasks
    with dependents, stay on the worker for peers to fetch.
    """

    queues_ahead = True
    """Runs sent with a lane wait on the worker for a slot of their lane (dispatch ahead)."""

    pipelines = True
    """The worker resolves a task's inputs (its ``RemoteRef`` arguments) when the task starts,
    in the order its lane runs them: a task may be sent behind the runs computing its inputs."""

    loss_cause: Callable[[], str | None] | None = None
    """Why the worker died, if whoever watches its process or pod knows (the local cluster sets
    it, say, to report an exit code or signal); the scheduler reads it when it charges a task
    with worker losses. ``None``, or a callable answering ``None``: the cause is unknown."""

    def __init__(
        self, client: WorkerClient, loop: IoLoop, labels: Mapping[str, str] | None = None
    ) -> None:
        self.client = client
        self._loop = loop
        self.labels: dict[str, str] = dict(labels or {})  # its node's labels, for locality
        self._connected_on = time.monotonic()
        self._inflight: set[Future[Any]] = set()

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def url(self) -> str:
        return self.client.url

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
        """Run a task; the future resolves to its value (``None`` with ``reply=False``, which
        leaves a successful result out of the completion: use with ``keep``) or its exception,
        ``NotConnected`` when the worker is lost. With a ``lane`` the run waits on the worker
        while the lane's slots are taken."""
        item = TaskItem(key, fn, tuple(args), dict(kwargs), keep, reply)
        if lane is not None:
            item.lane, item.slots = lane.name, lane.slots
        future: Future[Any] = Future()
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        self._loop.call(partial(self._submit, item, future))
        return future

    def _submit(self, item: TaskItem, future: Future[Any]) -> None:
        """On the loop: send the run; its outcome resolves ``future`` straight from the channel."""
        try:
            self.client.submit([item], partial(_settle, future, True))
        except Exception as e:  # a key already running there: a bug of the caller
            _settle(future, True, e)

    def attach(self, key: str, reply: bool = True) -> Future[Any]:
        """The outcome of a run started earlier on this worker (by an earlier driver, say),
        resolved like :meth:`run`'s future; ``RunNotFound`` when the worker neither runs it nor
        kept its outcome. With ``reply=False`` a success resolves to ``None`` (the worker may
        still send the value, which is dropped)."""
        return self._track(lambda future: self._resolve(self.client.attach([key]), future, reply))

    def _track(self, start: Callable[[Future[Any]], Coroutine[Any, Any, None]]) -> Future[Any]:
        future: Future[Any] = Future()
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        self._loop.spawn(start(future))
        return future

    def disconnect(self, reason: str) -> None:
        """The worker is known to be gone (its pod was deleted, say): fail its runs in flight
        with ``NotConnected`` now, instead of when their streams break."""
        for future in list(self._inflight):
            if not future.done():
                future.set_exception(NotConnected(self.name, reason))

    @staticmethod
    async def _resolve(
        completions: AsyncIterator[Completion], future: Future[Any], reply: bool
    ) -> None:
        try:
            async for completion in completions:
                if future.done():  # failed by disconnect() meanwhile
                    continue
                if completion.ok:
                    future.set_result(completion.value if reply else None)
                else:
                    future.set_exception(completion.value)
        except BaseException as e:  # NotConnected, refusals, cancellation of the loop
            if not future.done():
                future.set_exception(e)
            if not isinstance(e, Exception):
                raise

    def cancel(self, key: str) -> None:
        """Cancel run ``key`` through the worker's channel, after the run itself."""
        self._loop.call(partial(self.client.cancel_soon, [key]))

    def withdraw(self, key: str) -> None:
        """Take run ``key`` back if it still waits in its lane on the worker (it then ends with
        ``TaskCancelled``); a run that started goes on. Sent after the run itself."""
        self._loop.call(partial(self.client.withdraw_soon, [key]))

    def release(self, prefix: str) -> None:
        """Drop the worker's results under ``prefix``, after the runs and cancels sent before
        (best effort: a gone worker holds nothing)."""
        self._loop.call(partial(self.client.release_soon, prefix))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._wait(self.client.call(fn, *args, **kwargs), "call")

    def fetch(self, key: str) -> Any:
        """The result the worker keeps under ``key``; ``NotFound`` when it keeps none."""
        return self._wait(self.client.fetch(key), "fetch")

    def held(self) -> Held:
        """What the worker keeps, runs and finished for nobody (async: ``client.held()``)."""
        return self._wait(self.client.held(), "held")

    def _wait(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        if self._loop.in_loop_thread():
            coro.close()
            raise RuntimeError(f"HttpWorker.{what} would block the driver's event loop")
        return self._loop.run(coro).result(CALL_TIMEOUT)

    def reference(self, dep: Task, holder: Worker | None) -> Any:
        if isinstance(dep, RmiTask) and isinstance(holder, HttpWorker) and dep.run_key:
            return RemoteRef(dep.run_key, dep.id, holder.name, holder.url)
        return dep.result()  # computed by the driver, or before this job: send the value

    def __repr__(self) -> str:
        return f"<HttpWorker {self.name} {self.url}>"


def _settle(future: Future[Any], reply: bool, outcome: Completion | BaseException) -> None:
    """Resolve a run's future from its outcome (unless :meth:`HttpWorker.disconnect` did)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    elif outcome.ok:
        future.set_result(outcome.value if reply else None)
    else:
        future.set_exception(outcome.value)
