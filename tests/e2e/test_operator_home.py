"""The operator pod as a safe home for the scheduler: restarts, upgrades, failover, API outages,
big jobs, many jobs, scaling and poison tasks, all with the operator installed by the chart (two
replicas, one leading through a Lease) and jobs applied with kubectl.

Tasks are ``bndl_examples.probes`` functions from the worker image: ``where`` reports the pod,
process and time it ran at, so a test can see that no task ran twice and that a long task in
flight was not restarted; ``blob`` makes big results; ``crash`` kills its worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import wait_for_cluster

from .chart_operator import ChartOperator
from .conftest import MEASUREMENTS

pytestmark = pytest.mark.cluster

WHERE = "bndl_examples.probes:where"
COUNT = "bndl_examples.probes:count"
SLOW = 40.0  # seconds of each long task: long enough to restart the operator in the middle


@pytest.fixture(scope="module")
def home(
    k8s_cluster: Cluster, bndl_crd: str, operator_image: str, worker_image: str
) -> Iterator[ChartOperator]:
    """One chart release for the module (2 replicas, leader election), removed at the end."""
    op = ChartOperator(k8s_cluster, operator_image, worker_image)
    try:
        op.create_namespaces()
        op.install()
        yield op
    finally:
        print(op.diagnostics()[-6000:])
        op.cleanup()


def doc(name: str, tasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": name},
        "spec": {"tasks": tasks, **spec},
    }


def small_workers(replicas: int) -> dict[str, Any]:
    """Workers with small requests, so that many fit on the test cluster's 2 cores."""
    resources = {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "512Mi"}}
    return {
        "replicas": replicas,
        "template": {"spec": {"containers": [{"name": "worker", "resources": resources}]}},
    }


def restart_job(name: str) -> dict[str, Any]:
    """Short tasks whose results stay on the workers, long tasks that use them, one sink."""
    return doc(
        name,
        [
            {"id": "hold", "call": WHERE, "forEach": {"range": 6}, "args": [0, {"fromItem": True}]},
            {
                "id": "long",
                "call": WHERE,
                "forEach": {"range": 4},
                "args": [SLOW, {"fromTask": "hold", "all": True}],
            },
            {"id": "end", "call": COUNT, "args": [{"fromTask": "long", "all": True}]},
        ],
        workers={"replicas": 2},
        concurrency=2,
        cleanupPolicy="KeepWorkers",
    )


