"""Results that stay on the workers unless asked for: ``RmiTask.reply``/``keep`` and
``build_job(results="sinks", keep_all=...)``."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest

from bndl.execute.job import ResultOf, RmiTask
from bndl.execute.scheduler import Scheduler
from bndl.execute.workers import ThreadWorker
from bndl.jobs import build_job
from bndl.manifest import plan_job
from tests.helpers.waiting import wait_until


class RecordingWorker(ThreadWorker):
    """A ThreadWorker that records how each run was asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.asked: dict[str, tuple[bool, bool]] = {}

    def run(
        self,
        key: str,
        fn: Any,
        args: Any,
        kwargs: Any,
        keep: bool,
        reply: bool = True,
        lane: Any = None,
    ) -> Future[Any]:
        self.asked[key.rsplit("/", 1)[1]] = (keep, reply)
        return super().run(key, fn, args, kwargs, keep, reply, lane)


class NoFetch(ThreadWorker):
    fetch = None  # a worker that cannot send kept results


def test_unreplied_results_are_fetched_from_their_worker_while_the_job_runs() -> None:
    worker = RecordingWorker("w0")
    go = threading.Event()
    a = RmiTask(None, "a", int, ("20",))
    b = RmiTask(None, "b", lambda x: x + 1, (ResultOf("a"),)).depends_on(a)
    sink = RmiTask(None, "sink", lambda x: go.wait(10) and x * 2, (ResultOf("b"),)).depends_on(b)
    a.reply = b.reply = False
    done: list[Any] = []
    finished = threading.Event()

    def collect(item: Any) -> None:
        done.append(item)
        if item is None:
            finished.set()

    Scheduler([a, b, sink], collect, [worker], job_key="j").start()
    try:
        # While the sink waits, the intermediate results are on the worker, not the driver.
        wait_until(lambda: b.succeeded, timeout=10, what="b succeeded")
        assert a.future is not None and a.future.result() != 20  # a private marker, not the value
        assert a.result() == 20 and b.result() == 21
        assert "20" not in repr(a.future.result())
    finally:
        go.set()
    assert finished.wait(10)
    assert done[-1] is None and sink.result() == 42
    assert worker.asked == {"a.1": (True, False), "b.1": (True, False), "sink.1": (False, True)}
    with pytest.raises(KeyError):  # released with the job: results live as long as the job
        a.result()


def test_a_worker_without_fetch_says_where_the_result_stays() -> None:
    task = RmiTask(None, "a", int, ("1",))
    task.reply = False
    finished = threading.Event()
    Scheduler([task], lambda item: item is None and finished.set(), [NoFetch("w7")]).start()
    assert finished.wait(10)
    assert task.succeeded
    with pytest.raises(RuntimeError, match="stays on worker w7"):
        task.result()


def test_keep_overrides_the_default_of_keeping_only_what_dependents_need() -> None:
    worker = RecordingWorker("w0")
    a = RmiTask(None, "a", int, ("1",))
    b = RmiTask(None, "b", int, ("2",))
    b.keep = True
    finished = threading.Event()
    Scheduler([a, b], lambda item: item is None and finished.set(), [worker]).start()
    assert finished.wait(10)
    assert worker.asked == {"a.1": (False, True), "b.1": (True, True)}


def diamond_plan() -> Any:
    tasks = [
        {"id": "a", "call": "bndl_examples.diamond:number", "args": [3]},
        {"id": "b", "call": "bndl_examples.diamond:square", "args": [{"fromTask": "a"}]},
        {"id": "c", "call": "bndl_examples.diamond:square", "args": [{"fromTask": "a"}]},
    ]
    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "j"},
        "spec": {"tasks": tasks},
    }
    return plan_job(doc)


def test_build_job_replies_only_sinks_and_keeps_all_on_request() -> None:
    plan = diamond_plan()
    default = {t.id: (t.keep, t.reply) for t in build_job(None, plan).tasks}  # type: ignore[attr-defined]
    assert default == {"a": (None, True), "b": (None, True), "c": (None, True)}
    sinks = {t.id: (t.keep, t.reply) for t in build_job(None, plan, results="sinks").tasks}  # type: ignore[attr-defined]
    assert sinks == {"a": (None, False), "b": (None, True), "c": (None, True)}
    kept = build_job(None, plan, results="sinks", keep_all=True).tasks
    assert {t.id: (t.keep, t.reply) for t in kept} == {  # type: ignore[attr-defined]
        "a": (True, False),
        "b": (True, True),
        "c": (True, True),
    }
    with pytest.raises(ValueError, match="results must be"):
        build_job(None, plan, results="some")  # type: ignore[arg-type]


def test_planned_tasks_take_their_worker_loss_limit_from_the_manifest() -> None:
    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "j"},
        "spec": {
            "tasks": [
                {"id": "a", "call": "m:f", "maxWorkerLosses": 1},
                {"id": "b", "call": "m:f"},
            ]
        },
    }
    a, b = build_job(None, plan_job(doc)).tasks
    assert a.max_worker_losses == 1 and b.max_worker_losses is None
