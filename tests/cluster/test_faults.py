"""Faults caused for real: the API server goes away and comes back; a container's process dies.

These are the primitives the operator's end-to-end fault tests build on, checked here on the
harness's own test image: after an outage every component must recover by itself (new pods are
scheduled, started, reachable through a new Service and its DNS name), and the pods that ran
before it must not have noticed; a killed main process must be restarted by the kubelet.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.waiting import wait_for_cluster

from . import config
from .cluster import Cluster, dns_query_a
from .procs import CommandError, proc_starttime
from .testlib import HTTP_GET, pod, pod_yaml, pyexec, wait_running

pytestmark = pytest.mark.cluster

OUTAGE_S = 20


def service_yaml(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    )


def container_status(p: dict[str, Any]) -> dict[str, Any]:
    [st] = p["status"]["containerStatuses"]
    return st  # type: ignore[no-any-return]


def hold_while(check: Any, seconds: float, what: str) -> None:
    """Keep checking that ``check()`` holds for ``seconds`` (a fault's duration, not a wait)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert check(), what
        time.sleep(0.5)


def test_apiserver_outage_everything_recovers(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(pod_yaml("before", k8s_test_image), ns)
    before = wait_running(k8s_cluster, ns, "before")
    [pid, *_] = k8s_cluster.pod_pids(ns, "before")
    started = proc_starttime(pid)
    old_apiserver = k8s_cluster.procs["kube-apiserver"].pid

    restart_s = 0.0
    t0 = time.monotonic()
    k8s_cluster.stop_apiserver()
    try:
        stopped_s = time.monotonic() - t0
        assert not k8s_cluster.apiserver_running()
        with pytest.raises(CommandError):
            k8s_cluster.kubectl("get", "--raw", "/readyz", "--request-timeout=3s", timeout=30)
        # The pod's process runs on, untouched, all through the outage (counted from the moment
        # the apiserver's process is gone).
        hold_while(
            lambda: proc_starttime(pid) == started, OUTAGE_S, "the pod's process died in the outage"
        )
    finally:
        if not k8s_cluster.apiserver_running():
            t1 = time.monotonic()
            k8s_cluster.start_apiserver()
            restart_s = time.monotonic() - t1
    assert k8s_cluster.procs["kube-apiserver"].pid != old_apiserver
    state = json.loads(k8s_cluster.state_file.read_text())
    assert state["procs"]["kube-apiserver"]["pid"] == k8s_cluster.procs["kube-apiserver"].pid

    # Scheduler, kubelet, KCM (endpoints), kube-proxy and CoreDNS all serve new objects again.
    t2 = time.monotonic()
    k8s_cluster.apply(pod_yaml("after", k8s_test_image), ns)
    k8s_cluster.apply(service_yaml("after"), ns)
    after = wait_running(k8s_cluster, ns, "after", timeout=120)
    running_s = time.monotonic() - t2
    steps = {c["type"]: c["lastTransitionTime"] for c in after["status"]["conditions"]}
    name = f"after.{ns}.svc.{config.CLUSTER_DOMAIN}"
    wait_for_cluster(
        lambda: k8s_cluster.call_in_netns(dns_query_a, config.DNS_IP, name),
        60,
        f"DNS of {name}",
    )
    # From the pod that ran through the outage: its network, DNS and the new Service's rules.
    wait_for_cluster(
        lambda: pyexec(k8s_cluster, ns, "before", HTTP_GET, f"http://{name}/").startswith("200"),
        60,
        "the new Service to answer the old pod",
    )
    recovered_s = time.monotonic() - t2

    now = pod(k8s_cluster, ns, "before")
    assert now["metadata"]["uid"] == before["metadata"]["uid"]
    assert now["status"]["phase"] == "Running"
    assert container_status(now)["restartCount"] == 0
    assert proc_starttime(pid) == started
    ready = [
        n["metadata"]["name"]
        for n in k8s_cluster.kubectl_json("get", "nodes")["items"]
        if {"type": "Ready", "status": "True"}
        in [{"type": c["type"], "status": c["status"]} for c in n["status"]["conditions"]]
    ]
    assert sorted(ready) == sorted(k8s_cluster.node_names)
    print(
        f"apiserver stopped in {stopped_s:.1f}s, Ready again {restart_s:.1f}s after its start, "
        f"a new pod Running {running_s:.1f}s later, its Service answering after {recovered_s:.1f}s"
        f"; the pod created {after['metadata']['creationTimestamp']}, its conditions {steps}"
    )


def test_killed_container_is_restarted_by_the_kubelet(
    k8s_cluster: Cluster, k8s_namespace: str, k8s_test_image: str
) -> None:
    ns = k8s_namespace
    k8s_cluster.apply(pod_yaml("victim", k8s_test_image), ns)
    wait_running(k8s_cluster, ns, "victim")
    pids = k8s_cluster.pod_pids(ns, "victim", "main")
    cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    assert b"/app/server.py" in cmdline, cmdline
    mem = k8s_cluster.process_memory_kib(pids[0])
    assert 1024 < mem["VmRSS"] <= mem["VmHWM"], mem

    killed = k8s_cluster.kill_container(ns, "victim")
    assert killed == pids[0]

    def restarted() -> dict[str, Any] | None:
        st = container_status(pod(k8s_cluster, ns, "victim"))
        return st if st["restartCount"] >= 1 and "running" in st["state"] else None

    st = wait_for_cluster(
        restarted,
        60,
        "the kubelet to restart the container",
    )
    terminated = st["lastState"]["terminated"]
    assert terminated["exitCode"] == 128 + signal.SIGKILL, terminated
    [new_pid, *_] = k8s_cluster.pod_pids(ns, "victim")
    assert new_pid != killed
    wait_running(k8s_cluster, ns, "victim")
