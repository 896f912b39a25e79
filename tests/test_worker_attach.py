"""Adopting runs after the driver went away: orphans, ``POST /v1/attach`` and ``GET /v1/held``.

A driver's run request dies with it (the operator restarted, say); its tasks run on as orphans for
the worker's grace period, and a new client attaches to them: it receives the completions kept
for nobody at once and those of the running tasks when they finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bndl.driver import DriverLoop, HttpWorker
from bndl.execute.exceptions import NotConnected, TaskCancelled
from bndl.wire import (
    Completion,
    Held,
    NotFound,
    RunNotFound,
    TaskItem,
    WorkerClient,
    create_session,
)
from bndl.wire.channel import Channel
from tests.helpers.waiting import wait_for_file, wait_until, wait_until_async
from tests.test_worker_harness import (
    TLS,
    WorkerProcess,
    client,
    run,
    running_on,
    running_worker,
)
from tests.test_worker_peers import dead_url
from tests.test_worker_tasks import busy


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-attach", "--heartbeat-interval", "0.1", "--orphan-grace", "60") as w:
        yield w


def spin_until_cancelled(started: str, cancelled: str) -> None:
    Path(started).touch()
    try:
        while True:
            pass
    except TaskCancelled:
        Path(cancelled).touch()
        raise


async def held_now(c: WorkerClient) -> tuple[list[str], list[str], list[str]]:
    held: Held = await c.held()
    return sorted(held["held"]), sorted(held["running"]), sorted(held["finished"])


async def start_and_go_away(worker: WorkerProcess, items: list[TaskItem]) -> None:
    """Start tasks from a driver of its own, then drop it abruptly (session closed mid-stream)."""
    session = create_session()
    try:
        gone = WorkerClient(worker.name, worker.url, TLS, session)
        stream = gone.run(items)
        consumer = asyncio.ensure_future(stream.__anext__())
        for item in items:
            await wait_until_async(_running(gone, item.key), what=f"{item.key} runs")
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    finally:
        await session.close()
    # The driver is gone once the worker says so: every run it left is an orphan (or ended).
    async with create_session() as fresh:
        watcher = WorkerClient(worker.name, worker.url, TLS, fresh)
        keys = {item.key for item in items}
        await wait_until_async(
            lambda: _all_orphaned(watcher, keys), what="the runs to become orphans"
        )


async def _all_orphaned(c: WorkerClient, keys: set[str]) -> bool:
    held = await c.held()
    still = keys & set(held["running"])
    return still <= set(held.get("orphaned", []))


def _running(c: WorkerClient, key: str) -> Callable[[], Awaitable[bool]]:
    return lambda: running_on(c, key)


async def first(completions: AsyncIterator[Completion]) -> Completion:
    return await completions.__anext__()


def test_orphans_keep_running_and_a_new_client_adopts_them(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    early, late = tmp_path / "early", tmp_path / "late"

    async def check() -> None:
        items = [
            TaskItem("o/early", wait_for_file, (str(early),), keep=True),
            TaskItem("o/late", wait_for_file, (str(late),)),
        ]
        await start_and_go_away(worker, items)
        async with client(worker) as c:
            assert await held_now(c) == ([], ["o/early", "o/late"], [])
            early.touch()
            # its stream is gone: the completion is kept for an attach, the other task runs on
            await wait_until_async(
                lambda: _equals(held_now(c), (["o/early"], ["o/late"], ["o/early"])),
                what="o/early to finish as an orphan",
            )
            adopted = c.attach(["o/early", "o/late"])
            done = await asyncio.wait_for(first(adopted), 10)
            assert (done.key, done.ok, done.value) == ("o/early", True, "released")
            assert await held_now(c) == (["o/early"], ["o/late"], [])  # delivered: not kept
            late.touch()
            done = await asyncio.wait_for(first(adopted), 10)
            assert (done.key, done.ok, done.value) == ("o/late", True, "released")
            assert [c async for c in adopted] == []
            assert await held_now(c) == (["o/early"], [], [])
            # delivered once: a second attach finds nothing
            (again,) = [c async for c in c.attach(["o/early"])]
            assert isinstance(again.error, RunNotFound)
            await c.release(["o/early"])

    run(check)


async def _equals(got: Any, expected: object) -> bool:
    return bool(await got == expected)


def test_attach_moves_a_task_from_a_live_stream(worker: WorkerProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def check() -> None:
        async with client(worker) as old, client(worker) as new:
            stream = old.run([TaskItem("m/task", wait_for_file, (str(gate),))])
            waiting = asyncio.ensure_future(first(stream))
            await wait_until_async(lambda: running_on(old, "m/task"))
            adopted = asyncio.ensure_future(first(new.attach(["m/task"])))
            # the old driver no longer waits for it: it is told the run was taken over
            with pytest.raises(NotConnected, match="taken over by another driver"):
                await asyncio.wait_for(waiting, 10)
            gate.touch()
            done = await asyncio.wait_for(adopted, 10)
            assert (done.key, done.value) == ("m/task", "released")

    run(check)


def test_an_orphan_past_its_grace_period_is_cancelled(tmp_path: Path) -> None:
    started, cancelled = tmp_path / "started", tmp_path / "cancelled"
    with running_worker("w-grace", "--heartbeat-interval", "0.1", "--orphan-grace", "1") as w:

        async def check() -> None:
            await start_and_go_away(
                w, [TaskItem("g/spin", spin_until_cancelled, (str(started), str(cancelled)))]
            )
            async with client(w) as c:
                await wait_until_async(
                    lambda: cancelled.exists(), timeout=60, what="the orphan's cancel"
                )
                await wait_until_async(lambda: _equals(held_now(c), ([], [], [])))
                (done,) = [c async for c in c.attach(["g/spin"])]
                assert isinstance(done.error, RunNotFound)
                assert "g/spin" in str(done.error) and "w-grace" in str(done.error)

        run(check)


def never_acknowledge(channel: Channel) -> None:
    """Make a client's channel drop its acknowledgements (a driver that dies as they are due)."""

    def drop() -> None:
        channel._acks.clear()
        if channel._ack_timer is not None:
            channel._ack_timer.cancel()
            channel._ack_timer = None

    channel._take_acks = drop  # type: ignore[method-assign]
    channel._send_acks = drop  # type: ignore[method-assign]


