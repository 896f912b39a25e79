"""What a run request carries and what comes back per task, and how both are pickled.

A ``POST /v1/run`` body is a plain pickle (builtins only) of
``[(key, keep, reply, blob, lane, slots), ...]`` where each ``blob`` is the cloudpickle of one
task's ``(fn, args, kwargs)``; ``lane`` and ``slots`` say that at most ``slots`` runs of the lane
named ``lane`` may run at once on the worker, the others waiting in order (``slots`` 0: no
lane). Pickling each task separately costs a little on the driver but means a task whose function
the worker cannot import fails alone, with a message naming the module, instead of failing its
whole batch.

Outcomes travel the same way: a ``("done", key, ok, blob)`` frame whose blob is the pickled result,
or the pickled ``(exception, formatted remote traceback)``. Every way a task can end badly on the
worker (an unpicklable result or exception, a ``BaseException``) is turned into an ordinary,
picklable exception here, naming the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pickle
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from bndl.execute.exceptions import TaskCancelled
from bndl.wire import frames
from bndl.wire.errors import (
    ExceptionNotPicklable,
    RemoteTraceback,
    ResultNotPicklable,
    TaskAborted,
    TaskNotDecodable,
)
from bndl.wire.frames import PROTOCOL, FrameError

DONE = "done"
HEARTBEAT = "heartbeat"


@dataclass(slots=True)
class TaskItem:
    """One task to run on a worker.

    ``key`` names the execution: unique per dispatch (include the attempt when re-dispatching),
    it identifies the task in cancel requests, completion frames and, with ``keep``, the stored
    result. ``reply=False`` leaves a successful result out of the completion frame (use with
    ``keep`` when only peers will read the result); failures are always sent. With ``slots``,
    at most that many runs of ``lane`` run at once on the worker; the others wait their turn.
    """

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    keep: bool = False
    reply: bool = True
    lane: str = ""
    slots: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one task: its result when ``ok``, else the exception it failed with.

    Exceptions raised on a worker carry the remote traceback as their ``__cause__``
    (a :class:`RemoteTraceback`) and in their ``remote_traceback`` attribute when settable.
    """

    key: str
    ok: bool
    value: Any

    @property
    def error(self) -> BaseException | None:
        return None if self.ok else self.value


