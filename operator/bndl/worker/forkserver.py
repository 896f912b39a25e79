"""A fork server: one process that has imported the worker once and forks each new worker from it.

``python -m bndl.worker`` spends about 0.4 s of CPU importing (aiohttp, TLS, metrics) before it
serves. The embedded cluster (:mod:`bndl.local.spawn`) starts this server once per driver process
and asks it for workers instead: each is a ``fork`` of an interpreter that has the worker imported,
ready in a few milliseconds of CPU. The child then runs exactly what ``python -m bndl.worker`` runs
(:func:`bndl.worker.__main__.main`) with the environment, working directory, arguments and standard
streams the driver sent.

The server is single-threaded (forking a process with threads is unsafe). It speaks over one
``SOCK_SEQPACKET`` socket inherited from the driver (``--socket FD``): one message per datagram,
JSON, the child's standard streams passed as file descriptors (``SCM_RIGHTS``):

- driver → server: ``{"id": N, "argv": [...], "env": {...}, "cwd": "..."}`` with three fds;
- server → driver: ``{"id": N, "pid": P}`` at once, or ``{"id": N, "error": "..."}``;
- server → driver: ``{"id": N, "exit": R}`` when that child has exited, ``R`` as
  :attr:`subprocess.Popen.returncode` has it (negative: the signal that killed it).

When the driver goes away (the kernel closes its end of the socket, also on SIGKILL) the server
kills its children and exits; each child also gets SIGKILL if the server dies
(``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

# The worker, imported once here so that every child starts with it in memory.
from bndl.worker import __main__ as worker_main
from bndl.worker import parentdeath

# Largest request (arguments and environment) the server reads.
MAX_MESSAGE = 1 << 20
# The standard streams a request passes: stdin, stdout, stderr.
STREAMS = 3


def _become_worker(request: dict[str, Any], fds: Sequence[int], closing: Sequence[int]) -> None:
    """In the child: take the request's streams, environment and directory, run the worker."""
    code = 1
    try:
        parent = os.getppid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in closing:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        parentdeath.die_with_parent(parent)  # SIGKILL this child when the server dies
        env: dict[str, str] = request["env"]
        os.environ.clear()
        os.environ.update(env)
        # What PYTHONPATH would have put first, had this interpreter started with it.
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[1:1] = extra
        if request["cwd"] is not None:
            with contextlib.suppress(OSError):  # gone since: as a process started in it would
                os.chdir(request["cwd"])
        sys.argv = [worker_main.__file__, *request["argv"]]  # as ``python -m bndl.worker`` has it
        code = worker_main.main(request["argv"])
    except SystemExit as stop:  # argparse and the worker's own exits
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # a child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _check(request: Any) -> None:
    """Raise ValueError unless ``request`` has the shape the driver sends."""
    if not isinstance(request, dict):
        raise ValueError("not a JSON object")
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    if not isinstance(request.get("id"), int):
        raise ValueError("id must be an integer")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a list of strings")
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env must map names to strings")
    if not (cwd is None or isinstance(cwd, str)):
        raise ValueError("cwd must be a string or null")


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        parentdeath.prctl()  # looked up before any fork
        self.children: dict[int, int] = {}  # pid -> request id
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
        # Ctrl-C reaches the whole process group: the driver stops its workers, and each worker
        # stops on it too; the server must not die of it and take them along with SIGKILL.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(self.wakeup_w)

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the driver is gone: the loop sees EOF next
            self.sock.send(json.dumps(message).encode())

    def serve(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.sock.fileno(), self.wakeup_r], [], [])
            except InterruptedError:
                continue
            if self.wakeup_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wakeup_r, 4096)
                self.reap()
            if self.sock.fileno() in ready and not self.receive():
                return

    def receive(self) -> bool:
        """Handle one request; False when the driver has gone away."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, STREAMS)
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        request: Any = None
        try:
            request = json.loads(data)
            if len(fds) != STREAMS:
                raise ValueError(f"{len(fds)} streams passed, not {STREAMS}")
            _check(request)
        except ValueError as error:
            for fd in fds:
                os.close(fd)
            ident = request.get("id") if isinstance(request, dict) else None
            self.send({"id": ident, "error": f"bad request: {error}"})
            return True
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_worker(request, fds, (self.sock.fileno(), self.wakeup_r, self.wakeup_w))
        for fd in fds:
            os.close(fd)
        self.children[pid] = request["id"]
        self.send({"id": request["id"], "pid": pid})
        return True

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ident = self.children.pop(pid, None)
            if ident is not None:
                self.send({"id": ident, "exit": os.waitstatus_to_exitcode(status)})

    def stop(self) -> None:
        """Kill the children that are left and wait for them."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bndl.worker.forkserver")
    parser.add_argument("--socket", type=int, required=True, help="inherited SOCK_SEQPACKET fd")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.socket)
    server = _Server(sock)
    gc.freeze()  # what is imported stays shared with the children: their collections skip it
    try:
        server.serve()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
