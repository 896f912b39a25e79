"""The worker's accept loop: TLS handshakes and connections, bounded in number and in time.

asyncio's own servers accept every connection and give each a minute to shake hands; here the
worker decides. A connection is first a *handshake* (at most ``max_handshakes`` at once, each for
at most ``handshake_timeout`` seconds; a new connection beyond the limit evicts the oldest one, so
idle or half-open sockets cannot lock members out), then, once the peer proved its membership with
a certificate of the cluster's authority, an *authenticated connection* handed to the HTTP server
(at most ``max_connections`` at once; more are closed at once). An unauthenticated peer never gets
past the handshake: no byte of a request of its is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

ACCEPT_BACKOFF = 0.1
"""Seconds the accept loop pauses when the process is out of file descriptors."""
WARN_EVERY = 10.0
"""Least seconds between two warnings about refused or evicted connections."""


class _Counted(asyncio.Protocol):
    """Passes everything to the server's protocol; counts the connection among the listener's
    from the end of its handshake to its close."""

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self.inner = inner
        self.listener = listener
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.counted = True
        self.listener.connections += 1
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            if self.counted:
                self.counted = False
                self.listener.connections -= 1

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Listener:
    """Accepts connections on ``sock`` for ``factory`` (an aiohttp server), over ``tls``."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
        *,
        max_connections: int,
        max_handshakes: int,
        handshake_timeout: float,
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.connections = 0
        """Authenticated connections open now."""
        self.handshakes: dict[asyncio.Task[None], None] = {}
        """Handshakes in progress, oldest first."""
        self.refused = 0
        """Connections closed for the limits (evicted handshakes and connections over the cap)."""
        self._accepting: asyncio.Task[None] | None = None
        self._warned = 0.0

    def start(self) -> None:
        self.sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name="bndl-accept")

    async def close(self) -> None:
        """Stop accepting and drop the handshakes in progress (open connections are the HTTP
        server's to close)."""
        tasks = [*self.handshakes, *([self._accepting] if self._accepting else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                if self.sock.fileno() == -1:
                    return  # closed
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._warn(f"cannot accept connections: {e}")
                    await asyncio.sleep(ACCEPT_BACKOFF)  # a back-off, not a synchronisation
                else:  # a connection reset before it was accepted, say: the next one
                    log.debug("accept failed: %s", e)
                continue
            if len(self.handshakes) >= self.max_handshakes:
                oldest = next(iter(self.handshakes))
                oldest.cancel()
                del self.handshakes[oldest]  # its slot is free now, its socket closes shortly
                self.refused += 1
                self._warn(f"over {self.max_handshakes} TLS handshakes at once: the oldest dropped")
            task = loop.create_task(self._admit(conn))
            self.handshakes[task] = None
            task.add_done_callback(lambda t: self.handshakes.pop(t, None))

    async def _admit(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        if self.connections >= self.max_connections:
            self.refused += 1
            self._warn(f"over {self.max_connections} connections at once: a new one closed")
            _close(conn)
            return
        try:
            await loop.connect_accepted_socket(
                lambda: _Counted(self.factory(), self),
                conn,
                ssl=self.tls,
                ssl_handshake_timeout=self.handshake_timeout if self.tls else None,
            )
        except asyncio.CancelledError:
            _close(conn)
            raise
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as e:
            _close(conn)
            log.debug("connection refused during the handshake: %s", e)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("%s", message)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()
