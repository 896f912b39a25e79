"""The runner's orphan bookkeeping in-process: frames kept for nobody, moves between streams,
and expiry at the end of the grace period (the real-process tests are in test_worker_attach)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from bndl.execute.exceptions import TaskCancelled
from bndl.wire import RunNotFound, TaskItem, frames
from bndl.wire.tasks import DONE, decode_outcome, decode_run, encode_run, encode_task
from bndl.worker.context import WorkerInfo
from bndl.worker.runner import Stream, TaskRunner
from tests.helpers.waiting import wait_until_async

GATE = threading.Event()


def gated() -> str:
    GATE.wait(10)
    return "through"


def spin() -> None:
    while True:
        pass


def runner(grace: float) -> TaskRunner:
    def no_peers(name: str, url: str) -> Any:
        raise AssertionError("no peers here")

    info = WorkerInfo("w-in-process", "http://nowhere")
    return TaskRunner(info, asyncio.get_running_loop(), no_peers, orphan_grace=grace)


def tasks(*items: TaskItem) -> Any:
    return decode_run(encode_run([(item, encode_task(item)) for item in items]))


def outcomes(stream: Stream) -> dict[str, Any]:
    result = {}
    for key, frame in stream.chunks:
        kind, frame_key, ok, blob = frames.decode(frame[frames.HEADER.size :])
        assert (kind, frame_key) == (DONE, key)
        completion = decode_outcome(key, ok, blob)
        result[key] = completion.value
    return result


def test_frames_of_a_lost_stream_are_kept_and_delivered_once() -> None:
    async def check() -> None:
        r = runner(grace=60)
        GATE.clear()
        stream = r.start(tasks(TaskItem("quick", int, ("7",)), TaskItem("gated", gated)))
        # quick is done, its frame not yet written
        await wait_until_async(lambda: stream.chunks != [])
        r.orphan(stream)
        assert r.held()["finished"] == ["quick"] and r.held()["running"] == ["gated"]
        GATE.set()
        await wait_until_async(lambda: r.held()["running"] == [])
        assert r.held()["finished"] == ["quick", "gated"]
        adopted = r.attach(["gated", "quick", "gated", "nobody"])
        assert adopted.outstanding == 0  # three distinct keys, all answered at once
        got = outcomes(adopted)
        assert got["quick"] == 7 and got["gated"] == "through"
        assert isinstance(got["nobody"], RunNotFound)
        assert r.held()["finished"] == []

    asyncio.run(check())


def test_attach_moves_a_running_task_off_its_stream() -> None:
    async def check() -> None:
        r = runner(grace=60)
        GATE.clear()
        old = r.start(tasks(TaskItem("gated", gated)))
        new = r.attach(["gated"])
        assert (old.outstanding, new.outstanding) == (0, 1)
        GATE.set()
        await wait_until_async(lambda: new.outstanding == 0)
        assert outcomes(new) == {"gated": "through"} and old.chunks == []

    asyncio.run(check())


def test_an_orphan_past_its_grace_period_is_cancelled_and_forgotten() -> None:
    async def check() -> None:
        r = runner(grace=0.05)
        stream = r.start(tasks(TaskItem("spin", spin)))
        r.orphan(stream)
        assert r.held()["running"] == ["spin"]
        await wait_until_async(lambda: (r.expire(), "spin" not in r.running)[1])
        assert r.held() == {
            "name": "w-in-process",
            "held": [],
            "running": [],
            "finished": [],
            "orphaned": [],
        }
        (error,) = outcomes(r.attach(["spin"])).values()
        assert isinstance(error, RunNotFound)

    asyncio.run(check())


def test_an_explicit_cancel_still_reaches_an_orphan() -> None:
    async def check() -> None:
        r = runner(grace=60)
        stream = r.start(tasks(TaskItem("spin", spin)))
        r.orphan(stream)
        assert r.cancel(["spin"]) == (["spin"], [])
        await wait_until_async(lambda: r.held()["finished"] == ["spin"])
        (error,) = outcomes(r.attach(["spin"])).values()
        assert isinstance(error, TaskCancelled)

    asyncio.run(check())
