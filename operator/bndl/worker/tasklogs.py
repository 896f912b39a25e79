"""What a task prints, captured per run: its stdout, its stderr and the log records of its thread.

Tasks run on threads of one process, so ``sys.stdout`` and ``sys.stderr`` cannot simply be
redirected per task. :func:`install` replaces them, once per worker process, with proxies that
route each write by the thread that makes it: a thread running a task (between :func:`begin` and
:func:`end`) writes into that run's :class:`Capture`, any other thread writes through to the real
stream. A logging handler on the root logger does the same for log records (the worker's own
handlers skip records of task threads, so nothing is written twice).

Every captured line is also written to the worker's real stderr prefixed by the run's key,
``[<key>] line``, so the log of a worker pod (``kubectl logs``) says which task printed what.
Captures are bounded: the last ``max_chars`` characters of each run and the latest ``max_runs``
runs are kept (:class:`TaskLogs`); ``GET /v1/logs/{key}`` serves them, and the tail of a failed
run travels with its failure (``task_output`` on the driver's exception).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections import OrderedDict, deque
from typing import IO, Any

DEFAULT_MAX_CHARS = 64 * 1024
"""Characters kept of one run's output (its last ones)."""
DEFAULT_MAX_RUNS = 256
"""Runs whose output is kept (the latest ones): at most 16 Mi characters with the default above."""
FAILURE_TAIL = 4 * 1024
"""Characters of a failed run's output sent with its failure."""
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""How a task's log records read in its captured output."""


class Capture:
    """The bounded output of one run, echoed line by line to the worker's stderr."""

    def __init__(self, key: str, max_chars: int, echo: IO[str] | None) -> None:
        self.key = key
        self.max_chars = max_chars
        self.dropped = 0  # characters cut from the head
        self._chunks: deque[str] = deque()
        self._size = 0
        self._partial = ""  # the unfinished line not yet echoed
        self._echo = echo
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            self._chunks.append(text)
            self._size += len(text)
            while self._size > self.max_chars:
                excess = self._size - self.max_chars
                head = self._chunks[0]
                if len(head) <= excess:
                    self._chunks.popleft()
                    self._size -= len(head)
                    self.dropped += len(head)
                else:
                    self._chunks[0] = head[excess:]
                    self._size -= excess
                    self.dropped += excess
            if self._echo is not None:
                lines = (self._partial + text).split("\n")
                self._partial = lines.pop()
                self._emit(lines)

    def flush(self) -> None:
        """Echo an unfinished last line (the run ended)."""
        with self._lock:
            if self._partial and self._echo is not None:
                self._emit([self._partial])
            self._partial = ""

    def _emit(self, lines: list[str]) -> None:
        if lines and self._echo is not None:
            prefix = f"[{self.key}] "
            _echo_lines(self._echo, "".join(prefix + line + "\n" for line in lines))

    def text(self) -> str:
        """What was captured, with a first line saying how much was cut when it was."""
        with self._lock:
            body = "".join(self._chunks)
            dropped = self.dropped
        if dropped:
            return f"[... {dropped:,} earlier characters dropped]\n{body}"
        return body

    def tail(self, chars: int = FAILURE_TAIL) -> str:
        """The last ``chars`` characters (with a note when earlier ones were cut)."""
        text = self.text()
        if len(text) <= chars:
            return text
        return f"[... {len(text) - chars:,} earlier characters dropped]\n{text[-chars:]}"


_echo_lock = threading.Lock()


def _echo_lines(stream: IO[str], text: str) -> None:
    # whole lines under one lock: the lines of concurrent tasks never interleave mid-line
    try:
        with _echo_lock:
            stream.write(text)
            stream.flush()
    except (OSError, ValueError):
        pass  # the worker's stderr is gone (closed pipe): the capture still has the text


class TaskLogs:
    """The captures of a worker's latest runs, by key."""

    def __init__(
        self,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_runs: int = DEFAULT_MAX_RUNS,
        echo: IO[str] | None = None,
    ) -> None:
        self.max_chars = max_chars
        self.max_runs = max_runs
        self._echo = echo
        self._runs: OrderedDict[str, Capture] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, key: str) -> Capture:
        """A fresh capture for run ``key`` (replacing an earlier one of that key)."""
        capture = Capture(key, self.max_chars, self._echo if self._echo else _real_stderr())
        with self._lock:
            self._runs.pop(key, None)
            self._runs[key] = capture
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        return capture

    def get(self, key: str) -> Capture | None:
        with self._lock:
            return self._runs.get(key)

    def __len__(self) -> int:
        return len(self._runs)


# --- routing by thread -------------------------------------------------------------------------


class _Current(threading.local):
    capture: Capture | None = None


_current = _Current()


def begin(capture: Capture) -> None:
    """Route what this thread prints and logs into ``capture`` until :func:`end`."""
    _current.capture = capture


def end() -> Capture | None:
    """Stop routing this thread's output; returns the capture it went to (flushed)."""
    capture, _current.capture = _current.capture, None
    if capture is not None:
        capture.flush()
    return capture


def current() -> Capture | None:
    return _current.capture


class _ThreadRoutedStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker: a task thread's writes go to its capture."""

    def __init__(self, real: IO[str]) -> None:
        self.real = real

    def write(self, text: str) -> int:
        capture = _current.capture
        if capture is None:
            return self.real.write(text)
        capture.write(text)
        return len(text)

    def flush(self) -> None:
        if _current.capture is None:
            self.real.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _TaskRecords(logging.Handler):
    """Writes the log records of task threads into their captures."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        capture = _current.capture
        if capture is None:
            return
        try:
            capture.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _outside_tasks(record: logging.LogRecord) -> bool:
    """The filter of the worker's own handlers: records of task threads are captured instead."""
    return _current.capture is None


_installed: tuple[IO[str], IO[str]] | None = None


def _real_stderr() -> IO[str]:
    return _installed[1] if _installed is not None else sys.stderr


def install(task_level: int = logging.INFO) -> None:
    """Route task output by thread in this process (idempotent; the worker calls it at start).

    The root logger passes records of ``task_level`` and up so that a task's ``log.info`` is
    captured; the handlers already on it keep the level they had through the root logger.
    """
    global _installed
    if _installed is not None:
        return
    real = (sys.stdout, sys.stderr)
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(root.level)
        handler.addFilter(_outside_tasks)
    root.addHandler(_TaskRecords())
    root.setLevel(min(root.level, task_level))
    sys.stdout = _ThreadRoutedStream(real[0])
    sys.stderr = _ThreadRoutedStream(real[1])
    _installed = real
