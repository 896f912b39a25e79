"""The errors of the wire boundary, in one hierarchy, and the mapping of transport failures.

Two families cross the wire. :class:`ProtocolError` and its subclasses say that a request was
refused (bad signature, body too large, browser origin, unknown result, ...); they carry the
HTTP status and the server's message. Task outcome errors (:class:`RemoteTraceback`,
:class:`ResultNotPicklable`, :class:`TaskAborted`, :class:`TaskNotDecodable`,
:class:`RunNotFound`) describe what happened to one task on a worker. Transport failures
(refused, reset, timed out, truncated) are not here: they all become
``bndl.execute.exceptions.NotConnected`` in :func:`not_connected`, so the scheduler treats the
worker as lost in exactly one way.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import aiohttp

from bndl.execute.exceptions import NotConnected


class ProtocolError(Exception):
    """A worker refused or could not serve a request (any non-transport failure)."""

    default_status: ClassVar[int] = 500

    def __init__(self, message: str, worker: str | None = None, status: int | None = None) -> None:
        self.message = message
        self.worker = worker
        self.status = status or self.default_status
        super().__init__(message, worker, self.status)

    def __str__(self) -> str:
        where = f" (worker {self.worker})" if self.worker else ""
        return f"{self.status} {self.message}{where}"


class BadRequest(ProtocolError):
    """The request body could not be decoded (e.g. a module the worker cannot import)."""

    default_status = 400


class AuthenticationFailed(ProtocolError):
    """Missing or bad signature, stale timestamp or replayed nonce: nothing was run."""

    default_status = 401


class OriginForbidden(ProtocolError):
    """The request carried an ``Origin`` header: browsers may never drive a worker."""

    default_status = 403


class NotFound(ProtocolError):
    """The worker does not hold the requested result (or the path does not exist)."""

    default_status = 404


class Conflict(ProtocolError):
    """The request does not fit the worker's state (e.g. a snapshot while not tracing)."""

    default_status = 409


class PayloadTooLarge(ProtocolError):
    """The request body exceeds the worker's configured limit."""

    default_status = 413


_BY_STATUS: dict[int, type[ProtocolError]] = {
    cls.default_status: cls
    for cls in (
        BadRequest,
        AuthenticationFailed,
        OriginForbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
    )
}


def protocol_error(status: int, message: str, worker: str | None = None) -> ProtocolError:
    """The :class:`ProtocolError` subclass for an HTTP status (the base class for others)."""
    return _BY_STATUS.get(status, ProtocolError)(message, worker, status)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, asyncio.IncompleteReadError)
"""Exceptions that mean the worker is unreachable or the connection broke."""


def not_connected(worker: str, error: BaseException) -> NotConnected:
    """Map a transport failure to ``NotConnected``: the single place this decision is made."""
    if isinstance(error, asyncio.TimeoutError):
        return NotConnected(worker, f"timed out ({type(error).__name__})", timed_out=True)
    if isinstance(error, asyncio.IncompleteReadError):
        reason = "connection closed mid-stream"
    else:
        reason = f"{type(error).__name__}: {error}"
    return NotConnected(worker, reason)


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised on a worker, set as its ``__cause__``."""

    def __init__(self, traceback: str) -> None:
        self.traceback = traceback
        super().__init__(traceback)

    def __str__(self) -> str:
        return "\n" + self.traceback


class ResultNotPicklable(Exception):
    """A task returned a value that could not be pickled to send or keep."""


class ExceptionNotPicklable(RuntimeError):
    """A task raised an exception that could not be pickled; carries its repr and traceback."""


class TaskAborted(Exception):
    """A task raised a ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, ...)."""


class TaskNotDecodable(Exception):
    """A task's function or arguments could not be unpickled on the worker."""


class RunNotFound(Exception):
    """A driver attached to a run the worker neither runs nor has an undelivered outcome of:
    it never ran there, its outcome was delivered already, or it outlived the grace period."""

    def __init__(self, key: str, worker: str) -> None:
        self.key = key
        self.worker = worker
        super().__init__(key, worker)  # the constructor's arguments, so that it unpickles

    def __str__(self) -> str:
        return f"no run of task {self.key} on worker {self.worker} (not running, no outcome kept)"
