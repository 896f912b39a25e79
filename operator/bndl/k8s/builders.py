"""The Kubernetes objects of one BndlJob, built by plain functions from the job and the settings.

Every child is owned by its BndlJob (garbage collection removes them with it) and carries the same
labels; worker pods are selected by the job's UID, so a job deleted and re-created under the same
name never adopts the old job's pods. Nothing here talks to the API server: the functions return
dicts, and tests check them without a cluster.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bndl import __version__
from bndl.manifest import API_VERSION, KIND, JobPlan
from bndl.wire.tls import CA_FILE, CERT_FILE, KEY_FILE, ClusterTls, Identity, new_cluster
from bndl.worker.config import default_health_port

# The worker container's name in the pod template: the operator fills in this container.
WORKER_CONTAINER = "worker"
TLS_DIR = "/var/run/bndl/tls"
"""Where the worker pods find their TLS files (the job's Secret, mounted read-only)."""
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
"""The operator's own certificate and key in the job's Secret (not mounted into the pods)."""
TLS_DAYS = 365
"""Validity of a job's certificates: the authority dies with the job (its Secret is deleted with
it), and a job must not stop because its certificates expired; a year is longer than any job."""
HEALTH_PORT_NAME = "bndl-health"
TMP_DIR = "/tmp"
NONROOT_UID = 65532
# Longest child base name: pod names are <base>-workers-<ordinal> and the StatefulSet adds a
# controller-revision-hash label of <sts name>-<hash>, which must fit 63 characters.
MAX_BASE = 40

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_JOB = "bndl.io/job"
LABEL_JOB_UID = "bndl.io/job-uid"
MANAGER = "bndl-operator"
DEFAULT_WORKER_IMAGE = f"ghcr.io/bndl/bndl-worker:{__version__}"
"""The worker image of a job that names none, when the operator is given none (the chart does)."""


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """What the operator's configuration contributes to every job's objects."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    """Image of the worker container when neither spec.workers.image nor the template gives one."""
    image_pull_policy: str | None = None
    """imagePullPolicy of the worker container when the template gives none (None: the default)."""
    operator_namespace: str | None = None
    """Namespace of the operator's pods, allowed by the NetworkPolicy (None: any namespace)."""
    operator_labels: Mapping[str, str] = field(
        default_factory=lambda: {LABEL_NAME: "bndl", LABEL_COMPONENT: "operator"}
    )
    """Labels of the operator's pods, allowed by the NetworkPolicy."""
    operator_cidrs: tuple[str, ...] = ()
    """Extra address blocks allowed to reach the workers (an operator outside the pod network)."""
    termination_grace_seconds: int = 10
    """Default terminationGracePeriodSeconds of worker pods."""
    worker_resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "2Gi"},
        }
    )
    """Resources of the worker container when the job's template gives none: never BestEffort
    (the first pods a pressured node evicts), and a runaway task is an OOMKilled pod."""
    worker_metrics_port: int | None = None
    """Port of the workers' Prometheus endpoint (``/metrics``), admitted from the whole cluster by
    the job's NetworkPolicy and announced by ``prometheus.io/*`` pod annotations; None: off."""


@dataclass(frozen=True, slots=True)
class JobRef:
    """The identity of a BndlJob, as its children need it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> JobRef:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"])

    @property
    def base(self) -> str:
        """The stem of every child's name: the job's name, shortened with a hash when long."""
        if len(self.name) <= MAX_BASE:
            return self.name
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        return f"{self.name[: MAX_BASE - 9].rstrip('-.')}-{digest}"

    @property
    def workers(self) -> str:
        """Name of the StatefulSet, its headless Service and its NetworkPolicy."""
        return f"{self.base}-workers"

    @property
    def secret(self) -> str:
        """The Secret holding the job's TLS material."""
        return f"{self.base}-tls"

    def pod_name(self, ordinal: int) -> str:
        return f"{self.workers}-{ordinal}"


def selector(job: JobRef) -> dict[str, str]:
    """The labels that select the job's worker pods."""
    return {LABEL_JOB_UID: job.uid, LABEL_COMPONENT: "worker"}


def labels(job: JobRef, component: str = "worker") -> dict[str, str]:
    return {
        LABEL_NAME: "bndl",
        LABEL_INSTANCE: job.base,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_JOB: job.base,
        LABEL_JOB_UID: job.uid,
    }


def owner_reference(job: JobRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: JobRef, name: str, component: str = "worker") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }


def new_tls(job: JobRef) -> ClusterTls:
    """A fresh certificate authority for the job and its two certificates (see
    :mod:`bndl.wire.tls`): the workers' and the operator's."""
    return new_cluster(f"{job.namespace}/{job.name}", days=TLS_DAYS)


