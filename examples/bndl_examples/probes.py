"""Tasks for trying faults by hand (and for the end-to-end tests): report where and when they
ran, make big results, or kill their own worker.

``where`` tells which pod (host), process and time a task ran at, so a restarted operator can be
seen not to run a task twice; ``blob`` makes a large result that should stay on its worker;
``crash`` kills the worker process as a segfault or the OOM killer would; ``spin`` burns CPU (a
profile names it); ``text`` makes a large JSON-able result; ``shout`` prints, then fails.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any


def where(seconds: float = 0.0, tag: Any = None) -> dict[str, Any]:
    """Sleep ``seconds``; then say on which host and process, and when, this ran."""
    started = time.time()
    time.sleep(seconds)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "tag": tag,
    }


def blob(megabytes: int, seed: int = 0) -> bytes:
    """A result of ``megabytes`` MiB."""
    return bytes([seed % 256]) * (megabytes * 1024 * 1024)


def sizes(blobs: Iterable[bytes]) -> int:
    """The total size of the blobs, in bytes."""
    return sum(len(b) for b in blobs)


def count(values: Iterable[Any]) -> int:
    """How many values there are."""
    return sum(1 for _ in values)


def crash(code: int = 1) -> None:
    """Kill this worker process at once (no cleanup, as a crash would)."""
    os._exit(code)


def hosts(reports: Iterable[dict[str, Any]]) -> list[str]:
    """The hosts (pods) that ran the tasks reported by ``where``, sorted."""
    return sorted({r["host"] for r in reports})


def spin(seconds: float) -> int:
    """Keep a core busy for ``seconds``; how many rounds that took."""
    rounds = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rounds += sum(range(1000)) > 0
    return rounds


def text(size: int, seed: int = 0) -> str:
    """A string of ``size`` characters (a result too big for a job's status)."""
    return (str(seed % 10) * size)[:size]


def shout(*lines: str) -> None:
    """Print ``lines``, then fail naming the last one."""
    for line in lines:
        print(line, flush=True)
    raise RuntimeError(f"shouted {len(lines)} lines, the last: {lines[-1] if lines else ''}")
