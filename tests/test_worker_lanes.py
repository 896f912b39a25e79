"""Lanes on a real worker process: runs beyond a lane's slots wait their turn, in order; a
waiting run that is cancelled (or withdrawn) ends at once; and a job dispatched ahead never runs
more tasks at once on a worker than its concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bndl.execute.exceptions import TaskCancelled
from bndl.execute.job import Job, RmiTask
from bndl.local import LocalCluster
from bndl.wire import Completion, TaskItem, WorkerClient
from bndl.wire.channel import WITHDRAW
from bndl.worker.lanes import Lanes
from tests.helpers.waiting import wait_for_file, wait_until_async
from tests.test_worker_harness import WorkerProcess, client, run, running_worker


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-lanes") as w:
        yield w


def log_run(directory: str, name: str, seconds: float) -> str:
    """Runs on a worker: record start and end (with the number of runs going on) in files."""
    here = Path(directory)
    (here / f"start-{name}").write_text(str(time.monotonic()))
    running = len(list(here.glob("start-*"))) - len(list(here.glob("end-*")))
    time.sleep(seconds)
    (here / f"end-{name}").write_text(f"{time.monotonic()} {running}")
    return name


def start_then_wait(started: str, go: str) -> str:
    """Runs on a worker: say it started, wait for the test's go; returns the go file's path."""
    Path(started).touch()
    wait_for_file(go)
    return go


def test_runs_beyond_the_slots_wait_for_a_free_slot(worker: WorkerProcess, tmp_path: Path) -> None:
    async def check() -> None:
        async with client(worker) as c:
            items = [
                TaskItem(f"l/{i}", log_run, (str(tmp_path), str(i), 0.05), lane="l", slots=2)
                for i in range(6)
            ]
            done = [x async for x in c.run(items)]
            assert all(x.ok for x in done), done
        ends = {p.name[4:]: p.read_text().split() for p in tmp_path.glob("end-*")}
        assert max(int(running) for _, running in ends.values()) <= 2
        starts = {p.name[6:]: float(p.read_text()) for p in tmp_path.glob("start-*")}
        # the first two take the slots; the others wait for one of them to end (their order is
        # the unit test's). Not "the first two to start": on a saturated machine the thread of
        # run 1 may begin after run 0 ended and its thread took run 2.
        first_end = min(float(ends[k][0]) for k in ("0", "1"))
        waited = {k: starts[k] >= first_end for k in starts if k not in ("0", "1")}
        assert len(waited) == 4 and all(waited.values()), (waited, starts, ends)

    run(check)


async def one_running_one_waiting(
    c: WorkerClient, lane: str, tmp_path: Path
) -> tuple[dict[str, Completion], asyncio.Future[None]]:
    """Runs ``<lane>/1`` and ``<lane>/2`` in a lane of one slot: the first has started and waits
    for the file ``go``, the second waits for the slot (it would write the file ``ran``). Returns
    the outcomes as they come and the future that collects them."""
    started = tmp_path / "started"
    first = TaskItem(
        f"{lane}/1", start_then_wait, (str(started), str(tmp_path / "go")), lane=lane, slots=1
    )
    second = TaskItem(f"{lane}/2", (tmp_path / "ran").write_text, ("x",), lane=lane, slots=1)
    outcomes: dict[str, Completion] = {}

    async def collect() -> None:
        async for completion in c.run([first, second]):
            outcomes[completion.key] = completion

    collecting = asyncio.ensure_future(collect())
    await wait_until_async(lambda: started.exists(), what="the first run to start")
    return outcomes, collecting


def test_a_cancelled_waiting_run_ends_at_once_and_never_runs(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    async def check() -> None:
        async with client(worker) as c:
            outcomes, collecting = await one_running_one_waiting(c, "c", tmp_path)
            reply = await c.cancel(["c/2"])
            assert reply == {"interrupted": ["c/2"], "remembered": []}
            await wait_until_async(lambda: "c/2" in outcomes, what="the cancelled run's outcome")
            assert isinstance(outcomes["c/2"].error, TaskCancelled)
            (tmp_path / "go").touch()
            await collecting
            assert outcomes["c/1"].ok and not (tmp_path / "ran").exists()

    run(check)


def test_a_withdrawn_run_ends_at_once_if_it_waits_and_goes_on_if_it_started(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    async def check() -> None:
        async with client(worker) as c:
            outcomes, collecting = await one_running_one_waiting(c, "w", tmp_path)
            await wait_until_async(  # the worker's hello, which says it understands withdraws
                lambda: WITHDRAW in c._channel._understood, what="the worker's hello"
            )
            c.withdraw_soon(["w/1", "w/2"])  # the first started: only the second is taken back
            await wait_until_async(lambda: "w/2" in outcomes, what="the withdrawn run's outcome")
            assert isinstance(outcomes["w/2"].error, TaskCancelled)
            assert "withdrawn" in str(outcomes["w/2"].error) and "w/1" not in outcomes
            (tmp_path / "go").touch()
            await collecting
            assert outcomes["w/1"].ok and outcomes["w/1"].value == str(tmp_path / "go")
            assert not (tmp_path / "ran").exists()

    run(check)


def test_a_job_dispatched_ahead_keeps_the_concurrency_on_each_worker(tmp_path: Path) -> None:
    with LocalCluster(workers=2) as ctx:
        tasks = [RmiTask(ctx, i, log_run, (str(tmp_path), str(i), 0.02)) for i in range(24)]
        job = Job(ctx, tasks)
        results = [t.result() for t in ctx.execute(job, concurrency=2, ahead=3)]
        assert results == [str(i) for i in range(24)]
    # every worker writes into the same directory: at most 2 x 2 runs at once in all
    ends = [p.read_text().split() for p in tmp_path.glob("end-*")]
    assert len(ends) == 24 and max(int(running) for _, running in ends) <= 4


class Run:
    def __init__(self, key: str, lane: str = "j", slots: int = 1) -> None:
        self.key, self.lane, self.slots = key, lane, slots


def test_lanes_hand_each_freed_slot_to_the_first_waiting_run() -> None:
    lanes: Lanes[str] = Lanes()
    started: list[str] = []
    a, b, c, d = Run("a"), Run("b"), Run("c"), Run("free", lane="", slots=0)
    for r in (a, b, c, d):
        lanes.admit(r, r.key, started.append)
    assert started == ["a", "free"] and lanes.waiting() == 2
    assert lanes.withdraw(c) and not lanes.withdraw(c)
    assert lanes.ended(a) == "b"  # the caller starts it (the thread that ended a, on a worker)
    assert lanes.waiting() == 0
    assert lanes.ended(b) is None
    assert lanes.ended(d) is None  # held no slot
    assert lanes.waiting() == 0 and not lanes._lanes  # an empty lane is forgotten
