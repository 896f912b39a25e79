"""A worker that hangs or dies is detected by the client as NotConnected, never a hang."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from bndl.execute.exceptions import NotConnected
from bndl.wire import ClientSettings, TaskItem, WorkerClient, create_session
from tests.helpers.waiting import wait_for_file, wait_until_async
from tests.test_worker_harness import TLS, client, run, running_on, running_worker
from tests.test_worker_peers import dead_url


def test_heartbeats_keep_a_long_task_alive(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # Heartbeats 20 times a timeout: a machine saturated by parallel tests may hold a process
    # back for a few hundred ms, never for the whole timeout.
    settings = ClientSettings(heartbeat_timeout=1.0)
    # Without heartbeats the watchdog (a few looks per timeout) would fail the run within 1.25
    # timeouts of its last message, which came before `started`.
    alive_for = 1.5 * settings.heartbeat_timeout
    with running_worker("w-slow", "--heartbeat-interval", "0.05") as w:

        async def check() -> None:
            async with client(w, settings) as c:
                consume = asyncio.ensure_future(
                    _collect(c.run([TaskItem("slow", wait_for_file, (str(gate),))]))
                )
                await wait_until_async(lambda: running_on(c, "slow"))
                started = time.monotonic()
                await asyncio.wait([consume], timeout=alive_for)
                assert not consume.done(), consume  # still waiting: heartbeats kept it going
                assert time.monotonic() - started >= alive_for
                gate.write_text("go")
                (completion,) = await consume
                assert completion.value == "released"

        run(check)


async def _collect(stream: object) -> list[object]:
    return [c async for c in stream]  # type: ignore[attr-defined]


def test_a_stopped_worker_is_detected_by_the_heartbeat_timeout(tmp_path: Path) -> None:
    # a stopped process still completes TCP handshakes (the kernel does), never TLS ones: a new
    # request to it fails after the connect timeout
    settings = ClientSettings(heartbeat_timeout=0.5, connect_timeout=0.5)
    with running_worker("w-stopped", "--heartbeat-interval", "0.05") as w:

        async def check() -> None:
            async with client(w, settings) as c:
                consume = asyncio.ensure_future(
                    _collect(c.run([TaskItem("hang", wait_for_file, (str(tmp_path / "x"),))]))
                )
                await wait_until_async(lambda: running_on(c, "hang"))
                os.kill(w.pid, signal.SIGSTOP)
                started = time.monotonic()
                try:
                    with pytest.raises(NotConnected) as raised:
                        await asyncio.wait_for(consume, 10)
                    elapsed = time.monotonic() - started
                    assert raised.value.worker == "w-stopped"
                    assert "timed out" in raised.value.reason
                    assert elapsed < 5, elapsed
                    # a new request to the stopped worker also fails instead of hanging
                    with pytest.raises(NotConnected):
                        await _collect(c.run([TaskItem("more", int)]))
                finally:
                    os.kill(w.pid, signal.SIGCONT)

        run(check)


def test_kill_9_mid_stream_is_not_connected(tmp_path: Path) -> None:
    with running_worker("w-killed") as w:

        async def check() -> None:
            async with client(w) as c:
                items = [
                    TaskItem("quick", int, (1,)),
                    TaskItem("stuck", wait_for_file, (str(tmp_path / "never"),)),
                ]
                stream = c.run(items)
                first = await stream.__anext__()  # the stream is open and delivering
                assert first.key == "quick" and first.ok
                os.kill(w.pid, signal.SIGKILL)
                with pytest.raises(NotConnected) as raised:
                    await asyncio.wait_for(stream.__anext__(), 10)
                assert raised.value.worker == "w-killed"
                with pytest.raises(NotConnected):  # and afterwards: refused
                    await c.held()

        run(check)


def test_connection_refused_is_not_connected() -> None:
    async def check() -> None:
        async with create_session() as session:
            c = WorkerClient("nobody", dead_url(), TLS, session)
            with pytest.raises(NotConnected, match="nobody"):
                await _collect(c.run([TaskItem("k", int)]))
            for call in (c.held(), c.fetch("k"), c.cancel(["k"]), c.call(int)):
                with pytest.raises(NotConnected):
                    await call

    run(check)
