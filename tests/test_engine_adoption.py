"""A new driver adopts what workers hold and run (an operator that restarted): the core, then the
shell on in-process workers, then run keys that map back to their tasks."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from bndl.execute.core import (
    Decision,
    Dispatch,
    Emit,
    FailureKind,
    Finished,
    SchedulerCore,
    TaskSpec,
)
from bndl.execute.job import ResultOf, RmiTask, parse_run_key, task_keys
from bndl.execute.scheduler import Adopted, Scheduler
from bndl.execute.workers import ThreadWorker
from bndl.wire.errors import RunNotFound as WireRunNotFound


def dispatches(decisions: Sequence[Decision]) -> list[Dispatch]:
    return [d for d in decisions if isinstance(d, Dispatch)]


def emitted(decisions: Sequence[Decision]) -> list[object]:
    return [d.task for d in decisions if isinstance(d, Emit)]


# ------------------------------------------------------------------------------------- the core


def test_held_tasks_are_emitted_not_run_and_their_dependents_run() -> None:
    tasks = [TaskSpec("a"), TaskSpec("b"), TaskSpec("c", ["a", "b"])]
    core = SchedulerCore(tasks, ["w0", "w1"], held={"a": "w1", "b": "w1"})
    out = core.start()
    assert emitted(out) == ["a", "b"]
    assert [(d.task, d.run) for d in dispatches(out)] == [("c", 1)]
    assert core.holder("a") == "w1"
    counts = core.counts()
    assert (counts.adopted, counts.reattached, counts.succeeded) == (2, 0, 2)


def test_a_held_task_on_a_worker_that_is_not_live_runs_again() -> None:
    core = SchedulerCore([TaskSpec("a")], ["w0"], held={"a": "gone"})
    out = core.start()
    assert emitted(out) == [] and dispatches(out) == [Dispatch("a", "w0", 1)]
    assert core.counts().adopted == 0


def test_only_held_tasks_finish_the_job_at_once() -> None:
    core = SchedulerCore([TaskSpec("a")], ["w0"], held={"a": "w0"})
    out = core.start()
    assert emitted(out) == ["a"] and isinstance(out[-1], Finished)


def test_running_tasks_are_dispatched_to_their_worker_as_run_one_and_fill_its_slots() -> None:
    tasks = [TaskSpec("a"), TaskSpec("b"), TaskSpec("c"), TaskSpec("d")]
    core = SchedulerCore(tasks, ["w0", "w1"], running={"c": "w0", "d": "w0"})
    out = core.start()
    # Both adopted runs go on, beyond w0's one slot; w0 gets nothing more, w1 the first ready.
    assert dispatches(out) == [
        Dispatch("c", "w0", 1),
        Dispatch("d", "w0", 1),
        Dispatch("a", "w1", 1),
    ]
    assert core.counts().reattached == 2 and core.counts().running == 3
    out = core.task_succeeded("c", 1)
    assert emitted(out) == ["c"] and dispatches(out) == []  # w0 still runs d
    out = core.task_succeeded("d", 1)
    assert emitted(out) == ["d"] and dispatches(out) == [Dispatch("b", "w0", 1)]


def test_a_running_task_on_a_worker_that_is_not_live_is_dispatched_normally() -> None:
    core = SchedulerCore([TaskSpec("a")], ["w0"], running={"a": "gone"})
    assert dispatches(core.start()) == [Dispatch("a", "w0", 1)]
    assert core.counts().reattached == 0


def test_an_adopted_run_that_is_requeued_runs_again() -> None:
    core = SchedulerCore([TaskSpec("a"), TaskSpec("b", ["a"])], ["w0"], running={"a": "w0"})
    assert dispatches(core.start()) == [Dispatch("a", "w0", 1)]
    out = core.task_failed("a", 1, LookupError(), FailureKind.REQUEUE)
    assert dispatches(out) == [Dispatch("a", "w0", 2)]
    assert core.failures("a") == 0 and core.worker_losses("a") == []


# ------------------------------------------------------------------------------------ the shell


class RunNotFound(Exception):
    """Like ``bndl.wire.errors.RunNotFound``: the shell matches it by name, not by import."""


class AttachingWorker(ThreadWorker):
    """A ThreadWorker that can attach to runs an earlier driver started (their futures)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.attached: dict[str, Future[Any]] = {}
        self.replies: list[bool] = []

    def attach(self, key: str, reply: bool) -> Future[Any]:
        self.replies.append(reply)
        future: Future[Any] = Future()
        self.attached[key] = future
        return future


