"""The operator's Prometheus metrics, on a registry of its own (served at ``/metrics``).

What the operator knows of its jobs is read when Prometheus scrapes (jobs by phase, each job's
task count and progress, the event loop's lag, API retries); what happens to runs is counted as
it happens, by a :class:`JobMeter` per job: runs dispatched and their outcomes (through
:class:`MeteredWorker`, the scheduler's view of a worker pod), and the engine's retries,
recomputations and worker losses (from the scheduler's counts, sampled at every status write).
Counters are labelled by namespace only; the per-job series (``bndl_job_*``) go away with the
job. A standby replica serves the same names with no job-related samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bndl.driver import HttpWorker
from bndl.execute.core import Counts
from bndl.execute.exceptions import NotConnected, TaskCancelled
from bndl.execute.workers import Lane
from bndl.k8s import retry
from bndl.k8s.builders import JobRef
from bndl.k8s.status import Phase

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
"""Task run durations span milliseconds (a map over a list) to hours."""
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusLike(Protocol):
    """What the per-job series read of a job's status (a :class:`~bndl.k8s.status.JobStatus`)."""

    phase: Phase
    tasks_total: int
    counts: Counts | None


@dataclass
class _Job:
    ref: JobRef
    status: StatusLike


class OperatorMetrics:
    """Every metric of one operator process, on its own :class:`CollectorRegistry`."""

    def __init__(self, lag: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._jobs: dict[str, _Job] = {}
        ns = ["namespace"]
        r = self.registry
        self.dispatched = Counter(
            "bndl_tasks_dispatched", "Task runs sent to workers", ns, registry=r
        )
        self.succeeded = Counter(
            "bndl_tasks_succeeded", "Task runs that returned a value", ns, registry=r
        )
        self.failed = Counter(
            "bndl_tasks_failed",
            "Task runs that raised (a lost worker or a cancellation is not a failure)",
            ns,
            registry=r,
        )
        self.retried = Counter(
            "bndl_tasks_retried", "Task runs that failed and were retried", ns, registry=r
        )
        self.recomputed = Counter(
            "bndl_tasks_recomputed", "Runs of tasks whose output was lost with its worker", ns,
            registry=r,
        )  # fmt: skip
        self.runs_lost = Counter(
            "bndl_runs_lost", "Task runs abandoned because their worker was lost", ns, registry=r
        )
        self.worker_losses = Counter(
            "bndl_worker_losses",
            "Workers lost while running a task, charged to the task (see maxWorkerLosses)",
            ns,
            registry=r,
        )
        self.task_duration = Histogram(
            "bndl_task_duration_seconds",
            "Seconds from a run's dispatch to its outcome, as the operator sees it",
            ns,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "bndl_dispatch_latency_seconds",
            "Seconds from the last of a job's workers turning Ready to its first dispatch",
            ns,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "bndl_event_loop_lag_seconds",
            "How late the operator's event loop ran a one-second timer, last measured",
            registry=r,
        )
        self.lag.set_function(lag)
        r.register(_Observed(self._jobs))

    # --- jobs ---------------------------------------------------------------------------------

    def job(self, ref: JobRef, status: StatusLike) -> JobMeter:
        """Start metering a job (again: a new runner of the same job replaces the old one's)."""
        self._jobs[ref.uid] = _Job(ref, status)
        return JobMeter(self, ref.namespace)

    def forget(self, uid: str) -> None:
        """The job was deleted: its series go."""
        self._jobs.pop(uid, None)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _Observed(Collector):
    """The series read at scrape time: jobs by phase, per-job tasks, API retries."""

    def __init__(self, jobs: Mapping[str, _Job]) -> None:
        self.jobs = jobs

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the jobs; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily(
            "bndl_jobs", "BndlJobs this operator knows, by phase", labels=["namespace", "phase"]
        )
        tasks = GaugeMetricFamily(
            "bndl_job_tasks", "Tasks of the job (after forEach)", labels=["namespace", "bndljob"]
        )
        done = GaugeMetricFamily(
            "bndl_job_tasks_succeeded",
            "Tasks of the job that succeeded (of the current run of the job)",
            labels=["namespace", "bndljob"],
        )
        by_phase: dict[str, dict[str, int]] = {}
        for job in list(self.jobs.values()):
            ns = job.ref.namespace
            counts = by_phase.setdefault(ns, dict.fromkeys(Phase, 0))
            counts[job.status.phase] = counts.get(job.status.phase, 0) + 1
            if job.status.tasks_total:
                tasks.add_metric([ns, job.ref.name], job.status.tasks_total)
                c = job.status.counts
                if c is not None:
                    done.add_metric([ns, job.ref.name], c.succeeded)
        for ns, counts in sorted(by_phase.items()):
            for phase, n in counts.items():
                phases.add_metric([ns, str(phase)], n)
        retries = CounterMetricFamily(
            "bndl_api_retries",
            "Kubernetes API calls retried after a transient error (connection, 409, 429, 5xx)",
        )
        retries.add_metric([], retry.TALLY.retries)
        yield phases
        yield tasks
        yield done
        yield retries


class JobMeter:
    """Counts what happens to one job's runs (its namespace's counters)."""

    def __init__(self, metrics: OperatorMetrics, namespace: str) -> None:
        self.metrics = metrics
        self.namespace = namespace
        self._last: Counts | None = None
        m = metrics
        self._dispatched = m.dispatched.labels(namespace)
        self._succeeded = m.succeeded.labels(namespace)
        self._failed = m.failed.labels(namespace)
        self._duration = m.task_duration.labels(namespace)

    def started(self, counts: Counts) -> None:
        """A scheduler starts (first, after a suspension, or adopting): counts from here."""
        self._last = counts

    def sample(self, counts: Counts) -> None:
        """The scheduler's counts now: what grew since the last sample is counted."""
        last = self._last
        self._last = counts
        if last is None:
            return
        for counter, before, now in (
            (self.metrics.retried, last.retried, counts.retried),
            (self.metrics.recomputed, last.recomputed, counts.recomputed),
            (self.metrics.runs_lost, last.lost_runs, counts.lost_runs),
            (self.metrics.worker_losses, last.worker_losses, counts.worker_losses),
        ):
            if now > before:
                counter.labels(self.namespace).inc(now - before)

    def first_dispatch(self, seconds: float) -> None:
        self.metrics.dispatch_latency.labels(self.namespace).observe(max(0.0, seconds))

    def dispatched(self, future: Future[Any]) -> None:
        """A run was sent; its future tells its outcome."""
        self._dispatched.inc()
        started = time.monotonic()

        def done(f: Future[Any]) -> None:
            if f.cancelled():
                return
            error = f.exception()
            if error is None:
                self._succeeded.inc()
            elif isinstance(error, NotConnected | CancelledError | TaskCancelled):
                return  # a lost worker (runs lost) or a cancel: not the task's failure
            else:
                self._failed.inc()
            self._duration.observe(time.monotonic() - started)

        future.add_done_callback(done)


class MeteredWorker(HttpWorker):
    """An :class:`HttpWorker` whose runs are counted and timed by a :class:`JobMeter`."""

    meter: JobMeter | None = None

    def run(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        keep: bool,
        reply: bool = True,
        lane: Lane | None = None,
    ) -> Future[Any]:
        future = super().run(key, fn, args, kwargs, keep, reply, lane)
        if self.meter is not None:
            self.meter.dispatched(future)
        return future


def metered(meter: JobMeter) -> Callable[..., HttpWorker]:
    """A factory of workers metered by ``meter`` (for :class:`~bndl.k8s.workerpods.WorkerPods`)."""

    def make(*args: Any, **kwargs: Any) -> HttpWorker:
        worker = MeteredWorker(*args, **kwargs)
        worker.meter = meter
        return worker

    return make
