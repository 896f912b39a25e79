"""The channel: one long-lived connection from a driver (or peer) to a worker, for its tasks.

Runs and cancels go to the worker as frames (:mod:`bndl.wire.frames`) over one WebSocket
(``GET /v1/channel``, authenticated when it opens); completions and heartbeats come back the same
way. Every ``run`` and ``cancel`` made before the event loop next runs its callbacks is sent as
one message, so a scheduler that dispatches many tasks at once pays for one write, and there is
no HTTP request per task. Frames on one connection arrive in the order they were sent: a cancel
can never overtake the run it cancels.

Completions are handed to a callback per run (:meth:`Channel.submit`), straight from the reader:
no task, queue or generator per run, so the driver's cost per task stays small.
(:meth:`bndl.wire.client.WorkerClient.run` wraps the same in an async generator.)

A worker says first which kinds of frame it understands (a ``hello`` frame); frames it does not
(an older worker, during an upgrade of the operator) are not sent: no acknowledgements, releases
over HTTP, no withdraw (a queued run is then not stolen). The driver acknowledges the completions
it received (an ``ack`` frame, sent with whatever it sends next, or alone after ``ACK_DELAY``):
until then the worker keeps them, and keeps them for the next driver if this one goes
away, so a completion written just as the driver went away is not lost.

Loss detection is as before: when the connection breaks, every run waiting on it fails with
``NotConnected``; when runs are waiting and no frame (completion or heartbeat) arrives within
``heartbeat_timeout``, they fail with ``NotConnected(timed_out=True)`` and the connection is
dropped (a watchdog looks a few times per ``heartbeat_timeout``, not a timer per message). The
next run opens a new connection. A worker keeps the runs of a channel that went away as orphans,
for a new driver to attach to (see :mod:`bndl.worker.runner`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from bndl.execute.exceptions import NotConnected
from bndl.wire import frames
from bndl.wire.errors import TRANSPORT_ERRORS, ProtocolError, not_connected, protocol_error
from bndl.wire.tasks import DONE, Completion, TaskItem, decode_outcome

log = logging.getLogger(__name__)

PATH = "/v1/channel"
RUN = "run"
CANCEL = "cancel"
WITHDRAW = "withdraw"
RELEASE = "release"
ACK = "ack"
HELLO = "hello"
"""The worker's first frame on a channel: ``("hello", {"frames": [...]})``, the kinds of frame it
understands. A worker that sends none (an older one) understands only runs and cancels."""
FIRST_FRAMES = frozenset({RUN, CANCEL})
FRAMES = frozenset({RUN, CANCEL, WITHDRAW, RELEASE, ACK})
"""The kinds of frame a client sends and a worker of this version understands."""
MOVED = "moved"

Connect = Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]]
Encoded = tuple[TaskItem, bytes]
Outcome = Completion | BaseException
Deliver = Callable[[Outcome], None]
"""Receives the outcome of one run: its completion, or the error that lost it (called once)."""

ACK_DELAY = 0.05
"""Seconds acknowledgements wait for a message to ride along with before they go alone."""

# How many times per heartbeat timeout the watchdog looks for a silent connection.
_WATCHDOG_CHECKS = 4


def run_message(batch: Sequence[Encoded]) -> bytes:
    """The frame of a run message: ``("run", [(key, keep, reply, blob, lane, slots), ...])``."""
    return frames.encode(
        (RUN, [(i.key, i.keep, i.reply, blob, i.lane, i.slots) for i, blob in batch])
    )


class Channel:
    """The one connection of a client to its worker, opened on first use (and after a loss)."""

    def __init__(self, name: str, connect: Connect, heartbeat_timeout: float) -> None:
        self.name = name
        self._connect = connect
        self.heartbeat_timeout = heartbeat_timeout
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._routes: dict[str, Deliver] = {}
        self._outgoing: list[bytes] = []
        self._pending_runs: list[Encoded] = []
        self._scheduled = False
        self._lock = asyncio.Lock()  # one sender at a time: messages keep their order
        self._sending: set[asyncio.Task[None]] = set()
        self._last_frame = 0.0  # loop time of the last frame received
        self._understood = FIRST_FRAMES  # what the worker said it understands (its hello)
        self._acks: list[str] = []  # completions received, not yet acknowledged
        self._ack_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def submit(self, encoded: Sequence[Encoded], deliver: Deliver) -> None:
        """Send runs; ``deliver`` gets each one's outcome (keys unique among waiting runs),
        called on the event loop. Call on the event loop."""
        routes = self._routes
        for item, _ in encoded:
            if item.key in routes:
                raise ValueError(f"task key {item.key!r} is already running on this channel")
        for item, _ in encoded:
            routes[item.key] = deliver
        self._pending_runs.extend(encoded)
        self._schedule()

    def forget(self, keys: Sequence[str], deliver: Deliver) -> None:
        """Stop delivering outcomes of ``keys`` to ``deliver`` (the runs go on)."""
        for key in keys:
            if self._routes.get(key) is deliver:
                del self._routes[key]

    def cancel(self, keys: Sequence[str]) -> None:
        """Send a cancel of ``keys`` after every run sent before it (fire and forget)."""
        self._send_keys(CANCEL, keys)

    def withdraw(self, keys: Sequence[str]) -> bool:
        """Ask for ``keys`` back if they wait for a slot, after every run sent before it; False
        (nothing sent) when the worker does not understand it (an older worker)."""
        return self._send_keys(WITHDRAW, keys)

    def release(self, prefix: str) -> bool:
        """Drop the results the worker keeps under keys starting with ``prefix``, after every
        run and cancel sent before (fire and forget); False (nothing sent) when the worker does
        not understand it (an older worker)."""
        return self._queue(RELEASE, prefix)

    def _send_keys(self, kind: str, keys: Sequence[str]) -> bool:
        return self._queue(kind, list(keys))

    def _queue(self, kind: str, payload: object) -> bool:
        """Send a frame after the runs before it, if the worker understands its kind."""
        if kind not in self._understood:
            return False
        self._flush_runs()
        self._outgoing.append(frames.encode((kind, payload)))
        self._schedule()
        return True

    async def close(self) -> None:
        """Close the connection; runs still waiting raise ``CancelledError``."""
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        self._fail(asyncio.CancelledError())

    # --- sending -------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush_runs(self) -> None:
        if self._pending_runs:
            self._outgoing.append(run_message(self._pending_runs))
            self._pending_runs = []

    def _flush(self) -> None:
        self._scheduled = False
        self._flush_runs()
        if not self._outgoing:
            return
        self._take_acks()  # they ride along
        message, self._outgoing = b"".join(self._outgoing), []
        sending = asyncio.ensure_future(self._send(message))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    def _take_acks(self) -> None:
        """Put the pending acknowledgements in the message going out."""
        if self._acks:
            self._outgoing.append(frames.encode((ACK, self._acks)))
            self._acks = []
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _send_acks(self) -> None:
        """Nothing went out for ``ACK_DELAY`` seconds: the acknowledgements go alone."""
        self._ack_timer = None
        if self._acks:
            self._outgoing.append(frames.encode((ACK, self._acks)))
            self._acks = []
            self._schedule()

    async def _send(self, message: bytes) -> None:
        async with self._lock:
            try:
                ws = await self._connected()
                await ws.send_bytes(message)
            except aiohttp.WSServerHandshakeError as e:  # refused (401, say): not a lost worker
                self._lost(protocol_error(e.status, f"channel refused: {e.message}", self.name))
            except NotConnected as e:  # mapped by the connect already
                self._lost(e)
            except TRANSPORT_ERRORS as e:
                self._lost(not_connected(self.name, e))

    async def _connected(self) -> aiohttp.ClientWebSocketResponse:
        ws = self._ws
        if ws is None or ws.closed:
            ws = self._ws = await self._connect()
            self._understood = FIRST_FRAMES  # until its hello says more
            self._acks = []  # of the connection that broke: its stream is gone
            self._last_frame = asyncio.get_running_loop().time()
            self._reader = asyncio.ensure_future(self._read(ws))
            self._watch(ws)
        return ws

    # --- receiving -----------------------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        decoder = frames.FrameDecoder()
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.BINARY:
                    raise ConnectionResetError(f"channel closed ({message.type.name})")
                self._last_frame = loop.time()
                routes = self._routes
                received = []
                for frame in decoder.feed(message.data):
                    if frame[0] == DONE:
                        _, key, ok, blob = frame
                        received.append(key)
                        deliver = routes.pop(key, None)
                        if deliver is not None:
                            deliver(decode_outcome(key, ok, blob))
                    elif frame[0] == MOVED:
                        deliver = routes.pop(frame[1], None)
                        if deliver is not None:
                            reason = f"run {frame[1]} was taken over by another driver"
                            deliver(NotConnected(self.name, reason))
                    elif frame[0] == HELLO:
                        self._understood = _understood(frame)
                if received and ACK in self._understood:
                    self._acks += received
                    if self._ack_timer is None:
                        self._ack_timer = loop.call_later(ACK_DELAY, self._send_acks)
        except asyncio.CancelledError:
            raise
        except frames.FrameError as e:
            self._lost(ProtocolError(f"undecodable frame on the channel: {e}", self.name), ws)
        except Exception as e:
            self._lost(not_connected(self.name, e), ws)

    def _watch(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Check now and then that a connection with runs waiting is not silent for longer
        than ``heartbeat_timeout`` (the worker sends heartbeats while it runs anything)."""
        if ws is not self._ws:
            return  # replaced or lost: its watchdog ends
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_frame
        if self._routes and silent > self.heartbeat_timeout:
            error = TimeoutError(f"no frame for {silent:.1f} s")
            self._lost(not_connected(self.name, error), ws)
            return
        interval = self.heartbeat_timeout / _WATCHDOG_CHECKS
        self._watchdog = loop.call_later(interval, self._watch, ws)

    def _lost(
        self, error: BaseException, ws: aiohttp.ClientWebSocketResponse | None = None
    ) -> None:
        """The connection failed: every waiting run fails with ``error``; drop the connection.
        ``ws``: the connection that failed (nothing happens if it was replaced meanwhile)."""
        if ws is not None and ws is not self._ws:
            return
        current, self._ws = self._ws, None
        if current is not None:
            closing = asyncio.ensure_future(current.close())
            closing.add_done_callback(_ignore_outcome)
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        routes, self._routes = self._routes, {}
        for deliver in routes.values():
            deliver(error)


def _understood(hello: Any) -> frozenset[str]:
    """The frame kinds a worker's hello names (of those this client sends)."""
    info = hello[1] if len(hello) > 1 else None
    kinds = info.get("frames") if isinstance(info, dict) else None
    if not isinstance(kinds, list):
        raise frames.FrameError(f"malformed hello frame {hello!r}")
    return FIRST_FRAMES | (FRAMES & frozenset(k for k in kinds if isinstance(k, str)))


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a close that failed on a broken connection is expected
