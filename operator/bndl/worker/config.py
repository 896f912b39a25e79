"""How a worker is configured: flags, each with an environment variable as its default.

A worker executes whatever authenticated requests carry, so it refuses to start without a secret;
there is no unauthenticated mode.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Settings of one worker process."""

    name: str
    """Unique name of the worker among its peers (refs name their holder by it)."""
    secret: bytes
    """The per-cluster secret that signs every request."""
    bind: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one (announced on the READY line)."""
    metrics_port: int | None = None
    """Plain port serving ``/metrics`` (Prometheus) on ``bind``; None: not served (0: any)."""
    url: str | None = None
    """URL peers reach this worker at; default ``http://<bind>:<port>``."""
    max_body: int = DEFAULT_MAX_BODY
    """Largest request body accepted, in bytes (larger: 413)."""
    auth_window: float = 30.0
    """Seconds a request's timestamp may be off; nonces are remembered this long."""
    heartbeat_interval: float = 1.0
    """Seconds between heartbeat frames on a run stream while its tasks run."""
    cancel_memory: float = 300.0
    """Seconds a cancel for a key that is not running is remembered (the dispatch race)."""
    orphan_grace: float = 600.0
    """Seconds the tasks of a run request whose client went away keep running (and their outcomes
    are kept) for a new driver to attach to; then a task still running is cancelled."""


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name) or default


def parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bndl.worker",
        description="A bndl worker: runs tasks sent over signed HTTP requests. On start it prints "
        'one line "BNDL_WORKER_READY {json with name, url, pid}" to stdout.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--name",
        default=_env(environ, "BNDL_WORKER_NAME", socket.gethostname()),
        help="worker name, unique in the cluster (env BNDL_WORKER_NAME)",
    )
    p.add_argument(
        "--bind",
        default=_env(environ, "BNDL_WORKER_BIND", "127.0.0.1"),
        help="address to listen on (env BNDL_WORKER_BIND)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env(environ, "BNDL_WORKER_PORT", "0")),
        help="port to listen on, 0 for any free port (env BNDL_WORKER_PORT)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env(environ, "BNDL_WORKER_METRICS_PORT", "-1")),
        help="serve Prometheus metrics, unauthenticated, at :PORT/metrics; -1: off, 0: any "
        "free port (env BNDL_WORKER_METRICS_PORT)",
    )
    p.add_argument(
        "--url",
        default=environ.get("BNDL_WORKER_URL"),
        help="URL peers use to reach this worker, default http://BIND:PORT (env BNDL_WORKER_URL)",
    )
    p.add_argument(
        "--secret-file",
        default=environ.get("BNDL_SECRET_FILE"),
        help="file holding the cluster secret (env BNDL_SECRET_FILE); "
        "or pass the secret itself in env BNDL_SECRET. Required.",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=int(_env(environ, "BNDL_WORKER_MAX_BODY", str(DEFAULT_MAX_BODY))),
        help="largest request body in bytes (env BNDL_WORKER_MAX_BODY)",
    )
    p.add_argument(
        "--auth-window",
        type=float,
        default=float(_env(environ, "BNDL_AUTH_WINDOW", "30")),
        help="accepted clock skew of signed requests in seconds (env BNDL_AUTH_WINDOW)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(_env(environ, "BNDL_HEARTBEAT_INTERVAL", "1")),
        help="seconds between heartbeats on task streams (env BNDL_HEARTBEAT_INTERVAL)",
    )
    p.add_argument(
        "--orphan-grace",
        type=float,
        default=float(_env(environ, "BNDL_ORPHAN_GRACE", "600")),
        help="seconds the tasks of a driver that went away keep running, and their outcomes are "
        "kept, for a new driver to attach to (env BNDL_ORPHAN_GRACE)",
    )
    p.add_argument(
        "--log-level",
        default=_env(environ, "BNDL_LOG_LEVEL", "WARNING"),
        help="logging level (env BNDL_LOG_LEVEL)",
    )
    return p


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[WorkerConfig, str]:
    """The worker's configuration and log level; exits with a usage error without a secret."""
    p = parser(environ)
    args = p.parse_args(argv)
    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as file:
                secret = file.read().strip()
        except OSError as e:
            p.error(f"cannot read the secret file: {e}")
    else:
        secret = environ.get("BNDL_SECRET", "").encode()
    if not secret:
        p.error("a secret is required: --secret-file, BNDL_SECRET_FILE or BNDL_SECRET")
    if args.max_body <= 0 or args.auth_window <= 0 or args.heartbeat_interval <= 0:
        p.error("--max-body, --auth-window and --heartbeat-interval must be positive")
    if not -1 <= args.metrics_port <= 65535:
        p.error(f"--metrics-port must be a port, 0 (any) or -1 (off), not {args.metrics_port}")
    if args.orphan_grace < 0:
        p.error("--orphan-grace must not be negative")
    config = WorkerConfig(
        name=args.name,
        secret=secret,
        bind=args.bind,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        url=args.url,
        max_body=args.max_body,
        auth_window=args.auth_window,
        heartbeat_interval=args.heartbeat_interval,
        orphan_grace=args.orphan_grace,
    )
    return config, args.log_level
