"""The Prometheus metrics: the operator's definitions and endpoint, a real worker's endpoint.

Expositions are parsed with prometheus_client's own parser, so a malformed one fails here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bndl.execute.core import Counts
from bndl.execute.exceptions import NotConnected
from bndl.k8s import retry
from bndl.k8s.builders import JobRef
from bndl.k8s.handlers import Operator
from bndl.k8s.health import serve_metrics
from bndl.k8s.metrics import OperatorMetrics
from bndl.k8s.settings import OperatorSettings
from bndl.k8s.status import Phase
from bndl.wire import TaskItem
from bndl.worker.store import ResultStore, approx_size
from tests.test_worker_harness import TLS_DIR, client, run, running_worker


def samples(text: str | bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str | bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def counts(**kw: int) -> Counts:
    base = dict(total=4, succeeded=0, running=0, ready=0, blocked=0, retried=0, recomputed=0)
    base.update(lost_runs=0)
    base.update(kw)
    return Counts(**base)  # type: ignore[arg-type]


@dataclass
class Status:
    phase: Phase = Phase.PENDING
    tasks_total: int = 0
    counts: Counts | None = None


def test_job_series_follow_the_status_and_go_with_the_job() -> None:
    m = OperatorMetrics()
    a, b = JobRef("a", "ns1", "uid-a"), JobRef("b", "ns1", "uid-b")
    status_a, status_b = Status(Phase.RUNNING, 7, counts(total=7, succeeded=3)), Status()
    m.job(a, status_a)
    m.job(b, status_b)
    text = m.exposition()
    assert value(text, "bndl_job_tasks", namespace="ns1", bndljob="a") == 7
    assert value(text, "bndl_job_tasks_succeeded", namespace="ns1", bndljob="a") == 3
    assert value(text, "bndl_job_tasks", namespace="ns1", bndljob="b") is None  # not planned yet
    assert value(text, "bndl_jobs", namespace="ns1", phase="Running") == 1
    assert value(text, "bndl_jobs", namespace="ns1", phase="Pending") == 1
    assert value(text, "bndl_jobs", namespace="ns1", phase="Succeeded") == 0
    status_a.phase = Phase.SUCCEEDED  # read at scrape time
    assert value(m.exposition(), "bndl_jobs", namespace="ns1", phase="Succeeded") == 1
    m.forget("uid-a")
    m.forget("uid-a")  # twice: harmless
    text = m.exposition()
    assert value(text, "bndl_job_tasks", namespace="ns1", bndljob="a") is None
    assert value(text, "bndl_jobs", namespace="ns1", phase="Succeeded") == 0
    assert value(text, "bndl_jobs", namespace="ns1", phase="Pending") == 1


def test_a_standby_serves_the_names_without_job_samples() -> None:
    text = OperatorMetrics(lag=lambda: 0.25).exposition().decode()
    assert "# TYPE bndl_tasks_dispatched_total counter" in text
    assert "# TYPE bndl_task_duration_seconds histogram" in text
    assert value(text, "bndl_event_loop_lag_seconds") == 0.25
    assert not [k for k in samples(text) if k[0].startswith(("bndl_job", "bndl_tasks_"))]


def test_the_registry_is_not_the_global_one() -> None:
    m = OperatorMetrics()
    assert m.registry is not REGISTRY
    assert REGISTRY.get_sample_value("bndl_api_retries_total") is None


def test_counts_are_counted_once_from_the_scheduler_start() -> None:
    m = OperatorMetrics()
    meter = m.job(JobRef("a", "ns", "u"), Status())
    meter.sample(counts(retried=5))  # before started(): no baseline, nothing counted
    meter.started(counts(retried=2, recomputed=1))  # an adopted start: its past is not counted
    meter.sample(counts(retried=3, recomputed=1, lost_runs=2, worker_losses=1))
    meter.sample(counts(retried=3, recomputed=4, lost_runs=2, worker_losses=1))
    text = m.exposition()
    assert value(text, "bndl_tasks_retried_total", namespace="ns") == 1
    assert value(text, "bndl_tasks_recomputed_total", namespace="ns") == 3
    assert value(text, "bndl_runs_lost_total", namespace="ns") == 2
    assert value(text, "bndl_worker_losses_total", namespace="ns") == 1
    # A new scheduler (after a suspension) starts from zero counts: nothing goes backwards.
    meter.started(counts())
    meter.sample(counts(retried=1))
    assert value(m.exposition(), "bndl_tasks_retried_total", namespace="ns") == 2


def test_runs_are_counted_and_timed_by_outcome() -> None:
    m = OperatorMetrics()
    meter = m.job(JobRef("a", "ns", "u"), Status())
    futures: list[Future[int]] = [Future() for _ in range(5)]
    for f in futures:
        meter.dispatched(f)
    futures[0].set_result(1)
    futures[1].set_result(2)
    futures[2].set_exception(ValueError("the task's own error"))
    futures[3].set_exception(NotConnected("w1", "gone"))
    futures[4].set_exception(CancelledError())
    text = m.exposition()
    assert value(text, "bndl_tasks_dispatched_total", namespace="ns") == 5
    assert value(text, "bndl_tasks_succeeded_total", namespace="ns") == 2
    assert value(text, "bndl_tasks_failed_total", namespace="ns") == 1
    assert value(text, "bndl_task_duration_seconds_count", namespace="ns") == 3
    meter.first_dispatch(0.02)
    assert value(m.exposition(), "bndl_dispatch_latency_seconds_count", namespace="ns") == 1


def test_api_retries_are_every_backoff_taken() -> None:
    m = OperatorMetrics()
    before = value(m.exposition(), "bndl_api_retries_total")
    assert before is not None
    backoff = retry.Backoff()
    backoff.next()
    backoff.next()
    assert value(m.exposition(), "bndl_api_retries_total") == before + 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_operator_serves_metrics_on_its_own_port() -> None:
    async def scenario() -> None:
        operator = Operator(OperatorSettings(), kube=object())  # type: ignore[arg-type]
        operator.lag = 0.5
        port = free_port()
        site = await serve_metrics(port, operator.metrics.exposition)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = await r.text()
                async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 404  # the probes are on the health port
        finally:
            await site.cleanup()
        assert value(text, "bndl_event_loop_lag_seconds") == 0.5

    asyncio.run(scenario())


def test_approx_size_is_cheap_and_roughly_right() -> None:
    assert approx_size(b"x" * 1_000_000) >= 1_000_000
    big = [b"y" * 1000] * 100_000  # sampled: 100 items measured, not 100,000
    assert 100_000_000 <= approx_size(big) <= 110_000_000
    assert approx_size({"a": "b" * 5000}) > 5000
    assert approx_size(3) > 0 and approx_size([]) > 0

    class Array:
        nbytes = 12345

    assert approx_size(Array()) == 12345


def test_the_store_tracks_what_it_holds() -> None:
    store = ResultStore()
    store.put("job-1", b"a" * 10_000)
    store.put("job-2", b"b" * 20_000)
    store.put("other", b"c" * 5)
    assert store.nbytes >= 30_000
    store.put("job-2", b"")  # replaced
    assert 10_000 <= store.nbytes < 20_000
    store.release(prefix="job-")
    store.release(["other", "missing"])
    assert store.nbytes == 0 and len(store) == 0


def kept(n: int) -> bytes:
    return b"z" * n


def test_a_worker_serves_its_metrics_unauthenticated_on_a_plain_port() -> None:
    port = free_port()
    with running_worker("metered", f"--metrics-port={port}") as worker:

        async def check() -> str:
            async with client(worker) as c:
                items = [TaskItem("k1", kept, (50_000,), keep=True), TaskItem("k2", abs, (-1,))]
                done = [x async for x in c.run(items)]
                assert all(x.ok for x in done)
            # No certificate: counts only.
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as r,
            ):
                assert r.status == 200
                return await r.text()

        text = run(check)
    assert value(text, "bndl_worker_tasks_run_total") == 2
    assert value(text, "bndl_worker_tasks_running") == 0
    assert value(text, "bndl_worker_results_held") == 1
    held = value(text, "bndl_worker_bytes_held")
    assert held is not None and held >= 50_000


def test_a_worker_without_metrics_port_serves_none() -> None:
    with running_worker("plain") as worker:

        async def check() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{worker.health}/metrics") as r,
            ):
                return r.status

        assert run(check) == 404  # the plain health port serves the probes only


@pytest.mark.parametrize("bad", ["70000", "-2"])
def test_a_bad_worker_metrics_port_is_a_usage_error(bad: str) -> None:
    from bndl.worker.config import parse

    with pytest.raises(SystemExit):
        parse([f"--metrics-port={bad}"], {"BNDL_TLS_DIR": TLS_DIR})


# --- what the operator builds and how it is configured -------------------------------------------


def test_worker_pods_announce_their_metrics_port_and_the_policy_admits_only_it() -> None:
    from bndl.k8s import builders
    from bndl.k8s.builders import BuildSettings
    from bndl.manifest import plan_job

    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "wc", "namespace": "team-a"},
        "spec": {"tasks": [{"id": "a", "call": "mod:fn"}], "workers": {"port": 9000}},
    }
    plan = plan_job(doc)
    job = JobRef("wc", "team-a", "uid-1")
    off = BuildSettings()
    on = BuildSettings(worker_metrics_port=9470)

    rules = builders.network_policy(job, plan, on)["spec"]["ingress"]
    assert rules[0] == builders.network_policy(job, plan, off)["spec"]["ingress"][0]
    assert rules[0]["ports"] == [{"protocol": "TCP", "port": 9000}]  # operator and peers only
    assert {"namespaceSelector": {}} not in rules[0]["from"]
    assert rules[1] == {
        "from": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "TCP", "port": 9470}],
    }
    assert len(builders.network_policy(job, plan, off)["spec"]["ingress"]) == 1

    template = builders.pod_template(job, plan, on)
    notes = template["metadata"]["annotations"]
    assert notes == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9470",
        "prometheus.io/path": "/metrics",
    }
    (c,) = template["spec"]["containers"]
    assert "--metrics-port=9470" in c["args"]
    assert {"name": "metrics", "containerPort": 9470, "protocol": "TCP"} in c["ports"]
    plain = builders.pod_template(job, plan, off)
    assert "annotations" not in plain["metadata"]
    assert [p["name"] for p in plain["spec"]["containers"][0]["ports"]] == ["bndl", "bndl-health"]


def test_metrics_ports_from_flags_and_environment() -> None:
    from bndl.k8s.settings import parse

    s = parse([], {})
    assert s.metrics_port == 0 and s.build.worker_metrics_port is None
    s = parse([], {"BNDL_METRICS_PORT": "9090", "BNDL_WORKER_METRICS_PORT": "9470"})
    assert s.metrics_port == 9090 and s.build.worker_metrics_port == 9470
    s = parse(["--metrics-port=9091"], {"BNDL_METRICS_PORT": "9090"})
    assert s.metrics_port == 9091
    with pytest.raises(SystemExit):
        parse(["--metrics-port=-1"], {})
    with pytest.raises(SystemExit):
        parse(["--worker-metrics-port=65536"], {})


# --- the chart -----------------------------------------------------------------------------------


def test_chart_wires_worker_metrics_pod_monitor_and_dashboard() -> None:
    from tests.test_chart_render import by_kind, only, operator_container, refused, template

    def env(docs: list[dict[str, object]]) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in operator_container(docs)["env"]}  # type: ignore[index]

    plain = template()
    assert "BNDL_METRICS_PORT" not in env(plain)
    assert "BNDL_WORKER_METRICS_PORT" not in env(plain)
    assert not by_kind(plain, "PodMonitor") and not by_kind(plain, "ConfigMap")

    docs = template(
        {
            "metrics.enabled": True,
            "metrics.workerPort": 9471,
            "metrics.podMonitor.enabled": True,
            "metrics.grafanaDashboard.enabled": True,
            "watch.namespaces": ["jobs-a", "jobs-b"],
        }
    )
    assert env(docs)["BNDL_METRICS_PORT"] == "9090"
    assert env(docs)["BNDL_WORKER_METRICS_PORT"] == "9471"
    monitor = only(docs, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["jobs-a", "jobs-b"]}
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    dashboard = only(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["bndl.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for name in (
        "bndl_jobs",
        "bndl_tasks_dispatched_total",
        "bndl_task_duration_seconds_bucket",
        "bndl_worker_bytes_held",
        "bndl_event_loop_lag_seconds",
        "bndl_api_retries_total",
    ):
        assert name in exprs  # fmt: skip
    anywhere = template({"metrics.enabled": True, "metrics.podMonitor.enabled": True})
    assert only(anywhere, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    assert "requires metrics.enabled" in refused({"metrics.podMonitor.enabled": True})


def test_the_dashboard_names_only_series_that_exist() -> None:
    """Every bndl_* name the dashboard queries is served by the operator or a worker."""
    import re
    from pathlib import Path

    board = (Path(__file__).parents[1] / "charts/bndl/dashboards/bndl.json").read_text()
    wanted = set(re.findall(r"\bbndl_[a-z_]+", board))
    served = set()
    m = OperatorMetrics()
    meter = m.job(JobRef("a", "ns", "u"), Status(Phase.RUNNING, 1, counts()))
    meter.started(counts())
    meter.sample(counts(retried=1, recomputed=1, lost_runs=1, worker_losses=1))
    f: Future[int] = Future()
    meter.dispatched(f)
    f.set_result(1)
    meter.first_dispatch(0.1)
    served |= {k[0] for k in samples(m.exposition())}
    from bndl.worker.metrics import registry

    served |= {k[0] for k in samples(generate_latest(registry(lambda: None)))}
    assert wanted <= served, wanted - served


def test_workers_made_for_a_job_are_metered() -> None:
    from typing import Any

    from bndl.k8s.metrics import MeteredWorker, metered

    class Loop:
        def in_loop_thread(self) -> bool:
            return False

        def call(self, fn: Any) -> None:
            pass  # never sent: the test resolves the future itself

    class Client:
        name = "w-0"
        url = "http://w-0"

    m = OperatorMetrics()
    meter = m.job(JobRef("a", "ns", "u"), Status())
    worker = metered(meter)(Client(), Loop(), {"zone": "a"})
    assert isinstance(worker, MeteredWorker) and worker.labels == {"zone": "a"}
    future = worker.run("k", abs, (-1,), {}, keep=False)
    assert value(m.exposition(), "bndl_tasks_dispatched_total", namespace="ns") == 1
    future.set_result(1)
    assert value(m.exposition(), "bndl_tasks_succeeded_total", namespace="ns") == 1
