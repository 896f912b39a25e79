"""The embedded cluster: N worker processes on this machine, for ``bndl run`` and for tests.

Workers are real ``python -m bndl.worker`` processes on loopback, each with a free port and the
cluster's fresh secret, spoken to over the same signed HTTP protocol as pods in Kubernetes. The
cluster stops exactly the processes it started, by PID, also when the body of the ``with`` block
raises.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from bndl.driver import DriverLoop, HttpWorker
from bndl.execute.context import ExecutionContext
from bndl.execute.workers import Worker
from bndl.wire import ClientSettings, WorkerClient
from bndl.worker.announce import parse_ready_line

# Seconds a worker process may take to print its READY line.
START_TIMEOUT = 60.0
# Seconds a worker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


class WorkerProcess:
    """One worker process and the driver's view of it."""

    def __init__(self, process: subprocess.Popen[str], worker: HttpWorker) -> None:
        self.process = process
        self.worker = worker

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """``with LocalCluster(workers=2) as ctx:`` gives an :class:`ExecutionContext`."""

    def __init__(
        self,
        workers: int = 2,
        config: Mapping[str, Any] | None = None,
        *,
        python_path: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        settings: ClientSettings | None = None,
        worker_args: Sequence[str] = (),
    ) -> None:
        if workers < 1:
            raise ValueError(f"a local cluster needs at least one worker, not {workers}")
        self.size = workers
        self.config = dict(config or {})
        self.python_path = list(python_path)
        self.extra_env = dict(env or {})
        self.settings = settings or ClientSettings()
        self.worker_args = list(worker_args)
        self.secret = secrets.token_hex(32)
        self.processes: list[WorkerProcess] = []
        self._spawned: list[subprocess.Popen[str]] = []
        self.loop: DriverLoop | None = None
        self.ctx: ExecutionContext | None = None

    # ----------------------------------------------------------------------- worker set API

    @property
    def workers(self) -> list[Worker]:
        """The workers whose processes are still running."""
        return [p.worker for p in self.processes if p.alive]

    @property
    def expected(self) -> int | None:
        # Every worker was up before the context was handed out, and a dead one does not come
        # back: the set is complete with the processes still running (no stability wait).
        return sum(1 for p in self.processes if p.alive)

    # --------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ExecutionContext:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        assert self.ctx is not None
        return self.ctx

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ExecutionContext:
        self.loop = DriverLoop(self.settings)
        env = self._environment()
        self._spawned = [self._spawn(i, env) for i in range(self.size)]
        for index, process in enumerate(self._spawned):
            url, name = self._await_ready(index, process)
            client = WorkerClient(name, url, self.secret.encode(), self.loop.session, self.settings)
            self.processes.append(WorkerProcess(process, HttpWorker(client, self.loop)))
        self.ctx = ExecutionContext(self, self.config)
        return self.ctx

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        # Workers import what the driver can: task functions travel by reference.
        path = [*self.python_path, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in path))
        env["BNDL_SECRET"] = self.secret
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, index: int, env: dict[str, str]) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "bndl.worker",
            "--name",
            f"local-{index}",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            *self.worker_args,
        ]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )

    def _await_ready(self, index: int, process: subprocess.Popen[str]) -> tuple[str, str]:
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        timer = threading.Timer(START_TIMEOUT, process.kill)  # unblocks readline on a hang
        timer.start()
        try:
            for line in process.stdout:
                announcement = parse_ready_line(line)
                if announcement is not None:
                    # Keep draining stdout so a chatty task cannot block the worker on a pipe;
                    # what tasks print goes to the driver's stderr, away from its results.
                    threading.Thread(
                        target=_drain,
                        args=(process.stdout,),
                        name=f"stdout-local-{index}",
                        daemon=True,
                    ).start()
                    return announcement.url, announcement.name
                if time.monotonic() > deadline:
                    break
        finally:
            timer.cancel()
        code = process.poll()
        raise RuntimeError(
            f"worker local-{index} (pid {process.pid}) did not start"
            + (f": it exited with code {code}; see its output above" if code is not None else "")
        )

    def stop(self) -> None:
        """Stop the workers by PID (SIGTERM, then SIGKILL after a deadline) and the I/O loop."""
        if self.ctx is not None:
            self.ctx.stop()
        processes, self._spawned, self.processes = self._spawned, [], []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self.loop is not None:
            self.loop.close()
            self.loop = None


def _drain(stream: Any) -> None:
    try:
        for line in stream:
            sys.stderr.write(line)
    except (OSError, ValueError):
        pass  # the pipe was closed at stop
