"""How the embedded cluster starts a worker process: forked from a fork server, or executed afresh.

A worker started with ``python -m bndl.worker`` spends about 0.4 s of CPU on imports. On Linux the
driver instead starts one :mod:`bndl.worker.forkserver` per process, shared by every
:class:`~bndl.local.cluster.LocalCluster` it starts, and has each worker forked from it: the import
is paid once, a worker costs a few milliseconds. The forked worker runs the same
``bndl.worker.__main__.main`` with its own arguments, environment, directory and streams.

A forked worker is not the driver's child, so :class:`ForkedProcess` gives what
:class:`subprocess.Popen` gives (``pid``, ``poll``, ``wait``, ``returncode``, signals) from the exit
statuses the server reports. Elsewhere (no ``SOCK_SEQPACKET`` or ``send_fds``), or with
``BNDL_FORK_SERVER=0``, every worker is a fresh ``python -m bndl.worker``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

from bndl.worker import parentdeath

# Set to 0 to execute every worker afresh instead of forking it.
FORK_SERVER_ENV = "BNDL_FORK_SERVER"
# Largest message the server sends.
MAX_MESSAGE = 1 << 16
# Seconds the server may take to answer a request (it imports the worker first, once).
REPLY_TIMEOUT = 60.0


class Process(Protocol):
    """What the cluster needs of a worker process: :class:`subprocess.Popen` has it too."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | Any: ...

    @property
    def stdout(self) -> IO[str] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def fork_server_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether workers are forked: on Linux, unless ``BNDL_FORK_SERVER=0``."""
    return (
        sys.platform.startswith("linux")
        and hasattr(socket, "SOCK_SEQPACKET")
        and hasattr(socket, "send_fds")
        and environ.get(FORK_SERVER_ENV, "1") != "0"
    )


def _cwd() -> str | None:
    """This process's working directory; None if it is gone (the worker then keeps the server's,
    where a process started afresh would have inherited the deleted one)."""
    try:
        return os.getcwd()
    except OSError:
        return None


class ForkServerError(RuntimeError):
    """The fork server could not start a worker."""


class ForkServer:
    """The driver's end of one :mod:`bndl.worker.forkserver` process."""

    def __init__(self, env: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bndl.worker.forkserver",
                    "--socket",
                    str(theirs.fileno()),
                ],
                env=dict(env),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        self.sock = ours
        self.owner = os.getpid()  # a forked driver starts a server of its own
        self.ids = itertools.count(1)
        self.sending = threading.Lock()
        self.changed = threading.Condition()
        self.pids: dict[int, int] = {}  # request id -> pid, or -1 for a refused request
        self.errors: dict[int, str] = {}
        self.exits: dict[int, int] = {}  # request id -> returncode
        self.alive = True
        threading.Thread(target=self._read, name="bndl-fork-server", daemon=True).start()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], stderr: int) -> ForkedProcess:
        """Fork a worker with these arguments and environment, this directory, stdin from
        ``/dev/null``, stdout to a new pipe (:attr:`ForkedProcess.stdout`) and ``stderr``."""
        ident = next(self.ids)
        request = {"id": ident, "argv": list(argv), "env": dict(env), "cwd": _cwd()}
        read_end, write_end = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            with self.sending:
                socket.send_fds(
                    self.sock, [json.dumps(request).encode()], [devnull, write_end, stderr]
                )
        except OSError as error:
            os.close(read_end)
            raise ForkServerError(f"the fork server is gone: {error}") from error
        finally:
            os.close(devnull)
            os.close(write_end)
        stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115 - the caller's
        try:
            pid = self._await_pid(ident)
        except BaseException:
            stdout.close()
            raise
        return ForkedProcess(self, ident, pid, argv, stdout)

    def _await_pid(self, ident: int) -> int:
        deadline = time.monotonic() + REPLY_TIMEOUT
        with self.changed:
            while ident not in self.pids:
                remaining = deadline - time.monotonic()
                if not self.alive or remaining <= 0:
                    raise ForkServerError(
                        "the fork server did not start the worker"
                        + ("" if self.alive else f": it exited ({self.process.poll()})")
                    )
                self.changed.wait(remaining)
            if ident in self.errors:
                raise ForkServerError(f"the fork server refused the worker: {self.errors[ident]}")
            return self.pids[ident]

    def returncode(self, ident: int) -> int | None:
        with self.changed:
            return self.exits.get(ident)

    def wait(self, ident: int, timeout: float | None) -> int | None:
        """The worker's return code once it has exited, waiting up to ``timeout`` s (None: ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while ident not in self.exits:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.changed.wait(remaining)
            return self.exits[ident]

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            ident = message.get("id")
            with self.changed:
                if "pid" in message:
                    self.pids[ident] = message["pid"]
                elif "exit" in message:
                    self.exits[ident] = message["exit"]
                elif "error" in message and ident is not None:
                    self.pids[ident] = -1
                    self.errors[ident] = message["error"]
                self.changed.notify_all()
        # The server is gone; its workers die with it (PR_SET_PDEATHSIG: SIGKILL).
        with self.changed:
            self.alive = False
            for ident in self.pids:
                self.exits.setdefault(ident, -signal.SIGKILL)
            self.changed.notify_all()
        with contextlib.suppress(OSError):
            self.sock.close()


class ForkedProcess:
    """A worker forked by the fork server, with the parts of :class:`subprocess.Popen` the
    cluster uses."""

    def __init__(
        self, server: ForkServer, ident: int, pid: int, argv: Sequence[str], stdout: IO[str]
    ) -> None:
        self.server = server
        self.ident = ident
        self.pid = pid
        self.args = list(argv)
        self.stdout: IO[str] | None = stdout

    @property
    def returncode(self) -> int | None:
        return self.server.returncode(self.ident)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        code = self.server.wait(self.ident, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        # Until the server reaps the worker (just before it reports the exit) its pid cannot be
        # reused, so a signal reaches a stranger only if sent in the moment between the two.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_shared: ForkServer | None = None
_shared_lock = threading.Lock()


def shared_fork_server(env: Mapping[str, str]) -> ForkServer:
    """This process's fork server, started on first use (and again if it died) with ``env``."""
    global _shared
    with _shared_lock:
        if (
            _shared is None
            or _shared.owner != os.getpid()
            or not _shared.alive
            or _shared.process.poll() is not None
        ):
            _shared = ForkServer(env)
        return _shared


def spawn_worker(argv: Sequence[str], env: Mapping[str, str]) -> Process:
    """Start ``python -m bndl.worker ARGV``: forked from the shared fork server where it can be,
    else executed afresh (dying with this process); stdout is a pipe the caller reads, stderr is
    ours."""
    if fork_server_enabled(env):
        return shared_fork_server(env).spawn(argv, env, stderr=2)
    return subprocess.Popen(
        [sys.executable, "-m", "bndl.worker", *argv],
        env=dict(env),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        preexec_fn=_die_with_parent(),
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux only).

    The kernel's "parent" is the thread that forks: only a worker started on the main thread
    (``bndl run``, tests) gets it, lest it die with a short-lived thread.
    """
    if threading.current_thread() is not threading.main_thread() or parentdeath.prctl() is None:
        return None
    parent = os.getpid()
    return lambda: parentdeath.die_with_parent(parent)
