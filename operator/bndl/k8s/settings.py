"""How the operator is configured: command-line flags, each with an environment variable default.

``python -m bndl.k8s --help`` lists them. The Helm chart sets the environment; tests pass flags.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bndl.k8s.builders import DEFAULT_WORKER_IMAGE, BuildSettings
from bndl.k8s.leader import LeaseSettings

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
DEFAULT_MAX_TASKS = 200_000
"""Largest job (in tasks, after fan-out) an operator runs: see the chart's README for the memory
it takes."""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Settings of one operator process."""

    namespaces: tuple[str, ...] = ()
    """Namespaces (or glob patterns) whose BndlJobs this operator runs; empty: all namespaces."""
    liveness: str | None = DEFAULT_LIVENESS
    """kopf's liveness endpoint (also fails when a job's scheduler loop stalls); None: off."""
    standalone: bool = True
    """Run without kopf peering (one operator replica, Deployment strategy Recreate)."""
    status_interval: float = 1.0
    """Least seconds between two status patches of one job (status updates are coalesced)."""
    build: BuildSettings = field(default_factory=BuildSettings)
    """What goes into every job's worker objects."""
    log_level: str = "INFO"
    max_tasks: int = DEFAULT_MAX_TASKS
    """Largest job accepted, in tasks after fan-out; larger ones fail with InvalidSpec."""
    lease: LeaseSettings | None = None
    """Leader election (several replicas, one runs the jobs); None: run the jobs at once."""
    metrics_port: int = 0
    """Port of the operator's Prometheus endpoint (``/metrics``); 0: not served."""


def _env(environ: Mapping[str, str], name: str, default: str = "") -> str:
    return environ.get(name) or default


def _labels(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, not {item!r}")
        out[key] = value
    return out


def parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bndl.k8s",
        description="The BndlJob operator: runs each BndlJob on a StatefulSet of worker pods.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace (repeat, globs allowed); none: all namespaces "
        "(env BNDL_NAMESPACES, comma-separated)",
    )
    p.add_argument(
        "--worker-image",
        default=_env(environ, "BNDL_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="default worker image (env BNDL_WORKER_IMAGE)",
    )
    p.add_argument(
        "--worker-image-pull-policy",
        default=_env(environ, "BNDL_WORKER_IMAGE_PULL_POLICY") or None,
        choices=["Always", "IfNotPresent", "Never"],
        help="imagePullPolicy of workers whose template sets none (env "
        "BNDL_WORKER_IMAGE_PULL_POLICY)",
    )
    p.add_argument(
        "--liveness",
        default=_env(environ, "BNDL_LIVENESS", DEFAULT_LIVENESS),
        help="liveness endpoint URL, or 'off' (env BNDL_LIVENESS)",
    )
    p.add_argument(
        "--peering",
        action="store_true",
        default=_env(environ, "BNDL_PEERING") in ("1", "true", "yes"),
        help="use kopf peering instead of running standalone (env BNDL_PEERING)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=float(_env(environ, "BNDL_STATUS_INTERVAL", "1")),
        help="least seconds between status patches of a job (env BNDL_STATUS_INTERVAL)",
    )
    p.add_argument(
        "--operator-namespace",
        default=_env(environ, "BNDL_OPERATOR_NAMESPACE") or None,
        help="the operator's namespace, allowed through the workers' NetworkPolicy; default any "
        "(env BNDL_OPERATOR_NAMESPACE)",
    )
    p.add_argument(
        "--operator-labels",
        type=_labels,
        default=_labels(
            _env(
                environ,
                "BNDL_OPERATOR_LABELS",
                "app.kubernetes.io/name=bndl,app.kubernetes.io/component=operator",
            )
        ),
        help="labels of the operator's pods, k=v,... (env BNDL_OPERATOR_LABELS)",
    )
    p.add_argument(
        "--operator-cidr",
        action="append",
        default=[c for c in _env(environ, "BNDL_OPERATOR_CIDRS").split(",") if c],
        help="extra address block allowed to reach workers, for an operator outside the pod "
        "network (repeat; env BNDL_OPERATOR_CIDRS)",
    )
    p.add_argument(
        "--log-level",
        default=_env(environ, "BNDL_LOG_LEVEL", "INFO"),
        help="logging level (env BNDL_LOG_LEVEL)",
    )
    p.add_argument(
        "--max-tasks",
        type=int,
        default=int(_env(environ, "BNDL_MAX_TASKS", str(DEFAULT_MAX_TASKS))),
        help="largest job in tasks (after forEach); larger jobs fail with InvalidSpec before "
        "anything is created (env BNDL_MAX_TASKS)",
    )
    p.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=_env(environ, "BNDL_LEADER_ELECTION", "false").lower() in ("1", "true", "yes"),
        help="run jobs only while holding a coordination.k8s.io Lease in the operator's "
        "namespace, so that replicas can stand by (env BNDL_LEADER_ELECTION)",
    )
    p.add_argument(
        "--lease-name",
        default=_env(environ, "BNDL_LEASE_NAME", "bndl-operator-leader"),
        help="name of the leader-election Lease (env BNDL_LEASE_NAME)",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=float(_env(environ, "BNDL_LEASE_DURATION", "15")),
        help="seconds without renewal after which a standby takes the Lease over "
        "(env BNDL_LEASE_DURATION)",
    )
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=float(_env(environ, "BNDL_RENEW_DEADLINE", "10")),
        help="seconds the leader tries to renew before it steps down (env BNDL_RENEW_DEADLINE)",
    )
    p.add_argument(
        "--identity",
        default=_env(environ, "BNDL_POD_NAME", socket.gethostname()),
        help="this replica's name in the Lease (env BNDL_POD_NAME; default the host name)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env(environ, "BNDL_METRICS_PORT", "0")),
        help="serve Prometheus metrics at :PORT/metrics, 0: off (env BNDL_METRICS_PORT)",
    )
    p.add_argument(
        "--worker-metrics-port",
        type=int,
        default=int(_env(environ, "BNDL_WORKER_METRICS_PORT", "0")),
        help="workers serve Prometheus metrics at :PORT/metrics (a port the job's "
        "NetworkPolicy admits from the whole cluster), 0: off (env BNDL_WORKER_METRICS_PORT)",
    )
    p.add_argument(
        "--worker-cpu-request",
        default=environ.get("BNDL_WORKER_CPU_REQUEST", "100m"),
        help="CPU request of worker containers whose template sets no resources "
        "(env BNDL_WORKER_CPU_REQUEST; empty: none)",
    )
    p.add_argument(
        "--worker-memory-request",
        default=environ.get("BNDL_WORKER_MEMORY_REQUEST", "256Mi"),
        help="memory request of worker containers whose template sets no resources "
        "(env BNDL_WORKER_MEMORY_REQUEST; empty: none)",
    )
    p.add_argument(
        "--worker-memory-limit",
        default=environ.get("BNDL_WORKER_MEMORY_LIMIT", "2Gi"),
        help="memory limit of worker containers whose template sets no resources: a runaway "
        "task becomes an OOMKilled pod (env BNDL_WORKER_MEMORY_LIMIT; empty: none)",
    )
    return p


