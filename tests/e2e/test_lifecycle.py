"""Jobs survive lost worker pods, stop when deleted, and pause and resume with ``suspend``."""

from __future__ import annotations

import json

import pytest

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import COMMAND_INTERVAL, wait_for_cluster, wait_until

from .conftest import OperatorProcess
from .jobs import (
    GATE,
    apply,
    events,
    job_doc,
    live_pods,
    pods,
    release,
    status,
    wait_finished,
    wait_status,
)

pytestmark = pytest.mark.cluster

NUMBER = "bndl_examples.diamond:number"
ADD = "bndl_examples.diamond:add"
TOTAL = "bndl_examples.squares:total"


def test_deleted_worker_pod_is_recomputed_around_and_its_replacement_used(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    n = 12
    # hold-i are spread over both workers and kept there for sum-i; gate keeps sum-i and who-i
    # waiting until the deleted pod's replacement has joined (the test opens it then); who-i
    # report the pod they ran on.
    doc = job_doc(
        "lose",
        [
            {"id": "hold", "call": NUMBER, "forEach": {"range": n}, "args": [{"fromItem": True}]},
            {"id": "gate", "call": GATE, "args": ["/tmp/lose-gate"], "dependsOn": ["hold"]},
            {
                "id": "sum",
                "call": ADD,
                "forEach": {"range": n},
                "kwargs": {"value": {"fromTask": "hold", "sameIndex": True}, "increment": 100},
                "dependsOn": ["gate"],
            },
            {
                "id": "who",
                # Slow enough that one worker alone cannot take them all before the other
                # (new, still opening connections and importing) is ready for work.
                "call": "subprocess:check_output",
                "args": [["sh", "-c", "sleep 0.5; echo $HOSTNAME"]],
                "kwargs": {"text": True},
                "forEach": {"range": 2 * n},
                # More than 8 dependencies: no data-locality pull towards the gate's worker.
                "dependsOn": ["gate", "hold"],
            },
            {"id": "all", "call": TOTAL, "args": [{"fromTask": "sum", "all": True}]},
        ],
        workers={
            "replicas": 2,
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {"name": "worker", "env": [{"name": "BNDL_LOG_LEVEL", "value": "INFO"}]}
                    ],
                }
            },
        },
        cleanupPolicy="KeepWorkers",
    )
    apply(k8s_cluster, ns, doc)
    wait_status(
        k8s_cluster,
        ns,
        "lose",
        lambda s: s.get("tasks", {}).get("succeeded", 0) >= n and s["tasks"]["running"] == 1,
        120,
        "the hold tasks done and the gate running",
    )
    before = live_pods(k8s_cluster, ns, "lose")
    assert len(before) == 2
    victim = "lose-workers-1"
    old_uid = before[victim]["metadata"]["uid"]
    joined = f"worker {victim} joined the running job"  # the operator's log, at INFO
    joins = operator.log_text().count(joined)
    k8s_cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")

    def replaced() -> bool:
        now = live_pods(k8s_cluster, ns, "lose").get(victim)
        return bool(now and now["metadata"]["uid"] != old_uid)

    wait_for_cluster(
        replaced,
        60,
        "the StatefulSet to recreate the pod",
    )
    wait_until(
        lambda: operator.log_text().count(joined) > joins,
        90,
        f"the new {victim} to join the running job",
        interval=COMMAND_INTERVAL,
    )
    st = wait_status(
        k8s_cluster,
        ns,
        "lose",
        lambda s: s["workers"]["ready"] == 2 or s["phase"] != "Running",
        60,
        "the status to count the new pod",
    )
    assert st["phase"] == "Running", st
    # Nothing behind the gate ran: at most the hold tasks, some of them twice (recomputed).
    assert st["tasks"]["succeeded"] <= 2 * n, st["tasks"]
    assert victim in release(k8s_cluster, ns, "lose", "/tmp/lose-gate")

    st = wait_finished(k8s_cluster, ns, "lose", timeout=120)
    logs = "\n".join(
        k8s_cluster.kubectl("logs", "-n", ns, name, check=False)[-3000:]
        for name in live_pods(k8s_cluster, ns, "lose")
    )
    assert st["phase"] == "Succeeded", (st, logs)
    assert st["tasks"]["recomputed"] >= 1, (st["tasks"], logs)
    assert st["results"]["all"] == sum(range(n)) + 100 * n
    hosts = {st["results"][f"who-{i}"].strip() for i in range(2 * n)}
    assert victim in hosts, f"the recreated {victim} ran none of {hosts}: {logs}"
    k8s_cluster.kubectl("delete", "bndljob", "lose", "-n", ns)


