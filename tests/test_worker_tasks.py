"""Tasks on a real worker process: results, failures with remote tracebacks, the ways a task can
end badly (each a clear error while the worker keeps serving), the task context, held results,
synchronous calls and cancellation."""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bndl.execute.exceptions import TaskCancelled
from bndl.wire import (
    Completion,
    ExceptionNotPicklable,
    NotFound,
    ProtocolError,
    RemoteTraceback,
    ResultNotPicklable,
    TaskAborted,
    TaskItem,
    TaskNotDecodable,
    WorkerClient,
)
from bndl.worker import current_worker, task_context
from tests.helpers.waiting import wait_until_async
from tests.test_worker_harness import (
    WorkerProcess,
    client,
    run,
    running_on,
    running_worker,
)


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-tasks") as w:
        yield w


async def run_all(c: WorkerClient, *items: TaskItem) -> dict[str, Completion]:
    return {completion.key: completion async for completion in c.run(items)}


async def run_one(c: WorkerClient, item: TaskItem) -> Completion:
    (completion,) = (await run_all(c, item)).values()
    return completion


async def still_serves(c: WorkerClient) -> None:
    completion = await run_one(c, TaskItem(f"alive-{os.urandom(4).hex()}", sum, ([1, 2, 3],)))
    assert completion.ok and completion.value == 6


def fail_deep() -> None:
    def inner() -> None:
        raise ValueError("boom from the worker")

    inner()


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this on purpose")


class UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("unpicklable error")
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickles but does not unpickle
        super().__init__(a + b)


def busy(marker: str) -> None:
    Path(marker).write_text("started")
    while True:
        pass