def test_a_completion_the_driver_did_not_acknowledge_is_kept_for_the_next_one(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    """A completion written as the driver went away (it never acknowledged it) is kept; one it
    acknowledged is not kept twice."""
    go = str(tmp_path / "go")

    async def check() -> None:
        async with create_session() as session:
            gone = WorkerClient(worker.name, worker.url, TLS, session)
            never_acknowledge(gone._channel)
            (done,) = [x async for x in gone.run([TaskItem("ack/lost", abs, (-3,))])]
            assert done.ok and done.value == 3
            stream = gone.run([TaskItem("ack/gated", wait_for_file, (go,))])
            waiting = asyncio.ensure_future(first(stream))
            await wait_until_async(_running(gone, "ack/gated"), what="ack/gated runs")
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        async with client(worker) as c:
            await wait_until_async(lambda: _all_orphaned(c, {"ack/gated"}), what="the orphan")
            assert "ack/lost" in (await c.held())["finished"]
            (again,) = [x async for x in c.attach(["ack/lost"])]
            assert again.ok and again.value == 3

            # a driver that acknowledges: after its next round trip, nothing is kept twice
            async with create_session() as session:
                acking = WorkerClient(worker.name, worker.url, TLS, session)
                for key in ("ack/seen", "ack/next"):
                    (done,) = [x async for x in acking.run([TaskItem(key, abs, (-1,))])]
                    assert done.ok
                stream = acking.run([TaskItem("ack/gated2", wait_for_file, (go,))])
                waiting = asyncio.ensure_future(first(stream))
                await wait_until_async(_running(acking, "ack/gated2"), what="ack/gated2 runs")
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
            await wait_until_async(lambda: _all_orphaned(c, {"ack/gated2"}), what="the orphan")
            assert "ack/seen" not in (await c.held())["finished"]
            Path(go).touch()

    run(check)


def test_attach_to_an_unknown_key_is_run_not_found(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with client(worker) as c:
            (done,) = [c async for c in c.attach(["never-ran"])]
            assert done.key == "never-ran" and not done.ok
            assert isinstance(done.error, RunNotFound)
            assert (done.error.key, done.error.worker) == ("never-ran", "w-attach")
            assert "never-ran" in str(done.error) and "w-attach" in str(done.error)

    run(check)


async def _post(url: str, body: bytes) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/attach", data=body, ssl=TLS) as response,
    ):
        return response.status, await response.json()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"keys": "k"}',
        b'{"keys": [1]}',
        b'{"keys": null}',
        b"\xff\xfe",
        b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_a_malformed_attach_request_is_a_400(worker: WorkerProcess, body: bytes) -> None:
    status, payload = run(lambda: _post(worker.url, body))
    assert status == 400 and payload["error"], payload


