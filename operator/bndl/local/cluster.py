"""The embedded cluster: N worker processes on this machine, for ``bndl run`` and for tests.

Workers are real processes on loopback, each with a free port: on Linux forked from one fork
server per driver that has the worker imported (:mod:`bndl.local.spawn`), elsewhere fresh
``python -m bndl.worker`` processes. The driver speaks to them over the same mutual TLS as to pods
in Kubernetes: the cluster makes its own certificate authority (:func:`bndl.wire.tls.new_cluster`)
and writes the workers' files into a private temporary directory (mode 0700), removed when the
cluster stops. The cluster stops exactly the processes it started, by PID, also when the body of
the ``with`` block raises. The workers die with the driver, so a driver killed with SIGKILL leaves
no workers behind: the fork server kills its workers when the driver's end of its socket closes,
and each worker gets SIGKILL when the server dies (``PR_SET_PDEATHSIG``; the same for a worker
started afresh, whose parent is the driver).

Each worker can say why it was lost (``loss_cause``: its exit code or the signal that killed
it), which the scheduler puts in the error when a task keeps killing its workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from bndl.driver import DriverLoop, HttpWorker
from bndl.execute.context import ExecutionContext
from bndl.execute.workers import Worker
from bndl.local.spawn import Process, spawn_worker
from bndl.wire import ClientSettings, WorkerClient
from bndl.wire.tls import BENCH_INSECURE_ENV, bench_insecure, new_cluster
from bndl.worker.announce import parse_ready_line

# Seconds a worker process may take to print its READY line.
START_TIMEOUT = 60.0
# Seconds a worker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
# Seconds ``loss_cause`` waits for a lost worker's process to exit.
LOSS_CAUSE_WAIT = 1.0


def exit_cause(returncode: int | None) -> str | None:
    """``"exit code 3"`` or ``"killed by signal 9 (SIGKILL)"`` for a Popen return code."""
    if returncode is None:
        return None
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"killed by signal {number}"
    return f"killed by signal {number} ({name})"


class WorkerProcess:
    """One worker process and the driver's view of it."""

    def __init__(self, process: Process, worker: HttpWorker) -> None:
        self.process = process
        self.worker = worker

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def loss_cause(self) -> str | None:
        """Why the process is gone (waiting up to a second for it to exit); None if it runs."""
        try:
            self.process.wait(LOSS_CAUSE_WAIT)
        except subprocess.TimeoutExpired:
            return None
        return exit_cause(self.process.returncode)


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
        insecure_benchmark_only: bool = False,
    ) -> None:
        """``insecure_benchmark_only``: plain HTTP without authentication, for
        ``bench/dispatch.py`` to measure the cost of encryption; honoured only with
        ``BNDL_BENCH_INSECURE=1`` in the environment as well (see
        :func:`bndl.wire.tls.bench_insecure`)."""
        if workers < 1:
            raise ValueError(f"a local cluster needs at least one worker, not {workers}")
        self.size = workers
        self.config = dict(config or {})
        self.python_path = list(python_path)
        self.extra_env = dict(env or {})
        self.settings = settings or ClientSettings()
        self.worker_args = list(worker_args)
        self.insecure = bench_insecure(insecure_benchmark_only, {**os.environ, **self.extra_env})
        self.tls_dir: str | None = None
        self.client_tls: ssl.SSLContext | None = None
        """The driver's side of the cluster's mutual TLS (None without encryption)."""
        self.processes: list[WorkerProcess] = []
        self._spawned: list[Process] = []
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
        if not self.insecure:
            material = new_cluster(f"local-{os.getpid()}")
            self.tls_dir = tempfile.mkdtemp(prefix="bndl-tls-")  # mode 0700
            material.worker.write(self.tls_dir)
            self.client_tls = material.client.client_context()
        env = self._environment()
        self._spawned = [self._spawn(i, env) for i in range(self.size)]
        for index, process in enumerate(self._spawned):
            url, name = self._await_ready(index, process)
            client = WorkerClient(name, url, self.client_tls, self.loop.session, self.settings)
            worker_process = WorkerProcess(process, HttpWorker(client, self.loop))
            # The scheduler asks a lost worker why (duck-typed: HttpWorker knows no processes).
            setattr(worker_process.worker, "loss_cause", worker_process.loss_cause)  # noqa: B010
            self.processes.append(worker_process)
        self.ctx = ExecutionContext(self, self.config)
        return self.ctx

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        # Workers import what the driver can: task functions travel by reference.
        path = [*self.python_path, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in path))
        for name in ("BNDL_TLS_DIR", "BNDL_TLS_CA", "BNDL_TLS_CERT", "BNDL_TLS_KEY"):
            env.pop(name, None)
        if self.tls_dir is not None:
            env["BNDL_TLS_DIR"] = self.tls_dir
        else:
            env[BENCH_INSECURE_ENV] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, index: int, env: dict[str, str]) -> Process:
        argv = [
            "--name",
            f"local-{index}",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            *(["--insecure-benchmark-only"] if self.insecure else []),
            # heartbeats well within the driver's timeout, so that a busy worker is not lost
            "--heartbeat-interval",
            f"{min(1.0, self.settings.heartbeat_timeout / 4):g}",
            *self.worker_args,
        ]
        return spawn_worker(argv, env)

    def _await_ready(self, index: int, process: Process) -> tuple[str, str]:
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
        self._hang_up()
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
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
            self.tls_dir = None

    def _hang_up(self) -> None:
        """Close the driver's channel to each worker: a worker told to stop lets its open streams
        end for a grace period (:func:`bndl.worker.server.serve`), and the channel would be one."""
        if self.loop is None or not self.processes:
            return
        clients = [p.worker.client for p in self.processes]

        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

        with contextlib.suppress(Exception):  # best effort: the workers are stopped by PID anyway
            self.loop.run(close_all()).result(STOP_TIMEOUT)


def _drain(stream: Any) -> None:
    try:
        for line in stream:
            sys.stderr.write(line)
    except (OSError, ValueError):
        pass  # the pipe was closed at stop
