"""A one-line progress bar for ``bndl run``, redrawn from the job's counts on stderr."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from bndl.execute.core import Counts

WIDTH = 30


def render(counts: Counts, elapsed: float, width: int = WIDTH) -> str:
    """``[#####.....] 12/20 done, 2 running, 1 retried, 0 recomputed, 3.2s``."""
    total = max(counts.total, 1)
    filled = int(width * counts.succeeded / total)
    bar = "#" * filled + "." * (width - filled)
    parts = [f"{counts.succeeded}/{counts.total} done", f"{counts.running} running"]
    if counts.retried:
        parts.append(f"{counts.retried} retried")
    if counts.recomputed:
        parts.append(f"{counts.recomputed} recomputed")
    if counts.lost_runs:
        parts.append(f"{counts.lost_runs} lost runs")
    return f"[{bar}] " + ", ".join(parts) + f", {elapsed:.1f}s"


class ProgressBar:
    """Redraws ``render(counts())`` every ``interval`` seconds until stopped.

    On a terminal the line is redrawn in place; elsewhere (CI logs) one line is printed every
    ``log_interval`` seconds and at the end.
    """

    def __init__(
        self,
        counts: Callable[[], Counts | None],
        stream: IO[str] = sys.stderr,
        interval: float = 0.1,
        log_interval: float = 5.0,
    ) -> None:
        self._counts = counts
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval if self._tty else log_interval
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="bndl-progress", daemon=True)

    def __enter__(self) -> ProgressBar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._draw(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        counts = self._counts()
        if counts is None:
            return
        line = render(counts, time.monotonic() - self._start)
        if self._tty:
            self._stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


class NoBar:
    """What stands for a :class:`ProgressBar` when progress is not shown (``--no-progress``)."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