# --- the driver's side: HttpWorker -----------------------------------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[DriverLoop]:
    loop = DriverLoop()
    try:
        yield loop
    finally:
        loop.close()


def http_worker(worker: WorkerProcess, loop: DriverLoop) -> HttpWorker:
    return HttpWorker(WorkerClient(worker.name, worker.url, TLS, loop.session), loop)


def test_http_worker_run_without_reply_fetch_and_held(
    worker: WorkerProcess, driver: DriverLoop
) -> None:
    w = http_worker(worker, driver)
    assert w.loss_cause is None
    future = w.run("h/kept", sorted, ([3, 1, 2],), {}, keep=True, reply=False)
    assert future.result(10) is None  # no value in the completion
    assert w.fetch("h/kept") == [1, 2, 3]  # but kept on the worker
    held = w.held()
    assert held["name"] == "w-attach" and "h/kept" in held["held"]
    assert "h/kept" not in held["running"] and "h/kept" not in held["finished"]
    assert driver.run(w.client.release(["h/kept"])).result(10) == 1
    with pytest.raises(NotFound):
        w.fetch("h/kept")


def test_http_worker_attach(worker: WorkerProcess, driver: DriverLoop, tmp_path: Path) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "busy"

    async def orphans() -> None:
        await start_and_go_away(
            worker,
            [
                TaskItem("h/a", wait_for_file, (str(gate),)),
                TaskItem("h/b", wait_for_file, (str(gate),)),
                TaskItem("h/bad", busy, (str(marker),)),
            ],
        )

    run(orphans)
    w = http_worker(worker, driver)
    gate.touch()
    wait_until(lambda: {"h/a", "h/b"} <= set(w.held()["finished"]), what="h/a and h/b finish")
    a, b, bad = w.attach("h/a"), w.attach("h/b", reply=False), w.attach("h/bad")
    assert a.result(10) == "released"
    assert b.result(10) is None
    w.cancel("h/bad")
    with pytest.raises(TaskCancelled):
        bad.result(10)
    with pytest.raises(RunNotFound):
        w.attach("h/unknown").result(10)


def test_http_worker_on_an_unreachable_worker_is_not_connected(driver: DriverLoop) -> None:
    w = HttpWorker(WorkerClient("nobody", dead_url(), TLS, driver.session), driver)
    with pytest.raises(NotConnected, match="nobody"):
        w.attach("k").result(10)
    with pytest.raises(NotConnected):
        w.fetch("k")
    with pytest.raises(NotConnected):
        w.held()