@dataclass(frozen=True, slots=True)
class EncodedTask:
    """A task as the worker receives it, before its function and arguments are unpickled."""

    key: str
    keep: bool
    reply: bool
    blob: bytes
    lane: str = ""
    slots: int = 0

    def decode(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        try:
            fn, args, kwargs = pickle.loads(self.blob)
        except TaskCancelled:
            raise  # cancelled while importing the task's modules
        except Exception as e:
            raise TaskNotDecodable(
                f"task {self.key} could not be unpickled on the worker: {type(e).__name__}: {e}"
            ) from e
        return fn, args, kwargs


def encode_task(item: TaskItem) -> bytes:
    """The pickled ``(fn, args, kwargs)`` of one task; raises if they cannot be pickled."""
    blob: bytes = cloudpickle.dumps((item.fn, item.args, item.kwargs), PROTOCOL)
    return blob


def encode_run(tasks: Sequence[tuple[TaskItem, bytes]]) -> bytes:
    """A run request body from tasks and their :func:`encode_task` blobs."""
    return pickle.dumps(
        [(item.key, item.keep, item.reply, blob, item.lane, item.slots) for item, blob in tasks],
        PROTOCOL,
    )


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise FrameError(f"a run request may not contain globals (found {module}.{name})")


def decode_run(body: bytes) -> list[EncodedTask]:
    """The tasks of a run request; raises ``ValueError`` when the body is malformed."""
    try:
        raw = _BuiltinsOnly(io.BytesIO(body)).load()
    except Exception as e:
        raise ValueError(f"malformed run request: {type(e).__name__}: {e}") from e
    return decode_items(raw)


def decode_items(raw: Any) -> list[EncodedTask]:
    """The tasks of a decoded run payload ``[(key, keep, reply, blob, lane, slots), ...]``;
    raises ``ValueError`` naming what is wrong when it has another shape."""
    try:
        return [
            EncodedTask(key, bool(keep), bool(reply), blob, lane, slots)
            for key, keep, reply, blob, lane, slots in raw
            if _valid(key, blob, lane, slots)
        ]
    except Exception as e:
        raise ValueError(f"malformed run request: {type(e).__name__}: {e}") from e


def _valid(key: Any, blob: Any, lane: Any, slots: Any) -> bool:
    if not isinstance(key, str) or not isinstance(blob, bytes) or not isinstance(lane, str):
        raise TypeError("want (str key, keep, reply, bytes blob, str lane, int slots)")
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
        raise TypeError(f"slots must be a whole number of at least 0, not {slots!r}")
    return True


def encode_result(key: str, value: Any) -> bytes:
    """The pickled result of a task, or :class:`ResultNotPicklable` naming task and type."""
    try:
        blob: bytes = cloudpickle.dumps(value, PROTOCOL)
    except Exception as e:
        raise ResultNotPicklable(
            f"result of task {key} is not picklable: {type(value).__qualname__}: "
            f"{type(e).__name__}: {e}"
        ) from e
    return blob


RAW_RESULT = 1 << 20
"""Results of at least this many pickled bytes travel raw after their frame (no copy into it)."""


@dataclass(frozen=True, slots=True)
class RawBytes:
    """A held result that is a large ``bytes`` value, received as it is (never pickled)."""

    value: bytes


Fetched = bytes | RawBytes
"""A fetched result: its pickle, or the value itself when it is large ``bytes``."""


def load_result(fetched: Fetched) -> Any:
    """The value of a fetched result."""
    return fetched.value if isinstance(fetched, RawBytes) else pickle.loads(fetched)


def encode_results(values: dict[str, Any]) -> list[bytes | memoryview]:
    """The chunks of a held-results body, to write one after the other: a frame
    ``("result", key, blob)`` per small result; for a large one a frame ``("raw", key, size)``
    followed by its ``size`` pickled bytes as they are, or for a large ``bytes`` value a frame
    ``("bytes", key, size)`` followed by the value itself (no pickling, no copy);
    ``("error", key, message)`` for a value that cannot be pickled."""
    chunks: list[bytes | memoryview] = []
    for key, value in values.items():
        if type(value) is bytes and len(value) >= RAW_RESULT:
            chunks += (frames.encode(("bytes", key, len(value))), memoryview(value))
            continue
        try:
            blob = encode_result(key, value)
        except ResultNotPicklable as e:
            chunks.append(frames.encode(("error", key, str(e))))
            continue
        if len(blob) < RAW_RESULT:
            chunks.append(frames.encode(("result", key, blob)))
        else:
            chunks += (frames.encode(("raw", key, len(blob))), blob)
    return chunks


async def read_results(read_exactly: Callable[[int], Awaitable[bytes]]) -> dict[str, Fetched]:
    """The results of an :func:`encode_results` body (see :func:`load_result`), read with
    ``read_exactly`` (an ``asyncio.StreamReader.readexactly``: raises ``IncompleteReadError`` at
    the end) until the body ends; raises :class:`ResultNotPicklable`, or ``FrameError`` when it
    is malformed."""
    results: dict[str, Fetched] = {}
    while True:
        try:
            header = await read_exactly(frames.HEADER.size)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise FrameError("truncated results") from e
            return results
        (size,) = frames.HEADER.unpack(header)
        try:
            message = frames.decode(await read_exactly(size))
            kind, key, payload = message
            if kind in ("raw", "bytes"):
                if not isinstance(payload, int) or isinstance(payload, bool) or payload < 0:
                    raise FrameError(f"a raw result of {payload!r} bytes")
                payload = await read_exactly(payload)
                if kind == "bytes":
                    payload = RawBytes(payload)
        except asyncio.IncompleteReadError as e:
            raise FrameError("truncated results") from e
        except (TypeError, ValueError) as e:
            raise FrameError(f"malformed results: {e}") from e
        if kind == "error":
            raise ResultNotPicklable(payload)
        if kind not in ("result", "raw", "bytes") or not isinstance(key, str):
            raise FrameError(f"unexpected results frame {kind!r}")
        results[key] = payload


def encode_error(key: str, error: BaseException, output: str = "") -> bytes:
    """The pickled ``(exception, traceback text[, output])`` of a failed task; always succeeds.

    ``output`` is the tail of what the task printed and logged (:mod:`bndl.worker.tasklogs`),
    set as ``task_output`` on the exception where it is decoded. A ``BaseException`` becomes
    :class:`TaskAborted`; an exception that does not survive a pickle round trip becomes
    :class:`ExceptionNotPicklable` carrying its repr.
    """
    text = "".join(traceback.format_exception(error))
    blob: bytes
    if not isinstance(error, Exception):
        error = TaskAborted(f"task {key} raised {type(error).__qualname__}: {error!r}")
    try:
        blob = cloudpickle.dumps((error, text, output) if output else (error, text), PROTOCOL)
        pickle.loads(blob)  # an exception with a custom __init__ may pickle but not unpickle
    except Exception as e:
        error = ExceptionNotPicklable(
            f"exception of task {key} is not picklable ({type(e).__name__}: {e}): {error!r}"
        )
        blob = pickle.dumps((error, text, output) if output else (error, text), PROTOCOL)
    return blob


def decode_error(blob: bytes) -> BaseException:
    """The exception of an :func:`encode_error` blob, with its remote traceback and the task's
    output (``task_output``, "" when it printed nothing); raises when undecodable."""
    error, text, *rest = pickle.loads(blob)  # (error, text) when the task printed nothing
    return with_remote_traceback(error, text, str(rest[0]) if rest else "")


def decode_outcome(key: str, ok: bool, blob: bytes) -> Completion:
    """The :class:`Completion` a done frame describes; an undecodable payload fails the task."""
    try:
        if ok:
            return Completion(key, True, pickle.loads(blob) if blob else None)
        error = decode_error(blob)
    except Exception as e:
        what = "result" if ok else "exception"
        failure = TaskNotDecodable(
            f"{what} of task {key} could not be unpickled: {type(e).__name__}: {e}"
        )
        failure.__cause__ = e
        return Completion(key, False, failure)
    return Completion(key, False, error)


def with_remote_traceback(error: BaseException, text: str, output: str = "") -> BaseException:
    """Attach a worker's traceback text (and the task's output) to an exception unpickled on
    the driver: ``remote_traceback`` and ``task_output``, where the exception takes attributes."""
    error.__cause__ = RemoteTraceback(text)
    with contextlib.suppress(AttributeError):  # __slots__ exceptions: __cause__ has the text
        error.remote_traceback = text  # type: ignore[attr-defined]
        error.task_output = output  # type: ignore[attr-defined]
    return error
