"""A remote worker process as the scheduler sees it (the ``Worker`` protocol over HTTP)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from bndl.driver.loop import IoLoop
from bndl.execute.exceptions import NotConnected
from bndl.execute.job import RmiTask, Task
from bndl.execute.workers import Worker
from bndl.wire import RemoteRef, TaskItem, WorkerClient

log = logging.getLogger(__name__)

# How long a synchronous call (profiling, probes) may take before it counts as failed.
CALL_TIMEOUT = 60.0


class HttpWorker:
    """Runs tasks on a worker process through its :class:`WorkerClient`.

    Results come back with each completion (the driver hands them to the caller) and, for tasks
    with dependents, stay on the worker for peers to fetch.
    """

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
    ) -> Future[Any]:
        future: Future[Any] = Future()
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        item = TaskItem(key, fn, tuple(args), dict(kwargs), keep)
        self._loop.spawn(self._run(item, future))
        return future

    def disconnect(self, reason: str) -> None:
        """The worker is known to be gone (its pod was deleted, say): fail its runs in flight
        with ``NotConnected`` now, instead of when their streams break."""
        for future in list(self._inflight):
            if not future.done():
                future.set_exception(NotConnected(self.name, reason))

    async def _run(self, item: TaskItem, future: Future[Any]) -> None:
        try:
            async for completion in self.client.run([item]):
                if future.done():  # failed by disconnect() meanwhile
                    continue
                if completion.ok:
                    future.set_result(completion.value)
                else:
                    future.set_exception(completion.value)
        except BaseException as e:  # NotConnected, refusals, cancellation of the loop
            if not future.done():
                future.set_exception(e)
            if not isinstance(e, Exception):
                raise

    def cancel(self, key: str) -> None:
        self._loop.spawn(self._quietly(self.client.cancel([key]), "cancel"))

    def release(self, prefix: str) -> None:
        self._loop.spawn(self._quietly(self.client.release(prefix=prefix), "release"))

    async def _quietly(self, coro: Any, what: str) -> None:
        try:
            await coro
        except Exception as e:  # best effort: a gone worker neither runs nor holds anything
            log.debug("%s on %s failed: %s", what, self.name, e)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._loop.in_loop_thread():
            raise RuntimeError("HttpWorker.call would block the driver's event loop")
        return self._loop.run(self.client.call(fn, *args, **kwargs)).result(CALL_TIMEOUT)

    def reference(self, dep: Task, holder: Worker | None) -> Any:
        if isinstance(dep, RmiTask) and isinstance(holder, HttpWorker) and dep.run_key:
            return RemoteRef(dep.run_key, dep.id, holder.name, holder.url)
        return dep.result()  # computed by the driver, or before this job: send the value

    def __repr__(self) -> str:
        return f"<HttpWorker {self.name} {self.url}>"
