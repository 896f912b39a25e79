"""An asyncio event loop on a thread of its own, for the synchronous Python API.

``ExecutionContext.execute`` is a plain generator, so the HTTP client needs a loop that runs while
the caller's thread blocks on results. One loop and one ``aiohttp.ClientSession`` serve every
worker of a driver; completions arrive on this thread, where the scheduler handles them at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import aiohttp

from bndl.wire import ClientSettings, create_session

log = logging.getLogger(__name__)

T = TypeVar("T")


class IoLoop(Protocol):
    """What an :class:`~bndl.driver.HttpWorker` needs of the loop its client runs on."""

    def in_loop_thread(self) -> bool: ...

    def run(self, coro: Coroutine[Any, Any, T]) -> Future[T]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def call(self, fn: Callable[[], Any]) -> None: ...


class _InOrder:
    """Calls to make on a loop, in the order they were asked for from any thread.

    A call asked for on the loop's thread runs at once, but only after the calls other threads
    asked for earlier: a scheduler that dispatches a job's first runs from the caller's thread
    and the next ones from the loop (on a completion) sends them to the worker in that order,
    which a worker relies on to run a task queued behind its inputs after them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, in_loop_thread: Callable[[], bool]):
        self._loop = loop
        self._in_loop_thread = in_loop_thread
        self._calls: deque[Callable[[], Any]] = deque()

    def call(self, fn: Callable[[], Any]) -> None:
        self._calls.append(fn)  # deque appends and pops are atomic: no lock
        if self._in_loop_thread():
            self._run()
        else:
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        calls = self._calls
        while calls:
            try:
                fn = calls.popleft()
            except IndexError:  # emptied by a call made from one of these calls
                return
            try:
                fn()
            except Exception:  # one failed call must not hold back the others
                log.exception("a call on the driver's loop failed")


class DriverLoop:
    """A running event loop with the driver's shared client session."""

    def __init__(self, settings: ClientSettings | None = None, name: str = "bndl-driver") -> None:
        self.settings = settings or ClientSettings()
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._started.wait()
        self._in_order = _InOrder(self.loop, self.in_loop_thread)
        self.session: aiohttp.ClientSession = self.run(self._create_session()).result()

    async def _create_session(self) -> aiohttp.ClientSession:
        return create_session(self.settings)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def run(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the loop; returns a concurrent future of its outcome."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` on the loop without waiting; cheap when called on the loop thread."""
        if self.in_loop_thread():
            task = self.loop.create_task(coro)
            _keep(task)
        else:
            self.loop.call_soon_threadsafe(lambda: _keep(self.loop.create_task(coro)))

    def call(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` on the loop, after the calls asked for before it (from any thread): at
        once when called there and nothing is waiting, else as soon as the loop can."""
        self._in_order.call(fn)

    def close(self, timeout: float = 5.0) -> None:
        """Close the session and stop the loop thread."""
        if not self._thread.is_alive():
            return
        try:
            self.run(self.session.close()).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()


class AttachedLoop:
    """The driver's side of an event loop that runs already, on the thread that created this.

    The operator runs its schedulers on kopf's own loop: completions arrive on that thread and are
    handled there at once, with no second loop thread. Create it from a coroutine on that loop.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = session
        self._thread_id = threading.get_ident()
        self._in_order = _InOrder(self.loop, self.in_loop_thread)

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def run(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the loop; returns a concurrent future (never wait on it in the loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.in_loop_thread():
            _keep(self.loop.create_task(coro))
        else:
            self.loop.call_soon_threadsafe(lambda: _keep(self.loop.create_task(coro)))

    def call(self, fn: Callable[[], Any]) -> None:
        self._in_order.call(fn)


_background: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    """Hold a reference to a fire-and-forget task until it ends (asyncio keeps only weak ones)."""
    _background.add(task)
    task.add_done_callback(_background.discard)