class Collector:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.finished = threading.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        if item is None:
            self.finished.set()

    @property
    def errors(self) -> list[BaseException]:
        return [i for i in self.items if isinstance(i, BaseException)]


def never(*args: Any) -> Any:
    raise AssertionError("an adopted task ran again")


def test_a_held_task_is_not_run_again_and_its_dependent_reads_it_from_the_worker() -> None:
    w0 = ThreadWorker("w0")
    assert w0.run("old.1/a.1", int, ("41",), {}, True).result(5) == 41  # the earlier driver's run
    a = RmiTask(None, "a", never)
    b = RmiTask(None, "b", lambda x: x + 1, (ResultOf("a"),)).depends_on(a)
    done = Collector()
    adopted = {"a": Adopted("w0", "old.1/a.1", running=False)}
    scheduler = Scheduler([a, b], done, [w0], adopted=adopted, job_key="old.2")
    scheduler.start()
    assert done.finished.wait(10)
    assert done.items == [a, b, None]
    assert w0.runs == 2  # the earlier run and b
    assert a.run_key == "old.1/a.1" and a.result() == 41 and b.result() == 42
    assert scheduler.counts().adopted == 1


def test_an_adopted_run_is_attached_to_not_started_and_its_outcome_accepted() -> None:
    w0 = AttachingWorker("w0")
    a = RmiTask(None, "a", never)
    a.reply = False
    b = RmiTask(None, "b", lambda x: x * 2, (ResultOf("a"),)).depends_on(a)
    done = Collector()
    adopted = {"a": Adopted("w0", "old.1/a.1", running=True)}
    scheduler = Scheduler([a, b], done, [w0], adopted=adopted, job_key="old.2")
    scheduler.start()
    assert list(w0.attached) == ["old.1/a.1"] and w0.replies == [False] and w0.runs == 0
    assert scheduler.counts().reattached == 1 and a.pending
    w0.run("old.1/a.1", int, ("21",), {}, True).result(5)  # the run ends; the worker keeps it
    w0.attached["old.1/a.1"].set_result(None)
    assert done.finished.wait(10)
    assert done.items == [a, b, None]
    assert a.result() == 21 and b.result() == 42
    assert a.executed_on == ["w0"] and a.attempts == 1


@pytest.mark.parametrize(
    "not_found", [RunNotFound("old.1/a.1"), WireRunNotFound("old.1/a.1", "w0")]
)
def test_a_run_the_worker_does_not_know_is_run_again_uncharged(not_found: Exception) -> None:
    w0 = AttachingWorker("w0")
    a = RmiTask(None, "a", int, ("7",))
    done = Collector()
    scheduler = Scheduler(
        [a], done, [w0], adopted={"a": Adopted("w0", "old.1/a.1", running=True)}, job_key="new"
    )
    scheduler.start()
    w0.attached["old.1/a.1"].set_exception(not_found)
    assert done.finished.wait(10)
    assert done.errors == [] and a.result() == 7
    assert a.run_key == "new/a.2"  # the second run of the task, under this driver's key
    counts = scheduler.counts()
    assert counts.retried == 0 and counts.worker_losses == 0 and w0.runs == 1


def test_a_worker_without_attach_fails_the_adopted_task() -> None:
    done = Collector()
    task = RmiTask(None, "a", int, ("7",))
    adopted = {"a": Adopted("w0", "old/a.1", running=True)}
    Scheduler([task], done, [ThreadWorker("w0")], adopted=adopted).start()
    assert done.finished.wait(10)
    (error,) = done.errors
    assert isinstance(error, NotImplementedError) and "cannot attach" in str(error)


