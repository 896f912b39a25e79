"""A BndlJob's NetworkPolicy, enforced (the harness runs kube-network-policies): only the operator
and the job's own workers reach the worker port, in a namespaced and in a cluster-wide install.

The operator is the chart's pod (``chart_operator``): the session's process operator runs in the
cluster's own network namespace, whose traffic is never filtered, and admits itself by an ipBlock
that covers the pod network. A denied connection is dropped, so a probe ends in its own deadline
("timeout"); an admitted one reaches the worker's task port, whose mutual-TLS listener refuses a
peer without the job's certificate ("tls rejected ..."; the network let it through).

With metrics enabled (the cluster-wide case here) the policy also admits any pod to the workers'
metrics port, and only to that port.

The job's two workers run on two chosen nodes, one each, and its tasks are pinned to them by node
locality, so results cross nodes worker to worker (``b`` and ``c`` read ``a``, ``d`` reads ``b``
and ``c``). The probe pods run on the first worker's node: each reaches for one worker on its own
node and one on another.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.testlib import SLEEP, pod_yaml, probe, wait_running
from tests.helpers.waiting import wait_for_cluster

from . import jobs
from .chart_operator import CONTAINER, ChartOperator, diamond
from .conftest import MEASUREMENTS

pytestmark = pytest.mark.cluster

DENIED = ("timeout", "refused")
HOSTNAME = "kubernetes.io/hostname"


def restricted_pod(name: str, image: str, node: str, labels: dict[str, str] | None = None) -> str:
    """A sleeping pod on ``node`` that the restricted Pod Security Standard admits."""
    doc = json.loads(
        pod_yaml(name, image, command=SLEEP, labels=labels, node_selector={HOSTNAME: node})
    )
    doc["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    doc["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return json.dumps(doc)


def spread_diamond(name: str, nodes: tuple[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The diamond with one worker on each of ``nodes`` and its tasks pinned alternately to them:
    ``a`` and ``d`` on the first, ``b`` and ``c`` on the second."""
    job, expected = diamond(name)
    one_each = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": HOSTNAME, "operator": "In", "values": list(nodes)}
                        ]
                    }
                ]
            }
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": HOSTNAME, "labelSelector": {"matchLabels": {"bndl.io/job": name}}}
            ]
        },
    }
    job["spec"]["workers"]["template"] = {"spec": {"affinity": one_each}}
    pin = {"a": nodes[0], "b": nodes[1], "c": nodes[1], "d": nodes[0]}
    for task in job["spec"]["tasks"]:
        task["locality"] = {"required": {HOSTNAME: pin[task["id"]]}}
    return job, expected


TLS_PROBE = """
import socket, ssl, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
if len(sys.argv) > 4:  # a directory with the job's ca.crt, tls.crt and tls.key
    d = sys.argv[4]
    ctx.load_verify_locations(d + "/ca.crt")
    ctx.load_cert_chain(d + "/tls.crt", d + "/tls.key")
else:
    ctx.verify_mode = ssl.CERT_NONE
try:
    sock = socket.create_connection((host, port), timeout=timeout)
except (TimeoutError, socket.timeout):
    sys.exit(print("timeout"))
except ConnectionRefusedError:
    sys.exit(print("refused"))
try:
    with ctx.wrap_socket(sock) as s:
        s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: w\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    print("tls", data.split(b"\\r\\n", 1)[0].decode()) if data else print("tls rejected closed")
except ssl.SSLError as e:
    print("tls rejected", e.reason)
except OSError as e:
    print("tls rejected", type(e).__name__)
"""
"""One TCP connection to a worker's task port with a deadline, then a TLS handshake and
``GET /healthz``: ``timeout`` or ``refused`` (the network denied it), ``tls rejected <why>`` (the
worker's listener was reached and refused a peer without the job's certificate) or ``tls HTTP/1.1
200 OK`` (with the job's certificate)."""

