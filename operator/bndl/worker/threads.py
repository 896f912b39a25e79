"""One OS thread per running task, reused from a cache, interruptible from outside.

Tasks run on real threads so a running task can be cancelled by raising an exception in its thread
(``PyThreadState_SetAsyncExc``). Starting a thread per task costs more than the rest of a trivial
task, so finished threads wait a while for the next job instead of exiting; each running job still
has a thread of its own, and there is no limit on how many run (the scheduler owns concurrency).

Because threads are reused, an interrupt must never hit the wrong job: it is only injected while
the target job is running on the thread (checked under the thread's lock), and an injected
exception that has not fired by the time the job ends is withdrawn before the thread moves on.

Withdrawing is subtle. ``PyThreadState_SetAsyncExc(ident, NULL)`` clears the pending exception but
(on CPython up to 3.12) leaves the interpreter's "async exception pending" flag set: that flag is
only cleared by a thread that finds an exception to raise, so after a NULL withdrawal it stays set
for good. Every thread then takes the eval breaker's slow path at each call, and a thread with a
profile or trace function (yappi, coverage, a debugger) spins forever at its next function entry
(CPython 3.11 re-checks the breaker on ``RESUME`` without advancing). So a withdrawal here replaces
whatever may be pending with a private marker exception and lets it fire, caught, in the thread
itself: exactly one asynchronous exception is consumed and the flag is cleared.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any

log = logging.getLogger(__name__)

_SET_ASYNC_EXC = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
_raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(_SET_ASYNC_EXC)
"""Schedule an exception to be raised in a thread the next time it runs Python bytecode."""


class _Withdrawn(BaseException):
    """Replaces an interrupt that did not fire by the end of its job; raised and caught at once."""


def _withdraw_own() -> None:
    """Drop an interrupt still pending for the calling thread, leaving no flag behind.

    Must be called on the thread the interrupt was raised in, with no interrupt able to arrive
    meanwhile (under the slot's lock). The marker replaces any pending exception; the loop runs
    until it fires (at the next eval-breaker check, a backward jump at the latest).
    """
    try:
        _raise_in(threading.get_ident(), _Withdrawn)
        while True:
            pass
    except _Withdrawn:
        pass


class _Slot:
    """A task thread: its id, the job it runs and whether an interrupt is pending."""

    __slots__ = ("ident", "injected", "job", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.injected = False


class Job(ABC):
    """Work for a task thread: ``run`` is the interruptible part, ``done`` receives its outcome
    (the value, or the exception it raised) and is never interrupted."""

    slot: _Slot | None = None

    @abstractmethod
    def run(self) -> Any: ...

    @abstractmethod
    def done(self, ok: bool, value: Any) -> Job | None:
        """Report the outcome; may return the next job for this thread to run at once."""


class TaskThreads:
    """Runs each submitted job on a thread of its own, reusing idle threads."""

    def __init__(self, idle_timeout: float = 60.0, name: str = "bndl-task") -> None:
        self.idle_timeout = idle_timeout
        self.name = name
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, minus jobs queued for them

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._work, args=(job,), name=self.name, daemon=True).start()

    def interrupt(self, job: Job, error: type[BaseException]) -> bool:
        """Raise ``error`` in the thread running ``job``; False if it is not running (anymore)."""
        slot = job.slot
        if slot is None:
            return False
        with slot.lock:
            if slot.job is not job or slot.injected:
                return False
            slot.injected = True
            _raise_in(slot.ident, error)
        return True

    @property
    def idle(self) -> int:
        return self._idle

    def _work(self, job: Job | None) -> None:
        slot = _Slot(threading.get_ident())
        while job is not None:
            following = self._run(slot, job)
            job = following if following is not None else self._next()

    def _next(self) -> Job | None:
        with self._lock:
            self._idle += 1
        while True:
            try:
                return self._jobs.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # no job was promised to this thread: it may exit
                        self._idle -= 1
                        return None

    @staticmethod
    def _run(slot: _Slot, job: Job) -> Job | None:
        ok, value, finished = False, None, False
        try:
            with slot.lock:
                slot.job = job
                job.slot = slot
            try:
                value, ok = job.run(), True
            except BaseException as e:  # the task's own failure, reported as its outcome
                value = e
            finished = True
            with slot.lock:
                slot.job = None
                if slot.injected:
                    slot.injected = False
                    _withdraw_own()  # an interrupt that has not fired must not reach the next job
        except BaseException as e:  # an interrupt that fired outside the job's own code
            with slot.lock:
                slot.job = None
                slot.injected = False
            if not finished:
                ok, value = False, e
        try:
            return job.done(ok, value)
        except Exception:
            log.exception("reporting the outcome of %r failed", job)
            return None
