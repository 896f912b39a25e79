"""NetworkPolicy is enforced (kube-network-policies on routed ``ptp`` pod traffic), on one node
and across nodes: a deny-all policy blocks, an allow policy admits exactly the pods it names.

A denied connection is dropped by the enforcer, so the client sees its own connect deadline
("timeout"); every probe has one, and every wait a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster
from .plugin import fresh_namespace
from .testlib import SLEEP, pod, pod_yaml, probe, wait_running

pytestmark = pytest.mark.cluster

DENIED = ("timeout", "refused")


def policy_yaml(name: str, ingress: list[dict[str, object]]) -> str:
    """A policy selecting every pod of its namespace; no ingress rules means deny all."""
    return json.dumps(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": ingress},
        }
    )


@pytest.fixture
def other_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    yield from fresh_namespace(k8s_cluster)


def test_deny_all_blocks_and_allow_admits_on_one_node_and_across_nodes(
    k8s_cluster: Cluster, k8s_namespace: str, other_namespace: str, k8s_test_image: str
) -> None:
    c, ns, other = k8s_cluster, k8s_namespace, other_namespace
    here, there = c.nodes[0].name, c.nodes[1].name
    on = {here: {"kubernetes.io/hostname": here}, there: {"kubernetes.io/hostname": there}}
    c.apply(pod_yaml("server", k8s_test_image, node_selector=on[here]), ns)
    clients = {"same-node": (ns, here), "cross-node": (ns, there), "other-ns": (other, there)}
    for name, (namespace, node) in clients.items():
        c.apply(pod_yaml(name, k8s_test_image, command=SLEEP, node_selector=on[node]), namespace)
    for name, (namespace, node) in clients.items():
        assert wait_running(c, namespace, name)["spec"]["nodeName"] == node
    server = wait_running(c, ns, "server")
    assert server["spec"]["nodeName"] == here
    url = f"http://{server['status']['podIP']}:8080/"

    def outcome(client: str) -> str:
        return probe(c, clients[client][0], client, url)

    def becomes(client: str, allowed: bool, what: str) -> str:
        def check() -> str | None:
            out = outcome(client)
            return out if out.startswith("200 hello from server") == allowed else None

        return wait_for_cluster(check, 60, f"{client} -> server {what}")

    # No policy: every client reaches the server (the paths themselves work).
    for client in clients:
        becomes(client, True, "admitted without a policy")

    # Deny all ingress in the server's namespace: nobody gets through, on either node.
    c.apply(policy_yaml("deny-all", []), ns)
    for client in clients:
        assert becomes(client, False, "blocked by deny-all") in DENIED
    for client in clients:  # and it stays blocked (not a transient miss)
        assert outcome(client) in DENIED, client

    # Allow from pods labelled access=granted (this namespace only, as a bare podSelector says).
    allow = [{"from": [{"podSelector": {"matchLabels": {"access": "granted"}}}],
              "ports": [{"protocol": "TCP", "port": 8080}]}]  # fmt: skip
    c.apply(policy_yaml("allow-granted", allow), ns)
    c.kubectl("label", "pod", "cross-node", "-n", ns, "access=granted")
    c.kubectl("label", "pod", "other-ns", "-n", other, "access=granted")
    becomes("cross-node", True, "admitted by allow-granted")
    assert outcome("same-node") in DENIED  # not labelled yet
    assert outcome("other-ns") in DENIED  # labelled, but in another namespace
    c.kubectl("label", "pod", "same-node", "-n", ns, "access=granted")
    becomes("same-node", True, "admitted once labelled")
    assert outcome("other-ns") in DENIED

    # Policies gone: admitted again.
    c.kubectl("delete", "networkpolicy", "--all", "-n", ns)
    becomes("other-ns", True, "admitted once the policies are deleted")
    assert pod(c, ns, "server")["status"]["containerStatuses"][0]["restartCount"] == 0