def secret(job: JobRef, tls: ClusterTls) -> dict[str, Any]:
    """The Secret holding the job's TLS material: the workers mount ca.crt, tls.crt and tls.key;
    the operator reads client.crt and client.key (also after a restart: the material of an
    existing job is never made anew, its workers trust only their authority)."""
    files = {
        CA_FILE: tls.worker.ca,
        CERT_FILE: tls.worker.cert,
        KEY_FILE: tls.worker.key,
        CLIENT_CERT: tls.client.cert,
        CLIENT_KEY: tls.client.key,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, job.secret, "tls"),
        "type": "Opaque",
        "data": {name: base64.b64encode(data).decode() for name, data in files.items()},
    }


class SecretUnusable(ValueError):
    """The job's Secret does not hold the TLS material :func:`secret` puts there."""


def tls_of(secret_body: Mapping[str, Any]) -> ClusterTls:
    """The TLS material stored in a Secret made by :func:`secret`."""
    data = secret_body.get("data") or {}
    try:
        files = {
            name: base64.b64decode(data[name], validate=True)
            for name in (CA_FILE, CERT_FILE, KEY_FILE, CLIENT_CERT, CLIENT_KEY)
        }
    except (KeyError, ValueError, TypeError) as e:
        raise SecretUnusable(f"missing or malformed key {e}") from e
    return ClusterTls(
        worker=Identity(files[CA_FILE], files[CERT_FILE], files[KEY_FILE]),
        client=Identity(files[CA_FILE], files[CLIENT_CERT], files[CLIENT_KEY]),
    )


def service(job: JobRef, plan: JobPlan) -> dict[str, Any]:
    """The headless Service: stable DNS names for the worker pods (ready or not)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.workers),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(job),
            "ports": [{"name": "bndl", "port": plan.workers.port, "targetPort": "bndl"}],
        },
    }


def network_policy(job: JobRef, plan: JobPlan, settings: BuildSettings) -> dict[str, Any]:
    """Only the operator and the job's own workers may reach the worker port; any pod of the
    cluster may reach the metrics port (when there is one: read-only counts, no code runs)."""
    operator: dict[str, Any] = {"podSelector": {"matchLabels": dict(settings.operator_labels)}}
    if settings.operator_namespace is None:
        operator["namespaceSelector"] = {}
    else:
        operator["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
        }
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": selector(job)}}, operator]
    peers.extend({"ipBlock": {"cidr": cidr}} for cidr in settings.operator_cidrs)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, job.workers),
        "spec": {
            "podSelector": {"matchLabels": selector(job)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": peers, "ports": [{"protocol": "TCP", "port": plan.workers.port}]},
                *_metrics_ingress(settings),
            ],
        },
    }


def _metrics_ingress(settings: BuildSettings) -> list[dict[str, Any]]:
    port = settings.worker_metrics_port
    if port is None:
        return []
    # Every pod of every namespace (a Prometheus anywhere in the cluster), only this port.
    return [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": port}]}]


def stateful_set(
    job: JobRef, plan: JobPlan, settings: BuildSettings, *, replicas: int | None = None
) -> dict[str, Any]:
    """The worker StatefulSet; ``replicas`` overrides the spec's (0 while suspended)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(job, job.workers),
        "spec": {
            "replicas": plan.workers.replicas if replicas is None else replicas,
            "serviceName": job.workers,
            # All pods start at once and a lost pod is replaced without waiting for the others.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(job)},
            "template": pod_template(job, plan, settings),
        },
    }


def pod_template(job: JobRef, plan: JobPlan, settings: BuildSettings) -> dict[str, Any]:
    """The user's PodTemplateSpec with the worker container, secret and security defaults."""
    template = copy.deepcopy(dict(plan.workers.template or {}))
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels(job)}
    if settings.worker_metrics_port is not None:
        meta["annotations"] = {
            **(meta.get("annotations") or {}),
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.worker_metrics_port),
            "prometheus.io/path": "/metrics",
        }
    spec = template.setdefault("spec", {})
    spec.setdefault("automountServiceAccountToken", False)
    spec.setdefault("terminationGracePeriodSeconds", settings.termination_grace_seconds)
    spec.setdefault("restartPolicy", "Always")
    pod_security = spec.setdefault("securityContext", {})
    pod_security.setdefault("runAsNonRoot", True)
    pod_security.setdefault("runAsUser", NONROOT_UID)
    pod_security.setdefault("runAsGroup", NONROOT_UID)
    pod_security.setdefault("fsGroup", NONROOT_UID)
    pod_security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    volumes = spec.setdefault("volumes", [])
    volumes.append(
        {
            "name": "bndl-tls",
            "secret": {
                "secretName": job.secret,
                "defaultMode": 0o440,
                # the worker's files only: the operator's key stays out of the pods
                "items": [{"key": key, "path": key} for key in (CA_FILE, CERT_FILE, KEY_FILE)],
            },
        }
    )
    volumes.append({"name": "bndl-tmp", "emptyDir": {}})
    if plan.code.config_map:
        volumes.append({"name": "bndl-code", "configMap": {"name": plan.code.config_map}})
    containers = spec.setdefault("containers", [])
    for c in containers:
        if c.get("name") == WORKER_CONTAINER:
            container = c
            break
    else:
        container = {"name": WORKER_CONTAINER}
        containers.insert(0, container)
    _worker_container(container, plan, settings)
    return template


