"""Task locality from the labels of the nodes the worker pods run on."""

from __future__ import annotations

import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.config import NODE_CLASS_LABEL, ZONE_LABEL

from .conftest import OperatorProcess
from .jobs import GATE, apply, job_doc, pods, release, wait_finished, wait_status

pytestmark = pytest.mark.cluster


def one_pod_per_node(job: str) -> dict:
    return {
        "spec": {
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"bndl.io/job": job}},
                }
            ]
        }
    }


def test_tasks_preferring_a_zone_run_there_and_a_required_label_nowhere_fails(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    zone_a = next(n.zone for n in k8s_cluster.nodes if n.zone.endswith("a"))
    zone_b = next(n.zone for n in k8s_cluster.nodes if n.zone != zone_a)
    nodes = len(k8s_cluster.nodes)
    # where-i prefer zone a; the zone-b worker is kept busy by a task that must run there, until
    # every where-i is done (the test opens its gate then).
    prefer = job_doc(
        "prefer",
        [
            {
                "id": "busy",
                "call": GATE,
                "args": ["/tmp/prefer-gate"],
                "priority": 10,
                "locality": {"required": {ZONE_LABEL: zone_b}},
            },
            {
                "id": "where",
                "call": "socket:gethostname",
                "forEach": {"range": 12},
                "locality": {"preferred": [{"weight": 100, "labels": {ZONE_LABEL: zone_a}}]},
            },
        ],
        workers={"replicas": nodes, "template": one_pod_per_node("prefer")},
        cleanupPolicy="KeepWorkers",
    )
    nowhere = job_doc(
        "nowhere-label",
        [
            {"id": "fine", "call": "bndl_examples.diamond:number", "args": [1]},
            {
                "id": "picky",
                "call": "bndl_examples.diamond:number",
                "args": [2],
                "locality": {"required": {NODE_CLASS_LABEL: "no-such-class"}},
            },
        ],
    )
    apply(k8s_cluster, ns, prefer)
    apply(k8s_cluster, ns, nowhere)

    st = wait_finished(k8s_cluster, ns, "nowhere-label", timeout=120)
    assert st["phase"] == "Failed", st
    assert st["reason"] == "SchedulingFailed"
    assert "task 'picky' cannot run on any available worker" in st["message"]

    st = wait_status(
        k8s_cluster,
        ns,
        "prefer",
        lambda s: s.get("tasks", {}).get("succeeded") == 12 and s["tasks"]["running"] == 1,
        180,
        "every where-i done while busy holds its worker",
    )
    assert st["phase"] == "Running", st
    release(k8s_cluster, ns, "prefer", "/tmp/prefer-gate")
    st = wait_finished(k8s_cluster, ns, "prefer", timeout=120)
    assert st["phase"] == "Succeeded", st
    zone_of_node = {n.name: n.zone for n in k8s_cluster.nodes}
    zone_of_pod = {
        p["metadata"]["name"]: zone_of_node[p["spec"]["nodeName"]]
        for p in pods(k8s_cluster, ns, "prefer")
    }
    assert sorted(zone_of_pod.values()).count(zone_b) >= 1
    assert zone_of_pod[st["results"]["busy"]] == zone_b, (st["results"]["busy"], zone_of_pod)
    ran_on = {st["results"][f"where-{i}"] for i in range(12)}
    assert {zone_of_pod[pod] for pod in ran_on} == {zone_a}, (ran_on, zone_of_pod)
    k8s_cluster.kubectl("delete", "bndljob", "prefer", "-n", ns)
