"""A BndlJob's NetworkPolicy, enforced (the harness runs kube-network-policies): only the operator
and the job's own workers reach the worker port.

The operator is the chart's pod (``chart_operator``): the session's process operator runs in the
cluster's own network namespace, whose traffic is never filtered, and admits itself by an ipBlock
that covers the pod network. A denied connection is dropped, so a probe ends in its own deadline
("timeout"); an admitted one reaches the worker, which refuses it without the job's token (401).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.testlib import SLEEP, pod_yaml, probe, wait_running

from . import jobs
from .chart_operator import ChartOperator, diamond

pytestmark = pytest.mark.cluster

DENIED = ("timeout", "refused")


def restricted_pod(name: str, image: str, node: str, labels: dict[str, str] | None = None) -> str:
    """A sleeping pod on ``node`` that the restricted Pod Security Standard admits."""
    on = {"kubernetes.io/hostname": node}
    doc = json.loads(pod_yaml(name, image, command=SLEEP, labels=labels, node_selector=on))
    doc["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    doc["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return json.dumps(doc)


def test_worker_port_admits_only_the_operator_and_the_jobs_workers(
    chart_operator: ChartOperator, k8s_namespace: str, k8s_test_image: str
) -> None:
    op, c = chart_operator, chart_operator.cluster
    jobs_ns, name = op.jobs_namespace, "diamond-netpol"

    # The workers reach each other (b, c and d take their inputs by fromTask) and the operator
    # reaches them: the job Succeeds with the policy enforced.
    job, expected = diamond(name)
    op.apply(job)
    status = op.wait_phase(name, ("Succeeded", "Failed", "Cancelled"))
    assert status["phase"] == "Succeeded", status
    assert status["results"] == {"d": expected["d"]}  # the sink's result: 16, from b and c

    [policy] = c.kubectl_json("get", "networkpolicy", "-n", jobs_ns)["items"]
    [rule] = policy["spec"]["ingress"]
    port = rule["ports"][0]["port"]
    [operator_peer] = [p for p in rule["from"] if "namespaceSelector" in p]
    operator_labels: dict[str, str] = operator_peer["podSelector"]["matchLabels"]
    workers = [p for p in jobs.pods(c, jobs_ns, name) if p["status"].get("podIP")]
    assert len(workers) == 2, [p["metadata"]["name"] for p in workers]

    # Probes: a stranger in another namespace, a neighbour in the job's namespace without the
    # operator's labels, and (the control) a pod with the operator's labels in its namespace; all
    # on the first worker's node, so each reaches for one worker on its node and (the workers
    # being spread) one on another.
    here = workers[0]["spec"]["nodeName"]
    probes = {
        "stranger": (k8s_namespace, None),
        "neighbour": (jobs_ns, None),
        "lookalike": (op.namespace, operator_labels),
    }
    for pod_name, (ns, labels) in probes.items():
        c.apply(restricted_pod(pod_name, k8s_test_image, here, labels), ns)
    for pod_name, (ns, _) in probes.items():
        wait_running(c, ns, pod_name)

    def outcome(pod_name: str, worker: dict[str, Any]) -> str:
        ns = probes[pod_name][0]
        return probe(c, ns, pod_name, f"http://{worker['status']['podIP']}:{port}/")

    def node(ns: str, pod_name: str) -> str:
        return str(c.kubectl_json("get", "pod", pod_name, "-n", ns)["spec"]["nodeName"])

    matrix = {}
    for worker in workers:
        w = f"{worker['metadata']['name']}@{worker['spec']['nodeName']}"
        # The control first: the path works and the worker answers (its IP is known to the
        # enforcer once the pod is; allow a moment for a pod that just started).
        matrix["lookalike", w] = c.wait_for(
            lambda worker=worker: (o := outcome("lookalike", worker)).startswith("401") and o,
            60,
            f"the operator's labels admitted to {w}",
        )
        for pod_name in ("stranger", "neighbour"):
            matrix[pod_name, w] = outcome(pod_name, worker)
    where = {p: f"{p}@{node(ns, p)}" for p, (ns, _) in probes.items()}
    table = {f"{where[s]} -> {w}": o for (s, w), o in matrix.items()}
    print("NetworkPolicy matrix:", json.dumps(table, indent=1))
    for (source, w), got in matrix.items():
        if source != "lookalike":
            assert got in DENIED, f"{source} -> {w}: {got}"
