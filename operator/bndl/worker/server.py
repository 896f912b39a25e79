"""The worker's HTTP endpoints and its life cycle (start, announce, serve, stop on SIGTERM).

Handlers stay thin: decoding and routing here, running tasks in :mod:`bndl.worker.runner`,
request checks in :mod:`bndl.worker.guard`. The task port speaks mutual TLS only, through
:mod:`bndl.worker.listener` (bounded handshakes and connections); ``/healthz`` and ``/readyz``
are also served on a separate plain-HTTP port for the kubelet's probes, which serves nothing
else. Drivers send tasks on a channel (``GET /v1/channel``, a WebSocket:
:mod:`bndl.wire.channel`): run and cancel frames in, a completion frame per finished task and
heartbeats out. ``POST /v1/run`` (one request's tasks) answers with a stream of
length-prefixed frames (:mod:`bndl.wire.frames`): one per finished task, written as soon as it is
ready, and a heartbeat whenever ``heartbeat_interval`` passes without one, so a client can tell a
hung worker from a slow task. When every task is done before the first frame would be written,
the frames go out as one plain response instead.

A run request whose client goes away leaves its tasks running as orphans (see
:mod:`bndl.worker.runner`); ``POST /v1/attach`` answers like a run request with the outcomes of
runs started earlier, so a driver that restarted can adopt them, and ``GET /v1/held`` lists what
there is to adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import cloudpickle
from aiohttp import web

from bndl.wire import frames
from bndl.wire.channel import ACK, CANCEL, FRAMES, HELLO, RELEASE, RUN, WITHDRAW
from bndl.wire.channel import PATH as channel_path
from bndl.wire.client import PICKLE_TYPE, WorkerClient, create_session
from bndl.wire.tasks import decode_items, decode_run, encode_results
from bndl.worker import metrics, profiling
from bndl.worker.announce import Announcement, ready_line
from bndl.worker.config import WorkerConfig, default_health_port
from bndl.worker.context import WorkerInfo
from bndl.worker.guard import error_response, guard, read_json
from bndl.worker.listener import Listener
from bndl.worker.runner import HEARTBEAT_FRAME, Stream, TaskRunner

log = logging.getLogger(__name__)

FRAMES_TYPE = "application/x-bndl-frames"

_RUNNER = web.AppKey("runner", TaskRunner)


class Worker:
    """One worker: its configuration, its task runner and its peer clients."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.ready = False
        self._session: aiohttp.ClientSession | None = None
        self._peers: dict[tuple[str, str], WorkerClient] = {}
        # As a client of its peers, a worker presents the worker certificate it serves with.
        self._client_tls = config.tls.read().client_context() if config.tls else None
        self.runner: TaskRunner | None = None

    def peer(self, name: str, url: str) -> WorkerClient:
        client = self._peers.get((name, url))
        if client is None:
            if self._session is None:
                self._session = create_session()
            client = WorkerClient(name, url, self._client_tls, self._session)
            self._peers[(name, url)] = client
        return client

    def app(self, url: str) -> web.Application:
        """The aiohttp application; call from the running loop."""
        info = WorkerInfo(self.config.name, url)
        self.runner = TaskRunner(
            info,
            asyncio.get_running_loop(),
            self.peer,
            cancel_memory=self.config.cancel_memory,
            orphan_grace=self.config.orphan_grace,
        )
        app = web.Application(
            middlewares=[guard(self.config.max_body)], client_max_size=self.config.max_body
        )
        app[_RUNNER] = self.runner
        app[_WORKER] = self
        app.cleanup_ctx.append(_sweeping)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get(channel_path, channel)
        app.router.add_post("/v1/run", run)
        app.router.add_post("/v1/attach", attach)
        app.router.add_post("/v1/cancel", cancel)
        app.router.add_get("/v1/results/{key}", fetch)
        app.router.add_post("/v1/results/fetch", fetch_many)
        app.router.add_post("/v1/results/release", release)
        app.router.add_get("/v1/held", held)
        app.router.add_get("/v1/logs/{key}", task_logs)
        app.router.add_post("/v1/call", call)
        app.router.add_post("/v1/profile/cpu/{action}", cpu_profile)
        app.router.add_get("/v1/profile/cpu/stats", cpu_stats)
        app.router.add_post("/v1/profile/memory/{action}", memory_profile)
        app.router.add_get("/v1/profile/memory/snapshot", memory_snapshot)
        return app

    def metrics_app(self) -> web.Application:
        """The plain application of the metrics port: ``GET /metrics`` and nothing else."""
        app = web.Application()
        metrics.add_route(app, lambda: self.runner)
        return app

    def health_app(self) -> web.Application:
        """The plain-HTTP probes, on their own port: nothing else is served there."""
        app = web.Application(middlewares=[guard(0)], client_max_size=1024)
        app[_WORKER] = self
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_WORKER = web.AppKey("worker", Worker)


