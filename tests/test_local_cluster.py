"""The engine on real worker processes (LocalCluster): results, faults and cancellation."""

from __future__ import annotations

import io
import operator
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bndl.execute.context import ExecutionContext
from bndl.execute.exceptions import TaskCancelled
from bndl.execute.job import Job, ResultOf, RmiTask
from bndl.execute.workers import Worker
from bndl.local import LocalCluster
from bndl.local.cluster import WorkerProcess
from bndl.wire import ClientSettings
from tests.helpers.waiting import wait_for_file, wait_until


def value_of(i: int) -> int:
    return i * 10


def reduce_after(go: str, started: str, *values: int) -> int:
    Path(started).touch()
    wait_for_file(go)
    return sum(values)


def spin_until_cancelled(started: str, marker: str) -> None:
    Path(started).touch()
    try:
        while True:
            pass
    except TaskCancelled:
        Path(marker).touch()
        raise


class Prefers(RmiTask):
    """An RmiTask that prefers one worker (a preference, not a requirement)."""

    def __init__(self, *args: Any, prefer: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefer = prefer

    def locality(self, workers: Iterable[Worker]) -> list[tuple[Worker, float]]:
        return [(w, 1.0) for w in workers if w.name == self.prefer]


@pytest.fixture(scope="module")
def ctx() -> Iterator[ExecutionContext]:
    """Two workers for the tests that neither kill, stop nor reconfigure them (a cluster's start
    is most of such a test's time)."""
    with LocalCluster(workers=2) as ctx:
        yield ctx


def by_name(cluster: LocalCluster, name: str) -> WorkerProcess:
    (process,) = [p for p in cluster.processes if p.worker.name == name]
    return process


def test_a_dag_runs_on_worker_processes(ctx: ExecutionContext) -> None:
    a = RmiTask(ctx, "a", sum, (range(10),))
    b = RmiTask(ctx, "b", operator.mul, (ResultOf("a"), 2)).depends_on(a)
    c = RmiTask(ctx, "c", operator.add, (ResultOf("a"), 1)).depends_on(a)
    d = RmiTask(ctx, "d", operator.add, (ResultOf("b"), ResultOf("c"))).depends_on(b, c)
    results = {t.id: t.result() for t in ctx.execute(Job(ctx, [a, b, c, d]), concurrency=2)}
    assert results == {"a": 45, "b": 90, "c": 46, "d": 136}
    assert ctx.await_workers() == 2


def test_remote_exception_keeps_its_type_and_traceback(ctx: ExecutionContext) -> None:
    job = Job(ctx, [RmiTask(ctx, "bad", int, ("not a number",))])
    with pytest.raises(ValueError, match="invalid literal") as info:
        list(ctx.execute(job))
    assert "int" in "".join(str(c) for c in [info.value.__cause__])


def test_kill_9_mid_job_recomputes_lost_outputs_and_charges_nothing(tmp_path: Path) -> None:
    go = str(tmp_path / "go")
    with LocalCluster(workers=2) as ctx:
        cluster = cluster_of(ctx)
        maps = [Prefers(ctx, ("map", i), value_of, (i,), prefer=f"local-{i % 2}") for i in range(4)]
        reduces = []
        for i in range(4):
            args = (go, str(tmp_path / f"started-{i}"), *(ResultOf(m.id) for m in maps))
            reduces.append(RmiTask(ctx, ("reduce", i), reduce_after, args).depends_on(*maps))
        job = Job(ctx, [*maps, *reduces])
        results = ctx.execute(job, order_results=False, concurrency=1, attempts=1)
        seen = []
        lost_maps = 0
        for task in results:
            seen.append(task.id)
            if len(seen) == 4:  # every map done: two reduces start, one per worker
                wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2)
                # Kill the worker holding the most map outputs (placement is a preference).
                held = {p.worker.name: 0 for p in cluster.processes}
                for m in maps:
                    held[m.executed_on[-1]] += 1
                victim_name = max(held, key=lambda name: held[name])
                lost_maps = held[victim_name]
                victim = by_name(cluster, victim_name)
                os.kill(victim.pid, signal.SIGKILL)
                victim.process.wait()
                Path(go).touch()
        assert sorted(seen) == sorted(t.id for t in job.tasks)
        assert len(seen) == len(set(seen))
        assert all(r.result() == sum(value_of(i) for i in range(4)) for r in reduces)
        counts = job.counts()
        assert counts is not None
        assert counts.recomputed == lost_maps >= 2, counts  # outputs that lived only there
        assert counts.lost_runs >= 1 and counts.retried == 0
        assert len(ctx.workers) == 1


