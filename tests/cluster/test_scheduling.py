"""The real scheduler places pods by node labels; unsatisfiable pods stay Pending."""

from __future__ import annotations

import pytest

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster
from .config import NODE_CLASS_LABEL, ZONE_LABEL
from .testlib import SLEEP, pod, pod_yaml, wait_running

pytestmark = pytest.mark.cluster


def test_node_selector_lands_on_the_labelled_node(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    alpha = [n.name for n in c.nodes if n.labels[NODE_CLASS_LABEL] == "alpha"]
    assert len(alpha) == 1
    c.apply(pod_yaml("picky", k8s_test_image, command=SLEEP,
                     node_selector={NODE_CLASS_LABEL: "alpha"}), ns)  # fmt: skip
    assert wait_running(c, ns, "picky")["spec"]["nodeName"] == alpha[0]


def test_node_affinity_lands_in_the_required_zone(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    zone_b = {n.name for n in c.nodes if n.zone == "zone-b"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": ZONE_LABEL, "operator": "In", "values": ["zone-b"]}
                        ]
                    }
                ]
            }
        }
    }
    c.apply(pod_yaml("zoned", k8s_test_image, command=SLEEP, affinity=affinity), ns)
    assert wait_running(c, ns, "zoned")["spec"]["nodeName"] in zone_b


def test_unsatisfiable_pod_stays_pending_unschedulable(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.apply(pod_yaml("nowhere", k8s_test_image, command=SLEEP,
                     node_selector={NODE_CLASS_LABEL: "no-such-class"}), ns)  # fmt: skip

    def unschedulable() -> dict[str, str] | None:
        p = pod(c, ns, "nowhere")
        for cond in p["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return cond  # type: ignore[no-any-return]
        return None

    cond = wait_for_cluster(
        unschedulable,
        60,
        "PodScheduled=False/Unschedulable",
    )
    assert cond["status"] == "False"
    assert "didn't match Pod's node affinity/selector" in cond["message"]
    p = pod(c, ns, "nowhere")
    assert p["status"]["phase"] == "Pending"
    assert not p["spec"].get("nodeName")
