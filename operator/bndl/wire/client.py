"""The driver's (and peers') side of the protocol: one async client per worker.

All clients of a driver share ONE long-lived ``aiohttp.ClientSession`` (:func:`create_session`),
so connections are pooled and kept alive. Each client speaks mutual TLS with its cluster's client
context (:mod:`bndl.wire.tls`): the worker must present a certificate of the cluster's authority
before anything is sent, so whoever answers at a worker's address without one is refused by the
handshake (``NotConnected``) and nothing it says is unpickled. Tasks travel on each client's one
long-lived channel (:mod:`bndl.wire.channel`: runs and cancels out, completions and heartbeats
back, batched; no HTTP request per task). Every other request goes through
:meth:`WorkerClient._exchange`, the single choke point that applies timeouts and maps failures:
transport failures (a failed handshake included) become ``NotConnected`` (the worker counts as
lost), refusals become a :class:`~bndl.wire.errors.ProtocolError` subclass carrying the server's
message.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import ssl
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote

import aiohttp
import cloudpickle
import yappi
from yarl import URL

from bndl.wire import frames
from bndl.wire.channel import PATH as CHANNEL_PATH
from bndl.wire.channel import Channel, Deliver
from bndl.wire.errors import (
    TRANSPORT_ERRORS,
    ProtocolError,
    TaskNotDecodable,
    not_connected,
    protocol_error,
)
from bndl.wire.tasks import (
    DONE,
    Completion,
    Fetched,
    TaskItem,
    decode_error,
    decode_outcome,
    encode_task,
    read_results,
)

PICKLE_TYPE = "application/x-bndl-pickle"
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Timeouts and pool limits of the driver's session and clients."""

    connect_timeout: float = 5.0
    """Seconds to get a connection (pool wait included) before the worker counts as lost."""
    heartbeat_timeout: float = 5.0
    """Seconds without any frame on a run stream before the worker counts as hung; keep it well
    above the workers' ``heartbeat_interval`` (1 s by default)."""
    request_timeout: float = 60.0
    """Seconds without data on a non-streaming response (fetches of large results included)."""
    limit: int = 1024
    """Connections open at once in total (one per concurrent run stream or request)."""
    limit_per_host: int = 256
    """Connections open at once to one worker."""
    keepalive_timeout: float = 60.0
    """Seconds an idle pooled connection is kept."""