TLS_DIR = "/var/run/bndl/tls"
"""Where a worker pod has the job's CA and its own certificate (``BNDL_TLS_DIR``)."""


def run_probe(op: ChartOperator, ns: str, pod_name: str, container: str | None, *args: str) -> str:
    """:data:`TLS_PROBE` from a pod (``container``: a worker's or the operator's)."""
    which = ["-c", container] if container else []
    cmd = ["exec", "-n", ns, pod_name, *which, "--", "python3", "-c", TLS_PROBE, *args]
    return op.cluster.kubectl(*cmd).strip()


@pytest.mark.parametrize(
    ("chart_operator", "metrics"),
    [((), False), (("cluster-wide", "metrics.enabled=true"), True)],
    ids=["namespaced", "cluster-wide+metrics"],
    indirect=["chart_operator"],
)
def test_worker_port_admits_only_the_operator_and_the_jobs_workers(
    chart_operator: ChartOperator, metrics: bool, k8s_namespace: str, k8s_test_image: str
) -> None:
    op, c = chart_operator, chart_operator.cluster
    jobs_ns, name = op.jobs_namespace, "diamond-netpol"
    mode = "namespaced" if op.namespaced else "cluster-wide"
    [deployment] = c.kubectl_json("get", "deployments", "-n", op.namespace)["items"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    watched = [a for a in args if a.startswith("--namespace=")]
    assert watched == ([f"--namespace={jobs_ns}"] if op.namespaced else []), args

    # The operator reaches the workers and the workers reach each other: every task is pinned to
    # a worker on one of two nodes, each reads its inputs from the other node, and the job
    # Succeeds with the policy enforced.
    here, there = c.node_names[0], c.node_names[1]
    job, expected = spread_diamond(name, (here, there))
    op.apply(job)
    status = op.wait_phase(name, ("Succeeded", "Failed", "Cancelled"))
    assert status["phase"] == "Succeeded", status
    assert status["results"] == {"d": expected["d"]}  # the sink's result: 16, from b and c

    # The job's policy: the task port from the job's workers and the operator's pods; with
    # metrics enabled, the workers' metrics port from any pod of the cluster; nothing else (the
    # plain health port is for the kubelet's probes only).
    [policy] = c.kubectl_json("get", "networkpolicy", "-n", jobs_ns)["items"]
    rules = policy["spec"]["ingress"]
    [rule] = [r for r in rules if any("podSelector" in p for p in r["from"])]
    [operator_peer] = [p for p in rule["from"] if "namespaceSelector" in p]
    operator_labels: dict[str, str] = operator_peer["podSelector"]["matchLabels"]
    workers = [p for p in jobs.pods(c, jobs_ns, name) if p["status"].get("podIP")]
    on = {w["spec"]["nodeName"]: w for w in workers}
    assert sorted(on) == sorted((here, there)), [(w["metadata"]["name"], n) for n, w in on.items()]
    workers = [on[here], on[there]]
    [container] = [k for k in workers[0]["spec"]["containers"] if k["name"] == "worker"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    ports = {"task": named["bndl"], "health": named["bndl-health"]}
    assert rule["ports"] == [{"protocol": "TCP", "port": ports["task"]}], rule
    others = [r for r in rules if r is not rule]
    if metrics:
        [metrics_rule] = others
        assert metrics_rule["from"] == [{"namespaceSelector": {}}], metrics_rule
        ports["metrics"] = metrics_rule["ports"][0]["port"]
    else:
        assert others == [], rules

    # Probes: a stranger in another namespace, a neighbour in the job's namespace without the
    # operator's labels, and (the control) a pod with the operator's labels in its namespace; all
    # on ``here``. The operator pods and the first worker probe too.
    probes = {
        "stranger": (k8s_namespace, None),
        "neighbour": (jobs_ns, None),
        "lookalike": (op.namespace, operator_labels),
    }
    for pod_name, (ns, labels) in probes.items():
        c.apply(restricted_pod(pod_name, k8s_test_image, here, labels), ns)
    for pod_name, (ns, _) in probes.items():
        wait_running(c, ns, pod_name)
    # The chart's operator pods (the leader and its standby), not the lookalike.
    operators = [p for p in op.pods() if p["metadata"]["name"].startswith(op.fullname)]
    assert op.leader() in [p["metadata"]["name"] for p in operators], op.leader()

    def ip(worker: dict[str, Any]) -> str:
        return str(worker["status"]["podIP"])

    def label(pod: dict[str, Any], which: str | None = None) -> str:
        where = f"{pod['metadata']['name']}@{pod['spec']['nodeName']}"
        return f"{where}:{ports[which]}" if which else where

    def task_port(source: str, worker: dict[str, Any]) -> str:
        return run_probe(op, probes[source][0], source, None, ip(worker), str(ports["task"]), "3")

    def plain(source: str, worker: dict[str, Any], which: str) -> str:
        path = "/metrics" if which == "metrics" else "/healthz"
        out = probe(c, probes[source][0], source, f"http://{ip(worker)}:{ports[which]}{path}")
        return out.splitlines()[0][:40] if out else out  # a metrics page is long

    def admitted(source: str, worker: dict[str, Any]) -> str | None:
        out = task_port(source, worker)
        return out if out.startswith("tls") else None

    matrix: dict[tuple[str, str], str] = {}
    for worker in workers:
        w = label(worker, "task")
        # The control first: the path works and the worker's listener answers (its IP is known
        # to the enforcer once the pod is; allow a moment for a pod that just started).
        matrix["lookalike", w] = wait_for_cluster(
            lambda worker=worker: admitted("lookalike", worker),
            60,
            f"the operator's labels admitted to {w}",
        )
        for source in ("stranger", "neighbour"):
            matrix[source, w] = task_port(source, worker)
            for which in ("health", "metrics") if metrics else ("health",):
                matrix[source, label(worker, which)] = plain(source, worker, which)
        for operator_pod in operators:
            pod_name = operator_pod["metadata"]["name"]
            matrix[pod_name, w] = run_probe(
                op, op.namespace, pod_name, CONTAINER, ip(worker), str(ports["task"]), "3"
            )
    # A worker with its own certificate gets an answer from the other one.
    matrix["worker", label(workers[1], "task")] = run_probe(
        op, jobs_ns, workers[0]["metadata"]["name"], "worker",
        ip(workers[1]), str(ports["task"]), "3", TLS_DIR,
    )  # fmt: skip

    where = {p: f"{p}@{here}" for p in probes}
    where.update({p["metadata"]["name"]: label(p) for p in operators})
    where["worker"] = label(workers[0])
    table = {f"{where[s]} -> {w}": o for (s, w), o in matrix.items()}
    kind = f"{mode} install" + (", metrics enabled" if metrics else "")
    print(f"NetworkPolicy matrix ({kind}):", json.dumps(table, indent=1))
    for row, got in table.items():
        MEASUREMENTS.append(f"NetworkPolicy ({kind}): {row}: {got}")
    # The stranger and the neighbour are denied on the task and the health port; the operator
    # pods and the lookalike are admitted to the task port and turned away by the worker's TLS
    # listener (no certificate of the job); the other worker is answered. The metrics port
    # answers anyone.
    for (source, w), got in matrix.items():
        port = int(w.rsplit(":", 1)[1])
        if port == ports.get("metrics"):
            assert got.startswith("200"), f"{source} -> {w}: {got}"
        elif source in ("stranger", "neighbour"):
            assert got in DENIED, f"{source} -> {w}: {got}"
        elif source == "worker":
            assert got == "tls HTTP/1.1 200 OK", f"{source} -> {w}: {got}"
        else:
            assert got.startswith("tls rejected"), f"{source} -> {w}: {got}"
