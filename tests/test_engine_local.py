"""The engine's worker-loss rules on real worker processes (LocalCluster): a task that kills its
worker fails the job fast, naming the task and the exit codes; workers die with their driver."""

from __future__ import annotations

import operator
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bndl.driver import DriverLoop, HttpWorker
from bndl.execute.core import WorkerKilledByTask
from bndl.execute.job import Job, ResultOf, RmiTask
from bndl.execute.scheduler import Adopted, Scheduler
from bndl.local import LocalCluster
from bndl.local.cluster import exit_cause
from bndl.wire import WorkerClient
from tests.helpers.waiting import wait_for_file, wait_until


def kill_my_worker(code: int) -> None:
    """Runs on a worker: end its process at once, as a segfault or the OOM killer would."""
    os._exit(code)


def test_a_task_that_kills_its_workers_fails_the_job_naming_it() -> None:
    with LocalCluster(workers=4) as ctx:
        job = Job(
            ctx, [RmiTask(ctx, "poison", kill_my_worker, (3,)), RmiTask(ctx, "ok", abs, (-1,))]
        )
        start = time.monotonic()
        with pytest.raises(WorkerKilledByTask) as info:
            list(ctx.execute(job, attempts=3))
        elapsed = time.monotonic() - start
        error = info.value
        assert error.task == "poison" and error.losses == 3 and error.limit == 3
        assert len(set(error.workers)) == 3
        assert error.causes == dict.fromkeys(error.workers, "exit code 3")
        assert "task 'poison' was running on 3 workers that were lost" in str(error)
        assert f"{error.workers[0]}: exit code 3" in str(error)
        assert elapsed < 10, f"took {elapsed:.1f} s"
        assert len(ctx.workers) == 1  # the fourth worker never ran it
        counts = job.counts()
        assert counts is not None and counts.worker_losses == 3 and counts.retried == 0


def test_exit_causes_name_codes_and_signals() -> None:
    assert exit_cause(None) is None
    assert exit_cause(0) == "exit code 0"
    assert exit_cause(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_cause(-200) == "killed by signal 200"


def test_a_killed_worker_says_it_was_killed_by_a_signal() -> None:
    cluster = LocalCluster(workers=1)
    with cluster:
        (process,) = cluster.processes
        assert process.loss_cause() is None  # still running (after a one-second wait)
        os.kill(process.pid, signal.SIGKILL)
        assert getattr(process.worker, "loss_cause")() == "killed by signal 9 (SIGKILL)"  # noqa: B009


def plus_one(x: int) -> int:
    return x + 1


def test_intermediate_results_stay_on_workers_and_are_fetched_on_demand(tmp_path: Path) -> None:
    go = str(tmp_path / "go")
    with LocalCluster(workers=2) as ctx:
        a = RmiTask(ctx, "a", abs, (-20,))
        b = RmiTask(ctx, "b", plus_one, (ResultOf("a"),)).depends_on(a)
        sink = RmiTask(ctx, "sink", wait_then_double, (go, ResultOf("b"))).depends_on(b)
        a.reply = b.reply = False
        results = ctx.execute(Job(ctx, [a, b, sink]), order_results=False)
        assert next(results) is a
        assert a.future is not None and a.future.result() != 20  # not sent to the driver
        assert a.result() == 20  # fetched from its worker
        assert next(results) is b and b.result() == 21
        Path(go).touch()
        assert next(results) is sink and sink.result() == 42


def wait_then_double(go: str, x: int) -> int:
    wait_for_file(go)
    return 2 * x


def touch_then_wait(started: str, go: str) -> int:
    """Runs on a worker: say it started, then wait for the test's go."""
    Path(started).touch()
    return wait_then_double(go, 7)


def old_driver_worker(cluster: LocalCluster) -> tuple[DriverLoop, HttpWorker]:
    """A second driver's view of the cluster's worker (the driver before a restart)."""
    (process,) = cluster.processes
    loop = DriverLoop(cluster.settings)
    client = WorkerClient(process.worker.name, process.worker.url, cluster.client_tls, loop.session)
    return loop, HttpWorker(client, loop)


def run_adopting(ctx: Any, tasks: list[RmiTask], adopted: dict[str, Adopted]) -> Scheduler:
    done: list[Any] = []
    scheduler = Scheduler(tasks, done.append, ctx.workers, adopted=adopted, job_key="new.1")
    scheduler.start()
    return scheduler


def test_a_new_driver_adopts_a_held_result_and_a_run_of_an_earlier_driver(tmp_path: Path) -> None:
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    cluster = LocalCluster(workers=1)
    with cluster as ctx:
        loop, old = old_driver_worker(cluster)
        try:
            assert old.run("old.1/held.1", abs, (-5,), {}, True).result(30) == 5
            old.run("old.1/running.1", touch_then_wait, (started, go), {}, True)
            wait_until(lambda: os.path.exists(started), what="the earlier driver's run started")
        finally:
            loop.close()  # the earlier driver goes away; its run goes on as an orphan
        held = RmiTask(ctx, "held", kill_my_worker, (1,))  # would kill the worker if run again
        running = RmiTask(ctx, "running", kill_my_worker, (1,))
        total = RmiTask(ctx, "total", operator.add, (ResultOf("held"), ResultOf("running")))
        total.depends_on(held, running)
        adopted = {
            "held": Adopted("local-0", "old.1/held.1", running=False),
            "running": Adopted("local-0", "old.1/running.1", running=True),
        }
        scheduler = run_adopting(ctx, [held, running, total], adopted)
        assert scheduler.counts().adopted == 1 and scheduler.counts().reattached == 1
        Path(go).touch()
        assert scheduler.wait(30) and scheduler.error is None
        assert held.result() == 5 and running.result() == 14
        assert total.result() == 19
        assert [t.run_key for t in (held, running, total)] == [
            "old.1/held.1",
            "old.1/running.1",
            "new.1/total.1",
        ]
