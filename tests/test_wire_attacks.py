"""Attacks on real worker processes over loopback: each refused, nothing run, memory flat, and
legitimate work still served.

- a slow or oversized body from a peer without the cluster's certificate (plain HTTP, or TLS
  without a certificate);
- idle and half-open connections far beyond the limits;
- a captured request (recorded by a loopback TCP proxy) replayed to the same worker and to
  another worker of the cluster;
- a forged response: a fake worker at a real worker's address (with another authority's
  certificate, with the driver's own certificate, or plain HTTP), whose answer would run code if
  it were unpickled.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import aiohttp
import pytest

from bndl.driver import DriverLoop, HttpWorker
from bndl.execute.exceptions import NotConnected
from bndl.wire import TaskItem, WorkerClient, create_session
from bndl.wire.tls import Identity, new_cluster
from tests.helpers.waiting import wait_until_async
from tests.test_worker_harness import (
    MATERIAL,
    TLS,
    WorkerProcess,
    client,
    run,
    running_worker,
    start_worker,
)

MiB = 1024 * 1024
RSS_SLACK = 20 * MiB
"""How much a worker's resident memory may grow during an attack (allocator noise)."""


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def address(worker: WorkerProcess) -> tuple[str, int]:
    host, port = worker.url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def append_line(path: str) -> str:
    """The task every test runs: one line per run, so a second run shows."""
    with open(path, "a") as file:
        file.write("ran\n")
    return "ran"


async def legitimate(worker: WorkerProcess, marker: Path, key: str) -> None:
    """A member runs a task on the worker, within 20 s."""
    async with client(worker) as c:
        completions = [x async for x in c.run([TaskItem(key, append_line, (str(marker),))])]
    assert [x.value for x in completions] == ["ran"]


def without_certificate() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    # small limits, so that "far beyond them" stays cheap for the test
    with running_worker("w-attacked", "--max-handshakes", "32", "--max-connections", "64") as w:
        # One member's run first: the worker imports this module (the task's) and its own run
        # path now, so that a test's memory baseline does not depend on which test ran first.
        with tempfile.TemporaryDirectory() as scratch:
            run(lambda: legitimate(w, Path(scratch) / "warm", "warm-up"))
        yield w


# --- bodies without a certificate -------------------------------------------------------------


