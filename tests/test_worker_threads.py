"""Task threads in-process: reuse, interruption, and that an interrupt never hits another job."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from bndl.execute.exceptions import TaskCancelled
from bndl.worker.threads import Job, TaskThreads
from tests.helpers.waiting import wait_until


class Probe(Job):
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.started = threading.Event()
        self.finished = threading.Event()
        self.outcome: tuple[bool, Any] | None = None
        self.thread: int | None = None

    def run(self) -> Any:
        self.thread = threading.get_ident()
        self.started.set()
        return self.fn()

    def done(self, ok: bool, value: Any) -> None:
        self.outcome = (ok, value)
        self.finished.set()

    def wait(self) -> tuple[bool, Any]:
        assert self.finished.wait(10), "job did not finish"
        assert self.outcome is not None
        return self.outcome


def spin() -> None:
    while True:
        pass


def work(n: int = 2000) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def test_a_running_job_is_interrupted() -> None:
    threads = TaskThreads()
    job = Probe(spin)
    threads.submit(job)
    assert job.started.wait(10)
    assert threads.interrupt(job, TaskCancelled)
    ok, error = job.wait()
    assert not ok and isinstance(error, TaskCancelled)
    assert not threads.interrupt(job, TaskCancelled)  # finished: nothing to interrupt


def test_idle_threads_are_reused() -> None:
    threads = TaskThreads()
    idents = set()
    for _ in range(20):
        job = Probe(work)
        threads.submit(job)
        assert job.wait() == (True, work())
        idents.add(job.thread)
        # the thread goes back to the cache after reporting
        wait_until(lambda: threads.idle > 0, 10, "the thread back in the cache")
    assert len(idents) == 1


def test_concurrent_jobs_each_get_a_thread() -> None:
    threads = TaskThreads()
    gate = threading.Event()
    jobs = [Probe(lambda: gate.wait(10)) for _ in range(8)]
    for job in jobs:
        threads.submit(job)
    for job in jobs:
        assert job.started.wait(10)  # all eight run at once
    gate.set()
    assert {job.wait() for job in jobs} == {(True, True)}
    assert len({job.thread for job in jobs}) == 8


def test_idle_threads_exit_after_their_timeout() -> None:
    threads = TaskThreads(idle_timeout=0.05, name="bndl-test-expiring")
    job = Probe(work)
    threads.submit(job)
    job.wait()
    wait_until(
        lambda: not any(t.name == "bndl-test-expiring" for t in threading.enumerate()),
        10,
        "the idle thread to exit",
    )
    assert threads.idle == 0
    again = Probe(work)  # and a new thread is started when needed
    threads.submit(again)
    assert again.wait() == (True, work())


def test_an_interrupt_racing_with_the_end_of_a_job_never_reaches_the_next_job() -> None:
    # switch threads very often, so interrupts land anywhere: in the job, as it ends, after it
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        outcomes = _race(TaskThreads())
    finally:
        sys.setswitchinterval(previous)
    assert outcomes["ok"] > 0 and outcomes["cancelled"] > 0, outcomes


def _race(threads: TaskThreads) -> dict[str, int]:
    outcomes = {"ok": 0, "cancelled": 0}
    for i in range(500):
        job = Probe(lambda i=i: work(i % 50 * 200))
        threads.submit(job)
        assert job.started.wait(10)
        threads.interrupt(job, TaskCancelled)
        ok, value = job.wait()
        if ok:
            outcomes["ok"] += 1
        else:
            assert isinstance(value, TaskCancelled)
            outcomes["cancelled"] += 1
        follow_up = Probe(work)  # on the same (reused) thread: must never see the interrupt
        threads.submit(follow_up)
        assert follow_up.wait() == (True, work())
    assert sum(outcomes.values()) == 500
    return outcomes


def _profiled_call() -> str:
    """Runs a little Python under a profile function, like a task thread under yappi."""
    sys.setprofile(lambda *_: None)
    try:
        return "".join(str(i) for i in range(3))  # function entries: RESUME under tracing
    finally:
        sys.setprofile(None)


def test_a_withdrawn_interrupt_leaves_no_pending_flag_behind() -> None:
    # Issue 14: withdrawing with PyThreadState_SetAsyncExc(id, NULL) left CPython's "async
    # exception pending" flag set, and the next profiled job on the thread spun forever.
    threads = TaskThreads()
    spinning = Probe(spin)
    threads.submit(spinning)
    assert spinning.started.wait(10)
    assert threads.interrupt(spinning, TaskCancelled)
    ok, error = spinning.wait()
    assert not ok and isinstance(error, TaskCancelled)
    # the same thread runs the next job
    wait_until(lambda: threads.idle > 0, 10, "the thread back in the cache")
    profiled = Probe(_profiled_call)
    threads.submit(profiled)
    assert profiled.finished.wait(10), "the profiled job after a cancel hangs"
    assert profiled.outcome == (True, "012")
    assert profiled.thread == spinning.thread