def wait_running(op: ChartOperator, name: str, running: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = op.status(name)
        return st if st.get("tasks", {}).get("running", 0) >= running else None

    return wait_for_cluster(
        check,
        240,
        f"{name}: {running} tasks running",
    )


def leader_pod(op: ChartOperator) -> str:
    holder = wait_for_cluster(op.leader, 120, "a leader")
    return holder


def checkpoint(op: ChartOperator, name: str) -> dict[str, Any]:
    out: dict[str, Any] = op.status(name).get("checkpoint") or {}
    return out


def held_and_run_once(op: ChartOperator, name: str) -> dict[str, Any]:
    """The job Succeeded, every task ran exactly once, and the long ones were never restarted."""
    st = op.wait_phase(name, ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["results"]["end"] == 4
    tasks = st["tasks"]
    assert tasks["succeeded"] == tasks["total"] == 11
    assert tasks["retried"] == 0 and tasks["recomputed"] == 0, tasks
    assert tasks["reattached"] >= 4, tasks  # the long runs in flight were attached to again
    assert tasks["adopted"] >= 6, tasks  # the held results were kept, not computed again
    return st


def restart_case(op: ChartOperator, name: str, restart: Any) -> float:
    """Apply a restart job, restart the operator while the long tasks run; the job's wall time."""
    t0 = time.monotonic()
    op.apply(restart_job(name))
    wait_running(op, name, 4)
    before = checkpoint(op, name)
    restart()
    wait_for_cluster(
        lambda: checkpoint(op, name).get("incarnation") not in (None, before.get("incarnation")),
        240,
        f"{name}: a new operator incarnation adopted the job",
    )
    held_and_run_once(op, name)
    return time.monotonic() - t0


@pytest.mark.timeout(1500)
def test_restarts_upgrades_and_failover_lose_no_work(home: ChartOperator) -> None:
    op = home
    pods = op.wait_ready(2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "replicas prefer different nodes"

    # 1. kubectl delete pod of the leader: it hands over on SIGTERM, the standby resumes.
    leader = leader_pod(op)
    took = restart_case(
        op,
        "restart-delete",
        lambda: op.cluster.kubectl("delete", "pod", leader, "-n", op.namespace, "--wait=false"),
    )
    MEASUREMENTS.append(
        f"kubectl delete pod of the leader mid-job: job took {took:.0f}s "
        f"(tasks {SLOW:.0f}s, no restart: ~{SLOW + 5:.0f}s)"
    )
    assert took < 2 * SLOW + 30, "the long tasks were restarted"
    op.wait_ready(2)

    # 2. SIGKILL of the leader's process (a crash or the OOM killer).
    leader = leader_pod(op)
    took = restart_case(op, "restart-kill", lambda: op.kill(leader))
    MEASUREMENTS.append(f"SIGKILL of the leader's process mid-job: job took {took:.0f}s")
    assert took < 2 * SLOW + 30
    op.wait_ready(2)

    # 3. helm upgrade with a changed value: new pods roll in, the jobs follow the leadership.
    old = {p["metadata"]["uid"] for p in op.pods()}
    took = restart_case(op, "restart-upgrade", lambda: op.upgrade("operator.logLevel=debug"))
    MEASUREMENTS.append(f"helm upgrade mid-job: job took {took:.0f}s")
    assert took < 2 * SLOW + 30
    assert not old & {p["metadata"]["uid"] for p in op.wait_ready(2)}

    # 4. The leader dies outright and its pod is gone: the standby takes over once the Lease
    # runs out unrenewed. Failover: leader killed -> the new leader has adopted the job.
    name = "failover"
    op.apply(restart_job(name))
    wait_running(op, name, 4)
    leader = leader_pod(op)
    before = checkpoint(op, name)
    killed = time.time()
    op.cluster.kubectl(
        "delete", "pod", leader, "-n", op.namespace, "--grace-period=0", "--force", check=False
    )
    op.kill(leader) if _alive(op, leader) else None
    after = wait_for_cluster(
        lambda: (c := checkpoint(op, name)).get("incarnation") != before.get("incarnation") and c,
        240,
        "the standby adopted the job",
    )
    failover = datetime.fromisoformat(after["since"]).timestamp() - killed
    assert after["operator"] != leader
    MEASUREMENTS.append(f"failover (leader killed -> new leader dispatching): {failover:.1f}s")
    held_and_run_once(op, name)


def _alive(op: ChartOperator, pod: str) -> bool:
    try:
        return bool(op.cluster.pod_pids(op.namespace, pod, "operator"))
    except Exception:
        return False


def test_api_server_outage_mid_job(home: ChartOperator) -> None:
    op = home
    op.wait_ready(2)
    name = "apidown"
    op.apply(
        doc(
            name,
            [
                {"id": "t", "call": WHERE, "forEach": {"range": 40}, "args": [1.0]},
                {"id": "end", "call": COUNT, "args": [{"fromTask": "t", "all": True}]},
            ],
            workers={"replicas": 2},
            concurrency=2,
        )
    )
    wait_running(op, name, 2)
    op.cluster.stop_apiserver()
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < 20:  # the outage's length, not a synchronisation
            time.sleep(1)
    finally:
        op.cluster.start_apiserver()
    st = op.wait_phase(name, ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["results"]["end"] == 40
    assert st["tasks"]["succeeded"] == 41


@pytest.mark.timeout(1500)
def test_hundred_jobs_at_once(home: ChartOperator) -> None:
    op = home
    n = 100
    items = [
        doc(
            f"many-{i}",
            [
                {"id": "a", "call": "bndl_examples.diamond:number", "args": [i]},
                {"id": "b", "call": "bndl_examples.diamond:square", "args": [{"fromTask": "a"}]},
            ],
            workers=small_workers(1),
            # 100 pods start on the test cluster's 2 cores: give them time.
            awaitWorkers={"connectTimeoutSeconds": 800},
        )
        for i in range(n)
    ]
    t0 = time.monotonic()
    op.apply({"apiVersion": "v1", "kind": "List", "items": items})

    def all_done() -> list[dict[str, Any]] | None:
        listing = op.cluster.kubectl_json("get", "bndljobs", "-n", op.jobs_namespace)["items"]
        jobs = [j for j in listing if j["metadata"]["name"].startswith("many-")]
        phases = [j.get("status", {}).get("phase") for j in jobs]
        finished = all(p in ("Succeeded", "Failed", "Cancelled") for p in phases)
        return jobs if len(jobs) == n and finished else None

    jobs = wait_for_cluster(all_done, 1200, f"{n} jobs finished")
    failed = [
        (j["metadata"]["name"], j["status"]) for j in jobs if j["status"]["phase"] != "Succeeded"
    ]
    assert not failed, failed[:3]
    for j in jobs:
        i = int(j["metadata"]["name"].split("-")[1])
        assert j["status"]["results"] == {"b": i * i}
    MEASUREMENTS.append(
        f"{n} BndlJobs applied at once, each with its own worker: all Succeeded "
        f"in {time.monotonic() - t0:.0f}s"
    )
    op.cluster.kubectl("delete", "bndljobs", "-n", op.jobs_namespace, "--all", "--wait=false")


def test_scale_a_running_job(home: ChartOperator) -> None:
    op = home
    name = "elastic"
    op.apply(
        doc(
            name,
            # Sinks: each result comes back when its task ends and says where it ran (results of
            # tasks with dependents would be recomputed when their pods are scaled away).
            [{"id": "t", "call": WHERE, "forEach": {"range": 60}, "args": [1.5]}],
            workers=small_workers(2),
            cleanupPolicy="KeepWorkers",
        )
    )
    wait_running(op, name, 2)
    op.cluster.kubectl("scale", "bndljob", name, "-n", op.jobs_namespace, "--replicas=4")
    st = wait_for_cluster(
        lambda: (s := op.status(name)).get("workers", {}).get("ready", 0) >= 4 and s,
        180,
        "4 workers Ready in the job",
    )
    # A worker that joins gets a ready task at once: let a few finish on all four.
    done = st["tasks"]["succeeded"]
    wait_for_cluster(
        lambda: op.status(name).get("tasks", {}).get("succeeded", 0) >= done + 8 or None,
        180,
        "8 more tasks done on 4 workers",
    )
    op.cluster.kubectl("scale", "bndljob", name, "-n", op.jobs_namespace, "--replicas=1")
    st = op.wait_phase(name, ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert st["tasks"]["workerLosses"] == 0, "scaled-away workers are not charged"
    assert len(st["results"]) == 60
    ran_on = {r["host"] for r in st["results"].values()}
    new = {f"{name}-workers-2", f"{name}-workers-3"}
    assert ran_on & new, f"the new workers ran no task: {ran_on}"
    logs = op.logs()
    assert any(f"{name}: worker {w} joined the running job" in logs for w in new), (
        "the operator's log names the workers that joined"
    )
    MEASUREMENTS.append(f"kubectl scale 2 -> 4 -> 1 mid-job: tasks ran on {sorted(ran_on)}")


class PeakMemory:
    """The peak RSS of a process while a job runs, sampled (VmHWM would keep an older peak)."""

    def __init__(self, op: ChartOperator, pod: str) -> None:
        self.op, self.pod = op, pod
        self.before = op.memory_kib(pod)["VmRSS"]
        self.peak = self.before

    def sample(self) -> None:
        self.peak = max(self.peak, self.op.memory_kib(self.pod)["VmRSS"])

    def wait_phase(self, name: str, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self.sample()
            st = self.op.status(name)
            return st if st.get("phase") in ("Succeeded", "Failed") else None

        st: dict[str, Any] = wait_for_cluster(check, timeout, f"{name} finished")
        self.sample()
        return st


@pytest.mark.timeout(900)
def test_big_jobs_are_bounded(home: ChartOperator) -> None:
    op = home
    leader = leader_pod(op)
    # Over the limit: refused before anything is created, with the limit in the message.
    op.apply(
        doc(
            "too-big",
            [
                {"id": "a", "call": WHERE, "forEach": {"range": 100000}},
                {"id": "b", "call": WHERE, "forEach": {"range": 100000}},
                {"id": "c", "call": WHERE},
            ],
        )
    )
    st = op.wait_phase("too-big", ("Failed",), timeout=120)
    assert st["reason"] == "InvalidSpec" and "200,001" in st["message"], st["message"]
    assert "200,000" in st["message"]
    assert not op.cluster.kubectl(
        "get",
        "statefulsets,secrets,services",
        "-n",
        op.jobs_namespace,
        "-l",
        "bndl.io/job=too-big",
        "-o",
        "name",
    ).strip()

    # 60 results of 4 MB joined by one sink: they stay on the workers.
    memory = PeakMemory(op, leader)
    op.apply(
        doc(
            "big-results",
            [
                {
                    "id": "blob",
                    "call": "bndl_examples.probes:blob",
                    "forEach": {"range": 60},
                    "args": [4, {"fromItem": True}],
                },
                {
                    "id": "sum",
                    "call": "bndl_examples.probes:sizes",
                    "args": [{"fromTask": "blob", "all": True}],
                },
            ],
            workers={"replicas": 2},
        )
    )
    st = memory.wait_phase("big-results", timeout=300)
    assert st["phase"] == "Succeeded" and st["results"]["sum"] == 60 * 4 * 2**20, st
    grew = (memory.peak - memory.before) / 1024
    MEASUREMENTS.append(
        f"60 x 4 MB results + 1 sink: operator memory grew {grew:.1f} MB "
        f"(RSS {memory.before / 1024:.0f} -> peak {memory.peak / 1024:.0f} MB, sampled)"
    )
    assert grew < 50


@pytest.mark.timeout(1800)
def test_a_hundred_thousand_tasks_fit_the_default_memory_limit(home: ChartOperator) -> None:
    op = home
    leader = leader_pod(op)
    memory = PeakMemory(op, leader)
    t0 = time.monotonic()
    op.apply(
        doc(
            "hundred-k",
            [
                {
                    "id": "sq",
                    "call": "bndl_examples.squares:square",
                    "forEach": {"range": 100000},
                    "args": [{"fromItem": True}],
                },
                {
                    "id": "total",
                    "call": "bndl_examples.squares:total",
                    "args": [{"fromTask": "sq", "all": True}],
                },
            ],
            workers={"replicas": 2},
            concurrency=16,
        )
    )
    st = memory.wait_phase("hundred-k", timeout=1500)
    assert st["phase"] == "Succeeded", json.dumps(st)[:2000]
    assert st["results"]["total"] == sum(i * i for i in range(100000))
    peak = op.memory_kib(leader)["VmHWM"]
    per_k = (memory.peak - memory.before) / 1024 / 100
    MEASUREMENTS.append(
        f"100,000-task job: {time.monotonic() - t0:.0f}s, operator RSS "
        f"{memory.before / 1024:.0f} -> peak {memory.peak / 1024:.0f} MB (VmHWM {peak / 1024:.0f}"
        f" MB): {per_k:.2f} MB per 1,000 tasks"
    )
    assert peak < 1024 * 1024  # the chart's default limit
    assert op.leader() == leader, "the operator was not restarted (OOMKilled) meanwhile"


def test_poison_task_fails_its_job_and_spares_the_others(home: ChartOperator) -> None:
    op = home
    op.apply(
        doc(
            "bystander",
            [{"id": "t", "call": WHERE, "forEach": {"range": 10}, "args": [2]}],
            workers=small_workers(1),
        )
    )
    op.apply(
        doc(
            "poison",
            [
                {"id": "ok", "call": WHERE, "forEach": {"range": 4}},
                {"id": "killer", "call": "bndl_examples.probes:crash", "args": [7]},
            ],
            workers=small_workers(3),
        )
    )
    st = op.wait_phase("poison", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Failed", json.dumps(st, indent=1)
    assert st["reason"] == "WorkerKilledByTask"
    assert "task 'killer'" in st["message"] and "3 workers" in st["message"], st["message"]
    assert "exit code 7" in st["message"], st["message"]
    assert st["tasks"]["workerLosses"] >= 3
    other = op.wait_phase("bystander", ("Succeeded", "Failed"), timeout=300)
    assert other["phase"] == "Succeeded", other
