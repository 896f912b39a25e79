"""The operator's health and metrics endpoints, served by leader and standby alike (kopf's own
is off).

``GET /healthz`` answers 200 with the operator's role and figures, or 500 when the event loop or a
job's loop is stalled (the kubelet then restarts the container); ``GET /readyz`` answers 200 once
the process serves. ``GET /metrics`` (on a port of its own, see :func:`serve_metrics`) answers
Prometheus. Neither probes nor scrapes are logged (aiohttp's access log is off): they would drown
the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bndl.k8s.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)


async def serve_health(url: str, health: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Start serving at ``url`` (``http://host:port/healthz``); returns the runner to clean up."""

    async def healthz(_: web.Request) -> web.Response:
        try:
            return web.json_response(health())
        except Exception as e:
            log.error("liveness fails: %s", e)
            return web.Response(status=500, text=json.dumps({"error": str(e)}))

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    parts = urlsplit(url)
    app = web.Application()
    app.router.add_get(parts.path or "/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return await _serve(app, parts.hostname or "0.0.0.0", parts.port or 8080)


async def serve_metrics(port: int, exposition: Callable[[], bytes]) -> web.AppRunner:
    """Serve ``GET /metrics`` (Prometheus' text format) on ``port``; returns the runner."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return await _serve(app, "0.0.0.0", port)


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