def test_deleting_a_running_job_cancels_its_tasks_and_removes_its_workers(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    doc = job_doc(
        "doomed",
        [{"id": "nap", "call": "time:sleep", "forEach": {"range": 4}, "args": [600]}],
        workers={"replicas": 2},
    )
    apply(k8s_cluster, ns, doc)
    wait_status(
        k8s_cluster,
        ns,
        "doomed",
        lambda s: s.get("tasks", {}).get("running") == 2,
        120,
        "two tasks running",
    )
    k8s_cluster.kubectl("delete", "bndljob", "doomed", "-n", ns, "--timeout=90s")
    gone = k8s_cluster.kubectl("get", "bndljobs", "-n", ns, "-o", "name")
    assert not gone.strip()
    wait_for_cluster(
        lambda: not pods(k8s_cluster, ns, "doomed"),
        90,
        "the workers to be removed",
    )
    cancelled = [e for e in events(k8s_cluster, ns, "doomed") if e["reason"] == "Cancelled"]
    assert cancelled, events(k8s_cluster, ns, "doomed")
    assert "2 running tasks were cancelled" in cancelled[0]["message"]


def test_suspend_scales_workers_to_zero_and_resume_completes(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    n = 6
    doc = job_doc(
        "pausing",
        [
            {"id": "num", "call": NUMBER, "forEach": {"range": n}, "args": [{"fromItem": True}]},
            {"id": "nap", "call": GATE, "args": ["/tmp/pausing-gate"], "dependsOn": ["num"]},
            {
                "id": "sum",
                "call": TOTAL,
                "args": [{"fromTask": "num", "all": True}],
                "dependsOn": ["nap"],
            },
        ],
        workers={"replicas": 2},
    )
    apply(k8s_cluster, ns, doc)
    wait_status(
        k8s_cluster,
        ns,
        "pausing",
        lambda s: s.get("tasks", {}).get("succeeded", 0) >= n and s["tasks"]["running"] == 1,
        120,
        "the first tasks done and the nap running",
    )
    patch = json.dumps({"spec": {"suspend": True}})
    k8s_cluster.kubectl("patch", "bndljob", "pausing", "-n", ns, "--type=merge", "-p", patch)
    st = wait_status(
        k8s_cluster, ns, "pausing", lambda s: s.get("phase") == "Suspended", 60, "Suspended"
    )
    assert st["tasks"]["succeeded"] == n, st["tasks"]
    wait_for_cluster(
        lambda: not pods(k8s_cluster, ns, "pausing"),
        90,
        "the workers to scale to zero",
    )
    sts = k8s_cluster.kubectl_json("get", "statefulset", "pausing-workers", "-n", ns)
    assert sts["spec"]["replicas"] == 0
    assert status(k8s_cluster, ns, "pausing")["phase"] == "Suspended"

    patch = json.dumps({"spec": {"suspend": False}})
    k8s_cluster.kubectl("patch", "bndljob", "pausing", "-n", ns, "--type=merge", "-p", patch)
    # The nap runs again on the new pods (a suspended job's running tasks are stopped): open it
    # there once both are ready.
    wait_status(
        k8s_cluster,
        ns,
        "pausing",
        lambda s: s.get("phase") == "Running" and s["workers"]["ready"] == 2,
        120,
        "both workers back",
    )
    assert len(release(k8s_cluster, ns, "pausing", "/tmp/pausing-gate")) == 2
    st = wait_finished(k8s_cluster, ns, "pausing", timeout=180)
    assert st["phase"] == "Succeeded", st
    assert st["results"]["sum"] == sum(range(n))
    assert st["tasks"]["succeeded"] == n + 2
    assert st["observedGeneration"] == 3  # created, suspended, resumed
    reasons = [e["reason"] for e in events(k8s_cluster, ns, "pausing")]
    assert "Suspended" in reasons and "Resumed" in reasons, reasons