async def _sweeping(app: web.Application) -> AsyncIterator[None]:
    """The orphan sweep, for as long as the application runs (expiry is also checked lazily on
    each request; the sweep cancels orphans past their grace period when none comes)."""
    runner = app[_RUNNER]
    interval = min(1.0, max(runner.orphan_grace / 4, 0.05))
    sweep = asyncio.create_task(runner.sweep(interval), name="bndl-orphan-sweep")
    yield
    sweep.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweep


# --- probes ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"name": request.app[_WORKER].config.name, "status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[_WORKER]
    status = "ready" if worker.ready else "not ready"
    return web.json_response(
        {"name": worker.config.name, "status": status}, status=200 if worker.ready else 503
    )


# --- tasks -------------------------------------------------------------------------------------


async def run(request: web.Request) -> web.StreamResponse:
    """Run the request's tasks; answer with their frames, streamed while any is running."""
    runner = request.app[_RUNNER]
    try:
        tasks = decode_run(await request.read())
    except ValueError as e:
        return error_response(400, str(e))
    return await _answer(request, runner.start(tasks))


async def attach(request: web.Request) -> web.StreamResponse:
    """Adopt runs started earlier (``{"keys": [...]}``): answered like a run request."""
    try:
        keys = (await read_json(request))["keys"]
    except (ValueError, KeyError, TypeError) as e:
        return error_response(400, f'malformed attach request, want {{"keys": [...]}}: {e!r}')
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return error_response(400, '"keys" must be a list of strings')
    return await _answer(request, request.app[_RUNNER].attach(keys))


async def _answer(request: web.Request, stream: Stream) -> web.StreamResponse:
    """Write a stream's frames as they come, with heartbeats in between.

    The response starts only when the first frame is ready (or a heartbeat is due): when every
    task is done by then, which is the common case for short tasks, the frames go out as one plain
    response, in a single write. When the client goes away, its tasks become orphans.
    """
    runner = request.app[_RUNNER]
    interval = request.app[_WORKER].config.heartbeat_interval
    response: web.StreamResponse | None = None
    try:
        while True:
            if not stream.chunks and stream.outstanding:
                await stream.wait(interval)
            if stream.outstanding == 0:
                body = stream.take()
                if response is None:
                    return web.Response(body=body, content_type=FRAMES_TYPE)
                await response.write_eof(body)
                stream.written()
                return response
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": FRAMES_TYPE})
                await response.prepare(request)
            await response.write(stream.take() or HEARTBEAT_FRAME)
            stream.written()
    except asyncio.CancelledError:
        runner.orphan(stream)  # nobody receives these outcomes now: keep them for an attach
        raise
    except ConnectionError as e:
        # The driver went away (an operator restarting, say): not an error of this worker.
        runner.orphan(stream)
        log.info("run stream closed by the driver (%s); its tasks continue as orphans", e)
        return response if response is not None else web.Response(status=499)


HELLO_FRAME = frames.encode((HELLO, {"frames": sorted(FRAMES)}))


async def channel(request: web.Request) -> web.StreamResponse:
    """A driver's (or peer's) channel (:mod:`bndl.wire.channel`): run and cancel messages in,
    completion frames and heartbeats out, for as long as the connection lasts. Its runs become
    orphans when it closes. A malformed message closes the channel (code 1003), naming why."""
    runner = request.app[_RUNNER]
    config = request.app[_WORKER].config
    ws = web.WebSocketResponse(max_msg_size=config.max_body, compress=False)
    await ws.prepare(request)
    stream = Stream(tells_moves=True)
    stream.chunks.append(("", HELLO_FRAME))  # the frames this worker understands, first
    stream.event.set()
    writer = asyncio.create_task(_write_channel(ws, stream, config.heartbeat_interval))
    decoder = frames.FrameDecoder()
    try:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=b"binary only")
                break
            try:
                for frame in decoder.feed(message.data):
                    _channel_frame(runner, stream, frame)
            except ValueError as e:  # FrameError too
                log.info("closing a channel: %s", e)
                reason = str(e)[:100].encode(errors="replace")
                await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=reason)
                break
    finally:
        writer.cancel()
        runner.orphan(stream)  # runs still going continue as orphans, for an attach
    return ws