def test_task_runs_and_returns(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            done = await run_all(
                c,
                TaskItem("pow", pow, (2, 10)),
                TaskItem("kw", sorted, ([3, 1, 2],), {"reverse": True}),
                TaskItem("lambda", lambda x: {"x": x * 2}, (21,)),
            )
            assert done["pow"] == Completion("pow", True, 1024)
            assert done["kw"].value == [3, 2, 1]
            assert done["lambda"].value == {"x": 42}

    run(check)


def test_many_tasks_in_one_request(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            items = [TaskItem(f"many-{i}", abs, (-i,)) for i in range(2000)]
            done = await run_all(c, *items)
            assert {k: v.value for k, v in done.items()} == {f"many-{i}": i for i in range(2000)}

    run(check)


def test_concurrent_single_task_runs(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:

            async def one(i: int) -> object:
                (completion,) = [x async for x in c.run([TaskItem(f"conc-{i}", abs, (-i,))])]
                return completion.value

            assert await asyncio.gather(*(one(i) for i in range(50))) == list(range(50))

    run(check)


def test_exception_comes_back_with_the_remote_traceback(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            completion = await run_one(c, TaskItem("fails", fail_deep))
            error = completion.error
            assert isinstance(error, ValueError) and str(error) == "boom from the worker"
            assert isinstance(error.__cause__, RemoteTraceback)
            assert "in inner" in error.__cause__.traceback
            assert "in fail_deep" in error.remote_traceback  # type: ignore[attr-defined]
            assert "bndl/worker" not in error.remote_traceback  # type: ignore[attr-defined]
            printed = "".join(traceback.format_exception(error))
            assert "boom from the worker" in printed and "in inner" in printed

    run(check)


@pytest.mark.parametrize(
    ("fn", "error_type", "message"),
    [
        (Unpicklable, ResultNotPicklable, "result of task bad is not picklable: Unpicklable"),
        (
            lambda: (_ for _ in ()).throw(UnpicklableError()),
            ExceptionNotPicklable,
            "exception of task bad is not picklable",
        ),
        (
            lambda: (_ for _ in ()).throw(NeedsTwoArgs(1, 2)),
            ExceptionNotPicklable,
            "NeedsTwoArgs",
        ),
        (sys.exit, TaskAborted, "task bad raised SystemExit"),
        (
            lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
            TaskAborted,
            "KeyboardInterrupt",
        ),
    ],
    ids=["result", "exception", "exception-unpickling", "SystemExit", "KeyboardInterrupt"],
)
def test_bad_endings_are_clear_errors_and_the_worker_keeps_serving(
    worker: WorkerProcess, fn: Any, error_type: type[Exception], message: str
) -> None:
    async def check() -> None:
        async with client(worker) as c:
            completion = await run_one(c, TaskItem("bad", fn))
            assert isinstance(completion.error, error_type)
            assert message in str(completion.error)
            assert isinstance(completion.error.__cause__, RemoteTraceback)
            await still_serves(c)

    run(check)


def test_function_the_worker_cannot_import(
    worker: WorkerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "driver_only_module.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_module  # type: ignore[import-not-found]

    async def check() -> None:
        async with client(worker) as c:
            done = await run_all(
                c, TaskItem("unimportable", driver_only_module.f), TaskItem("fine", abs, (-5,))
            )
            error = done["unimportable"].error
            assert isinstance(error, TaskNotDecodable)
            assert "No module named 'driver_only_module'" in str(error)
            assert "task unimportable" in str(error)
            assert done["fine"].value == 5  # its batch-mate is unaffected
            await still_serves(c)

    run(check)


def test_unpicklable_arguments_fail_on_the_driver_without_a_request(
    worker: WorkerProcess,
) -> None:
    async def check() -> None:
        async with client(worker) as c:
            done = await run_all(c, TaskItem("bad-arg", id, (Unpicklable(),)), TaskItem("ok", int))
            assert isinstance(done["bad-arg"].error, TaskNotDecodable)
            assert "could not be pickled" in str(done["bad-arg"].error)
            assert done["ok"].value == 0

    run(check)


def _context_probe() -> tuple[str, str, dict[str, Any]]:
    context = task_context()
    context["seen"] = True
    worker = current_worker()
    return worker.name, worker.url, dict(context)


def test_task_context_inside_a_task_only(worker: WorkerProcess) -> None:
    with pytest.raises(RuntimeError, match="working outside of task context"):
        current_worker()
    with pytest.raises(RuntimeError, match="working outside of task context"):
        task_context()

    async def check() -> None:
        async with client(worker) as c:
            first, second = (
                await run_all(c, *(TaskItem(k, _context_probe) for k in "ab"))
            ).values()
            assert first.value == (worker.name, worker.url, {"seen": True})
            assert second.value == first.value  # each task had a fresh dict
            assert (await c.call(_context_probe))[0] == worker.name

    run(check)


def test_kept_results_are_held_fetched_and_released(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            done = await run_all(
                c,
                TaskItem("job1/a", list, (range(3),), keep=True),
                TaskItem("job1/b", str, (7,), keep=True, reply=False),
                TaskItem("job2/c", str, (8,), keep=True),
                TaskItem("not-kept", str, (9,)),
            )
            assert done["job1/a"].value == [0, 1, 2]
            assert done["job1/b"] == Completion("job1/b", True, None)  # not sent back
            held = await c.held()
            assert {"job1/a", "job1/b", "job2/c"} <= set(held["held"])
            assert "not-kept" not in held["held"]
            assert await c.fetch("job1/b") == "7"
            many = await c.fetch_many(["job1/a", "job1/b", "not-kept"])
            assert {k: pickle.loads(v) for k, v in many.items()} == {
                "job1/a": [0, 1, 2],
                "job1/b": "7",
            }
            with pytest.raises(NotFound):
                await c.fetch("not-kept")
            assert await c.release(prefix="job1/") == 2
            assert await c.release(["job2/c", "never-held"]) == 1
            assert not {"job1/a", "job1/b", "job2/c"} & set((await c.held())["held"])

    run(check)


def test_a_release_on_the_channel_drops_results_after_the_runs_sent_before_it(
    worker: WorkerProcess,
) -> None:
    async def check() -> None:
        async with client(worker) as c:
            assert (await run_one(c, TaskItem("rel1/a", abs, (-1,), keep=True, reply=False))).ok
            assert (await run_one(c, TaskItem("rel2/a", abs, (-2,), keep=True, reply=False))).ok
            c.release_soon("rel1/")

            async def released() -> bool:
                return "rel1/a" not in (await c.held())["held"]

            await wait_until_async(released, what="the release to reach the worker")
            assert "rel2/a" in (await c.held())["held"]  # another prefix stays
            assert await c.release(prefix="rel2/") == 1

    run(check)


def test_a_kept_unpicklable_result_fails_when_fetched(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            kept = await run_one(c, TaskItem("lock", threading.Lock, keep=True, reply=False))
            assert kept.ok  # never pickled: only the worker uses it so far
            with pytest.raises(ProtocolError, match="result lock is not picklable") as raised:
                await c.fetch("lock")
            assert raised.value.status == 500
            with pytest.raises(ResultNotPicklable, match="result of task lock is not picklable"):
                await c.fetch_many(["lock"])
            assert await c.release(["lock"]) == 1

    run(check)


def test_call_returns_or_raises(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            assert await c.call(os.getpid) == worker.pid
            assert await c.call(divmod, 7, 2) == (3, 1)
            assert await c.call(sorted, [2, 1], reverse=True) == [2, 1]
            with pytest.raises(ZeroDivisionError) as raised:
                await c.call(divmod, 1, 0)
            assert isinstance(raised.value.__cause__, RemoteTraceback)

    run(check)


def test_cancel_raises_task_cancelled_in_a_running_task(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "started"

    async def check() -> None:
        async with client(worker) as c:
            stream = c.run([TaskItem("busy", busy, (str(marker),))])
            first = asyncio.ensure_future(stream.__anext__())
            await wait_until_async(lambda: marker.exists(), what="the task to start")
            assert await c.cancel(["busy"]) == {"interrupted": ["busy"], "remembered": []}
            completion = await first
            assert isinstance(completion.error, TaskCancelled)
            assert "in busy" in completion.error.remote_traceback  # type: ignore[attr-defined]
            assert not await running_on(c, "busy")
            await still_serves(c)

    run(check)


def test_cancel_that_arrives_before_the_run_wins(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def check() -> None:
        async with client(worker) as c:
            assert await c.cancel(["early"]) == {"interrupted": [], "remembered": ["early"]}
            completion = await run_one(c, TaskItem("early", marker.write_text, ("x",)))
            assert isinstance(completion.error, TaskCancelled)
            assert not marker.exists()
            # the remembered cancel is used up: the key can run again
            assert (await run_one(c, TaskItem("early", marker.write_text, ("x",)))).ok
            assert marker.exists()

    run(check)
