"""The request guard: the checks every request passes before any handler (or code) runs.

Who may send requests at all is settled before HTTP: the task port speaks mutual TLS only
(:mod:`bndl.wire.tls`, :mod:`bndl.worker.listener`), so every request here comes from a member of
the cluster, over a session bound to its certificate. What is left to check is the shape of the
request: a browser ``Origin`` header is refused (403) so a web page can never drive a worker, and
a body over the limit is refused (413) before it is read whole. Malformed input is a 4xx with a
message, never a 500: :func:`read_json` turns JSON too deeply nested for the parser into a 400.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def guard(max_body: int) -> Middleware:
    """The aiohttp middleware enforcing the origin and size checks."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Origin" in request.headers:
            return error_response(403, "requests from browsers (with an Origin header) are refused")
        if request.content_length is not None and request.content_length > max_body:
            return error_response(413, f"request body over the limit of {max_body} bytes")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body over the limit of {max_body} bytes")

    return middleware


async def read_json(request: web.Request) -> Any:
    """The request's body as JSON; ``ValueError`` when it is not (nesting too deep included)."""
    body = await request.read()
    try:
        return json.loads(body)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply") from e
