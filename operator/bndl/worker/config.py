"""How a worker is configured: flags, each with an environment variable as its default.

A worker executes whatever its peers send, so it refuses to start without its cluster's TLS
material (:mod:`bndl.wire.tls`); there is no unauthenticated mode. (``bench/dispatch.py`` alone may
turn encryption off, with a switch and an environment variable together, to measure its cost.)
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bndl.wire.tls import BENCH_INSECURE_ENV, TlsError, TlsFiles, bench_insecure

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_HANDSHAKES = 128


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Settings of one worker process."""

    name: str
    """Unique name of the worker among its peers (refs name their holder by it)."""
    tls: TlsFiles | None
    """The cluster's authority and this worker's certificate and key; None only for a benchmark
    without encryption (see :func:`bndl.wire.tls.bench_insecure`)."""
    bind: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 0
    """Port to listen on; 0 picks a free one (announced on the READY line)."""
    metrics_port: int | None = None
    """Plain port serving ``/metrics`` (Prometheus) on ``bind``; None: not served (0: any)."""
    health_port: int | None = None
    """Port of the plain-HTTP probes (``/healthz``, ``/readyz``); None: the default
    (:func:`default_health_port`)."""
    url: str | None = None
    """URL peers reach this worker at; default ``https://<bind>:<port>``."""
    max_body: int = DEFAULT_MAX_BODY
    """Largest request body accepted, in bytes (larger: 413)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Authenticated connections open at once; more are closed at once."""
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    """TLS handshakes in progress at once; a new connection beyond it evicts the oldest."""
    handshake_timeout: float = 10.0
    """Seconds a connection may take to complete its TLS handshake (and prove its membership)."""
    idle_timeout: float = 75.0
    """Seconds an idle connection between requests is kept (more than the clients' 60 s)."""
    heartbeat_interval: float = 1.0
    """Seconds between heartbeat frames on a run stream while its tasks run."""
    cancel_memory: float = 300.0
    """Seconds a cancel for a key that is not running is remembered (the dispatch race)."""
    orphan_grace: float = 600.0
    """Seconds the tasks of a run request whose client went away keep running (and their outcomes
    are kept) for a new driver to attach to; then a task still running is cancelled."""


def default_health_port(port: int) -> int:
    """The probes' port when none is given: the task port + 1 (- 1 for 65535), any free port
    (0) when the task port is any free port."""
    if port == 0:
        return 0
    return port + 1 if port < 65535 else port - 1


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name) or default


def parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bndl.worker",
        description="A bndl worker: runs the tasks its cluster's driver and peers send over mutual "
        "TLS (TLS 1.3; both ends present a certificate of the cluster's own authority). On start "
        'it prints one line "BNDL_WORKER_READY {json with name, url, health, pid}" to stdout.',
        epilog="TLS material is required: a directory with ca.crt, tls.crt and tls.key "
        "(--tls-dir, as a Kubernetes TLS Secret is mounted), or each file on its own (--tls-ca, "
        "--tls-cert, --tls-key; these override the directory's). A worker without it refuses to "
        "start; there is no insecure mode. bndl run, LocalCluster and the operator make a "
        "certificate authority per cluster and give their workers these files.",
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
        help="task port (mutual TLS), 0 for any free port (env BNDL_WORKER_PORT)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(environ["BNDL_HEALTH_PORT"]) if environ.get("BNDL_HEALTH_PORT") else None,
        help="port of the plain-HTTP probes GET /healthz and /readyz (nothing else is served "
        "there); default the task port + 1 (65534 for 65535), any free port when the task port "
        "is 0 "
        "(env BNDL_HEALTH_PORT)",
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
        help="URL peers use to reach this worker, default https://BIND:PORT (env BNDL_WORKER_URL)",
    )
    p.add_argument(
        "--tls-dir",
        default=environ.get("BNDL_TLS_DIR"),
        help="directory holding ca.crt, tls.crt and tls.key (env BNDL_TLS_DIR)",
    )
    p.add_argument(
        "--tls-ca",
        default=environ.get("BNDL_TLS_CA"),
        help="the cluster's CA certificate (PEM): peers must present a certificate it signed "
        "(env BNDL_TLS_CA)",
    )
    p.add_argument(
        "--tls-cert",
        default=environ.get("BNDL_TLS_CERT"),
        help="this worker's certificate (PEM), signed by the CA (env BNDL_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=environ.get("BNDL_TLS_KEY"),
        help="this worker's private key (PEM, unencrypted) (env BNDL_TLS_KEY)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=int(_env(environ, "BNDL_WORKER_MAX_BODY", str(DEFAULT_MAX_BODY))),
        help="largest request body in bytes (env BNDL_WORKER_MAX_BODY)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=int(_env(environ, "BNDL_MAX_CONNECTIONS", str(DEFAULT_MAX_CONNECTIONS))),
        help="authenticated connections open at once; more are closed (env BNDL_MAX_CONNECTIONS)",
    )
    p.add_argument(
        "--max-handshakes",
        type=int,
        default=int(_env(environ, "BNDL_MAX_HANDSHAKES", str(DEFAULT_MAX_HANDSHAKES))),
        help="TLS handshakes in progress at once; a new connection beyond this evicts the oldest "
        "(env BNDL_MAX_HANDSHAKES)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=float(_env(environ, "BNDL_HANDSHAKE_TIMEOUT", "10")),
        help="seconds a connection may take to complete its TLS handshake "
        "(env BNDL_HANDSHAKE_TIMEOUT)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(_env(environ, "BNDL_IDLE_TIMEOUT", "75")),
        help="seconds an idle connection is kept between requests (env BNDL_IDLE_TIMEOUT)",
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
    p.add_argument(
        "--insecure-benchmark-only",
        action="store_true",
        help=f"plain HTTP without authentication, for bench/dispatch.py to measure the cost of "
        f"encryption; honoured only together with {BENCH_INSECURE_ENV}=1. Never use it "
        "otherwise: anyone who reaches the port runs code on this worker",
    )
    return p


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files the arguments name (each file's own flag wins over the directory); None
    when no file is named."""
    base = TlsFiles.in_dir(args.tls_dir) if args.tls_dir else None
    ca = args.tls_ca or (base.ca if base else None)
    cert = args.tls_cert or (base.cert if base else None)
    key = args.tls_key or (base.key if base else None)
    if not (ca or cert or key):
        return None
    missing = [flag for flag, value in (("--tls-ca", ca), ("--tls-cert", cert),
                                        ("--tls-key", key)) if not value]  # fmt: skip
    if missing:
        raise TlsError(f"incomplete TLS material: {', '.join(missing)} missing")
    assert ca and cert and key
    return TlsFiles(ca, cert, key)


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[WorkerConfig, str]:
    """The worker's configuration and log level; exits with a usage error without usable TLS
    material."""
    p = parser(environ)
    args = p.parse_args(argv)
    tls: TlsFiles | None = None
    try:
        if not bench_insecure(args.insecure_benchmark_only, environ):
            tls = tls_files(args)
            if tls is None:
                p.error(
                    "TLS material is required: --tls-dir (with ca.crt, tls.crt, tls.key) or "
                    "--tls-ca, --tls-cert and --tls-key (env BNDL_TLS_DIR or BNDL_TLS_CA, "
                    "BNDL_TLS_CERT, BNDL_TLS_KEY)"
                )
            tls.read().server_context()  # refuse to start with unusable material
    except TlsError as e:
        p.error(str(e))
    if args.max_body <= 0 or args.heartbeat_interval <= 0:
        p.error("--max-body and --heartbeat-interval must be positive")
    if min(args.max_connections, args.max_handshakes) < 1:
        p.error("--max-connections and --max-handshakes must be at least 1")
    if args.handshake_timeout <= 0 or args.idle_timeout <= 0:
        p.error("--handshake-timeout and --idle-timeout must be positive")
    if not -1 <= args.metrics_port <= 65535:
        p.error(f"--metrics-port must be a port, 0 (any) or -1 (off), not {args.metrics_port}")
    if args.orphan_grace < 0:
        p.error("--orphan-grace must not be negative")
    for flag, port in (("--port", args.port), ("--health-port", args.health_port)):
        if port is not None and not 0 <= port <= 65535:
            p.error(f"{flag} must be between 0 and 65535")
    config = WorkerConfig(
        name=args.name,
        tls=tls,
        bind=args.bind,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        health_port=args.health_port,
        url=args.url,
        max_body=args.max_body,
        max_connections=args.max_connections,
        max_handshakes=args.max_handshakes,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        heartbeat_interval=args.heartbeat_interval,
        orphan_grace=args.orphan_grace,
    )
    return config, args.log_level
