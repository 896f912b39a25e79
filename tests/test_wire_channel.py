"""Unit tests of the channel's batching, ordering and loss detection, with a fake WebSocket in
place of the connection (the real one is exercised by every test on worker processes)."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import aiohttp
import pytest

from bndl.execute.exceptions import NotConnected
from bndl.wire import ProtocolError, TaskItem, frames
from bndl.wire.channel import ACK, CANCEL, HELLO, MOVED, RUN, WITHDRAW, Channel, Outcome
from bndl.wire.tasks import DONE


class FakeSocket:
    """Records the messages sent; answers with the frames the test pushes."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []
        self.incoming: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self.closed = False

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.sent.append(frames.FrameDecoder().feed(data))

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        async with asyncio.timeout(timeout):
            return await self.incoming.get()

    async def close(self) -> bool:
        self.closed = True
        return True

    def answer(self, *messages: Any) -> None:
        data = b"".join(frames.encode(m) for m in messages)
        self.incoming.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, data, None))

    def drop(self) -> None:
        self.incoming.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))


class Connections:
    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []

    async def connect(self) -> Any:
        socket = FakeSocket()
        self.sockets.append(socket)
        return socket


def items(*keys: str) -> list[tuple[TaskItem, bytes]]:
    return [(TaskItem(key, int), b"blob") for key in keys]


