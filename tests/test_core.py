"""The scheduler core, events in and decisions out: one test per rule and per fixed bug."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bndl.execute.core import (
    Cancel,
    Cancelled,
    Decision,
    Dispatch,
    Emit,
    Failed,
    FailureKind,
    Finished,
    SchedulerCore,
    SchedulingError,
    TaskSpec,
)


def dispatches(decisions: Sequence[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def emitted(decisions: Sequence[Decision]) -> list[object]:
    return [d.task for d in decisions if isinstance(d, Emit)]


def independent(n: int) -> list[TaskSpec]:
    return [TaskSpec(i) for i in range(n)]


def test_concurrency_is_exact_from_the_first_stage() -> None:
    core = SchedulerCore(independent(20), ["w0", "w1"], concurrency=3)
    first = dispatches(core.start())
    assert len(first) == 6
    assert sorted(d.worker for d in first) == ["w0"] * 3 + ["w1"] * 3
    running = {"w0": 3, "w1": 3}
    pending = list(first)
    while pending:
        d = pending.pop(0)
        out = core.task_succeeded(d.task, d.run)
        running[d.worker] -= 1
        for nxt in dispatches(out):
            running[nxt.worker] += 1
            pending.append(nxt)
        assert max(running.values()) <= 3
    assert core.counts().succeeded == 20


def test_second_stage_gets_all_slots() -> None:
    tasks = [TaskSpec("a"), *[TaskSpec(i, ["a"]) for i in range(8)]]
    core = SchedulerCore(tasks, ["w0", "w1"], concurrency=2)
    (a,) = dispatches(core.start())
    out = core.task_succeeded("a", a.run)
    assert emitted(out) == ["a"]
    second = dispatches(out)
    assert sorted(d.worker for d in second) == ["w0", "w0", "w1", "w1"]


def test_task_forbidden_everywhere_fails_at_start_naming_the_task() -> None:
    tasks = [TaskSpec("ok"), TaskSpec("picky", ["ok"])]
    core = SchedulerCore(tasks, ["w0", "w1"], locality={"picky": {"w0": -1, "w1": -1}})
    out = core.start()
    assert not dispatches(out)
    (failed,) = [d for d in out if isinstance(d, Failed)]
    assert isinstance(failed.error, SchedulingError)
    assert "'picky'" in str(failed.error)
    assert failed.task == "picky"


def run_all(core: SchedulerCore, out: list[Decision]) -> list[Dispatch]:
    """Let every dispatched run succeed until the job ends; returns all dispatches."""
    seen = dispatches(out)
    queue = list(seen)
    while queue:
        d = queue.pop(0)
        more = dispatches(core.task_succeeded(d.task, d.run))
        seen += more
        queue += more
    return seen


def test_required_locality_runs_only_on_allowed_workers() -> None:
    locality = {i: {"w0": -1.0} for i in range(6)}
    core = SchedulerCore(independent(6), ["w0", "w1"], concurrency=2, locality=locality)
    runs = run_all(core, core.start())
    assert {d.worker for d in runs} == {"w1"} and len(runs) == 6
    assert core.closed


def test_preferred_locality_wins_over_priority() -> None:
    tasks = [TaskSpec("first", priority=0), TaskSpec("local", priority=9)]
    core = SchedulerCore(tasks, ["w0"], locality={"local": {"w0": 5}})
    (d,) = dispatches(core.start())
    assert d.task == "local"


def test_preferred_path_honours_a_failed_worker() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0", "w1"], attempts=2, locality={"t": {"w0": 3}})
    (d,) = dispatches(core.start())
    assert d.worker == "w0"
    (retry,) = dispatches(core.task_failed("t", d.run, ValueError("boom")))
    assert retry.worker == "w1"


def test_retry_falls_back_to_the_same_worker_on_a_one_worker_cluster() -> None:
    error = ValueError("boom")
    core = SchedulerCore([TaskSpec("t")], ["only"], attempts=3)
    (d,) = dispatches(core.start())
    (d2,) = dispatches(core.task_failed("t", d.run, error))
    assert d2.worker == "only" and d2.run == d.run + 1
    (d3,) = dispatches(core.task_failed("t", d2.run, error))
    out = core.task_failed("t", d3.run, error)
    (failed,) = [x for x in out if isinstance(x, Failed)]
    assert failed.error is error and failed.task == "t"
    assert core.failures("t") == 3


def test_each_task_is_emitted_once_even_when_recomputed() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b", ["a"])], ["w0", "w1"])
    (a,) = dispatches(core.start())
    out = core.task_succeeded("a", a.run)
    assert emitted(out) == ["a"]
    (b,) = dispatches(out)
    out = core.dependencies_failed("b", b.run, {a.worker: ["a"]})
    (a2,) = dispatches(out)
    assert a2.task == "a"
    out = core.task_succeeded("a", a2.run)
    assert emitted(out) == []
    (b2,) = dispatches(out)
    out = core.task_succeeded("b", b2.run)
    assert emitted(out) == ["b"]
    assert isinstance(out[-1], Finished)
    assert core.counts().recomputed == 1


def test_lost_workers_and_lost_dependencies_are_never_charged() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b", ["a"])], ["w0", "w1"], attempts=1)
    (a,) = dispatches(core.start())
    out = core.task_failed("a", a.run, ConnectionError(), FailureKind.LOST)
    (a2,) = dispatches(out)
    assert a2.worker != a.worker
    (b,) = dispatches(core.task_succeeded("a", a2.run))
    out = core.dependencies_failed("b", b.run, {a2.worker: ["a"]})
    assert not any(isinstance(d, Failed) for d in out)
    assert core.failures("a") == 0 and core.failures("b") == 0


def test_dependencies_failed_reruns_exactly_the_named_outputs_and_not_succeeded_downstream() -> (
    None
):
    # m0, m1 on one worker, m2 on the other; r depends on all three; x depends on m2 only.
    tasks = [TaskSpec("m0"), TaskSpec("m1"), TaskSpec("m2"), TaskSpec("x", ["m2"])]
    tasks.append(TaskSpec("r", ["m0", "m1", "m2"]))
    core = SchedulerCore(tasks, ["w0", "w1"], concurrency=2)
    first = dispatches(core.start())
    holder = {}
    queue = list(first)
    r_run = None
    while queue:
        d = queue.pop(0)
        if d.task == "r":
            r_run = d
            continue
        holder[d.task] = d.worker
        queue += dispatches(core.task_succeeded(d.task, d.run))
    assert r_run is not None and core.counts().succeeded == 4
    lost_worker = holder["m0"]
    lost = [t for t in ("m0", "m1", "m2") if holder[t] == lost_worker]
    out = core.dependencies_failed("r", r_run.run, {lost_worker: lost})
    rerun = sorted(d.task for d in dispatches(out))
    assert rerun == sorted(lost)
    assert "x" not in rerun and "r" not in rerun
    later: list[Dispatch] = []
    for d in dispatches(out):
        later += dispatches(core.task_succeeded(d.task, d.run))
    assert [d.task for d in later] == ["r"]
    out = core.task_succeeded("r", later[0].run)
    assert isinstance(out[-1], Finished)


def test_stale_dependency_report_is_ignored_and_the_reporter_reruns() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b", ["a"])], ["w0", "w1"])
    (a,) = dispatches(core.start())
    (b,) = dispatches(core.task_succeeded("a", a.run))
    other = "w1" if a.worker == "w0" else "w0"
    (again,) = dispatches(core.dependencies_failed("b", b.run, {other: ["a"]}))
    assert again.task == "b"


def test_none_worker_is_not_a_lost_worker() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b", ["a"])], ["only"], succeeded=["a"])
    out = core.start()
    assert emitted(out) == ["a"]
    (b,) = dispatches(out)
    out = core.dependencies_failed("b", b.run, {None: ["a"]})
    (a,) = dispatches(out)
    assert a.task == "a" and a.worker == "only"
    assert core.workers == ["only"]
    (b2,) = dispatches(core.task_succeeded("a", a.run))
    assert isinstance(core.task_succeeded("b", b2.run)[-1], Finished)


def test_unknown_ids_in_dependencies_failed_fail_the_job_clearly() -> None:
    core = SchedulerCore([TaskSpec("a")], ["w0"])
    (a,) = dispatches(core.start())
    out = core.dependencies_failed("a", a.run, {"w0": ["ghost"]})
    (failed,) = [d for d in out if isinstance(d, Failed)]
    assert "ghost" in str(failed.error) and "not tasks of this job" in str(failed.error)


def test_indirect_dependency_is_awaited_before_the_reporter_reruns() -> None:
    tasks = [TaskSpec("a"), TaskSpec("barrier", ["a"]), TaskSpec("r", ["barrier"])]
    core = SchedulerCore(tasks, ["w0"])
    (a,) = dispatches(core.start())
    (barrier,) = dispatches(core.task_succeeded("a", a.run))
    (r,) = dispatches(core.task_succeeded("barrier", barrier.run))
    out = core.dependencies_failed("r", r.run, {"w0": ["a"]})
    assert [d.task for d in dispatches(out)] == ["a"]
    out = core.task_succeeded("a", dispatches(out)[0].run)
    assert [d.task for d in dispatches(out)] == ["r"]


def test_stale_events_from_an_abandoned_run_are_ignored() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0", "w1"])
    (d,) = dispatches(core.start())
    out = core.worker_lost(d.worker)
    assert Cancel("t", d.worker, d.run) in out
    (d2,) = dispatches(out)
    assert core.task_succeeded("t", d.run) == []
    assert core.counts().succeeded == 0
    assert isinstance(core.task_succeeded("t", d2.run)[-1], Finished)


def test_all_workers_lost_fails_unless_waiting_for_workers() -> None:
    core = SchedulerCore([TaskSpec("t")], ["w0"])
    core.start()
    out = core.worker_lost("w0")
    assert any(isinstance(d, Failed) and "all workers" in str(d.error) for d in out)

    waiting = SchedulerCore([TaskSpec("t")], ["w0"], wait_for_workers=True)
    waiting.start()
    assert not any(isinstance(d, Failed) for d in waiting.worker_lost("w0"))
    (d,) = dispatches(waiting.worker_added("w0"))
    assert isinstance(waiting.task_succeeded("t", d.run)[-1], Finished)


def test_losing_the_only_allowed_worker_fails_naming_the_task() -> None:
    core = SchedulerCore(
        [TaskSpec("a"), TaskSpec("b", ["a"])], ["w0", "w1"], locality={"b": {"w1": -1}}
    )
    core.start()
    out = core.worker_lost("w0")
    assert any(isinstance(d, Failed) and "'b'" in str(d.error) for d in out)


def test_everything_already_done_finishes_at_once() -> None:
    core = SchedulerCore(independent(3), ["w0"], succeeded=[0, 1, 2])
    out = core.start()
    assert emitted(out) == [0, 1, 2]
    assert isinstance(out[-1], Finished)


def test_cancel_stops_every_run_and_ends_the_job() -> None:
    core = SchedulerCore(independent(4), ["w0", "w1"])
    runs = dispatches(core.start())
    out = core.cancel()
    assert {(c.task, c.run) for c in out if isinstance(c, Cancel)} == {
        (d.task, d.run) for d in runs
    }
    assert isinstance(out[-1], Cancelled)
    assert core.task_succeeded(runs[0].task, runs[0].run) == []


def test_workers_joining_later_get_work_and_their_locality() -> None:
    core = SchedulerCore(independent(2), [], wait_for_workers=True, concurrency=1)
    assert core.start() == []
    out = core.worker_added("late", {0: -1})
    assert [(d.task, d.worker) for d in dispatches(out)] == [(1, "late")]
    out = core.worker_added("other")
    assert [(d.task, d.worker) for d in dispatches(out)] == [(0, "other")]


def test_bad_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="duplicate task id 'a'"):
        SchedulerCore([TaskSpec("a"), TaskSpec("a")], ["w"])
    with pytest.raises(ValueError, match="depends on 'zz'"):
        SchedulerCore([TaskSpec("a", ["zz"])], ["w"])
    with pytest.raises(ValueError, match="concurrency"):
        SchedulerCore([TaskSpec("a")], ["w"], concurrency=0)
    out = SchedulerCore([TaskSpec("a")], []).start()
    assert isinstance(out[-1], Failed) and "no workers" in str(out[-1].error)


def test_all_to_all_edges_are_cheap() -> None:
    n = 300
    tasks = [TaskSpec(("map", i)) for i in range(n)]
    tasks += [TaskSpec(("reduce", i), [("map", j) for j in range(n)]) for i in range(n)]
    core = SchedulerCore(tasks, ["w0", "w1"], concurrency=4)
    queue = dispatches(core.start())
    done = 0
    while queue:
        d = queue.pop()
        out = core.task_succeeded(d.task, d.run)
        done += 1
        queue += dispatches(out)
    assert done == 2 * n and core.closed