def test_adoption_of_unknown_tasks_or_workers_is_ignored() -> None:
    done = Collector()
    task = RmiTask(None, "a", int, ("7",))
    adopted = {"zz": Adopted("w0", "old/zz.1", False), "a": Adopted("gone", "old/a.1", False)}
    scheduler = Scheduler([task], done, [ThreadWorker("w0")], adopted=adopted)
    scheduler.start()
    assert done.finished.wait(10)
    assert task.result() == 7 and scheduler.counts().adopted == 0


# --------------------------------------------------------------------------------- run keys


def test_run_keys_embed_task_ids_and_parse_back() -> None:
    ids = ["load-0", "reduce.all", "sum_1"]
    keys = task_keys("1a2b3c4d.x7", ids)
    assert keys == ["1a2b3c4d.x7/load-0", "1a2b3c4d.x7/reduce.all", "1a2b3c4d.x7/sum_1"]
    for tid, key in zip(ids, keys, strict=True):
        assert parse_run_key("1a2b3c4d", f"{key}.3") == tid
        assert parse_run_key("1a2b3c4d.x7", f"{key}.12") == tid
    assert parse_run_key("ffffffff", "1a2b3c4d.x7/load-0.1") is None
    assert parse_run_key("1a2b3c4d", "1a2b3c4d.x7/load-0") is None  # no attempt
    assert parse_run_key("1a2b3c4d", "1a2b3c4d.x7") is None


def test_jobs_with_other_ids_are_keyed_by_position() -> None:
    assert task_keys("j", [("a", 1), "b"]) == ["j/0", "j/1"]
    assert task_keys("j", ["a b", "c"]) == ["j/0", "j/1"]
    with pytest.raises(ValueError, match="may not contain '/'"):
        task_keys("a/b", ["x"])


def test_the_scheduler_names_runs_after_their_tasks() -> None:
    w0 = ThreadWorker("w0")
    tasks = [RmiTask(None, "first", int, ("1",)), RmiTask(None, "second", int, ("2",))]
    done = Collector()
    Scheduler(tasks, done, [w0], job_key="uid12345.r1").start()
    assert done.finished.wait(10)
    assert [t.run_key for t in tasks] == ["uid12345.r1/first.1", "uid12345.r1/second.1"]
    assert [parse_run_key("uid12345", t.run_key) for t in tasks] == ["first", "second"]


def test_a_detached_scheduler_dispatches_cancels_and_releases_nothing() -> None:
    """An operator that stops leaves the runs to the next one: nothing more reaches the workers."""
    import threading
    from concurrent.futures import Future

    from bndl.execute.scheduler import Scheduler
    from bndl.execute.workers import ThreadWorker

    class Recording(ThreadWorker):
        queues_ahead = False  # its run() takes no lane

        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.calls: list[str] = []
            self.futures: list[Future[Any]] = []

        def run(self, key: str, fn: Any, args: Any, kwargs: Any, keep: bool,
                reply: bool = True, lane: Any = None) -> Future[Any]:  # fmt: skip
            self.calls.append(f"run {key}")
            future: Future[Any] = Future()
            self.futures.append(future)
            return future

        def cancel(self, key: str) -> None:
            self.calls.append(f"cancel {key}")

        def release(self, prefix: str) -> None:
            self.calls.append(f"release {prefix}")

    w = Recording("w")
    a, b = RmiTask(None, "a", int), RmiTask(None, "b", int)
    b.depends_on(a)
    done: list[Any] = []
    finished = threading.Event()
    scheduler = Scheduler([a, b], done.append, [w], wait_for_workers=True, job_key="k")
    scheduler.start()
    assert w.calls == ["run k/a.1"]
    scheduler.detach()
    w.futures[0].set_result(1)  # the run ends after the driver detached
    scheduler.lose_worker("w")
    scheduler.abort()
    assert w.calls == ["run k/a.1"] and done == [] and not finished.is_set()
    assert scheduler.detached