async def collect(channel: Channel, *keys: str) -> dict[str, object]:
    """Submit runs ``keys`` and wait for their outcomes (raising the first error)."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    channel.submit(items(*keys), outcomes.put_nowait)
    got: dict[str, object] = {}
    while len(got) < len(keys):
        outcome = await outcomes.get()
        if isinstance(outcome, BaseException):
            raise outcome
        got[outcome.key] = outcome.value
    return got


def done(key: str, value: object) -> tuple[str, str, bool, bytes]:
    return (DONE, key, True, pickle.dumps(value))


async def sent_soon(socket: FakeSocket, count: int) -> None:
    async with asyncio.timeout(5):
        while len(socket.sent) < count:
            await asyncio.sleep(0)


def test_runs_of_one_loop_iteration_go_in_one_message_and_get_their_own_completions() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        calls = asyncio.gather(collect(channel, "a"), collect(channel, "b", "c"))
        waiting = asyncio.ensure_future(calls)
        while not connections.sockets:
            await asyncio.sleep(0)
        (socket,) = connections.sockets
        await sent_soon(socket, 1)
        ((kind, payload),) = socket.sent[0]
        assert kind == RUN and [p[0] for p in payload] == ["a", "b", "c"]
        socket.answer(done("c", 3), done("a", 1), done("b", 2))
        assert await waiting == [{"a": 1}, {"b": 2, "c": 3}]
        await channel.close()

    asyncio.run(check())


def test_a_cancel_follows_the_run_it_cancels() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        waiting = asyncio.ensure_future(collect(channel, "a"))
        await asyncio.sleep(0)
        channel.cancel(["a"])
        while not connections.sockets:
            await asyncio.sleep(0)
        (socket,) = connections.sockets
        await sent_soon(socket, 1)
        assert [kind for kind, _ in socket.sent[0]] == [RUN, CANCEL]
        socket.answer(done("a", None))
        await waiting
        await channel.close()

    asyncio.run(check())


def test_a_broken_connection_fails_every_waiting_run_and_the_next_run_reconnects() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        first = asyncio.ensure_future(collect(channel, "a"))
        second = asyncio.ensure_future(collect(channel, "b"))
        while not connections.sockets or not connections.sockets[0].sent:
            await asyncio.sleep(0)
        connections.sockets[0].drop()
        for call in (first, second):
            with pytest.raises(NotConnected) as failed:
                await call
            assert not failed.value.timed_out
        again = asyncio.ensure_future(collect(channel, "a"))
        while len(connections.sockets) < 2 or not connections.sockets[1].sent:
            await asyncio.sleep(0)
        connections.sockets[1].answer(done("a", 7))
        assert await again == {"a": 7}
        await channel.close()

    asyncio.run(check())


def test_silence_while_runs_wait_is_a_timeout_but_an_idle_channel_may_be_quiet() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=0.2)
        assert await asyncio.wait_for(_one(channel, connections, "a"), 5) == {"a": 1}
        await asyncio.sleep(0.5)  # idle, no heartbeat: the connection stays
        assert not connections.sockets[0].closed
        waiting = asyncio.ensure_future(collect(channel, "b"))
        with pytest.raises(NotConnected) as failed:
            await asyncio.wait_for(waiting, 5)
        assert failed.value.timed_out and connections.sockets[0].closed
        await channel.close()

    asyncio.run(check())


async def _one(channel: Channel, connections: Connections, key: str) -> dict[str, object]:
    waiting = asyncio.ensure_future(collect(channel, key))
    while not connections.sockets or not connections.sockets[0].sent:
        await asyncio.sleep(0)
    connections.sockets[0].answer(done(key, 1))
    return await waiting


def test_a_run_taken_over_by_another_driver_fails_and_duplicate_keys_are_refused() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        waiting = asyncio.ensure_future(collect(channel, "a"))
        while not connections.sockets or not connections.sockets[0].sent:
            await asyncio.sleep(0)
        with pytest.raises(ValueError, match="already running"):
            await collect(channel, "a")
        connections.sockets[0].answer((MOVED, "a"))
        with pytest.raises(NotConnected, match="taken over"):
            await waiting
        await channel.close()

    asyncio.run(check())


def test_completions_of_runs_nobody_waits_for_are_dropped() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        assert await asyncio.wait_for(_one(channel, connections, "a"), 5) == {"a": 1}
        connections.sockets[0].answer(done("zombie", 0), done("a", 2))
        assert await asyncio.wait_for(_one(channel, connections, "b"), 5) == {"b": 1}
        await channel.close()

    asyncio.run(check())


def test_acknowledgements_wait_for_a_message_to_ride_along_or_go_alone() -> None:
    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        waiting = asyncio.ensure_future(collect(channel, "a"))
        await wait_for_socket(connections)
        socket = connections.sockets[0]
        socket.answer((HELLO, {"frames": [RUN, CANCEL, ACK]}), done("a", 1))
        assert await asyncio.wait_for(waiting, 5) == {"a": 1}
        await sent_soon(socket, 2)  # nothing else went out: the ack goes alone, soon
        assert socket.sent[1] == [(ACK, ["a"])]
        await channel.close()

    asyncio.run(check())


async def wait_for_socket(connections: Connections) -> None:
    async with asyncio.timeout(5):
        while not connections.sockets or not connections.sockets[0].sent:
            await asyncio.sleep(0)


def test_frames_a_worker_did_not_say_it_understands_are_not_sent() -> None:
    """An older worker (no hello) gets runs and cancels only; a worker's hello opens the rest,
    acknowledgements included."""

    async def check() -> None:
        connections = Connections()
        channel = Channel("w", connections.connect, heartbeat_timeout=5)
        assert await asyncio.wait_for(_one(channel, connections, "a"), 5) == {"a": 1}
        assert not channel.withdraw(["a"]) and not channel.release("job/")
        socket = connections.sockets[0]
        socket.answer((HELLO, {"frames": [RUN, CANCEL, WITHDRAW, ACK, "from-the-future"]}))
        waiting = asyncio.ensure_future(collect(channel, "b"))
        await sent_soon(socket, 2)
        socket.answer(done("b", 2))
        assert await asyncio.wait_for(waiting, 5) == {"b": 2}
        assert channel.withdraw(["c"]) and not channel.release("job/")
        await sent_soon(socket, 3)
        kinds = [[kind for kind, _ in message] for message in socket.sent]
        # no ack before the hello (none for "a"); the ack of "b" rides along with the withdraw
        assert kinds == [[RUN], [RUN], [WITHDRAW, ACK]]
        waiting = asyncio.ensure_future(collect(channel, "d"))
        await sent_soon(socket, 4)
        socket.answer((HELLO, "nonsense"))  # a malformed hello is a protocol error
        with pytest.raises(ProtocolError, match="malformed hello"):
            await asyncio.wait_for(waiting, 5)
        await channel.close()

    asyncio.run(check())
