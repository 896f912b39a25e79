"""Processes started by PID and network-namespace helpers.

Every process of a run is started through ``nsenter --net=<netns>`` (nsenter execs the program,
so the recorded PID is the program's own), in a new session (so a Ctrl-C in the terminal reaches
only the harness, which then tears down in order), with its output in a log file. Stopping is by
recorded PID and process start time (guards against PID reuse): SIGTERM, a deadline, SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.waiting import WaitTimeout

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------------------------
# Network namespaces
# ---------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNS:
    """A named network namespace (``ip netns add``: a bind mount under /run/netns)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def delete(self) -> None:
        if self.exists():
            run(["ip", "netns", "delete", self.name], check=False)

    def add_local_address(self, cidr: str) -> None:
        run(["ip", "-n", self.name, "addr", "add", cidr, "dev", "lo"])

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """The command line that runs ``cmd`` inside this namespace (and only its network)."""
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 120) -> T:
        """Run ``fn(*args)`` on a fresh thread that has entered this namespace; return its result.

        setns(2) changes only the calling thread, so the caller and every other thread of the
        process stay where they are. Sockets made by ``fn`` belong to this namespace for life.
        """
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                box["result"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise WaitTimeout(f"call in netns {self.name} did not finish in {timeout}s")
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Commands and processes
# ---------------------------------------------------------------------------------------------


class CommandError(RuntimeError):
    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(self.cmd)}\n"
            f"stderr: {stderr.strip()}\nstdout: {stdout.strip()[-2000:]}"
        )


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 300,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd),
        input=input.decode() if isinstance(input, bytes) else input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return proc


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if there is no such PID."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data.rsplit(")", 1)[1].split()
    return int(rest[19])


def proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()[0]


@dataclass
class ProcRecord:
    name: str
    pid: int
    starttime: int
    cmd: list[str]
    log: str

    def alive(self) -> bool:
        st = proc_starttime(self.pid)
        return st == self.starttime and proc_state(self.pid) not in (None, "Z", "X")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_popen: dict[int, subprocess.Popen[bytes]] = {}


def start_process(
    name: str,
    cmd: Sequence[str],
    log: Path,
    *,
    netns: NetNS | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> ProcRecord:
    full = netns.wrap(cmd) if netns else list(cmd)
    with open(log, "ab") as out:
        p = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            pass_fds=tuple(pass_fds),
        )
    _popen[p.pid] = p
    st = proc_starttime(p.pid) or 0
    return ProcRecord(name, p.pid, st, list(cmd), str(log))


def _reap(pid: int) -> None:
    p = _popen.get(pid)
    if p is not None and p.poll() is not None:
        _popen.pop(pid, None)


def _gone(rec: ProcRecord) -> bool:
    _reap(rec.pid)
    return not rec.alive()


def stop_processes(records: Sequence[ProcRecord], timeout: float = 10.0) -> None:
    """SIGTERM all of ``records`` at once, wait up to ``timeout``, then SIGKILL what is left."""
    live = [r for r in records if r.alive()]
    for r in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(r) for r in live):
        time.sleep(0.05)
    for r in live:
        if not _gone(r):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(r) for r in live):
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def status_kib(pid: int, *fields: str) -> dict[str, int]:
    """The named ``kB`` fields of /proc/PID/status (``VmRSS``, ``VmHWM``, ...); missing ones are
    absent from the result, and a process that is gone gives an empty dict."""
    wanted = set(fields)
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            out[key] = int(value.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(data.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def pids_rooted_under(directory: Path) -> list[int]:
    """PIDs whose root directory or executable lies under ``directory`` (container processes)."""
    prefix = str(directory.resolve()) + "/"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for link in ("root", "exe"):
            try:
                target = os.readlink(entry / link)
            except OSError:
                continue
            if (target + "/").startswith(prefix):
                out.append(int(entry.name))
                break
    return out


def pids_with_arg(fragment: str) -> list[int]:
    """PIDs whose command line contains ``fragment`` (used to find shims by their socket path)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            out.append(int(entry.name))
    return out


def kill_pids(pids: Sequence[int], timeout: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(proc_state(p) not in (None, "Z") for p in pids):
            time.sleep(0.05)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(directory)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == prefix or mp.startswith(prefix + "/"):
            found.append(mp)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def unmount_all_under(directory: Path) -> None:
    for _ in range(5):
        mps = mounts_under(directory)
        if not mps:
            return
        for mp in mps:
            if run(["umount", mp], check=False).returncode != 0:
                run(["umount", "-l", mp], check=False)
