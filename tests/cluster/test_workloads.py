"""Workloads on real nodes: Deployments and Services across nodes, StatefulSets, restarts."""

from __future__ import annotations

import json

import pytest

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster
from .config import NODE_CLASS_LABEL, ZONE_LABEL
from .testlib import GRACE, HTTP_GET, SLEEP, pod, pod_yaml, pyexec, wait_running

pytestmark = pytest.mark.cluster


def test_nodes_ready_with_zones_and_labels(k8s_cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in k8s_cluster.kubectl_json("get", "nodes")["items"]}
    assert sorted(nodes) == sorted(k8s_cluster.node_names)
    zones = set()
    for spec in k8s_cluster.nodes:
        obj = nodes[spec.name]
        labels = obj["metadata"]["labels"]
        assert labels[ZONE_LABEL] == spec.zone
        assert labels[NODE_CLASS_LABEL] == spec.labels[NODE_CLASS_LABEL]
        ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert obj["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.37.")
        assert obj["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert {"type": "InternalIP", "address": spec.ip} in obj["status"]["addresses"]
        zones.add(labels[ZONE_LABEL])
    assert len(zones) == 2


def deployment_yaml(name: str, image: str, node: str, replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": GRACE,
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": 8080},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
    )


def service_yaml(name: str, headless: bool = False) -> str:
    spec: dict[str, object] = {
        "selector": {"app": name},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    if headless:
        spec["clusterIP"] = "None"
    return json.dumps(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    )


def test_deployment_reached_from_another_node_by_pod_ip_cluster_ip_and_dns(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    server_node, client_node = c.nodes[0].name, c.nodes[1].name
    c.apply(deployment_yaml("web", k8s_test_image, server_node), ns)
    c.apply(service_yaml("web"), ns)
    c.apply(pod_yaml("client", k8s_test_image, command=SLEEP,
                     node_selector={"kubernetes.io/hostname": client_node}), ns)  # fmt: skip
    c.kubectl("wait", "-n", ns, "--for=condition=Available", "deployment/web", "--timeout=120s")
    wait_running(c, ns, "client")
    assert pod(c, ns, "client")["spec"]["nodeName"] == client_node

    pods = c.kubectl_json("get", "pods", "-n", ns, "-l", "app=web")["items"]
    assert len(pods) == 2
    assert {p["spec"]["nodeName"] for p in pods} == {server_node}
    names = {p["metadata"]["name"] for p in pods}
    pod_ip = pods[0]["status"]["podIP"]
    assert pod_ip.startswith("198.18.1.")
    cluster_ip = c.kubectl("get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.clusterIP}")
    assert cluster_ip.startswith("198.19.0.")

    def answer_from(url: str) -> str:
        def get() -> str | None:
            out = pyexec(c, ns, "client", HTTP_GET, url).strip()
            return out if out.startswith("200 hello from ") else None

        out = wait_for_cluster(get, 60, f"GET {url} from {client_node}")
        assert out.split()[-1] in names
        return out

    answer_from(f"http://{pod_ip}:8080/")
    answer_from(f"http://{cluster_ip}/")
    answer_from(f"http://web.{ns}.svc.cluster.local/")
    answer_from("http://web/")  # the pod's search path


def running_containers(c: Cluster, ns: str, container: str) -> list[dict[str, object]]:
    """Containers in state RUNNING in every node's containerd (asked with crictl, not the API)."""
    found = []
    for n in c.nodes:
        out = c.crictl(n.name, "ps", "-o", "json", "--label", f"io.kubernetes.pod.namespace={ns}",
                       "--name", f"^{container}$")  # fmt: skip
        found += [x for x in json.loads(out)["containers"] if x["state"] == "CONTAINER_RUNNING"]
    return found


def statefulset_yaml(name: str, image: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name},
            "spec": {
                "serviceName": name,
                "replicas": replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": GRACE,
                        "containers": [
                            {
                                "name": "member",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": 8080},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }
    )


def test_statefulset_scale_down_and_pod_recreation(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.apply(service_yaml("db", headless=True), ns)
    c.apply(statefulset_yaml("db", k8s_test_image, 3), ns)

    def ready_replicas() -> int:
        sts = c.kubectl_json("get", "statefulset", "db", "-n", ns)
        return int(sts["status"].get("readyReplicas", 0))

    wait_for_cluster(
        lambda: ready_replicas() == 3,
        120,
        "3 ready replicas",
    )
    wait_for_cluster(
        lambda: len(running_containers(c, ns, "member")) == 3,
        30,
        "3 running containers",
    )

    c.kubectl("scale", "statefulset", "db", "-n", ns, "--replicas=1")
    wait_for_cluster(
        lambda: len(running_containers(c, ns, "member")) == 1,
        90,
        "exactly one running container",
    )
    wait_for_cluster(
        lambda: [p["metadata"]["name"] for p in
                 c.kubectl_json("get", "pods", "-n", ns, "-l", "app=db")["items"]] == ["db-0"],
        60, "only db-0 left",
    )  # fmt: skip
    running = running_containers(c, ns, "member")
    assert len(running) == 1
    assert running[0]["labels"]["io.kubernetes.pod.name"] == "db-0"  # type: ignore[index]

    old_uid = pod(c, ns, "db-0")["metadata"]["uid"]
    c.kubectl("delete", "pod", "db-0", "-n", ns, "--wait=false")

    def recreated() -> bool:
        p = pod(c, ns, "db-0")
        conds = {x["type"]: x["status"] for x in p["status"].get("conditions", [])}
        return p["metadata"]["uid"] != old_uid and conds.get("Ready") == "True"

    wait_for_cluster(recreated, 120, "db-0 recreated and Ready")
    wait_for_cluster(
        lambda: len(running_containers(c, ns, "member")) == 1,
        60,
        "one running container",
    )
    new_ip = pod(c, ns, "db-0")["status"]["podIP"]
    assert new_ip.startswith("198.18.")


def test_failing_container_is_restarted_into_crashloopbackoff(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.apply(pod_yaml("crasher", k8s_test_image, command=["sh", "-c", "echo boom; exit 3"]), ns)

    def crashlooping() -> dict[str, object] | None:
        st = pod(c, ns, "crasher")["status"].get("containerStatuses", [{}])[0]
        waiting = st.get("state", {}).get("waiting", {})
        if waiting.get("reason") == "CrashLoopBackOff" and st.get("restartCount", 0) >= 1:
            return st  # type: ignore[no-any-return]
        return None

    st = wait_for_cluster(crashlooping, 120, "CrashLoopBackOff")
    assert st["lastState"]["terminated"]["exitCode"] == 3  # type: ignore[index]
    assert pod(c, ns, "crasher")["spec"]["restartPolicy"] == "Always"

    def logged() -> bool:
        # The last terminated container's output (kubelet GC may swap which one is "previous").
        out = c.kubectl("logs", "-n", ns, "crasher", "--previous", check=False)
        return "boom" in out or "boom" in c.kubectl("logs", "-n", ns, "crasher", check=False)

    wait_for_cluster(logged, 60, "the crashed container's log")