def _resources(cpu: str, memory: str, limit: str) -> dict[str, dict[str, str]]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limit:
        out["limits"] = {"memory": limit}
    return out


def parse(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> OperatorSettings:
    p = parser(environ)
    args = p.parse_args(argv)
    namespaces = args.namespace
    if namespaces is None:
        namespaces = [n.strip() for n in _env(environ, "BNDL_NAMESPACES").split(",") if n.strip()]
    if args.status_interval < 0:
        p.error("--status-interval must not be negative")
    if args.max_tasks < 1:
        p.error("--max-tasks must be at least 1")
    ports = {"--metrics-port": args.metrics_port, "--worker-metrics-port": args.worker_metrics_port}
    for flag, port in ports.items():
        if not 0 <= port <= 65535:
            p.error(f"{flag} must be a port number (0 for off), not {port}")
    if not 0 < args.renew_deadline < args.lease_duration:
        p.error("--renew-deadline must be positive and shorter than --lease-duration")
    lease = None
    if args.leader_election:
        lease = LeaseSettings(
            namespace=args.operator_namespace or "default",
            name=args.lease_name,
            identity=args.identity,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=min(2.0, args.renew_deadline / 3),
        )
    liveness = None if args.liveness in ("", "off", "none") else args.liveness
    return OperatorSettings(
        namespaces=tuple(namespaces),
        liveness=liveness,
        standalone=not args.peering,
        status_interval=args.status_interval,
        build=BuildSettings(
            worker_image=args.worker_image,
            image_pull_policy=args.worker_image_pull_policy,
            operator_namespace=args.operator_namespace,
            operator_labels=args.operator_labels,
            operator_cidrs=tuple(args.operator_cidr),
            worker_metrics_port=args.worker_metrics_port or None,
            worker_resources=_resources(
                args.worker_cpu_request, args.worker_memory_request, args.worker_memory_limit
            ),
        ),
        log_level=args.log_level.upper(),
        max_tasks=args.max_tasks,
        lease=lease,
        metrics_port=args.metrics_port,
    )
