"""Helpers of the end-to-end tests: apply BndlJobs, read them, wait for their phases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import wait_for_cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
FINISHED = ("Succeeded", "Failed", "Cancelled")
GATE = "bndl_examples.gates:wait_for_file"
"""A task holding its worker until :func:`release` creates its file in the pod (its result is the
pod's name); it fails by itself after its ``timeout`` (300 s unless given)."""


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return doc


def expected(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(doc["metadata"]["annotations"]["examples.bndl.io/expected"])
    return out


def job_doc(name: str, tasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": name},
        "spec": {"tasks": tasks, **spec},
    }


def apply(cluster: Cluster, ns: str, doc: dict[str, Any] | str) -> str:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=text)


def get(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = cluster.kubectl_json("get", "bndljob", name, "-n", ns)
    return out


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = get(cluster, ns, name).get("status") or {}
    return out


def wait_status(
    cluster: Cluster, ns: str, name: str, check: Any, timeout: float, what: str
) -> dict[str, Any]:
    """Poll the job's status until ``check(status)`` holds; the status then."""

    def ready() -> dict[str, Any] | None:
        st = status(cluster, ns, name)
        return st if check(st) else None

    try:
        return wait_for_cluster(ready, timeout, f"{name}: {what}")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last status: {json.dumps(status(cluster, ns, name))}") from e


def wait_finished(cluster: Cluster, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_status(
        cluster, ns, name, lambda s: s.get("phase") in FINISHED, timeout, "a final phase"
    )


def pods(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", ns, "-l", f"bndl.io/job={job}"
    )["items"]
    return out


def events(cluster: Cluster, ns: str, job: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "events", "-n", ns)["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == "BndlJob" and e["involvedObject"]["name"] == job
    ]


def printed(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    """The columns of ``kubectl get bndljob`` for the job."""
    lines = cluster.kubectl("get", "bndljob", name, "-n", ns).splitlines()
    header, row = lines[0].split(), lines[1].split()
    return dict(zip(header, row, strict=False))


def live_pods(cluster: Cluster, ns: str, job: str) -> dict[str, dict[str, Any]]:
    """The job's worker pods that are not being deleted, by name."""
    return {
        p["metadata"]["name"]: p
        for p in pods(cluster, ns, job)
        if not p["metadata"].get("deletionTimestamp")
    }


def release(cluster: Cluster, ns: str, job: str, path: str) -> list[str]:
    """Open a :data:`GATE` waiting for ``path``: create the file in every live worker pod of the
    job (``/tmp`` is each pod's own writable emptyDir); the pods' names."""
    names = sorted(live_pods(cluster, ns, job))
    assert names, f"{job} has no worker pod to release {path} in"
    touch = f"open({path!r}, 'w').close()"
    for name in names:
        cluster.kubectl("exec", "-n", ns, name, "-c", "worker", "--", "python", "-c", touch)
    return names
