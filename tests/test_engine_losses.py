"""Poison tasks: a task running on workers that keep being lost fails the job, naming the task.

The core in events-in, decisions-out style, then the shell (causes asked of the lost workers).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from bndl.execute import MAX_WORKER_LOSSES
from bndl.execute.context import ExecutionContext
from bndl.execute.core import (
    Cancel,
    Decision,
    Dispatch,
    Failed,
    FailureKind,
    Finished,
    SchedulerCore,
    SchedulingError,
    TaskSpec,
    WorkerKilledByTask,
)
from bndl.execute.exceptions import NotConnected
from bndl.execute.job import Job, RmiTask
from bndl.execute.scheduler import Scheduler
from bndl.execute.scheduler import WorkerKilledByTask as ExportedError
from bndl.execute.workers import ThreadWorker


def dispatches(decisions: Sequence[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def failure(decisions: Sequence[Decision]) -> Failed:
    (failed,) = [d for d in decisions if isinstance(d, Failed)]
    return failed


def lost(run: Dispatch) -> tuple[object, int, BaseException, FailureKind]:
    return (run.task, run.run, ConnectionError(run.worker), FailureKind.LOST)


# ------------------------------------------------------------------------------------- the core


def test_a_task_that_loses_its_worker_three_times_fails_the_job_naming_it() -> None:
    core = SchedulerCore([TaskSpec("poison"), TaskSpec("fine")], ["w0", "w1", "w2", "w3"])
    out = core.start()
    seen = []
    for _ in range(3):
        (run,) = [d for d in dispatches(out) if d.task == "poison"]
        seen.append(run.worker)
        out = core.task_failed(*lost(run))
    failed = failure(out)
    error = failed.error
    assert isinstance(error, WorkerKilledByTask) and isinstance(error, SchedulingError)
    assert failed.task == "poison" and error.task == "poison"
    assert error.losses == 3 and error.limit == 3
    assert error.workers == seen and len(set(seen)) == 3
    assert str(error) == (
        f"task 'poison' was running on 3 workers that were lost ({', '.join(seen)}); it probably "
        "kills its worker (a crash, os._exit, or running out of memory); maxWorkerLosses is 3"
    )
    assert core.closed and core.counts().worker_losses == 3
    assert ExportedError is WorkerKilledByTask


def test_two_losses_of_three_are_forgiven_when_the_task_then_succeeds() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0", "w1", "w2"])
    out = core.start()
    for _ in range(2):
        (run,) = dispatches(out)
        out = core.task_failed(*lost(run))
        assert not [d for d in out if isinstance(d, Failed)]
    (run,) = dispatches(out)
    assert run.run == 3
    assert isinstance(core.task_succeeded("t", run.run)[-1], Finished)
    assert core.worker_losses("t") == ["w0", "w1"]
    assert core.counts().worker_losses == 2 and core.counts().lost_runs == 2


def test_uncharged_losses_rerun_the_task_without_limit() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0"], wait_for_workers=True)
    out = core.start()
    for _ in range(10):
        (run,) = dispatches(out)
        out = core.worker_lost("w0", charge=False)
        assert Cancel("t", "w0", run.run) in out
        assert not [d for d in out if isinstance(d, Failed)]
        out = core.worker_added("w0")
    assert core.worker_losses("t") == []
    assert core.counts().worker_losses == 0 and core.counts().lost_runs == 10


def test_a_charged_worker_loss_charges_every_task_running_there() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b"), TaskSpec("c")], ["w0", "w1"], concurrency=2)
    out = core.start()
    on_w0 = sorted(str(d.task) for d in dispatches(out) if d.worker == "w0")
    assert len(on_w0) == 2
    out = core.worker_lost("w0")
    assert not [d for d in out if isinstance(d, Failed)]
    for task in on_w0:
        assert core.worker_losses(task) == ["w0"]
    assert core.counts().worker_losses == 2


def test_a_lost_run_charges_the_other_runs_on_that_worker_too() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b")], ["w0"], concurrency=2, max_worker_losses=1)
    out = core.start()
    a = next(d for d in dispatches(out) if d.task == "a")
    out = core.task_failed(*lost(a))
    # The reporter reached its limit first; the job fails naming it, not "all workers lost".
    error = failure(out).error
    assert isinstance(error, WorkerKilledByTask) and error.task == "a"
    assert Cancel("b", "w0", 1) in out


def test_per_task_override_of_the_limit() -> None:
    tasks = [TaskSpec("fragile", max_worker_losses=1), TaskSpec("sturdy", max_worker_losses=5)]
    core = SchedulerCore(tasks, [f"w{i}" for i in range(6)], max_worker_losses=2)
    out = core.start()
    runs = {d.task: d for d in dispatches(out)}
    for _ in range(4):  # sturdy survives more losses than the job's limit
        out = core.task_failed(*lost(runs["sturdy"]))
        assert not [d for d in out if isinstance(d, Failed)]
        runs.update({d.task: d for d in dispatches(out)})
    out = core.task_failed(*lost(runs["fragile"]))
    error = failure(out).error
    assert isinstance(error, WorkerKilledByTask)
    assert (error.task, error.losses, error.limit) == ("fragile", 1, 1)
    assert "was running on 1 worker that was lost" in str(error)
    assert "maxWorkerLosses is 1" in str(error)


def test_a_worker_that_comes_back_and_is_lost_again_counts_again() -> None:
    core = SchedulerCore([TaskSpec("p")], ["w0"], wait_for_workers=True)
    out = core.start()
    for n in range(3):
        (run,) = dispatches(out)
        assert run.worker == "w0"
        out = core.task_failed(*lost(run))
        if n < 2:
            assert not [d for d in out if isinstance(d, Failed)]
            out = core.worker_added("w0")
    error = failure(out).error
    assert isinstance(error, WorkerKilledByTask)
    assert error.workers == ["w0", "w0", "w0"]


def test_late_events_of_an_abandoned_run_charge_nothing() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0", "w1"])
    (run,) = dispatches(core.start())
    core.worker_lost(run.worker)
    assert core.task_failed(*lost(run)) == []  # its stream broke after the loss was known
    assert core.worker_losses("t") == [run.worker]


def test_ordinary_errors_and_requeues_are_not_worker_losses() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0", "w1"], attempts=5, max_worker_losses=1)
    out = core.start()
    for kind in (FailureKind.ERROR, FailureKind.REQUEUE, FailureKind.ERROR):
        (run,) = dispatches(out)
        out = core.task_failed("t", run.run, ValueError(), kind)
    assert core.worker_losses("t") == [] and not core.closed


def test_the_limit_is_validated() -> None:
    with pytest.raises(ValueError, match="max_worker_losses must be at least 1"):
        SchedulerCore([TaskSpec("t")], ["w0"], max_worker_losses=0)


def test_the_error_gains_causes_and_survives_pickling() -> None:
    error = WorkerKilledByTask("p", ["local-0", "local-1"], 2)
    error.add_causes({"local-0": "exit code 3"})
    assert error.causes == {"local-0": "exit code 3"}
    assert "(local-0: exit code 3; local-1)" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.workers == error.workers and copy.task == "p"


# ------------------------------------------------------------------------------------ the shell


class DyingWorker(ThreadWorker):
    """Every run breaks its connection, as when the task kills the worker process."""

    queues_ahead = False  # its run() takes no lane

    def __init__(self, name: str, cause: str | None) -> None:
        super().__init__(name)
        self.cause = cause
        self.asked = 0

    def run(self, key: str, fn: Any, args: Any, kwargs: Any, keep: bool) -> Future[Any]:
        self.runs += 1
        future: Future[Any] = Future()
        future.set_exception(NotConnected(self.name, "connection reset"))
        return future

    def loss_cause(self) -> str | None:
        self.asked += 1
        if self.cause == "boom":
            raise RuntimeError("probe failed")
        return self.cause


def run_job(scheduler_args: dict[str, Any], tasks: list[RmiTask], workers: list[Any]) -> list[Any]:
    results: list[Any] = []
    finished = threading.Event()

    def done(item: Any) -> None:
        results.append(item)
        if item is None:
            finished.set()

    scheduler = Scheduler(tasks, done, workers, **scheduler_args)
    scheduler.start()
    assert finished.wait(10), "the job did not end"
    return results


def test_the_shell_asks_lost_workers_why_and_names_the_causes() -> None:
    workers = [
        DyingWorker("local-0", "exit code 3"),
        DyingWorker("local-1", "killed by signal 9 (SIGKILL)"),
        DyingWorker("local-2", None),
        DyingWorker("local-3", "boom"),
    ]
    results = run_job({"max_worker_losses": 4}, [RmiTask(None, "poison", abs, (1,))], workers)
    error = results[-2]
    assert results[-1] is None and isinstance(error, WorkerKilledByTask)
    assert error.task == "poison" and error.losses == 4
    assert sorted(error.workers) == [w.name for w in workers]
    assert error.causes == {"local-0": "exit code 3", "local-1": "killed by signal 9 (SIGKILL)"}
    assert "local-0: exit code 3" in str(error)
    assert "local-1: killed by signal 9 (SIGKILL)" in str(error)
    assert all(w.asked == 1 for w in workers)


def test_lose_worker_without_charge_is_forgiven_and_with_charge_counts() -> None:
    class Hanging(ThreadWorker):
        queues_ahead = False  # its run() takes no lane

        def run(self, key: str, fn: Any, args: Any, kwargs: Any, keep: bool) -> Future[Any]:
            self.runs += 1
            return Future()

    task = RmiTask(None, "t", abs, (-1,))
    task.max_worker_losses = 1
    results: list[Any] = []
    scheduler = Scheduler([task], results.append, [Hanging("a")], wait_for_workers=True)
    scheduler.start()
    scheduler.lose_worker("a", charge=False)
    scheduler.add_worker(Hanging("b"))
    assert not scheduler.finished and scheduler.counts().worker_losses == 0
    scheduler.lose_worker("b")
    assert scheduler.finished and scheduler.counts().worker_losses == 1
    assert isinstance(results[0], WorkerKilledByTask) and results[0].limit == 1


def test_the_context_reads_the_limit_from_config_and_arguments() -> None:
    ctx = ExecutionContext([DyingWorker(f"w{i}", None) for i in range(5)], {MAX_WORKER_LOSSES: 2})
    with pytest.raises(WorkerKilledByTask) as err:
        list(ctx.execute(Job(ctx, [RmiTask(ctx, "p", abs, (1,))])))
    assert err.value.losses == 2
    with pytest.raises(WorkerKilledByTask) as err:
        list(ctx.execute(Job(ctx, [RmiTask(ctx, "p", abs, (1,))]), max_worker_losses=4))
    assert err.value.losses == 4
    with pytest.raises(ValueError, match="max_worker_losses must be a whole number"):
        list(ctx.execute(Job(ctx, [RmiTask(ctx, "p", abs, (1,))]), max_worker_losses=0))


def test_a_worker_that_only_timed_out_is_lost_but_not_charged() -> None:
    """A heartbeat timeout (a busy or stopped worker, maybe alive) is no evidence against the
    task; a refused or closed connection is."""
    from concurrent.futures import Future

    from bndl.execute.exceptions import NotConnected
    from bndl.execute.job import RmiTask
    from bndl.execute.scheduler import Scheduler
    from bndl.execute.workers import ThreadWorker

    class Timing(ThreadWorker):
        queues_ahead = False  # its run() takes no lane

        def __init__(self, name: str, timed_out: bool) -> None:
            super().__init__(name)
            self.timed_out = timed_out

        def run(self, key: str, fn: Any, args: Any, kwargs: Any, keep: bool,
                reply: bool = True) -> Future[Any]:  # fmt: skip
            future: Future[Any] = Future()
            future.set_exception(NotConnected(self.name, "x", timed_out=self.timed_out))
            return future

    for timed_out, charged in ((True, 0), (False, 1)):
        task = RmiTask(None, "t", int)
        done: list[Any] = []
        scheduler = Scheduler([task], done.append, [Timing("w", timed_out)],
                              wait_for_workers=True, max_worker_losses=5)  # fmt: skip
        scheduler.start()
        counts = scheduler.counts()
        assert counts.worker_losses == charged and counts.lost_runs == 1, counts
        assert scheduler.workers == []
