"""The request guard: the checks every request passes before any handler (or code) runs.

In order: a browser ``Origin`` header is refused (403) so a web page can never drive a worker;
health and readiness probes pass unauthenticated; a body over the limit is refused (413) before it
is read whole; then the HMAC signature, timestamp and nonce are verified (401). Only then does the
handler run, reading the body that was already read and verified here.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bndl.wire.errors import AuthenticationFailed
from bndl.wire.signing import Verifier

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def guard(verifier: Verifier, max_body: int) -> Middleware:
    """The aiohttp middleware enforcing origin, size and signature checks."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Origin" in request.headers:
            return error_response(403, "requests from browsers (with an Origin header) are refused")
        if request.method == "GET" and request.path in PUBLIC_PATHS:
            return await handler(request)
        if request.content_length is not None and request.content_length > max_body:
            return error_response(413, f"request body over the limit of {max_body} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body over the limit of {max_body} bytes")
        try:
            verifier.verify(request.method, request.raw_path, request.headers, body, time.time())
        except AuthenticationFailed as e:
            return error_response(401, e.message)
        return await handler(request)

    return middleware