def test_closing_the_generator_stops_running_tasks(ctx: ExecutionContext, tmp_path: Path) -> None:
    tasks = [RmiTask(ctx, "quick", int)]
    tasks += [
        RmiTask(
            ctx,
            f"spin-{i}",
            spin_until_cancelled,
            (str(tmp_path / f"started-{i}"), str(tmp_path / f"cancelled-{i}")),
        )
        for i in range(2)
    ]
    gen = ctx.execute(Job(ctx, tasks), order_results=False, concurrency=2)
    assert next(gen).id == "quick"
    wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2)
    gen.close()
    wait_until(lambda: len(list(tmp_path.glob("cancelled-*"))) == 2)
    # The workers are still fine.
    (task,) = ctx.execute(Job(ctx, [RmiTask(ctx, "after", abs, (-3,))]))
    assert task.result() == 3


def test_a_hung_worker_is_detected_by_timeouts(tmp_path: Path) -> None:
    settings = ClientSettings(heartbeat_timeout=1.0, connect_timeout=1.0)
    cluster = LocalCluster(workers=2, settings=settings)
    with cluster as ctx:
        started = tmp_path / "started"
        go = str(tmp_path / "go")
        tasks = [RmiTask(ctx, i, reduce_after, (go, str(started) + f"-{i}", i)) for i in range(2)]
        job = Job(ctx, tasks)
        outcome: list[Any] = []
        consumer = threading.Thread(
            target=lambda: outcome.extend(
                t.result() for t in ctx.execute(job, order_results=False, concurrency=1)
            )
        )
        consumer.start()
        wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2)
        victim = by_name(cluster, "local-1")
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            Path(go).touch()
            consumer.join(60)
            assert sorted(outcome) == [0, 1]
            counts = job.counts()
            assert counts is not None and counts.lost_runs == 1
        finally:
            os.kill(victim.pid, signal.SIGCONT)


def cluster_of(ctx: ExecutionContext) -> LocalCluster:
    source = ctx._source
    assert isinstance(source, LocalCluster)
    return source


def busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_profiling_covers_the_worker_processes(ctx: ExecutionContext) -> None:
    ctx.cpu_profiling.start()
    list(ctx.execute(Job(ctx, [RmiTask(ctx, i, busy, (50_000,)) for i in range(4)])))
    ctx.cpu_profiling.stop()
    per_worker = ctx.cpu_profiling.get_stats(per_worker=True)
    assert sorted(w.name for w, _ in per_worker) == ["local-0", "local-1"]
    merged = ctx.cpu_profiling.get_stats()
    (stat,) = [s for s in merged if s.name == "busy"]
    assert stat.ncall == 4
    out = io.StringIO()
    ctx.cpu_profiling.print_stats(max_rows=5, include="tests.test_local_cluster", file=out)
    assert "Clock type" in out.getvalue() and "busy" in out.getvalue()

    ctx.memory_profiling.start()
    try:
        first = ctx.memory_profiling.print_top(limit=3, file=io.StringIO())
        list(ctx.execute(Job(ctx, [RmiTask(ctx, i, bytearray, (10**6,)) for i in range(2)])))
        out = io.StringIO()
        ctx.memory_profiling.print_top(limit=3, compare_to=first, file=out)
        assert "Total allocated size" in out.getvalue()
    finally:
        ctx.memory_profiling.stop()


def test_the_clusters_tls_material_is_private_and_removed_with_it() -> None:
    cluster = LocalCluster(workers=2)
    with cluster as ctx:
        directory = cluster.tls_dir
        assert directory is not None
        assert os.stat(directory).st_mode & 0o777 == 0o700
        assert os.stat(os.path.join(directory, "tls.key")).st_mode & 0o777 == 0o600
        assert all(p.worker.url.startswith("https://127.0.0.1:") for p in cluster.processes)
        job = Job(ctx, [RmiTask(ctx, i, abs, (-i,)) for i in range(4)])
        assert sorted(t.result() for t in ctx.execute(job, order_results=False)) == [0, 1, 2, 3]
    assert not os.path.exists(directory)


def test_encryption_is_off_only_for_a_benchmark_that_asks_twice() -> None:
    from bndl.wire.tls import TlsError

    with pytest.raises(TlsError, match="only be turned off for benchmarks"):
        LocalCluster(workers=1, insecure_benchmark_only=True)
    plain = LocalCluster(workers=1, insecure_benchmark_only=True, env={"BNDL_BENCH_INSECURE": "1"})
    with plain as ctx:
        assert plain.tls_dir is None and plain.processes[0].worker.url.startswith("http://")
        job = Job(ctx, [RmiTask(ctx, "t", abs, (-3,))])
        assert [t.result() for t in ctx.execute(job)] == [3]
