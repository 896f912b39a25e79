"""CPU (yappi) and memory (tracemalloc) profiling endpoints on a real worker."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import pytest

from bndl.wire import Conflict, TaskItem, merge_cpu_stats
from tests.test_worker_harness import WorkerProcess, client, run, running_worker


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-profiled") as w:
        yield w


def profiled_work(n: int) -> int:
    return sum(i * i for i in range(n))


def allocate(n: int) -> int:
    global kept
    kept = [bytearray(1024) for _ in range(n)]
    return len(kept)


kept: list[bytearray] = []


def test_cpu_profiling_collects_mergeable_stats(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            await c.cpu_profiling("clear")
            await c.cpu_profiling("start")
            [
                _
                async for _ in c.run(
                    [TaskItem(f"cpu-{i}", profiled_work, (1000,)) for i in range(5)]
                )
            ]
            await c.cpu_profiling("stop")
            blob = await c.cpu_stats()
            stats = merge_cpu_stats([blob, blob])  # as a driver merges several workers
            (entry,) = [s for s in stats if s.name == "profiled_work"]
            assert entry.ncall == 10  # 5 calls, counted once per merged worker
            out = io.StringIO()
            stats.print_all(out=out)
            assert "profiled_work" in out.getvalue()
            # after stop, more work changes nothing; clear empties the stats
            [_ async for _ in c.run([TaskItem("cpu-after", profiled_work, (10,))])]
            after = merge_cpu_stats([await c.cpu_stats()])
            assert [s.ncall for s in after if s.name == "profiled_work"] == [5]
            await c.cpu_profiling("clear")
            cleared = merge_cpu_stats([await c.cpu_stats()])
            assert not [s for s in cleared if s.name == "profiled_work"]
            with pytest.raises(ValueError):
                await c.cpu_profiling("explode")

    run(check)


def test_memory_profiling_returns_snapshots(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            with pytest.raises(Conflict, match="not started"):
                await c.memory_snapshot()
            await c.memory_profiling("start")
            try:
                [_ async for _ in c.run([TaskItem("mem", allocate, (2000,))])]
                snapshot = await c.memory_snapshot()
                assert isinstance(snapshot, tracemalloc.Snapshot)
                top = snapshot.statistics("lineno")
                assert any(
                    "test_worker_profiling.py" in stat.traceback[0].filename
                    and stat.size > 1_000_000
                    for stat in top
                )
            finally:
                await c.memory_profiling("stop")
            with pytest.raises(Conflict):
                await c.memory_snapshot()

    run(check)
