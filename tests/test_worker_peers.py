"""Results passed between two real workers by reference, and what happens when they are lost."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from bndl.execute.exceptions import DependenciesFailed, TaskCancelled
from bndl.wire import RemoteRef, TaskItem, WorkerClient, create_session
from tests.helpers.waiting import wait_until_async
from tests.test_worker_harness import (
    TLS,
    WorkerProcess,
    run,
    running_on,
    running_worker,
)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    with running_worker("w-one") as one, running_worker("w-two") as two:
        yield one, two


def ref(worker: WorkerProcess, key: str, task_id: object = None) -> RemoteRef:
    return RemoteRef(key, task_id if task_id is not None else key, worker.name, worker.url)


def dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{sock.getsockname()[1]}"


async def only(client: WorkerClient, item: TaskItem) -> object:
    (completion,) = [c async for c in client.run([item])]
    if not completion.ok:
        raise completion.value
    return completion.value


def test_refs_resolve_from_a_peer_and_locally(pair: tuple[WorkerProcess, WorkerProcess]) -> None:
    one, two = pair

    async def check() -> None:
        async with create_session() as session:
            c1 = WorkerClient(one.name, one.url, TLS, session)
            c2 = WorkerClient(two.name, two.url, TLS, session)
            await only(c1, TaskItem("p/a", list, (range(5),), keep=True, reply=False))
            await only(c2, TaskItem("p/b", dict, (), {"b": 2}, keep=True, reply=False))
            # on two: one ref from the peer, one from its own store, nested and repeated
            args = ([ref(one, "p/a"), {"own": ref(two, "p/b")}], (ref(one, "p/a"),))
            assert await only(c2, TaskItem("p/c", lambda *a: a, args)) == (
                [[0, 1, 2, 3, 4], {"own": {"b": 2}}],
                ([0, 1, 2, 3, 4],),
            )
            kwargs = {"x": ref(two, "p/b")}
            assert await only(c1, TaskItem("p/d", lambda x: x["b"] + 1, (), kwargs)) == 3

    run(check)


def test_many_inputs_from_one_peer(pair: tuple[WorkerProcess, WorkerProcess]) -> None:
    one, two = pair

    async def check() -> None:
        async with create_session() as session:
            c1 = WorkerClient(one.name, one.url, TLS, session)
            c2 = WorkerClient(two.name, two.url, TLS, session)
            items = [TaskItem(f"m/{i}", int, (i,), keep=True, reply=False) for i in range(300)]
            assert all([c.ok async for c in c1.run(items)])
            refs = [ref(one, f"m/{i}") for i in range(300)]
            assert await only(c2, TaskItem("m/sum", sum, (refs,))) == sum(range(300))

    run(check)


def test_lost_inputs_fail_with_dependencies_failed_grouped_by_holder(
    pair: tuple[WorkerProcess, WorkerProcess],
) -> None:
    one, two = pair

    async def check() -> None:
        async with create_session() as session:
            c1 = WorkerClient(one.name, one.url, TLS, session)
            await only(c1, TaskItem("l/kept", str, (1,), keep=True))
            ghost = RemoteRef("l/x", "task-x", "ghost", dead_url())
            args = (
                ghost,
                RemoteRef("l/y", "task-y", "ghost", ghost.holder_url),
                ref(two, "l/never-computed", "task-z"),
                ref(one, "l/not-here", "task-w"),
                ref(one, "l/kept"),
            )
            with pytest.raises(DependenciesFailed) as raised:
                await only(c1, TaskItem("l/t", print, args))
            assert raised.value.failures == {
                "ghost": ["task-x", "task-y"],
                two.name: ["task-z"],
                one.name: ["task-w"],
            }

    run(check)


def test_a_holder_that_died_is_reported(pair: tuple[WorkerProcess, WorkerProcess]) -> None:
    one, _ = pair
    with running_worker("w-doomed") as doomed:

        async def compute() -> None:
            async with create_session() as session:
                c = WorkerClient(doomed.name, doomed.url, TLS, session)
                await only(c, TaskItem("d/a", int, (5,), keep=True))

        run(compute)
        doomed.proc.kill()
        doomed.proc.wait()

        async def check() -> None:
            async with create_session() as session:
                c1 = WorkerClient(one.name, one.url, TLS, session)
                with pytest.raises(DependenciesFailed) as raised:
                    await only(c1, TaskItem("d/b", abs, (ref(doomed, "d/a", ("d", 1)),)))
                assert raised.value.failures == {doomed.name: [("d", 1)]}

        run(check)


def test_cancel_is_not_held_up_by_a_hanging_fetch(
    pair: tuple[WorkerProcess, WorkerProcess],
) -> None:
    one, _ = pair
    with running_worker("w-frozen") as frozen:

        async def check() -> None:
            async with create_session() as session:
                c1 = WorkerClient(one.name, one.url, TLS, session)
                cf = WorkerClient(frozen.name, frozen.url, TLS, session)
                await only(cf, TaskItem("f/a", int, (1,), keep=True, reply=False))
                os.kill(frozen.pid, signal.SIGSTOP)  # accepts connections, never answers
                try:
                    waiting = asyncio.ensure_future(
                        only(c1, TaskItem("f/b", abs, (ref(frozen, "f/a"),)))
                    )
                    await wait_until_async(lambda: running_on(c1, "f/b"))
                    started = time.monotonic()
                    await c1.cancel(["f/b"])
                    with pytest.raises(TaskCancelled):
                        await asyncio.wait_for(waiting, 10)
                    assert time.monotonic() - started < 5
                finally:
                    os.kill(frozen.pid, signal.SIGCONT)

        run(check)
