"""Prometheus scrapes the operator (the chart's pods, metrics.enabled) and a job's workers.

A real Prometheus server (built by ``tests/cluster/build.sh prometheus``) runs as a process in the
cluster's network namespace, stopped by PID at the end. It finds its targets the way a user's
would: Kubernetes service discovery (the admin kubeconfig), the operator through the metrics
Service's EndpointSlices, the workers through their ``prometheus.io/*`` annotations. The test
asks it, through its HTTP API, for the job's task count and for the workers' series.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import config
from tests.cluster.cluster import Cluster, base_env
from tests.cluster.procs import ProcRecord, start_process, stop_processes
from tests.e2e.chart_operator import ChartOperator, diamond
from tests.helpers.waiting import WaitTimeout, wait_for_cluster

pytestmark = pytest.mark.cluster

LISTEN = "127.0.0.1:19090"
"""Prometheus' address inside the cluster's network namespace."""
SCRAPE = "1s"
WAIT = 120


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """The Prometheus server, built (once, then cached) like the cluster's other binaries."""
    subprocess.run(["bash", str(config.BUILD_SCRIPT), "prometheus"], check=True, timeout=3600)
    binary = config.BIN / "prometheus"
    assert binary.exists(), binary
    return binary


class Prometheus:
    """One Prometheus server scraping the release's operator and the jobs' workers."""

    def __init__(self, cluster: Cluster, binary: Path, directory: Path) -> None:
        self.cluster = cluster
        self.binary = binary
        self.dir = directory
        self.proc: ProcRecord | None = None

    def config(self, operator_namespace: str, jobs_namespace: str) -> dict[str, Any]:
        def sd(role: str, namespace: str) -> list[dict[str, Any]]:
            return [
                {
                    "role": role,
                    "kubeconfig_file": str(self.cluster.kubeconfig_in_netns),
                    "namespaces": {"names": [namespace]},
                }
            ]

        pod = {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}
        return {
            "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE},
            "scrape_configs": [
                {
                    "job_name": "bndl-operator",
                    "kubernetes_sd_configs": sd("endpointslice", operator_namespace),
                    "relabel_configs": [
                        {
                            "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
                            "regex": "metrics",
                            "action": "keep",
                        },
                        pod,
                    ],
                },
                {
                    "job_name": "bndl-workers",
                    "kubernetes_sd_configs": sd("pod", jobs_namespace),
                    "relabel_configs": [
                        {
                            "source_labels": [
                                "__meta_kubernetes_pod_annotation_prometheus_io_scrape"
                            ],
                            "regex": "true",
                            "action": "keep",
                        },
                        {
                            "source_labels": [
                                "__address__",
                                "__meta_kubernetes_pod_annotation_prometheus_io_port",
                            ],
                            "regex": r"([^:]+)(?::\d+)?;(\d+)",
                            "replacement": "$1:$2",
                            "target_label": "__address__",
                        },
                        {
                            "source_labels": ["__meta_kubernetes_namespace"],
                            "target_label": "namespace",
                        },
                        pod,
                    ],
                },
            ],
        }

    def start(self, operator_namespace: str, jobs_namespace: str) -> None:
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(self.config(operator_namespace, jobs_namespace)))
        (self.dir / "data").mkdir(exist_ok=True)
        cmd = [
            str(self.binary),
            f"--config.file={path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={LISTEN}",
            "--log.level=warn",
        ]
        self.proc = start_process(
            "prometheus", cmd, self.dir / "prometheus.log", netns=self.cluster.netns,
            env=base_env(),
        )  # fmt: skip
        wait_for_cluster(self.ready, 120, "Prometheus ready")

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc])

    def log(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _get(self, path: str) -> tuple[int, bytes]:
        def get() -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://{LISTEN}{path}", timeout=5) as r:
                return r.status, r.read()

        return self.cluster.call_in_netns(get)

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.alive(), self.log()
        try:
            return self._get("/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def settled_value(self, promql: str, expected: float, timeout: float = WAIT) -> float:
        """The value of ``promql`` once it is ``expected``, or the last one seen at the deadline
        (a counter scraped while the job ran lags until the next scrape)."""
        seen: list[float] = []

        def settled() -> bool:
            result = self.query(promql)
            if len(result) == 1:
                seen.append(float(result[0]["value"][1]))
            return bool(seen) and seen[-1] == expected

        with contextlib.suppress(WaitTimeout):  # the caller's assertion names the value
            wait_for_cluster(
                settled,
                timeout,
                f"{promql} == {expected}",
            )
        return seen[-1] if seen else float("nan")


@pytest.fixture
def prometheus(
    k8s_cluster: Cluster, prometheus_binary: Path, tmp_path: Path
) -> Iterator[Prometheus]:
    p = Prometheus(k8s_cluster, prometheus_binary, tmp_path)
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize("chart_operator", [("metrics.enabled=true",)], indirect=True)
def test_prometheus_scrapes_the_operator_and_the_workers(
    chart_operator: ChartOperator, prometheus: Prometheus, request: pytest.FixtureRequest
) -> None:
    op = chart_operator
    pods = {p["metadata"]["name"] for p in op.pods()}
    assert len(pods) == 2, pods  # the chart's default: a leader and a standby
    prometheus.start(op.namespace, op.jobs_namespace)
    ns = op.jobs_namespace

    name = "metrics-diamond"
    job, expected = diamond(name)
    op.apply(job)
    status = op.wait_phase(name, ("Succeeded", "Failed", "Cancelled"))
    assert status["phase"] == "Succeeded", status
    tasks = len(job["spec"]["tasks"])
    assert status["tasks"]["total"] == tasks == len(expected)

    # The job's task count, as the operator reports it and as its runs add up.
    promql = f'bndl_job_tasks{{namespace="{ns}", bndljob="{name}"}}'
    answer = prometheus.settled_value(promql, tasks)
    succeeded = f'sum(bndl_tasks_succeeded_total{{namespace="{ns}"}})'
    runs = prometheus.settled_value(succeeded, tasks)
    request.node.add_report_section("call", "promql", f"{promql} = {answer}\n{succeeded} = {runs}")
    print(f"\nPromQL: {promql} -> {answer}\nPromQL: {succeeded} -> {runs}")
    assert answer == tasks
    assert runs == tasks  # nothing failed or was retried: one successful run per task

    # Both operator replicas are scraped; only the leader reports the job.
    def operators_up() -> set[str] | None:  # each target is scraped on its own schedule
        up = prometheus.query('up{job="bndl-operator"} == 1')
        got = {r["metric"]["pod"] for r in up}
        return got if got == pods else None

    wait_for_cluster(
        operators_up,
        WAIT,
        "both operator pods scraped",
    )
    leader = op.leader()
    reporting = {r["metric"]["pod"] for r in prometheus.query(promql)}
    assert reporting == {leader}, (reporting, leader)
    standby = (pods - {leader}).pop()
    lag = prometheus.query(f'bndl_event_loop_lag_seconds{{pod="{standby}"}}')
    assert len(lag) == 1, lag  # the standby serves its own figures

    # The workers (kept: cleanupPolicy KeepWorkers) are scraped on their metrics port, and the runs
    # they ended are the runs the operator dispatched.
    workers = {p["metadata"]["name"] for p in op.cluster.kubectl_json(
        "get", "pods", "-n", ns, "-l", "bndl.io/job=" + name)["items"]}  # fmt: skip
    assert len(workers) == job["spec"]["workers"]["replicas"], workers

    def workers_up() -> set[str] | None:
        up = prometheus.query(f'up{{job="bndl-workers", namespace="{ns}"}} == 1')
        got = {r["metric"]["pod"] for r in up}
        return got if got == workers else None

    wait_for_cluster(workers_up, WAIT, "every worker scraped")
    ended = prometheus.settled_value(f'sum(bndl_worker_tasks_run_total{{namespace="{ns}"}})', tasks)
    dispatched = prometheus.settled_value(
        f'sum(bndl_tasks_dispatched_total{{namespace="{ns}"}})', tasks
    )
    assert ended == dispatched == tasks, (ended, dispatched)
    held = prometheus.query(f'bndl_worker_bytes_held{{namespace="{ns}"}}')
    assert {r["metric"]["pod"] for r in held} == workers, held

    # Neither probes nor scrapes reach the operator's log.
    logs = op.logs()
    assert "GET /metrics" not in logs and "GET /healthz" not in logs, logs[-3000:]

    # A deleted job's series go.
    op.cluster.kubectl("delete", "bndljob", name, "-n", ns, "--wait=true", "--timeout=120s")
    wait_for_cluster(
        lambda: prometheus.query(promql) == [],
        WAIT,
        "the deleted job's series gone",
    )