async def unauthenticated_body(
    host: str, port: int, tls: ssl.SSLContext | None, size: int, sent: int
) -> str:
    """Announce a ``size`` body, send ``sent`` bytes of it slowly, hold back the rest; how the
    worker ended the connection."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=tls), 10)
    except (ssl.SSLError, ConnectionError) as e:
        return f"handshake refused: {type(e).__name__}"
    head = f"POST /v1/run HTTP/1.1\r\nHost: w\r\nContent-Length: {size}\r\n\r\n".encode()
    try:
        writer.write(head)
        for _ in range(sent // MiB):
            writer.write(b"\0" * MiB)
            await writer.drain()
            await asyncio.sleep(0.01)  # a slow sender
        answer = await asyncio.wait_for(reader.read(), 10)
        return f"closed, answered {answer!r}"
    except (ssl.SSLError, ConnectionError) as e:
        return f"closed: {type(e).__name__}"
    finally:
        writer.close()
        with suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("tls", [None, without_certificate()], ids=["plain-http", "no-cert"])
def test_a_slow_oversized_body_without_a_certificate_is_never_read(
    worker: WorkerProcess, tmp_path: Path, tls: ssl.SSLContext | None
) -> None:
    host, port = address(worker)
    before = rss(worker.pid)

    async def attack() -> list[str]:
        return await asyncio.gather(
            *(unauthenticated_body(host, port, tls, 60 * MiB, 8 * MiB) for _ in range(8))
        )

    outcomes = run(attack)
    assert all(o.startswith(("handshake refused", "closed")) for o in outcomes), outcomes
    assert not any("HTTP/1.1" in o for o in outcomes), "the worker answered HTTP to a non-member"
    assert rss(worker.pid) - before < RSS_SLACK
    marker = tmp_path / "legit"
    run(lambda: legitimate(worker, marker, "after-bodies"))
    assert marker.read_text() == "ran\n"


# --- idle and half-open connections ----------------------------------------------------------


def test_idle_and_half_open_connections_beyond_the_limits_lock_nobody_out(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    host, port = address(worker)
    before = rss(worker.pid)
    marker = tmp_path / "legit"

    async def attack() -> int:
        idle = [await asyncio.open_connection(host, port) for _ in range(300)]
        half_open = []
        for _ in range(100):  # the start of a TLS record that never ends
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            half_open.append((reader, writer))
        try:
            # 400 handshakes against a limit of 32: a member still gets in, at once
            await asyncio.wait_for(legitimate(worker, marker, "during-flood"), 20)

            # the worker dropped all but the newest handshakes (EOF on the rest): read them all
            # at once, as the ones still open each wait out the timeout
            async def was_closed(reader: asyncio.StreamReader) -> bool:
                try:
                    return await asyncio.wait_for(reader.read(1), 0.5) == b""
                except ConnectionError:  # reset: closed with unread bytes of ours
                    return True
                except TimeoutError:
                    return False

            return sum(await asyncio.gather(*(was_closed(r) for r, _ in [*idle, *half_open])))
        finally:
            for _, writer in [*idle, *half_open]:
                writer.close()

    closed = run(attack)
    assert closed >= 400 - 32 - 1, closed
    assert marker.read_text() == "ran\n"
    assert rss(worker.pid) - before < RSS_SLACK


def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    with running_worker("w-timeout", "--handshake-timeout", "0.5") as w:
        host, port = address(w)

        async def silent() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await asyncio.wait_for(reader.read(1), 10)  # EOF long before 10 s
            finally:
                writer.close()

        assert run(silent) == b""


def test_member_connections_beyond_the_cap_are_closed_and_work_goes_on(tmp_path: Path) -> None:
    with running_worker("w-capped", "--max-connections", "4") as w:
        host, port = address(w)
        marker = tmp_path / "legit"

        async def flood() -> list[bytes]:
            held = [await asyncio.open_connection(host, port, ssl=TLS) for _ in range(4)]
            try:
                more = [await asyncio.open_connection(host, port, ssl=TLS) for _ in range(3)]
            except (ssl.SSLError, ConnectionError):
                more = []
            answers = []
            for reader, writer in more:
                with suppress(ssl.SSLError, ConnectionError):
                    answers.append(await asyncio.wait_for(reader.read(1), 10))
                writer.close()
            for _, writer in held:
                writer.close()
                with suppress(ssl.SSLError, ConnectionError):
                    await writer.wait_closed()
            return answers

        assert all(a == b"" for a in run(flood))
        attempts = itertools.count()

        async def served() -> bool:
            try:  # the worker sees the held connections close shortly
                await legitimate(w, marker, f"after-cap-{next(attempts)}")
            except NotConnected:
                return False
            return True

        run(
            lambda: wait_until_async(
                served, 5, "legitimate work served after the flood", interval=0.05
            )
        )
        assert marker.read_text() == "ran\n"


# --- replay -----------------------------------------------------------------------------------


class RecordingProxy:
    """A loopback TCP proxy to one worker that records what clients send."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent: list[bytearray] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.sent.append(record)
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bytearray | None
        ) -> None:
            with suppress(ConnectionError):
                while data := await src.read(65536):
                    if log is not None:
                        log.extend(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, record), pipe(up_reader, writer, None))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def replay(target: tuple[str, int], data: bytes) -> bytes:
    """Send recorded bytes to ``target`` as they were sent; what comes back until it closes."""
    reader, writer = await asyncio.open_connection(*target)
    answer = bytearray()
    try:
        writer.write(data)
        await writer.drain()
        with suppress(ConnectionError, TimeoutError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                answer.extend(chunk)
    finally:
        writer.close()
    return bytes(answer)


def test_a_captured_request_replayed_to_the_same_or_another_worker_runs_nothing(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    other = start_worker("w-other")
    try:
        before = {w.pid: rss(w.pid) for w in (worker, other)}

        async def capture() -> list[bytes]:
            proxy = RecordingProxy(address(worker))
            url = await proxy.start()
            try:
                async with create_session() as session:
                    c = WorkerClient(worker.name, url, TLS, session)
                    done = [x async for x in c.run([TaskItem("once", append_line, (str(marker),))])]
                    assert [x.value for x in done] == ["ran"]
            finally:
                await proxy.close()
            return [bytes(r) for r in proxy.sent if r]

        captured = run(capture)
        assert marker.read_text() == "ran\n" and captured

        async def replay_all() -> list[bytes]:
            return [
                await replay(address(target), data)
                for target in (worker, other)
                for data in captured
            ]

        for answer in run(replay_all):
            assert b"HTTP/1.1" not in answer  # never a plain answer; nothing it can decrypt
        assert marker.read_text() == "ran\n", "a replayed request ran its task again"
        for w in (worker, other):
            assert rss(w.pid) - before[w.pid] < RSS_SLACK
        run(lambda: legitimate(other, tmp_path / "legit", "after-replay"))
        assert (tmp_path / "legit").read_text() == "ran\n"
    finally:
        other.stop()


# --- forged responses -------------------------------------------------------------------------


class Payload:
    """Unpickling this creates a file: whoever unpickles a forged answer runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (Path(self.path),))


def forger_context(identity: Identity | None) -> ssl.SSLContext | None:
    """A server context presenting ``identity``'s certificate and asking nothing of clients."""
    if identity is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        files = identity.write(directory)
        context.load_cert_chain(files.cert, files.key)
    return context


@pytest.mark.parametrize(
    "identity",
    [new_cluster("forger").worker, MATERIAL.client, None],
    ids=["another-authority", "the-drivers-own-certificate", "plain-http"],
)
def test_a_fake_worker_at_a_real_workers_address_gets_nothing_unpickled(
    tmp_path: Path, identity: Identity | None
) -> None:
    import pickle

    victim = start_worker("w-victim")
    host, port = address(victim)
    victim.stop()  # the fake takes over its address
    forged = tmp_path / "forged-ran"
    body = pickle.dumps(Payload(str(forged)))

    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError, ssl.SSLError):  # answers at once, whatever is asked
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-bndl-pickle\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    async def scenario() -> list[BaseException]:
        server = await asyncio.start_server(fake, host, port, ssl=forger_context(identity))
        try:
            async with create_session() as session:
                c = WorkerClient(victim.name, victim.url, TLS, session)
                errors: list[BaseException] = []
                for attempt in (c.fetch("k"), c.call(len, "abc"), c.held()):
                    try:
                        await attempt
                    except BaseException as e:
                        errors.append(e)
                return errors
        finally:
            server.close()

    errors = run(scenario)
    assert len(errors) == 3 and all(isinstance(e, NotConnected) for e in errors), errors
    assert not forged.exists(), "a forged answer was unpickled"
    # the driver's view: the worker counts as lost, its task fails with NotConnected
    loop = DriverLoop()
    try:

        async def serve_fake() -> asyncio.Server:
            return await asyncio.start_server(fake, host, port, ssl=forger_context(identity))

        server = loop.run(serve_fake()).result(10)
        try:
            w = HttpWorker(WorkerClient(victim.name, victim.url, TLS, loop.session), loop)
            with pytest.raises(NotConnected):
                w.run("forged-task", append_line, (str(tmp_path / "x"),), {}, keep=False).result(20)
        finally:
            loop.loop.call_soon_threadsafe(server.close)  # on the server's own loop
    finally:
        loop.close()
    assert not forged.exists()


def test_an_http_url_is_refused_by_a_client_with_tls() -> None:
    async def make() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ValueError, match="not https"):
                WorkerClient("w", "http://127.0.0.1:1", TLS, session)
            with pytest.raises(ValueError, match="needs the cluster's TLS context"):
                WorkerClient("w", "https://127.0.0.1:1", None, session)

    run(make)
