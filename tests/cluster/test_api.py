"""API-side behaviour on the real cluster: RBAC from inside a pod, Pod Security, CRD schemas,
kubectl logs/exec, helm, and the test process staying in its own network namespace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster, CommandError
from .config import HERE
from .testlib import SLEEP, pod_yaml, pyexec, wait_running

pytestmark = pytest.mark.cluster

ORIGINAL_NETNS = os.readlink("/proc/self/ns/net")

IN_CLUSTER_LIST_PODS = """
import json, os, ssl, sys, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ns = open(sa + "/namespace").read()
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/pods",
                             headers={"Authorization": "Bearer " + token})
try:
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        print(r.status, len(json.load(r)["items"]))
except urllib.error.HTTPError as e:
    print(e.code, json.load(e).get("reason"))
"""


def test_service_account_token_denied_until_role_bound(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.kubectl("create", "serviceaccount", "bot", "-n", ns)
    c.apply(pod_yaml("agent", k8s_test_image, command=SLEEP, service_account="bot"), ns)
    wait_running(c, ns, "agent")

    first = pyexec(c, ns, "agent", IN_CLUSTER_LIST_PODS).split()
    assert first == ["403", "Forbidden"]

    c.kubectl("create", "role", "pod-reader", "-n", ns, "--verb=list", "--resource=pods")
    c.kubectl("create", "rolebinding", "bot-reads", "-n", ns, "--role=pod-reader",
              f"--serviceaccount={ns}:bot")  # fmt: skip

    def allowed() -> list[str] | None:
        out = pyexec(c, ns, "agent", IN_CLUSTER_LIST_PODS).split()
        return out if out[0] == "200" else None

    _status, count = wait_for_cluster(
        allowed,
        30,
        "the Role binding to take effect",
    )
    assert int(count) >= 1


ROOT_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "root"},
    "spec": {
        "containers": [
            {
                "name": "main",
                "image": "localhost/bndl-test-http:1",
                "imagePullPolicy": "Never",
                "securityContext": {"runAsUser": 0},
            }
        ]
    },
}

RESTRICTED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "compliant"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "main",
                "image": "localhost/bndl-test-http:1",
                "imagePullPolicy": "Never",
                "securityContext": {
                    "runAsUser": 65532,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    },
}


def test_restricted_pod_security_rejects_root_pod(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    with pytest.raises(CommandError) as err:
        c.apply(json.dumps(ROOT_POD), ns)
    assert "violates PodSecurity" in err.value.stderr
    assert '"restricted:latest"' in err.value.stderr
    assert "runAsNonRoot" in err.value.stderr or "runAsUser=0" in err.value.stderr
    assert not c.kubectl("get", "pods", "-n", ns, "-o", "name")
    # A pod that meets the standard is admitted and runs (seccomp RuntimeDefault, no caps).
    c.apply(json.dumps(RESTRICTED_POD), ns)
    wait_running(c, ns, "compliant")


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.bndl.io}
spec:
  group: test.bndl.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              colour: {type: string, enum: [red, green]}
"""


def widget(size: object, colour: str = "red") -> str:
    return json.dumps(
        {
            "apiVersion": "test.bndl.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": size, "colour": colour},
        }
    )


