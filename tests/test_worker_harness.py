"""Real worker processes for the worker and wire tests, and tests of the process itself.

Other ``test_worker_*`` modules import :func:`start_worker`, :func:`client` and friends from here.
Workers are started with ``bndl.worker --port 0`` on loopback, forked from the fork server as
LocalCluster starts them (:mod:`bndl.local.spawn`; the tests of the process itself below run
``python -m bndl.worker``); the port is learnt from the READY line and every process is stopped by
PID, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bndl.local.spawn import Process, spawn_worker
from bndl.wire import ClientSettings, WorkerClient, create_session
from bndl.wire.tls import new_cluster
from bndl.worker import READY_PREFIX, parse_ready_line
from tests.helpers.waiting import wait_until_async

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = str(ROOT / "operator")
READY = READY_PREFIX

T = TypeVar("T")

# One certificate authority for the test session's workers, as a LocalCluster makes one; the
# directory goes with the process (its files are small and private).
MATERIAL = new_cluster("tests")
TLS_DIR = tempfile.mkdtemp(prefix="bndl-test-tls-")
TLS_FILES = MATERIAL.worker.write(TLS_DIR)


def client_tls() -> ssl.SSLContext:
    """The driver's side of the test cluster's mutual TLS."""
    return MATERIAL.client.client_context()


TLS = client_tls()


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # the repository root too: tasks defined in test modules are pickled by reference
    path = [OPERATOR, str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    env["BNDL_TLS_DIR"] = TLS_DIR
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    name: str
    url: str
    proc: Process
    health: str = ""
    """Base URL of its plain-HTTP probes."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Stop the process: SIGCONT (it may be stopped), SIGTERM, then SIGKILL. Through
        ``send_signal``, which does nothing to a process already reaped (a test may have killed
        it, and a forked worker is reaped by the fork server before ``poll`` learns of it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def read_line(proc: Process, timeout: float) -> str:
    """The next stdout line of ``proc``, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from pid {proc.pid} within {timeout} s")
    return proc.stdout.readline()


def start_worker(name: str, *args: str, timeout: float = 30.0, **env: str) -> WorkerProcess:
    proc = spawn_worker(["--name", name, "--port", "0", *args], worker_env(**env))
    try:
        line = read_line(proc, timeout)
        announcement = parse_ready_line(line)
        assert announcement is not None, f"unexpected first line {line!r}"
        assert announcement.name == name and announcement.pid == proc.pid
        return WorkerProcess(name, announcement.url, proc, announcement.health or "")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@contextmanager
def running_worker(name: str, *args: str, **env: str) -> Iterator[WorkerProcess]:
    worker = start_worker(name, *args, **env)
    try:
        yield worker
    finally:
        worker.stop()


@asynccontextmanager
async def client(
    worker: WorkerProcess, settings: ClientSettings | None = None
) -> Any:  # AsyncIterator[WorkerClient]
    async with create_session(settings) as session:
        yield WorkerClient(worker.name, worker.url, TLS, session, settings)


def run(coroutine_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coroutine_fn()

    return asyncio.run(main())


async def running_on(c: WorkerClient, key: str) -> bool:
    return key in (await c.held())["running"]


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-shared") as w:
        yield w


# --- tests of the worker process itself -------------------------------------------------------


def test_help_lists_every_option_and_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bndl.worker", "--help"],
        env=worker_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag, var in [
        ("--port", "BNDL_WORKER_PORT"),
        ("--bind", "BNDL_WORKER_BIND"),
        ("--name", "BNDL_WORKER_NAME"),
        ("--tls-dir", "BNDL_TLS_DIR"),
        ("--tls-ca", "BNDL_TLS_CA"),
        ("--tls-cert", "BNDL_TLS_CERT"),
        ("--tls-key", "BNDL_TLS_KEY"),
        ("--health-port", "BNDL_HEALTH_PORT"),
        ("--max-connections", "BNDL_MAX_CONNECTIONS"),
        ("--handshake-timeout", "BNDL_HANDSHAKE_TIMEOUT"),
        ("--max-body", "BNDL_WORKER_MAX_BODY"),
        ("--url", "BNDL_WORKER_URL"),
        ("--orphan-grace", "BNDL_ORPHAN_GRACE"),
    ]:
        assert flag in out and var in out


def test_refuses_to_start_without_tls_material() -> None:
    env = worker_env()
    del env["BNDL_TLS_DIR"]
    done = subprocess.run(
        [sys.executable, "-m", "bndl.worker", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "TLS material is required" in done.stderr
    assert READY not in done.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--insecure-benchmark-only"], {}, "only be turned off for benchmarks"),
        ([], {"BNDL_BENCH_INSECURE": "1"}, "only be turned off for benchmarks"),
        (["--tls-key", "/nonexistent"], {}, "cannot read the key /nonexistent"),
        (["--tls-dir", "/nonexistent"], {}, "cannot read the CA certificate"),
    ],
)
def test_refuses_to_start_without_usable_tls(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bndl.worker", "--port", "0", *args],
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert READY not in done.stdout


def test_tls_files_given_one_by_one() -> None:
    env = worker_env(BNDL_WORKER_NAME="from-env", BNDL_TLS_DIR="", BNDL_TLS_KEY=TLS_FILES.key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bndl.worker", "--tls-ca", TLS_FILES.ca,
         "--tls-cert", TLS_FILES.cert],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )  # fmt: skip
    w = WorkerProcess("from-env", "", proc)
    try:
        info = json.loads(read_line(proc, 30).split(" ", 1)[1])
        assert info["name"] == "from-env" and info["url"].startswith("https://")
        w.url = info["url"]

        async def check() -> None:
            async with client(w) as c:
                assert (await c.held())["name"] == "from-env"

        run(check)
    finally:
        w.stop()


def test_sigterm_stops_the_worker_gracefully() -> None:
    w = start_worker("w-term")
    try:
        os.kill(w.pid, signal.SIGTERM)
        assert w.proc.wait(timeout=10) == 0
    finally:
        w.stop()


def test_ready_line_parsing() -> None:
    assert parse_ready_line("some log line") is None
    with pytest.raises(ValueError, match="malformed"):
        parse_ready_line(READY_PREFIX + " {not json")
    line = READY_PREFIX + ' {"name": "w", "url": "http://127.0.0.1:1", "pid": 7}\n'
    announcement = parse_ready_line(line)
    assert announcement is not None and (announcement.name, announcement.pid) == ("w", 7)


def _spin() -> None:
    while True:
        pass


def test_sigterm_cancels_running_tasks_and_exits() -> None:
    from bndl.execute.exceptions import TaskCancelled
    from bndl.wire import TaskItem

    w = start_worker("w-term-busy")
    try:

        async def check() -> None:
            async with client(w) as c:
                stream = c.run([TaskItem("spinning", _spin)])
                first = asyncio.ensure_future(stream.__anext__())
                await wait_until_async(lambda: running_on(c, "spinning"))
                os.kill(w.pid, signal.SIGTERM)
                completion = await asyncio.wait_for(first, 10)
                assert isinstance(completion.error, TaskCancelled)

        run(check)
        assert w.proc.wait(timeout=10) == 0
    finally:
        w.stop()