def _channel_frame(runner: TaskRunner, stream: Stream, frame: Any) -> None:
    if not isinstance(frame, tuple) or len(frame) != 2:
        raise ValueError("a channel frame is (kind, payload)")
    kind, payload = frame
    if kind == RUN:
        runner.start(decode_items(payload), stream)
    elif kind == ACK:
        if not isinstance(payload, list) or not all(isinstance(k, str) for k in payload):
            raise ValueError("an ack frame carries a list of keys")
        stream.acked(payload)
    elif kind == RELEASE:
        if not isinstance(payload, str):
            raise ValueError("a release frame carries a key prefix")
        released = runner.store.release((), payload)
        log.debug("released %d results (prefix %r)", released, payload)
    elif kind in (CANCEL, WITHDRAW):
        if not isinstance(payload, list) or not all(isinstance(k, str) for k in payload):
            raise ValueError(f"a {kind} frame carries a list of keys")
        runner.expire()
        if kind == CANCEL:
            runner.cancel(payload)
        else:
            runner.withdraw(payload)
    else:
        raise ValueError(f"unknown channel frame {kind!r}")


async def _write_channel(ws: web.WebSocketResponse, stream: Stream, interval: float) -> None:
    """Completion frames as they are ready (those ready together in one message), and a
    heartbeat every ``interval`` seconds (from a timer, not a timeout per write)."""
    loop = asyncio.get_running_loop()
    beat: asyncio.TimerHandle | None = None

    def heartbeat() -> None:
        nonlocal beat
        stream.event.set()  # the writer sends what is ready, or a heartbeat
        beat = loop.call_later(interval, heartbeat)

    beat = loop.call_later(interval, heartbeat)
    try:
        with contextlib.suppress(ConnectionError):
            while not ws.closed:
                await stream.event.wait()
                await ws.send_bytes(stream.take() or HEARTBEAT_FRAME)
                stream.written()
    finally:
        beat.cancel()


async def cancel(request: web.Request) -> web.Response:
    keys = await _json_field(request, "keys")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return error_response(400, '"keys" must be a list of strings')
    request.app[_RUNNER].expire()
    interrupted, remembered = request.app[_RUNNER].cancel(keys)
    return web.json_response({"interrupted": interrupted, "remembered": remembered})