def test_crd_schema_rejects_invalid_objects(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.apply(CRD)
    c.kubectl("wait", "--for=condition=Established", "crd/widgets.test.bndl.io", "--timeout=60s")
    wait_for_cluster(
        lambda: "widgets" in c.kubectl("api-resources", "--api-group=test.bndl.io"),
        30,
        "widgets in discovery",
    )
    for bad, message in (
        (widget(0), "spec.size in body should be greater than or equal to 1"),
        (widget("big"), "spec.size in body must be of type integer"),
        (widget(2, "blue"), 'spec.colour: Unsupported value: "blue"'),
    ):
        with pytest.raises(CommandError) as err:
            c.apply(bad, ns)
        assert message in err.value.stderr
    c.apply(widget(2), ns)
    assert c.kubectl_json("get", "widget", "w", "-n", ns)["spec"]["size"] == 2


def test_kubectl_logs_and_exec(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    c.apply(pod_yaml("srv", k8s_test_image), ns)
    wait_running(c, ns, "srv")
    wait_for_cluster(
        lambda: "serving on port 8080" in c.kubectl("logs", "-n", ns, "srv"),
        30,
        "log",
    )
    out = c.kubectl("exec", "-n", ns, "srv", "--", "python3", "-c",
                    "import os, socket; print(os.getuid(), socket.gethostname())")  # fmt: skip
    assert out.split() == ["65532", "srv"]
    # A request through exec shows up in the server's log.
    pyexec(c, ns, "srv", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/x')")
    wait_for_cluster(
        lambda: "request GET /x" in c.kubectl("logs", "-n", ns, "srv"),
        30,
        "request log",
    )
    with pytest.raises(CommandError) as err:
        c.kubectl("exec", "-n", ns, "srv", "--", "sh", "-c", "exit 7")
    assert err.value.returncode == 7


def test_helm_install_and_uninstall(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    c, ns = k8s_cluster, k8s_namespace
    chart = HERE / "charts" / "hello"
    c.helm("lint", str(chart))
    c.helm("install", "hi", str(chart), "-n", ns, "--set", f"image={k8s_test_image}",
           "--wait", "--timeout", "120s")  # fmt: skip
    releases = json.loads(c.helm("list", "-n", ns, "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [("hi", "deployed")]
    dep = c.kubectl_json("get", "deployment", "hi-web", "-n", ns)
    assert dep["status"]["availableReplicas"] == 1
    cm = c.kubectl_json("get", "configmap", "hi-config", "-n", ns)
    assert cm["data"]["kubeVersion"].startswith("v1.37.")
    c.helm("uninstall", "hi", "-n", ns, "--wait", "--timeout", "60s")
    assert json.loads(c.helm("list", "-n", ns, "-o", "json")) == []
    assert not c.kubectl("get", "deployment,service,configmap", "-n", ns, "-l",
                         "app.kubernetes.io/instance=hi", "-o", "name")  # fmt: skip
    wait_for_cluster(
        lambda: not c.kubectl("get", "deployment,service", "-n", ns, "-o", "name"),
        60,
        "release objects gone",
    )


def test_test_process_stays_in_its_own_network_namespace(k8s_cluster: Cluster) -> None:
    # The harness never moves the test process: loopback servers of other tests keep working.
    assert os.readlink("/proc/self/ns/net") == ORIGINAL_NETNS
    assert os.stat(k8s_cluster.netns.path).st_ino != os.stat("/proc/self/ns/net").st_ino
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    threading.Thread(target=lambda: srv.accept()[0].sendall(b"ok"), daemon=True).start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(2) == b"ok"
    srv.close()
    # ...while the cluster's addresses exist only inside its namespace.
    inside = k8s_cluster.exec_in_netns(["ip", "-4", "-o", "addr", "show", "dev", "lo"]).stdout
    assert "198.18.0.1/32" in inside
    here = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "198.18." not in here
    # call_in_netns runs code on a thread inside the namespace; the caller's thread stays put.
    ns_of_thread = k8s_cluster.call_in_netns(lambda: os.readlink("/proc/thread-self/ns/net"))
    assert ns_of_thread != ORIGINAL_NETNS
    assert os.readlink("/proc/thread-self/ns/net") == ORIGINAL_NETNS


def test_in_process_clients_reach_the_api_from_any_thread(k8s_cluster: Cluster) -> None:
    """The kubeconfig works for in-process clients (kopf, the kubernetes client) in any thread."""
    import ssl
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    kc = yaml.safe_load(k8s_cluster.kubeconfig.read_text())
    server = kc["clusters"][0]["cluster"]["server"]
    assert server.startswith("https://127.0.0.1:")
    user = kc["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=kc["clusters"][0]["cluster"]["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])

    def node_names() -> list[str]:
        with urllib.request.urlopen(f"{server}/api/v1/nodes", context=ctx, timeout=10) as r:
            return sorted(i["metadata"]["name"] for i in json.load(r)["items"])

    expected = sorted(k8s_cluster.node_names)
    assert node_names() == expected
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: node_names(), range(8))) == [expected] * 8