def python_path(plan: JobPlan) -> list[str]:
    """``code.pythonPath`` on the workers: relative entries resolve against ``code.mountPath``."""
    mount = plan.code.mount_path.rstrip("/") or "/"
    out = []
    for entry in plan.code.python_path:
        if entry.startswith("/"):
            out.append(entry)
        elif entry in ("", "."):
            out.append(mount)
        else:
            out.append(f"{mount}/{entry}")
    if plan.code.config_map and mount not in out:
        out.append(mount)
    return out


def _worker_container(c: dict[str, Any], plan: JobPlan, settings: BuildSettings) -> None:
    port = plan.workers.port
    health = default_health_port(port)
    if plan.workers.image:
        c["image"] = plan.workers.image
    c.setdefault("image", settings.worker_image)
    if settings.image_pull_policy:
        c.setdefault("imagePullPolicy", settings.image_pull_policy)
    c["command"] = ["python", "-m", "bndl.worker"]
    c["args"] = [
        "--name=$(BNDL_POD_NAME)",
        "--bind=0.0.0.0",
        f"--port={port}",
        f"--health-port={health}",
        f"--url=https://$(BNDL_POD_IP):{port}",
    ]
    if settings.worker_metrics_port is not None:
        c["args"].append(f"--metrics-port={settings.worker_metrics_port}")
    env: list[dict[str, Any]] = [
        {"name": "BNDL_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "BNDL_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "BNDL_TLS_DIR", "value": TLS_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    path = python_path(plan)
    if path:
        env.append({"name": "PYTHONPATH", "value": ":".join(path)})
    ours = {e["name"] for e in env}
    c["env"] = env + [e for e in c.get("env") or [] if e.get("name") not in ours]
    ports = [
        p
        for p in c.get("ports") or []
        if p.get("name") not in ("bndl", HEALTH_PORT_NAME, "metrics")
    ]
    named: list[dict[str, Any]] = [
        {"name": "bndl", "containerPort": port, "protocol": "TCP"},
        {"name": HEALTH_PORT_NAME, "containerPort": health, "protocol": "TCP"},
    ]
    if settings.worker_metrics_port is not None:
        named.append(
            {"name": "metrics", "containerPort": settings.worker_metrics_port, "protocol": "TCP"}
        )
    c["ports"] = [*named, *ports]
    mounts = c.setdefault("volumeMounts", [])
    mounts.append({"name": "bndl-tls", "mountPath": TLS_DIR, "readOnly": True})
    mounts.append({"name": "bndl-tmp", "mountPath": TMP_DIR})
    if plan.code.config_map:
        mounts.append({"name": "bndl-code", "mountPath": plan.code.mount_path, "readOnly": True})
    # Liveness starts once the worker answered: a worker that starts slowly (a busy node, many
    # pods starting at once, heavy imports) is not killed and restarted, which would only make
    # the node busier. The probes go to the plain health port (the task port speaks mutual TLS).
    c.setdefault(
        "startupProbe",
        {
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 2,
            "failureThreshold": 300,
        },
    )
    # Probes wait longer than the kubelet's 1 s default: on a busy node (100 workers starting on
    # 2 cores) a healthy worker answers late, and a liveness kill then fails its running task.
    c.setdefault(
        "readinessProbe",
        {
            "httpGet": {"path": "/readyz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
    )
    c.setdefault(
        "livenessProbe",
        {
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 10,
            "failureThreshold": 6,
        },
    )
    if not c.get("resources") and settings.worker_resources:
        c["resources"] = copy.deepcopy({k: dict(v) for k, v in settings.worker_resources.items()})
    security = c.setdefault("securityContext", {})
    security.setdefault("allowPrivilegeEscalation", False)
    security.setdefault("readOnlyRootFilesystem", True)
    security.setdefault("runAsNonRoot", True)
    security.setdefault("capabilities", {"drop": ["ALL"]})
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})


def children(
    job: JobRef, plan: JobPlan, settings: BuildSettings, tls: ClusterTls, *, suspended: bool = False
) -> list[dict[str, Any]]:
    """Every child of the job, in creation order (the Secret before the pods that mount it)."""
    return [
        secret(job, tls),
        service(job, plan),
        network_policy(job, plan, settings),
        stateful_set(job, plan, settings, replicas=0 if suspended else None),
    ]