async def fetch(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    try:
        value = request.app[_RUNNER].store.get(key)
    except KeyError:
        return error_response(404, f"no result held under {key!r}")
    try:
        if _small(value):
            body = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        else:  # off the loop: pickling a large value would stall every other request
            body = await asyncio.to_thread(cloudpickle.dumps, value, pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        return error_response(500, f"result {key} is not picklable: {type(e).__name__}: {e}")
    return web.Response(body=body, content_type=PICKLE_TYPE)


async def fetch_many(request: web.Request) -> web.StreamResponse:
    """Several results in one response: a frame per held key, large ones raw after theirs (see
    ``WorkerClient.fetch_many``)."""
    keys = await _json_field(request, "keys")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return error_response(400, '"keys" must be a list of strings')
    store = request.app[_RUNNER].store
    values = {}
    for key in keys:
        with contextlib.suppress(KeyError):  # not held: left out of the answer
            values[key] = store.get(key)
    if all(_small(value) for value in values.values()):
        return web.Response(body=b"".join(encode_results(values)), content_type=FRAMES_TYPE)
    chunks = await asyncio.to_thread(encode_results, values)  # pickling: off the loop
    response = web.StreamResponse(headers={"Content-Type": FRAMES_TYPE})
    response.content_length = sum(map(len, chunks))
    await response.prepare(request)
    for chunk in chunks:  # each as it is: a large result is not copied into one body
        view = memoryview(chunk)
        for start in range(0, len(view), _WRITE_CHUNK):  # waits for the reader between pieces
            await response.write(view[start : start + _WRITE_CHUNK])
    await response.write_eof()
    return response


_WRITE_CHUNK = 1 << 20
"""Bytes handed to the transport at once: asyncio's socket transport (3.11) buffers what the
socket does not take in a bytearray it shifts after every send, which is quadratic for a write
of hundreds of megabytes (and keeps a copy of all of it)."""


_SCALARS = (int, float, complex, bool, type(None))
_SMALL = 64 * 1024


def _small(value: object) -> bool:
    """Whether a value is cheap enough to pickle on the event loop."""
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, str | bytes) and len(value) <= _SMALL


async def release(request: web.Request) -> web.Response:
    try:
        payload = await read_json(request)
        keys = payload.get("keys", [])
        prefix = payload.get("prefix")
    except (ValueError, AttributeError) as e:
        return error_response(400, f"malformed release request: {e}")
    if not isinstance(keys, list) or not (prefix is None or isinstance(prefix, str)):
        return error_response(400, '"keys" must be a list, "prefix" a string')
    released = request.app[_RUNNER].store.release(map(str, keys), prefix)
    log.info("released %d results (prefix %r, %d keys)", released, prefix, len(keys))
    return web.json_response({"released": released})


async def held(request: web.Request) -> web.Response:
    return web.json_response(request.app[_RUNNER].held())


async def task_logs(request: web.Request) -> web.Response:
    """What run ``key`` printed and logged (bounded, see :mod:`bndl.worker.tasklogs`)."""
    key = request.match_info["key"]
    capture = request.app[_RUNNER].logs.get(key)
    if capture is None:
        return error_response(404, f"no output kept of run {key!r}")
    return web.Response(text=capture.text(), content_type="text/plain")


async def call(request: web.Request) -> web.Response:
    try:
        fn, args, kwargs = pickle.loads(await request.read())
    except Exception as e:
        return error_response(400, f"undecodable call: {type(e).__name__}: {e}")
    ok, blob = await request.app[_RUNNER].call((fn, args, kwargs))
    return web.Response(body=blob, status=200 if ok else 500, content_type=PICKLE_TYPE)


async def _json_field(request: web.Request, name: str) -> Any:
    try:
        return (await read_json(request)).get(name)
    except (ValueError, AttributeError):
        return None


# --- profiling ---------------------------------------------------------------------------------

_CPU_ACTIONS: dict[str, Callable[[], None]] = {
    "start": profiling.cpu_start,
    "stop": profiling.cpu_stop,
    "clear": profiling.cpu_clear,
}
_MEMORY_ACTIONS: dict[str, Callable[[], None]] = {
    "start": profiling.memory_start,
    "stop": profiling.memory_stop,
}


async def _action(actions: dict[str, Callable[[], None]], request: web.Request) -> web.Response:
    action = actions.get(request.match_info["action"])
    if action is None:
        return error_response(404, f"unknown profiling action {request.match_info['action']!r}")
    action()
    return web.json_response({"ok": True})


async def cpu_profile(request: web.Request) -> web.Response:
    return await _action(_CPU_ACTIONS, request)


async def memory_profile(request: web.Request) -> web.Response:
    return await _action(_MEMORY_ACTIONS, request)


async def cpu_stats(request: web.Request) -> web.Response:
    return await _blob(profiling.cpu_stats)


async def memory_snapshot(request: web.Request) -> web.Response:
    return await _blob(profiling.memory_snapshot)


async def _blob(produce: Callable[[], bytes]) -> web.Response:
    try:
        body = await asyncio.to_thread(produce)
    except RuntimeError as e:
        return error_response(409, str(e))
    return web.Response(body=body, content_type=PICKLE_TYPE)


# --- life cycle --------------------------------------------------------------------------------


def _advertised_host(bind: str) -> str:
    if bind in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(socket.gethostname())
    return f"[{bind}]" if ":" in bind else bind


def _listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    return socket.create_server((bind, port), family=family, backlog=1024)


async def serve(config: WorkerConfig, shutdown_timeout: float = 5.0) -> None:
    """Run a worker until SIGTERM or SIGINT; prints the READY line once it accepts requests.

    On a stop signal the worker turns not-ready, cancels its running tasks, lets open streams
    end (for at most ``shutdown_timeout`` seconds) and returns.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tls: ssl.SSLContext | None = config.tls.read().server_context() if config.tls else None
    # bind first: the URL a worker announces (and gives tasks) needs the port
    sock = _listen(config.bind, config.port)
    port = sock.getsockname()[1]
    health_port = config.health_port
    if health_port is None:
        health_port = default_health_port(config.port)
    try:
        health_sock = _listen(config.bind, health_port)
    except BaseException:
        sock.close()
        raise
    scheme = "https" if tls is not None else "http"
    host = _advertised_host(config.bind)
    url = config.url or f"{scheme}://{host}:{port}"
    health = f"http://{host}:{health_sock.getsockname()[1]}"
    worker = Worker(config)
    runner = web.AppRunner(
        worker.app(url),
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=config.idle_timeout,
        # A client that goes away ends its handler at once: its run's tasks become orphans
        # then, not at the next write (which a new driver's attach could overtake).
        handler_cancellation=True,
    )
    health_runner = web.AppRunner(worker.health_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await health_runner.setup()
    assert runner.server is not None
    listener = Listener(
        sock,
        runner.server,
        tls,
        max_connections=config.max_connections,
        max_handshakes=config.max_handshakes,
        handshake_timeout=config.handshake_timeout,
    )
    scrape: web.AppRunner | None = None
    try:
        await web.SockSite(health_runner, health_sock).start()
        listener.start()
        if config.metrics_port is not None:
            scrape = web.AppRunner(worker.metrics_app(), access_log=None)
            await scrape.setup()
            await web.TCPSite(scrape, config.bind, config.metrics_port).start()
        worker.ready = True
        print(ready_line(Announcement(config.name, url, os.getpid(), health)), flush=True)
        await stop.wait()
        log.info("stopping worker %s", config.name)
        worker.ready = False
        if worker.runner is not None:
            worker.runner.cancel_all()
    finally:
        if scrape is not None:
            await scrape.cleanup()
        await listener.close()
        await runner.cleanup()
        await health_runner.cleanup()
        await worker.close()
