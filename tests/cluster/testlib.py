"""Small helpers shared by the cluster tests (manifests and waits on real objects)."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster

GRACE = 2  # seconds; PID 1 in the test image does not handle SIGTERM


def pod_yaml(
    name: str,
    image: str,
    *,
    command: list[str] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
    service_account: str | None = None,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Always",
) -> str:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
    }
    if command is not None:
        container["command"] = command
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": GRACE,
        "restartPolicy": restart_policy,
        "containers": [container],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity:
        spec["affinity"] = affinity
    if service_account:
        spec["serviceAccountName"] = service_account
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": spec,
    }
    return json.dumps(obj)


SLEEP = ["python3", "-c", "import time; time.sleep(86400)"]


def pod(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.kubectl_json("get", "pod", name, "-n", ns)  # type: ignore[no-any-return]


def wait_running(cluster: Cluster, ns: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        p = pod(cluster, ns, name)
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        ok = p["status"].get("phase") == "Running" and conds.get("Ready") == "True"
        return p if ok else None

    return wait_for_cluster(
        ready,
        timeout,
        f"pod {ns}/{name} Running and Ready",
    )


def pyexec(cluster: Cluster, ns: str, pod_name: str, code: str, *args: str) -> str:
    """Run Python code inside a pod's container with kubectl exec; return its stdout."""
    return cluster.kubectl("exec", "-n", ns, pod_name, "--", "python3", "-c", code, *args)


HTTP_GET = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    print(r.status, r.read().decode().strip())
"""

# One TCP connection with a deadline, for NetworkPolicy checks: prints "200 <body>", "refused"
# or "timeout" (a dropped SYN), never hangs. kube-network-policies drops, so denied is "timeout".
HTTP_PROBE = """
import socket, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, "http error")
except (TimeoutError, socket.timeout):
    print("timeout")
except urllib.error.URLError as e:
    reason = e.reason
    if isinstance(reason, ConnectionRefusedError):
        print("refused")
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        print("timeout")
    else:
        print("error", repr(reason))
"""


def probe(cluster: Cluster, ns: str, pod_name: str, url: str, timeout: float = 3) -> str:
    """From a pod, one GET of ``url`` within ``timeout`` s: "200 ...", "refused" or "timeout"."""
    return pyexec(cluster, ns, pod_name, HTTP_PROBE, url, str(timeout)).strip()
