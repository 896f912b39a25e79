"""HMAC request signing: the only thing standing between the network and code execution.

Workers run whatever callable a request carries, so every request except health and readiness
must prove it was made by a holder of the per-cluster secret, recently, and only once. The
signature covers the method, the path with its query, a timestamp, a random nonce and a hash of
the body. :class:`Verifier` keeps the nonces it has seen for as long as their timestamp could still
be accepted, so a captured request cannot be replayed. Everything here is pure (time is passed in)
so it can be unit-tested without a clock or a server.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
import time
from collections.abc import Mapping

from bndl.wire.errors import AuthenticationFailed

TIMESTAMP_HEADER = "X-Bndl-Timestamp"
NONCE_HEADER = "X-Bndl-Nonce"
SIGNATURE_HEADER = "X-Bndl-Signature"

DEFAULT_WINDOW = 30.0
"""Seconds a request's timestamp may differ from the verifier's clock (either direction)."""

_NONCE_BYTES = 16


def signature(
    secret: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    """The hex HMAC-SHA256 of one request, as carried in ``X-Bndl-Signature``."""
    message = "\n".join(
        (method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest())
    ).encode()
    return hmac.digest(secret, message, "sha256").hex()


def sign(
    secret: bytes, method: str, path: str, body: bytes = b"", now: float | None = None
) -> dict[str, str]:
    """The authentication headers for a request; ``path`` includes the query string, if any."""
    timestamp = f"{time.time() if now is None else now:.6f}"
    nonce = os.urandom(_NONCE_BYTES).hex()
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(secret, method, path, timestamp, nonce, body),
    }


class Verifier:
    """Checks request signatures and remembers nonces to refuse replays.

    A nonce is remembered until its timestamp leaves the acceptance window, after which the
    timestamp check alone refuses the request; so memory is bounded by the request rate times
    twice the window. Only requests with a valid signature are remembered, so a client without
    the secret cannot fill the cache.
    """

    def __init__(self, secret: bytes, window: float = DEFAULT_WINDOW) -> None:
        if not secret:
            raise ValueError("a non-empty secret is required")
        if window <= 0:
            raise ValueError("the timestamp window must be positive")
        self._secret = secret
        self.window = window
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def verify(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        """Return if the request is authentic and fresh, raise :class:`AuthenticationFailed`."""
        timestamp = headers.get(TIMESTAMP_HEADER)
        nonce = headers.get(NONCE_HEADER)
        given = headers.get(SIGNATURE_HEADER)
        if not timestamp or not nonce or not given:
            raise AuthenticationFailed("missing authentication headers")
        try:
            sent_at = float(timestamp)
        except ValueError as e:
            raise AuthenticationFailed("malformed timestamp") from e
        if not abs(now - sent_at) <= self.window:  # also refuses NaN
            raise AuthenticationFailed(
                f"timestamp outside the accepted window of {self.window:g} s"
            )
        expected = signature(self._secret, method, path, timestamp, nonce, body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise AuthenticationFailed("bad signature")
        self._forget_expired(now)
        if nonce in self._seen:
            raise AuthenticationFailed("replayed nonce")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (sent_at + self.window, nonce))

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            self._seen.discard(heapq.heappop(expiry)[1])

    def __len__(self) -> int:
        """The number of nonces currently remembered."""
        return len(self._seen)
