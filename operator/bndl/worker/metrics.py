"""A worker's Prometheus metrics, read from its task runner when Prometheus scrapes.

Served unauthenticated at ``GET /metrics`` on a plain port of their own (``--metrics-port``):
counts only, nothing that runs code or reveals a result. On Kubernetes the job's NetworkPolicy
admits that port from the whole cluster, the task port only from the operator and the job's
workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bndl.worker.runner import TaskRunner

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WorkerCollector(Collector):
    """The series of one worker; ``runner`` answers None until the worker serves."""

    def __init__(self, runner: Callable[[], TaskRunner | None]) -> None:
        self.runner = runner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runner = self.runner()
        waiting = runner.lanes.waiting() if runner is not None else 0
        running = len(runner.running) - waiting if runner is not None else 0
        finished = runner.runs_finished if runner is not None else 0
        held = len(runner.store) if runner is not None else 0
        nbytes = runner.store.nbytes if runner is not None else 0
        yield GaugeMetricFamily("bndl_worker_tasks_running", "Tasks running now", value=running)
        yield GaugeMetricFamily(
            "bndl_worker_tasks_queued",
            "Tasks dispatched ahead, waiting for a slot of their job",
            value=waiting,
        )
        yield CounterMetricFamily(
            "bndl_worker_tasks_run", "Task runs that ended on this worker", value=finished
        )
        yield GaugeMetricFamily(
            "bndl_worker_results_held", "Results kept for the driver and peers", value=held
        )
        yield GaugeMetricFamily(
            "bndl_worker_bytes_held",
            "Roughly the bytes of the results kept (buffers, arrays, sampled containers)",
            value=nbytes,
        )


def registry(runner: Callable[[], TaskRunner | None]) -> CollectorRegistry:
    """A registry of its own (never the process-global one) holding the worker's series."""
    r = CollectorRegistry(auto_describe=True)
    r.register(WorkerCollector(runner))
    return r


def add_route(app: web.Application, runner: Callable[[], TaskRunner | None]) -> None:
    """Serve ``GET /metrics`` on ``app``."""
    reg = registry(runner)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