def create_session(settings: ClientSettings | None = None) -> aiohttp.ClientSession:
    """The one session a driver (or worker) shares between its clients; call from a coroutine."""
    settings = settings or ClientSettings()
    connector = aiohttp.TCPConnector(
        limit=settings.limit,
        limit_per_host=settings.limit_per_host,
        keepalive_timeout=settings.keepalive_timeout,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


class Held(TypedDict):
    """What a worker reports it holds (results), is running and has finished (task keys)."""

    name: str
    held: list[str]
    """Keys of the results it keeps."""
    running: list[str]
    """Keys of its running tasks, orphans (whose driver went away) included."""
    finished: list[str]
    """Keys of finished orphans whose completion no driver received yet (see :meth:`attach`)."""
    orphaned: NotRequired[list[str]]
    """Keys of the running tasks whose driver went away (within their grace period)."""


class WorkerClient:
    """Talks to one worker. Cheap to create; all state lives in the shared session."""

    def __init__(
        self,
        name: str,
        url: str,
        tls: ssl.SSLContext | None,
        session: aiohttp.ClientSession,
        settings: ClientSettings | None = None,
    ) -> None:
        """``tls``: the cluster's client context, for an ``https://`` URL; None only for an
        ``http://`` one (a benchmark without encryption: :func:`bndl.wire.tls.bench_insecure`)."""
        https = url.startswith("https://")
        if https == (tls is None):
            raise ValueError(
                f"worker URL {url!r} "
                + ("needs the cluster's TLS context" if https else "is not https: refused")
            )
        self.name = name
        self.url = url.rstrip("/")
        self._tls = tls
        self._session = session
        self.settings = settings or ClientSettings()
        self._channel = Channel(name, self._open_channel, self.settings.heartbeat_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=self.settings.heartbeat_timeout,
        )

    def __repr__(self) -> str:
        return f"WorkerClient({self.name!r}, {self.url!r})"

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        content_type: str = PICKLE_TYPE,
        timeout: aiohttp.ClientTimeout | None = None,
        pickled_errors: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request and yield its (successful) response.

        ``pickled_errors``: a 500 response with a pickled body carries an exception raised by
        remote code, which is raised here as itself (with its remote traceback).
        """
        headers = {"Content-Type": content_type} if body else {}
        options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if self._tls is not None:
            options["ssl"] = self._tls
        try:
            async with self._session.request(
                method,
                URL(self.url + path, encoded=True),
                data=body or None,
                headers=headers,
                **options,
            ) as response:
                if response.status >= 400:
                    raise await self._refusal(response, pickled_errors)
                yield response
        except TRANSPORT_ERRORS as e:
            raise not_connected(self.name, e) from e

    async def _refusal(self, response: aiohttp.ClientResponse, pickled: bool) -> BaseException:
        body = await response.read()
        if pickled and response.content_type == PICKLE_TYPE:
            try:
                return decode_error(body)
            except Exception as e:
                return ProtocolError(
                    f"undecodable error from remote call: {type(e).__name__}: {e}", self.name
                )
        try:
            message = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")[:1000] or response.reason or ""
        return protocol_error(response.status, message, self.name)

    async def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = b"" if payload is None else json.dumps(payload).encode()
        async with self._exchange(method, path, body, content_type=JSON_TYPE) as response:
            return await response.json()

    async def _bytes(self, method: str, path: str) -> bytes:
        async with self._exchange(method, path) as response:
            return await response.read()

    # --- tasks -------------------------------------------------------------------------------

    def submit(self, items: Sequence[TaskItem], deliver: Deliver) -> None:
        """Run tasks on the worker; ``deliver`` receives each one's :class:`Completion` (or the
        error that lost it: ``NotConnected``, a refusal) on the event loop, once per task.

        The cheap form of :meth:`run`, for the driver: no task or generator per run. Call on the
        event loop. Tasks whose function or arguments cannot be pickled complete (soon, not
        during this call) with the error.
        """
        encoded: list[tuple[TaskItem, bytes]] = []
        keys: set[str] = set()
        for item in items:
            if item.key in keys:
                raise ValueError(f"duplicate task key in one run call: {item.key!r}")
            keys.add(item.key)
            try:
                encoded.append((item, encode_task(item)))
            except Exception as e:
                error = TaskNotDecodable(
                    f"task {item.key} could not be pickled: {type(e).__name__}: {e}"
                )
                error.__cause__ = e
                asyncio.get_running_loop().call_soon(deliver, Completion(item.key, False, error))
        if encoded:
            self._channel.submit(encoded, deliver)

    async def run(self, items: Sequence[TaskItem]) -> AsyncIterator[Completion]:
        """Run tasks on the worker and yield their completions as they finish.

        Tasks whose function or arguments cannot be pickled complete at once with the error.
        All calls share the client's one connection to the worker (:mod:`bndl.wire.channel`);
        those made in the same event-loop iteration go out as one message. Raises ``NotConnected``
        when the worker cannot be reached, the stream breaks, or no frame (result or heartbeat)
        arrives within ``heartbeat_timeout``. Leaving the iteration early does not stop the
        tasks: use :meth:`cancel`.
        """
        outcomes: asyncio.Queue[Completion | BaseException] = asyncio.Queue()
        deliver = outcomes.put_nowait
        remaining = {item.key for item in items}
        self.submit(items, deliver)
        try:
            while remaining:
                outcome = await outcomes.get()
                if isinstance(outcome, BaseException):
                    raise outcome
                remaining.discard(outcome.key)
                yield outcome
        finally:
            self._channel.forget(list(remaining), deliver)

    async def close(self) -> None:
        """Close this client's channel; its runs go on as orphans on the worker (the shared
        session stays open)."""
        await self._channel.close()

    def cancel_soon(self, keys: Sequence[str]) -> None:
        """Cancel runs through the channel, after the runs sent before (no answer): unlike
        :meth:`cancel`, it can never overtake the run it cancels."""
        self._channel.cancel(keys)

    def withdraw_soon(self, keys: Sequence[str]) -> None:
        """Take runs back through the channel if they still wait for a slot on the worker (they
        end with ``TaskCancelled``); runs that started go on. No answer; nothing happens on a
        worker too old to understand it."""
        self._channel.withdraw(keys)

    def release_soon(self, prefix: str) -> None:
        """Drop held results under keys starting with ``prefix``, through the channel, after
        the runs and cancels sent before (no answer): a run cancelled just before cannot keep
        its result after the release."""
        if not self._channel.release(prefix):  # a worker too old for it: over HTTP
            releasing = asyncio.ensure_future(self.release(prefix=prefix))
            releasing.add_done_callback(_ignore_failure)

    async def _open_channel(self) -> aiohttp.ClientWebSocketResponse:
        # A stopped worker's kernel still accepts connections: bound the handshake too.
        deadline = self.settings.connect_timeout + self.settings.heartbeat_timeout
        try:
            async with asyncio.timeout(deadline):
                return await self._session.ws_connect(
                    URL(self.url + CHANNEL_PATH, encoded=True),
                    ssl=self._tls if self._tls is not None else True,
                    autoping=True,
                    max_msg_size=0,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError:
            raise
        except TRANSPORT_ERRORS as e:
            raise not_connected(self.name, e) from e

    async def attach(self, keys: Iterable[str]) -> AsyncIterator[Completion]:
        """Adopt runs started earlier (by this or another driver) and yield their completions.

        For each key the worker sends a completion it kept for a driver that went away at once,
        or that of the running task when it finishes (a task running for another live request
        is moved here: that request no longer waits for it), or a failure with
        :class:`~bndl.wire.errors.RunNotFound`. One request of its own (no coalescing); raises
        like :meth:`run`.
        """
        pending = set(keys)
        body = json.dumps({"keys": sorted(pending)}).encode()
        async with self._exchange(
            "POST", "/v1/attach", body, content_type=JSON_TYPE, timeout=self._stream_timeout
        ) as response:
            async for completion in self._completions(response, pending):
                yield completion

    async def _completions(
        self, response: aiohttp.ClientResponse, pending: set[str]
    ) -> AsyncIterator[Completion]:
        """The completions on a frame stream until none of ``pending`` is left."""
        read = response.content.readexactly
        unpack = frames.HEADER.unpack
        while pending:
            (size,) = unpack(await read(frames.HEADER.size))
            try:
                message = frames.decode(await read(size))
            except frames.FrameError as e:
                raise ProtocolError(str(e), self.name) from e
            if message[0] == DONE:
                _, key, ok, blob = message
                pending.discard(key)
                yield decode_outcome(key, ok, blob)
        await response.read()  # consume the end of the stream so the connection is reused

    async def cancel(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Cancel tasks: ``{"interrupted": [...running keys], "remembered": [...others]}``.

        Keys not running are remembered for a while, so a run request that arrives later (the
        race) answers them with ``TaskCancelled`` without running them.
        """
        return await self._json("POST", "/v1/cancel", {"keys": list(keys)})  # type: ignore[no-any-return]

    # --- results ------------------------------------------------------------------------------

    async def fetch_bytes(self, key: str) -> bytes:
        """The pickled result held under ``key``; ``NotFound`` if the worker does not hold it."""
        return await self._bytes("GET", "/v1/results/" + quote(key, safe=""))

    async def fetch(self, key: str) -> Any:
        """The result held under ``key``; ``NotFound`` if the worker does not hold it."""
        return pickle.loads(await self.fetch_bytes(key))

    async def fetch_many(self, keys: Iterable[str]) -> dict[str, Fetched]:
        """The results held under ``keys``, in one request (their values:
        :func:`~bndl.wire.tasks.load_result`); keys the worker does not hold are left out.
        ``ResultNotPicklable`` if a held value cannot be pickled."""
        body = json.dumps({"keys": list(keys)}).encode()
        async with self._exchange(
            "POST", "/v1/results/fetch", body, content_type=JSON_TYPE
        ) as response:
            try:
                return await read_results(response.content.readexactly)
            except frames.FrameError as e:
                raise ProtocolError(f"undecodable results: {e}", self.name) from e

    async def release(self, keys: Iterable[str] = (), prefix: str | None = None) -> int:
        """Drop held results by key and/or key prefix; returns how many were dropped."""
        payload: dict[str, Any] = {"keys": list(keys)}
        if prefix is not None:
            payload["prefix"] = prefix
        reply = await self._json("POST", "/v1/results/release", payload)
        return int(reply["released"])

    async def logs(self, key: str) -> str:
        """What run ``key`` printed and logged on the worker (its last 64 KiB or so);
        ``NotFound`` when the worker keeps no output of that run."""
        path = "/v1/logs/" + quote(key, safe="")
        async with self._exchange("GET", path) as response:
            return await response.text()

    async def held(self) -> Held:
        """The keys of the results the worker holds, the tasks it runs and the finished orphans."""
        return await self._json("GET", "/v1/held")  # type: ignore[no-any-return]

    # --- calls, health, profiling -------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a small function synchronously on the worker and return (or raise) its outcome."""
        body = cloudpickle.dumps((fn, args, kwargs), frames.PROTOCOL)
        async with self._exchange("POST", "/v1/call", body, pickled_errors=True) as response:
            return pickle.loads(await response.read())

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"name": ..., "status": "alive"}``."""
        return await self._json("GET", "/healthz")  # type: ignore[no-any-return]

    async def ready(self) -> bool:
        """Whether the worker accepts tasks (``GET /readyz``)."""
        try:
            await self._json("GET", "/readyz")
        except ProtocolError:
            return False
        return True

    async def cpu_profiling(self, action: str) -> None:
        """``start``, ``stop`` or ``clear`` yappi's profiling on the worker."""
        if action not in ("start", "stop", "clear"):
            raise ValueError(f"unknown cpu profiling action {action!r}")
        await self._json("POST", f"/v1/profile/cpu/{action}")

    async def cpu_stats(self) -> bytes:
        """The worker's yappi function stats in yappi's ``ystat`` format (see
        :func:`merge_cpu_stats`)."""
        return await self._bytes("GET", "/v1/profile/cpu/stats")

    async def memory_profiling(self, action: str) -> None:
        """``start`` (one frame per trace) or ``stop`` tracemalloc on the worker."""
        if action not in ("start", "stop"):
            raise ValueError(f"unknown memory profiling action {action!r}")
        await self._json("POST", f"/v1/profile/memory/{action}")

    async def memory_snapshot(self) -> tracemalloc.Snapshot:
        """A tracemalloc snapshot of the worker; ``Conflict`` when it is not tracing."""
        snapshot = pickle.loads(await self._bytes("GET", "/v1/profile/memory/snapshot"))
        if not isinstance(snapshot, tracemalloc.Snapshot):
            raise ProtocolError("memory snapshot of unexpected type", self.name)
        return snapshot


def _ignore_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # best effort: a gone worker holds nothing


def merge_cpu_stats(blobs: Iterable[bytes]) -> yappi.YFuncStats:
    """One ``yappi.YFuncStats`` summing the ``cpu_stats()`` of several workers.

    Goes through yappi's public ``YFuncStats.add`` (which reads its ``ystat`` files), so the
    result prints and sorts like any yappi stats.
    """
    stats = yappi.YFuncStats()
    with tempfile.TemporaryDirectory(prefix="bndl-yappi-") as directory:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(directory, f"{i}.ystat")
            with open(path, "wb") as file:
                file.write(blob)
            paths.append(path)
        if paths:
            stats.add(paths)
    return stats
