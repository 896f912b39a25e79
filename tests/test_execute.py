"""The Python API (ExecutionContext.execute and friends) on in-process thread workers."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from bndl.execute import ATTEMPTS, CONCURRENCY
from bndl.execute.context import ExecutionContext
from bndl.execute.core import SchedulingError
from bndl.execute.exceptions import DependenciesFailed, TaskCancelled
from bndl.execute.job import Job, ResultOf, RmiTask, Task
from bndl.execute.workers import ThreadWorker, Worker
from tests.helpers.waiting import wait_until


def make_ctx(n: int = 2, **config: Any) -> ExecutionContext:
    return ExecutionContext([ThreadWorker(f"w{i}") for i in range(n)], config)


def test_results_in_job_order_and_in_completion_order() -> None:
    ctx = make_ctx()
    release = threading.Event()

    def slow_first(i: int) -> int:
        if i == 0:
            release.wait(10)
        return i * i

    tasks = [RmiTask(ctx, i, slow_first, (i,)) for i in range(6)]
    unordered = ctx.execute(Job(ctx, tasks), order_results=False, concurrency=3)
    first = next(unordered)
    assert first.id != 0
    release.set()
    rest = [t.id for t in unordered]
    assert sorted([first.id, *rest]) == list(range(6))

    release.clear()
    tasks = [RmiTask(ctx, i, slow_first, (i,)) for i in range(6)]
    threading.Timer(0.05, release.set).start()
    ordered = [t.result() for t in ctx.execute(Job(ctx, tasks), concurrency=3)]
    assert ordered == [i * i for i in range(6)]


def test_dag_results_flow_and_each_task_is_yielded_once() -> None:
    ctx = make_ctx(3)
    a = RmiTask(ctx, "a", lambda: 2)
    b = RmiTask(ctx, "b", pow, (ResultOf("a"), 3)).depends_on(a)
    c = RmiTask(ctx, "c", pow, (3, ResultOf("a"))).depends_on(a)
    d = RmiTask(ctx, "d", lambda x, y: x + y, (ResultOf("b"),), {"y": ResultOf("c")})
    d.depends_on(b, c)
    yielded = [t.id for t in ctx.execute(Job(ctx, [d, c, b, a]))]
    assert yielded == ["d", "c", "b", "a"]
    assert d.result() == 17


def test_a_failing_task_raises_its_own_exception() -> None:
    ctx = make_ctx()

    def boom() -> None:
        raise KeyError("missing thing")

    job = Job(ctx, [RmiTask(ctx, "ok", int), RmiTask(ctx, "bad", boom)])
    with pytest.raises(KeyError, match="missing thing"):
        list(ctx.execute(job))


def test_attempts_retry_and_config_is_read_per_job() -> None:
    ctx = make_ctx(1, **{ATTEMPTS: 1})
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return "ok"

    with pytest.raises(RuntimeError, match="transient"):
        list(ctx.execute(Job(ctx, [RmiTask(ctx, "t", flaky)])))
    ctx.conf[ATTEMPTS] = 3
    calls.clear()
    (task,) = ctx.execute(Job(ctx, [RmiTask(ctx, "t", flaky)]))
    assert task.result() == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(RuntimeError):
        list(ctx.execute(Job(ctx, [RmiTask(ctx, "t", flaky)]), attempts=2))


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_per_worker_is_exact(concurrency: int) -> None:
    ctx = make_ctx(2, **{CONCURRENCY: concurrency})
    lock = threading.Lock()
    running = 0
    peak = 0

    def task() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        # Hold the slot until every slot of the cluster is taken (or a deadline passes).
        deadline = time.monotonic() + 2
        while peak < 2 * concurrency and time.monotonic() < deadline:
            time.sleep(0.001)
        with lock:
            running -= 1

    list(ctx.execute(Job(ctx, [RmiTask(ctx, i, task) for i in range(12)])))
    assert peak == 2 * concurrency


def test_closing_the_generator_cancels_running_tasks() -> None:
    ctx = make_ctx(2)
    started = threading.Semaphore(0)
    outcomes: list[str] = []

    def spin(i: int) -> int:
        if i == 0:
            return 0
        started.release()
        try:
            while True:
                pass
        except TaskCancelled:
            outcomes.append("cancelled")
            raise

    tasks = [RmiTask(ctx, i, spin, (i,)) for i in range(3)]
    gen = ctx.execute(Job(ctx, tasks), order_results=False, concurrency=2)
    first = next(gen)
    assert first.id == 0
    assert started.acquire(timeout=10) and started.acquire(timeout=10)
    gen.close()
    wait_until(lambda: len(outcomes) == 2)


def test_dependencies_failed_recomputes_the_lost_output() -> None:
    ctx = make_ctx(2)
    runs = {"source": 0, "sink": 0}

    def source() -> int:
        runs["source"] += 1
        return 10

    def sink(value: int) -> int:
        runs["sink"] += 1
        if runs["sink"] == 1:
            raise DependenciesFailed({None: ["source"]})
        return value + 1

    s = RmiTask(ctx, "source", source)
    k = RmiTask(ctx, "sink", sink, (ResultOf("source"),)).depends_on(s)
    results = {t.id: t.result() for t in ctx.execute(Job(ctx, [s, k]))}
    assert results == {"source": 10, "sink": 11}
    assert runs == {"source": 2, "sink": 2}


def test_bad_jobs_fail_with_clear_errors() -> None:
    ctx = make_ctx(1)
    assert list(ctx.execute(Job(ctx, []))) == []
    with pytest.raises(ValueError, match="concurrency"):
        next(ctx.execute(Job(ctx, [RmiTask(ctx, 1, int)]), concurrency=0))
    outside = RmiTask(ctx, "outside", int)
    inside = RmiTask(ctx, "inside", int).depends_on(outside)
    with pytest.raises(ValueError, match="not part of the job"):
        next(ctx.execute(Job(ctx, [inside])))
    with pytest.raises(ValueError, match="duplicate task id"):
        next(ctx.execute(Job(ctx, [RmiTask(ctx, 1, int), RmiTask(ctx, 1, int)])))
    with pytest.raises(SchedulingError, match="no workers"):
        empty = ExecutionContext([])
        next(empty.execute(Job(empty, [RmiTask(empty, 1, int)]), workers=[]))


class Picky(RmiTask):
    def __init__(self, ctx: ExecutionContext, task_id: str, allowed: set[str]) -> None:
        super().__init__(ctx, task_id, int)
        self.allowed = allowed

    def locality(self, workers: Any) -> list[tuple[Worker, float]]:
        return [(w, 1.0 if w.name in self.allowed else -1.0) for w in workers]


def test_locality_is_honoured_and_impossible_tasks_fail_fast() -> None:
    ctx = make_ctx(3)
    tasks = [Picky(ctx, f"t{i}", {"w2"}) for i in range(5)]
    for task in ctx.execute(Job(ctx, list(tasks))):
        assert task.executed_on == ["w2"]
    nowhere = Picky(ctx, "nowhere", {"w9"})
    with pytest.raises(SchedulingError, match="'nowhere' cannot run on any available worker"):
        list(ctx.execute(Job(ctx, [nowhere])))


def test_tasks_done_before_the_job_are_yielded_and_not_run() -> None:
    ctx = make_ctx(1)
    done = RmiTask(ctx, "done", int)
    done.mark_done(42)
    later = RmiTask(ctx, "later", lambda x: x + 1, (ResultOf("done"),)).depends_on(done)
    assert [t.result() for t in ctx.execute(Job(ctx, [done, later]))] == [42, 43]
    assert done.attempts == 0


class WorkerPool:
    """A worker set whose workers appear while await_workers waits."""

    def __init__(self, expected: int | None) -> None:
        self._workers: list[Worker] = []
        self._expected = expected

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    @property
    def expected(self) -> int | None:
        return self._expected

    def add(self, worker: Worker) -> None:
        self._workers.append(worker)


def test_await_workers_waits_for_the_count_and_raises_when_none_come() -> None:
    pool = WorkerPool(expected=None)
    ctx = ExecutionContext(pool)
    with pytest.raises(RuntimeError, match="no workers available"):
        ctx.await_workers(connect_timeout=0.2)

    adder = threading.Thread(target=lambda: [pool.add(ThreadWorker(f"w{i}")) for i in range(3)])
    adder.start()
    assert ctx.await_workers(worker_count=3, connect_timeout=5) == 3
    adder.join()
    with pytest.raises(RuntimeError, match="only 3 of 4 workers"):
        ctx.await_workers(worker_count=4, stable_timeout=0.2)


def test_await_workers_returns_when_the_set_is_complete() -> None:
    pool = WorkerPool(expected=2)
    pool.add(ThreadWorker("a"))
    pool.add(ThreadWorker("b"))
    ctx = ExecutionContext(pool)
    start = time.monotonic()
    assert ctx.await_workers() == 2
    assert ctx.worker_count == 2
    assert time.monotonic() - start < 1  # no stability wait for a complete set


def test_profiling_across_workers() -> None:
    ctx = make_ctx(2)

    def work(n: int) -> int:
        return sum(i * i for i in range(n))

    ctx.cpu_profiling.start()
    list(ctx.execute(Job(ctx, [RmiTask(ctx, i, work, (20_000,)) for i in range(4)])))
    ctx.cpu_profiling.stop()
    out = io.StringIO()
    ctx.cpu_profiling.print_stats(max_rows=10, file=out)
    assert "Clock type" in out.getvalue() and "ncall" in out.getvalue()
    ctx.cpu_profiling.clear()

    ctx.memory_profiling.start()
    try:
        keep = [bytearray(100_000) for _ in range(5)]
        out = io.StringIO()
        first = ctx.memory_profiling.print_top(limit=5, file=out)
        assert "Total allocated size" in out.getvalue()
        out = io.StringIO()
        ctx.memory_profiling.print_top(limit=5, compare_to=first, file=out)
        assert "KiB" in out.getvalue()
    finally:
        ctx.memory_profiling.stop()
    assert keep


def test_task_api_basics() -> None:
    ctx = make_ctx(1)
    t = Task(ctx, ("stage", 3))
    assert t.name == "task stage.3" and not t.started
    with pytest.raises(RuntimeError, match="not been executed"):
        t.result()
    t.mark_failed(ValueError("x"))
    assert t.failed and isinstance(t.exception(), ValueError)
    assert repr(t) == "<Task stage.3 failed>"


def test_a_run_cancelled_by_its_worker_runs_again_uncharged() -> None:
    """A worker that shuts down (its pod deleted or scaled away) cancels what it runs: that is not
    the task's failure, even with attempts=1."""
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise TaskCancelled("the worker is stopping")
        return "done"

    ctx = ExecutionContext([ThreadWorker("w")])
    job = Job(ctx, [RmiTask(ctx, "t", flaky)])
    [done] = list(ctx.execute(job, attempts=1))
    assert done.result() == "done" and len(calls) == 2
    counts = job.counts()
    assert counts is not None and counts.retried == 0
