"""Dispatch ahead in the scheduler core: queued runs beyond the slots, stealing, and losses."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bndl.execute.core import (
    Cancel,
    Decision,
    Dispatch,
    Failed,
    FailureKind,
    Finished,
    SchedulerCore,
    TaskSpec,
    Withdraw,
    WorkerKilledByTask,
)
from bndl.execute.exceptions import TaskCancelled


def dispatches(decisions: Sequence[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def per_worker(ds: Sequence[Dispatch]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for d in ds:
        out.setdefault(d.worker, []).append(d.task)
    return out


def independent(n: int) -> list[TaskSpec]:
    return [TaskSpec(i) for i in range(n)]


def test_each_worker_gets_its_slots_then_its_queue() -> None:
    core = SchedulerCore(independent(20), ["w0", "w1"], concurrency=2, ahead=3)
    first = dispatches(core.start())
    # the slots of every worker are filled before any worker's queue
    assert per_worker(first[:4]) == {"w0": [0, 1], "w1": [2, 3]}
    assert {w: len(ts) for w, ts in per_worker(first).items()} == {"w0": 5, "w1": 5}
    counts = core.counts()
    assert (counts.running, counts.queued, counts.ready) == (4, 6, 10)


def test_queued_runs_are_dispatched_only_once_every_slot_is_full() -> None:
    core = SchedulerCore(independent(3), ["w0", "w1"], concurrency=1, ahead=2)
    first = dispatches(core.start())
    assert per_worker(first) == {"w0": [0, 2], "w1": [1]}
    assert core.counts().queued == 1


def test_a_completion_tops_the_queue_up_and_the_job_finishes() -> None:
    core = SchedulerCore(independent(10), ["w0"], concurrency=1, ahead=2)
    pending = dispatches(core.start())
    assert [d.task for d in pending] == [0, 1, 2]
    done = 0
    while pending:
        d = pending.pop(0)
        out = core.task_succeeded(d.task, d.run)
        done += 1
        pending += dispatches(out)
        assert len(pending) <= 3  # one running, two queued, never more
    assert done == 10 and core.closed


def test_a_queue_is_topped_up_in_one_batch_once_it_is_down_to_half() -> None:
    core = SchedulerCore(independent(20), ["w0"], concurrency=1, ahead=4)
    first = dispatches(core.start())
    assert [d.task for d in first] == [0, 1, 2, 3, 4]
    assert dispatches(core.task_succeeded(0, 1)) == []  # 4 left: more than 1 + 4 // 2
    assert [d.task for d in dispatches(core.task_succeeded(1, 1))] == [5, 6]


def test_an_idle_worker_steals_the_newest_queued_run_once_its_worker_gave_it_back() -> None:
    core = SchedulerCore(independent(4), ["w0", "w1"], concurrency=1, ahead=2)
    first = dispatches(core.start())
    assert per_worker(first) == {"w0": [0, 2], "w1": [1, 3]}
    one = next(d for d in first if d.task == 1)
    out = core.task_succeeded(1, one.run)
    # w1's queue had task 3, which starts there; nothing to steal yet
    assert not [d for d in out if isinstance(d, Withdraw | Cancel)]
    three = next(d for d in first if d.task == 3)
    out = core.task_succeeded(3, three.run)
    # w1 is idle with a free slot while w0 has task 2 queued: it asks w0 for it back, once
    (withdraw,) = [d for d in out if isinstance(d, Withdraw)]
    assert (withdraw.task, withdraw.worker, withdraw.run) == (2, "w0", 1)
    assert dispatches(out) == [] and not [d for d in out if isinstance(d, Cancel)]
    zero = next(d for d in first if d.task == 0)
    assert not [d for d in core.task_succeeded(0, zero.run) if isinstance(d, Withdraw)]
    # w0 gave it back before starting it: it runs on the idle worker, uncharged
    out = core.task_failed(2, 1, TaskCancelled("withdrawn"), FailureKind.REQUEUE)
    (moved,) = dispatches(out)
    assert (moved.task, moved.run) == (2, 2)
    core.task_succeeded(2, moved.run)
    assert core.closed and core.counts().succeeded == 4 and core.failures(2) == 0


def test_a_run_asked_back_that_reached_a_slot_frees_the_idle_worker_to_steal_another() -> None:
    core = SchedulerCore(independent(4), ["w0", "w1"], concurrency=1, ahead=2)
    first = dispatches(core.start())
    assert per_worker(first) == {"w0": [0, 2], "w1": [1, 3]}
    core.task_succeeded(1, 1)
    out = core.task_succeeded(3, 1)  # w1 idle: asks w0 for task 2 back
    assert [d.task for d in out if isinstance(d, Withdraw)] == [2]
    # w0 finished task 0 and started task 2 before the withdraw came (it is ignored there): w1
    # may ask for nothing else (nothing else is queued), and no second withdraw of 2 is sent
    out = core.task_succeeded(0, 1)
    assert not [d for d in out if isinstance(d, Withdraw)]
    assert core.task_succeeded(2, 1)[-1] == Finished()


def test_a_stolen_run_that_had_started_goes_on_and_runs_once() -> None:
    core = SchedulerCore(independent(3), ["w0", "w1"], concurrency=1, ahead=1)
    first = dispatches(core.start())
    assert per_worker(first) == {"w0": [0, 2], "w1": [1]}
    out = core.task_succeeded(1, 1)
    (withdraw,) = [d for d in out if isinstance(d, Withdraw)]
    assert withdraw.task == 2
    # w0 had finished task 0 and started task 2 before the withdraw came: it just completes
    core.task_succeeded(0, 1)
    out = core.task_succeeded(2, 1)
    assert dispatches(out) == [] and core.closed


def test_stealing_honours_forbidden_workers() -> None:
    locality = {2: {"w1": -1.0}, 3: {"w1": -1.0}}
    core = SchedulerCore(
        [TaskSpec(i) for i in range(4)], ["w0", "w1"], concurrency=1, ahead=2, locality=locality
    )
    first = dispatches(core.start())
    assert per_worker(first) == {"w0": [0, 2, 3], "w1": [1]}
    one = next(d for d in first if d.task == 1)
    out = core.task_succeeded(1, one.run)
    assert dispatches(out) == [] and not [d for d in out if isinstance(d, Cancel)]


def test_a_queued_run_lost_with_its_worker_is_not_charged() -> None:
    core = SchedulerCore(independent(2), ["w0"], concurrency=1, ahead=1, max_worker_losses=1)
    first = dispatches(core.start())
    assert [d.task for d in first] == [0, 1]
    # the queued run's stream breaks first: its worker is lost, but it never ran there
    out = core.task_failed(1, first[1].run, ConnectionError(), FailureKind.LOST)
    failed = [d for d in out if isinstance(d, Failed)]
    assert len(failed) == 1 and isinstance(failed[0].error, WorkerKilledByTask)
    assert failed[0].task == 0  # the running task is charged (limit 1), not the queued one
    assert core.worker_losses(1) == []


def test_worker_lost_charges_only_its_running_runs() -> None:
    core = SchedulerCore(independent(6), ["w0", "w1"], concurrency=2, ahead=1)
    first = dispatches(core.start())
    on_w0 = per_worker(first)["w0"]
    assert len(on_w0) == 3
    core.worker_lost("w0")
    assert [core.worker_losses(t) for t in on_w0] == [["w0"], ["w0"], []]
    assert core.counts().worker_losses == 2


def test_ahead_zero_is_the_classic_scheduler() -> None:
    core = SchedulerCore(independent(10), ["w0", "w1"], concurrency=2)
    assert len(dispatches(core.start())) == 4
    assert core.counts().queued == 0


def test_negative_ahead_is_refused() -> None:
    with pytest.raises(ValueError, match="ahead must not be negative"):
        SchedulerCore(independent(1), ["w0"], ahead=-1)
