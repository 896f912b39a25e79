"""One BndlJob from creation to its end: the life cycle, on top of the job's parts.

The runner is level-triggered: it sleeps on one wake-up event (its pods changed, the spec changed,
the scheduler finished, the job was deleted) and then looks at the whole state again. Its parts
each own one concern: :class:`~bndl.k8s.children.Children` (the Secret, Service, NetworkPolicy and
StatefulSet, reconciled to the spec), :class:`~bndl.k8s.workerpods.WorkerPods` (Ready pods as the
scheduler's workers), :class:`~bndl.k8s.status_writer.StatusWriter` (the one writer of the
status), :mod:`~bndl.k8s.resume` (what a restarted operator adopts) and
:mod:`~bndl.k8s.events`. The steps: plan the job off the event loop (an invalid or oversized one
fails with ``InvalidSpec``), reconcile its children, wait for Ready workers, adopt what the workers
hold and run, run the engine's :class:`~bndl.execute.scheduler.Scheduler` on this event loop, and
finish: cleanup per policy, then ``ttlSecondsAfterFinished``.

When the operator stops (an upgrade, a restart, a lost leadership), the runner detaches: it neither
cancels the runs nor writes a final phase, and the workers keep what they run for the next
operator to adopt. Only a deleted job cancels its runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import secrets
import socket
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiohttp

from bndl.driver import AttachedLoop, HttpWorker
from bndl.execute.core import SchedulingError
from bndl.execute.job import Job, Task
from bndl.execute.scheduler import Adopted, Scheduler, WorkerKilledByTask, root_exc
from bndl.jobs import build_job
from bndl.k8s import builders, profiling
from bndl.k8s import results as job_results
from bndl.k8s.builders import JobRef
from bndl.k8s.children import ChildConflict, Children
from bndl.k8s.events import post_event
from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.metrics import OperatorMetrics, metered
from bndl.k8s.podwatch import PodWatch
from bndl.k8s.resume import job_prefix, survey
from bndl.k8s.retry import retrying
from bndl.k8s.settings import OperatorSettings
from bndl.k8s.status import (
    ConditionType,
    JobStatus,
    Phase,
    Reason,
    diagnose_pods,
    parse_timestamp,
    small_results,
    termination_cause,
)
from bndl.k8s.status_writer import StatusWriter
from bndl.k8s.workerpods import NodeLabels, WorkerPods
from bndl.manifest import CleanupPolicy, JobPlan, ManifestError, plan_job

log = logging.getLogger(__name__)

BEAT = 5.0
"""Longest sleep of the runner's loop: its heartbeat for the liveness probe."""
RECONCILE_EVERY = 30.0
"""Seconds between two reconciliations of the children while nothing else asks for one."""
STORM_RETRIES = 10
STORM_WINDOW = 60.0
"""A retry storm: this many retried runs within STORM_WINDOW seconds make one summarised event."""
CAUSE_WAIT = 10.0
"""Seconds to wait for Kubernetes to say why the containers of a poison task's workers died."""


class Stop(Exception):
    """The job was deleted, or the operator is exiting: leave at once."""


class JobEnded(Exception):
    """The job ends here with this phase, reason and message."""

    def __init__(self, phase: Phase, reason: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.reason = reason
        self.message = message


@dataclass
class Shared:
    """What all runners of one operator share."""

    kube: Kube
    session: aiohttp.ClientSession
    settings: OperatorSettings
    pods: PodWatch
    nodes: NodeLabels
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    counters: dict[str, float] = field(default_factory=dict)


class JobRunner:
    """Runs one BndlJob. ``body`` is kopf's live view of the object (updated as it changes)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        shared: Shared,
        is_stopped: Callable[[], bool],
        deleted: Callable[[], bool],
    ) -> None:
        self.body = body
        self.ref = JobRef.of(body)
        self.shared = shared
        self.kube = shared.kube.scoped()
        self.settings = shared.settings
        self._is_stopped = is_stopped
        self._deleted = deleted
        meta = body["metadata"]
        self.status = JobStatus.resume(body.get("status") or {}, int(meta.get("generation", 0)))
        self.writer = StatusWriter(
            self.kube, self.ref.namespace, self.ref.name, self._status_body,
            self.settings.status_interval,
        )  # fmt: skip
        self.children = Children(self.kube, self.ref, self.settings.build)
        self.meter = shared.metrics.job(self.ref, self.status)
        self.incarnation = secrets.token_hex(4)
        self.job_key = f"{job_prefix(self.ref.uid)}{self.incarnation}"
        self.wake = asyncio.Event()
        self.beat = time.monotonic()
        self.plan: JobPlan | None = None
        self.job: Job | None = None
        self.scheduler: Scheduler | None = None
        self.workers: WorkerPods | None = None
        self._loop: AttachedLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._job_error: BaseException | None = None
        self._job_done = False
        self._reconciled_at = 0.0
        self._reconciled_generation = -1
        self._retries_seen = 0
        self._storm_start = 0.0
        self._storm_retries = 0
        self._api_trouble = False
        self._profiled: set[str] = set()
        self.first_dispatch: float | None = None
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------------------ helpers

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def suspended(self) -> bool:
        return bool(self.spec.get("suspend", False))

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation", 0))

    def poke(self) -> None:
        """Something changed: look again."""
        self.wake.set()

    def _check_stop(self) -> None:
        if self._is_stopped():
            raise Stop()

    async def _sleep(self, timeout: float | None = BEAT) -> None:
        """Wait for a wake-up (or the heartbeat), then clear it."""
        self.beat = time.monotonic()
        limit = BEAT if timeout is None else max(0.0, min(timeout, BEAT))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), limit)
        self.wake.clear()
        self.beat = time.monotonic()
        self._check_stop()

    def _now(self) -> datetime:
        return datetime.now(UTC)

    async def event(self, reason: str, message: str, warning: bool = False) -> None:
        await post_event(self.kube, self.ref, reason, message, warning=warning)

    def _spawn_event(self, reason: str, message: str, warning: bool = False) -> None:
        self._tasks.append(asyncio.create_task(self.event(reason, message, warning)))

    # ------------------------------------------------------------------------------- status

    def _status_body(self) -> dict[str, Any]:
        self.status.generation = self.generation
        if self.scheduler is not None:
            self.status.counts = self.scheduler.counts()
            self.meter.sample(self.status.counts)
        ready = len(self.workers) if self.workers is not None else 0
        self.status.set_workers(ready, self._desired())
        return self.status.body()

    def _desired(self) -> int:
        return 0 if self.suspended else self._replicas()

    def _replicas(self) -> int:
        workers = self.spec.get("workers") or {}
        replicas = workers.get("replicas")
        if isinstance(replicas, int):
            return replicas
        return self.plan.workers.replicas if self.plan is not None else 1

    def set_phase(self, phase: Phase, reason: str, message: str) -> None:
        if self.status.set_phase(phase, reason, message, self._now()):
            self.writer.mark()

    # ----------------------------------------------------------------------------- the job

    async def run(self) -> None:
        """The whole life of the job; returns when it is over (or deleted, or on exit)."""
        self.shared.pods.subscribe(self.ref.uid, self.poke)
        try:
            await self._run()
        except JobEnded as e:
            await self._finish(e.phase, e.reason, e.message)
        except Stop:
            await self._stopped()
        except asyncio.CancelledError:
            self._detach()
            raise
        except Exception as e:  # a bug must fail this job, never the operator or other jobs
            log.exception("%s: the operator failed running the job", self.ref.name)
            self._abort()
            with contextlib.suppress(Exception):
                await self._finish(Phase.FAILED, Reason.OPERATOR_ERROR, f"{type(e).__name__}: {e}")
        finally:
            for task in self._tasks:
                task.cancel()
            self._tasks.clear()
            await self.writer.stop()
            self.shared.pods.unsubscribe(self.ref.uid)

    async def _run(self) -> None:
        if self.status.phase.finished:
            await self._after_finish()
            return
        self.writer.start()
        self.plan = await self._plan()
        if self.status.start_time is None:
            self.status.restart_clock(self._now())
        self.status.selector = ",".join(f"{k}={v}" for k, v in builders.selector(self.ref).items())
        self.job = await asyncio.to_thread(
            build_job, None, self.plan, results="sinks", keep_all=True
        )
        self._restore_results()
        await self._reconcile(force=True)
        self._loop = AttachedLoop(self.shared.session)
        self.workers = WorkerPods(
            self.ref.name, self.plan.workers.port, self.shared.session, self._loop,
            self.shared.nodes, lambda name: self.shared.pods.pod(self.ref.uid, name),
            metered(self.meter),
        )  # fmt: skip
        self.workers.tls = self.children.client_tls
        while True:
            self._check_stop()
            await self._reconcile()
            self._check_deadline()
            if self.suspended:
                await self._suspend()
                continue
            started = await self._await_workers()
            if not started:
                continue
            if await self._execute():
                return

    async def _plan(self) -> JobPlan:
        """The plan, made off the event loop; an invalid or oversized job ends here."""
        # A snapshot taken on the loop: kopf updates its live view of the object meanwhile.
        body = copy.deepcopy({key: self.body[key] for key in self.body})
        limit = self.settings.max_tasks
        try:
            plan = await asyncio.to_thread(
                partial(
                    plan_job,
                    body,
                    max_tasks=limit,
                    max_tasks_hint="raise the operator's limit (--max-tasks, the chart's "
                    "operator.maxTasks) with its memory limit",
                )
            )
            _check_for_kubernetes(plan)
        except ManifestError as e:
            self.status.condition(
                ConditionType.ACCEPTED, False, Reason.INVALID_SPEC, str(e), self._now()
            )
            await self.event(Reason.INVALID_SPEC, str(e), warning=True)
            raise JobEnded(Phase.FAILED, Reason.INVALID_SPEC, f"invalid spec: {e}") from e
        self.status.tasks_total = len(plan.tasks)
        self.status.condition(
            ConditionType.ACCEPTED, True, Reason.ACCEPTED, f"{len(plan.tasks)} tasks", self._now()
        )
        self.writer.mark()
        return plan

    def _restore_results(self) -> None:
        """Sink results an earlier incarnation wrote into the status are done: not run again."""
        assert self.job is not None
        results = self.status.results
        if not results:
            return
        for task in self.job.tasks:
            if not task.dependents and str(task.id) in results:
                task.mark_done(results[str(task.id)])

    # --------------------------------------------------------------------- reconciliation

    async def _reconcile(self, force: bool = False) -> None:
        """Bring the children to the spec: at the start, when the spec changed, and every
        RECONCILE_EVERY seconds (level-triggered: a deleted Service comes back)."""
        assert self.plan is not None
        due = time.monotonic() - self._reconciled_at > RECONCILE_EVERY
        if not (force or due or self.generation != self._reconciled_generation):
            return
        generation = self.generation
        try:
            changes = await retrying(
                lambda: self.children.reconcile(self.plan, self._desired()),  # type: ignore[arg-type]
                f"{self.ref.name}: reconcile",
                on_transient=self._transient,
            )
        except ChildConflict as e:
            raise JobEnded(Phase.FAILED, Reason.CHILD_CONFLICT, str(e)) from e
        except KubeError as e:
            raise JobEnded(
                Phase.FAILED, Reason.API_ERROR, f"the API server refused a child of the job: {e}"
            ) from e
        self._reconciled_at = time.monotonic()
        self._reconciled_generation = generation
        if self.workers is not None:
            self.workers.tls = self.children.client_tls
        if self._api_trouble:
            self._api_trouble = False
            self.status.condition(
                ConditionType.RECONCILED, True, Reason.RECONCILED, "the API server answers",
                self._now(),
            )  # fmt: skip
            self.writer.mark()
        if changes:
            log.info("%s: %s", self.ref.name, "; ".join(changes))
            if len(changes) < 4:  # a first pass creates every child: one event says so below
                await self.event(Reason.RECONCILED, "; ".join(changes))
            else:
                await self.event("Created", f"created the workers' StatefulSet {self.ref.workers}")

    async def _transient(self, error: KubeError) -> None:
        if not self._api_trouble:
            self._api_trouble = True
            message = f"retrying a transient API error: {error}"
            self.status.condition(
                ConditionType.RECONCILED, False, Reason.TRANSIENT_API_ERROR, message, self._now()
            )
            self.writer.mark()
            self._spawn_event(Reason.TRANSIENT_API_ERROR, message, warning=True)
        self.beat = time.monotonic()
        self._check_stop()

    # ----------------------------------------------------------------------------- workers

    async def _sync_workers(self) -> None:
        assert self.workers is not None
        pods = self.shared.pods.pods(self.ref.uid)
        if await self.workers.sync(pods, self.scheduler):
            self.writer.mark()

    async def _await_workers(self) -> bool:
        """True: enough workers to start; False: suspended meanwhile (or the deadline passed)."""
        assert self.plan is not None and self.workers is not None
        wait = self.plan.await_workers
        count = min(wait.count or self._replicas(), self._replicas()) or 1
        minimum = wait.minimum or count
        await self._sync_workers()
        if len(self.workers) < count:
            message = f"waiting for {count} Ready worker pods"
            self.set_phase(Phase.AWAITING_WORKERS, Reason.AWAITING_WORKERS, message)
            self.status.condition(
                ConditionType.WORKERS_READY, False, Reason.AWAITING_WORKERS, message, self._now()
            )
        deadline = time.monotonic() + wait.connect_timeout
        seen, stable_since = len(self.workers), time.monotonic()
        while len(self.workers) < count:
            if self.suspended:
                return False
            self._check_deadline()
            await self._reconcile()
            now = time.monotonic()
            if len(self.workers) != seen:
                seen, stable_since = len(self.workers), now
            enough = len(self.workers) >= minimum
            if enough and minimum < count and now - stable_since >= wait.stable_timeout:
                await self.event(
                    Reason.PARTIAL_START,
                    f"starting with {len(self.workers)} of {count} workers: their number was "
                    f"stable for {wait.stable_timeout:g} s",
                )
                break
            if now >= deadline:
                if enough:
                    await self.event(
                        Reason.PARTIAL_START,
                        f"starting with {len(self.workers)} of {count} workers",
                    )
                    break
                stuck = diagnose_pods(
                    list(self.shared.pods.pods(self.ref.uid).values()), self._replicas()
                )
                message = (
                    f"{len(self.workers)} of {count} worker pods Ready after "
                    f"{wait.connect_timeout:g} s: {stuck}"
                )
                self.status.condition(
                    ConditionType.WORKERS_READY, False, Reason.WORKERS_NOT_READY, message,
                    self._now(),
                )  # fmt: skip
                raise JobEnded(Phase.FAILED, Reason.WORKERS_NOT_READY, message)
            await self._sleep(min(deadline - now, max(0.5, wait.stable_timeout)))
            await self._sync_workers()
        self.status.condition(
            ConditionType.WORKERS_READY, True, Reason.WORKERS_READY,
            f"{len(self.workers)} worker pods Ready", self._now(),
        )  # fmt: skip
        return True

    # ------------------------------------------------------------------------- execution

    async def _adopt(self) -> dict[Hashable, Adopted]:
        """What the workers hold and run of this job (from earlier operator incarnations)."""
        assert self.job is not None and self.workers is not None
        todo = [str(t.id) for t in self.job.tasks if not t.succeeded]
        found = await survey(self.workers.all(), job_prefix(self.ref.uid), todo)
        adopted: dict[Hashable, Adopted] = {
            t: Adopted(f.worker, f.key, f.running) for t, f in found.items()
        }
        if adopted:
            running = sum(1 for a in adopted.values() if a.running)
            message = (
                f"adopted {len(adopted) - running} results held on the workers and {running} "
                "runs in flight from an earlier operator"
            )
            log.info("%s: %s", self.ref.name, message)
            self._spawn_event(Reason.ADOPTED, message)
        return adopted

    async def _execute(self) -> bool:
        """Run the scheduler until the job ends (True) or is suspended (False)."""
        assert self.plan is not None and self.job is not None and self.workers is not None
        self._job_error = None
        self._job_done = False
        adopted = await self._adopt()
        workers = self.workers.all()
        self._checkpoint()
        # Off the loop: a job of 100,000 tasks takes seconds to set up.
        self.scheduler = await asyncio.to_thread(
            partial(
                Scheduler,
                self.job.tasks,
                self._on_done,
                workers,
                self.plan.concurrency,
                self.plan.attempts,
                wait_for_workers=True,
                job_key=self.job_key,
                max_worker_losses=self.plan.max_worker_losses,
                adopted=adopted,
            )
        )
        self.job.counter = self.scheduler.counts
        counts = self.scheduler.counts()
        self.meter.started(counts)
        # Dispatch first, report after: the status and event writes are not on the way.
        self.scheduler.start()
        self._log_first_dispatch()
        await self._profile(workers, clear=not adopted)
        resumed = bool(adopted) or self.status.reason == Reason.RESUMED
        self.set_phase(
            Phase.RUNNING,
            Reason.RESUMED if resumed else Reason.DISPATCHING,
            f"running {len(self.job.tasks)} tasks on {len(workers)} workers",
        )
        self._spawn_event(
            Reason.RESUMED if resumed else "Started",
            f"dispatching {counts.total - counts.succeeded} tasks to {len(workers)} workers",
        )
        while not self._job_done:
            await self._sleep(self._deadline_left())
            await self._sync_workers()
            await self.workers.rejoin(self.scheduler)
            await self._profile(self.workers.all(), clear=True)
            self._check_storm()
            self.writer.mark()
            if self._job_done:
                break
            await self._reconcile()
            if self._deadline_passed():
                self._abort()
                raise JobEnded(Phase.FAILED, Reason.DEADLINE_EXCEEDED, self._deadline_message())
            if self.suspended:
                self._abort()
                self.job = await asyncio.to_thread(_carry_over, self.plan, self.job)
                self.scheduler = None
                return False
        await self._job_finished()
        return True

    async def _profile(self, workers: list[HttpWorker], clear: bool) -> None:
        """spec.profiling: profile every worker that joins the job (never fails the job)."""
        assert self.plan is not None
        spec = self.plan.profiling
        new = [w for w in workers if w.name not in self._profiled]
        if not (spec.cpu or spec.memory) or not new:
            return
        self._profiled.update(w.name for w in new)
        try:
            await profiling.start(new, spec, clear=clear)
        except Exception as e:  # a profiler that does not start is reported, not fatal
            log.warning("%s: profiling not started: %s", self.ref.name, e)

    async def _save_profile(self) -> None:
        """The merged profile into the ConfigMap <job>-profile (while the workers still run)."""
        if self.plan is None or self.workers is None or not self._profiled:
            return
        try:
            text = await profiling.collect(self.workers.all(), self.plan.profiling)
            name = await profiling.save(self.kube, self.ref, text)
        except Exception as e:  # the profile is a report: it never fails the job
            log.warning("%s: profile not saved: %s", self.ref.name, e)
            return
        await self.event("Profiled", f"profile in ConfigMap {name}: bndl profile {self.ref.name}")

    def _checkpoint(self) -> None:
        """Which operator runs the job since when: bounded, for people and for the next
        incarnation (how many there were)."""
        before = self.status.checkpoint
        if before.get("incarnation") == self.incarnation:
            return
        lease = self.settings.lease
        self.status.checkpoint = {
            "incarnation": self.incarnation,
            "operator": lease.identity if lease is not None else socket.gethostname(),
            "since": self._now().isoformat(timespec="milliseconds"),
            "incarnations": int(before.get("incarnations") or 0) + 1,
        }
        self.writer.mark()

    def _log_first_dispatch(self) -> None:
        assert self.workers is not None
        if self.first_dispatch is not None or self.workers.ready_at is None:
            return
        self.first_dispatch = time.monotonic()
        self.meter.first_dispatch(self.first_dispatch - self.workers.ready_at)
        created = parse_timestamp(self.body["metadata"]["creationTimestamp"])
        log.info(
            "%s: first dispatch %.1f ms after the last worker was seen Ready, %.1f s after the "
            "job was created",
            self.ref.name,
            (self.first_dispatch - self.workers.ready_at) * 1000,
            (self._now() - created).total_seconds(),
        )

    def _on_done(self, item: Any) -> None:
        """The scheduler's consumer: a succeeded task, then an error (if any), then None."""
        if isinstance(item, BaseException):
            self._job_error = item
        elif item is None:
            self._job_done = True
            self.poke()
        self.writer.mark()

    def _check_storm(self) -> None:
        if self.scheduler is None:
            return
        retried = self.scheduler.counts().retried
        new = retried - self._retries_seen
        if new <= 0:
            return
        self._retries_seen = retried
        now = time.monotonic()
        if now - self._storm_start > STORM_WINDOW:
            self._storm_start, self._storm_retries = now, 0
        before = self._storm_retries
        self._storm_retries += new
        if before < STORM_RETRIES <= self._storm_retries:
            self._spawn_event(
                "RetryStorm",
                f"{self._storm_retries} task runs failed and were retried in the last "
                f"{STORM_WINDOW:g} s ({retried} in all); see the workers' logs",
                warning=True,
            )

    def _abort(self) -> None:
        """Cancel what runs (the job ends, is suspended or deleted)."""
        if self.scheduler is not None and not self.scheduler.finished:
            self.scheduler.abort(CancelledError("the job was stopped"))

    def _detach(self) -> None:
        """The operator goes away: leave the runs to the workers (the next operator adopts
        them) and write nothing more."""
        self._job_done = True
        if self.scheduler is not None:
            log.info(
                "%s: detached, the workers keep %d running tasks for the next operator",
                self.ref.name,
                self.scheduler.counts().running,
            )
            self.scheduler.detach()
        self.scheduler = None

    async def _job_finished(self) -> None:
        assert self.job is not None
        await self._collect_results()
        error = self._job_error
        if error is None:
            c = self.scheduler.counts() if self.scheduler is not None else None
            detail = f" ({c.retried} retried, {c.recomputed} recomputed)" if c else ""
            raise JobEnded(
                Phase.SUCCEEDED, Reason.SUCCEEDED, f"{len(self.job.tasks)} tasks succeeded{detail}"
            )
        root = root_exc(error)
        if isinstance(root, WorkerKilledByTask):
            self.status.failed_tasks = 1
            raise JobEnded(Phase.FAILED, Reason.WORKER_KILLED_BY_TASK, await self._poison(root))
        if isinstance(root, SchedulingError):
            raise JobEnded(Phase.FAILED, Reason.SCHEDULING_FAILED, str(root))
        failed = next((t for t in self.job.tasks if t.failed and _error_of(t) is error), None)
        if failed is None:
            failed = next((t for t in self.job.tasks if t.failed), None)
        self.status.failed_tasks = 1
        where = f"task {failed.id!r}" if failed is not None else "a task"
        message = f"{where} failed: {type(root).__name__}: {root}"[:1500]
        output = (getattr(root, "task_output", "") or "")[-2000:]
        if output:  # what the task printed: the worker pod may be gone when someone looks
            message += f"\n--- its output (end) ---\n{output}"
        if failed is not None:
            self.status.failed_task = {"id": str(failed.id), "output": output}
        raise JobEnded(Phase.FAILED, Reason.TASK_FAILED, message)

    async def _poison(self, error: WorkerKilledByTask) -> str:
        """The message for a task that killed its workers, with what Kubernetes knows of why
        their containers died (it may take the kubelet a moment to report it)."""
        names = list(dict.fromkeys(error.workers))
        deadline = time.monotonic() + CAUSE_WAIT
        causes: dict[str, str] = {}
        while True:
            for name in names:
                pod = self.shared.pods.pod(self.ref.uid, name)
                cause = termination_cause(pod) if pod is not None else None
                if cause:
                    causes[name] = cause
            if len(causes) == len(names) or time.monotonic() > deadline:
                break
            await self._sleep(1.0)
        known = "; ".join(f"{n}: {c}" for n, c in causes.items())
        limit = error.losses
        return (
            f"task {error.task!r} was running on {limit} workers that were lost "
            f"({', '.join(error.workers)}); it probably kills its worker (a crash, os._exit, or "
            "running out of memory: raise the workers' memory limit in spec.workers.template)"
            + (f". Kubernetes says: {known}" if known else "")
        )

    async def _collect_results(self) -> None:
        """The sinks' results (the only ones that came back) into the status, size-capped."""
        assert self.job is not None
        sinks = [t for t in self.job.tasks if not t.dependents and t.succeeded]

        def read() -> list[tuple[str, Any]]:  # off the loop: adopted results are fetched
            done: list[tuple[str, Any]] = []
            for task in sinks:
                try:
                    done.append((str(task.id), task.result()))
                except Exception as e:
                    log.warning("%s: result of %s not read: %s", self.ref.name, task.id, e)
            return done

        done = await asyncio.to_thread(read)
        self.status.results, self.status.results_omitted = small_results(
            done, [str(t.id) for t in sinks]
        )
        # all of them (bounded) in <job>-results when the status could not hold them
        self.status.results_config_map = await job_results.keep(
            self.kube, self.ref, done, len(self.status.results)
        )

    # ----------------------------------------------------------------------- suspension

    async def _suspend(self) -> None:
        self.status.condition(
            ConditionType.WORKERS_READY, False, Reason.SUSPENDED, "suspended", self._now()
        )
        self.set_phase(Phase.SUSPENDED, Reason.SUSPENDED, "suspended: workers scaled to 0")
        await self._reconcile(force=True)
        await self.event(
            Reason.SUSPENDED, "suspended: running tasks cancelled, workers scaled to 0"
        )
        while self.suspended:
            await self._sleep(None)
            await self._sync_workers()
        self.status.restart_clock(self._now())
        self.status.reason = Reason.RESUMED
        await self._reconcile(force=True)
        await self.event(Reason.RESUMED, f"resumed: scaling to {self._replicas()}")

    # ----------------------------------------------------------------------------- endings

    def _deadline_left(self) -> float | None:
        seconds = self.spec.get("activeDeadlineSeconds")
        started = self.status.start_time
        if not seconds or not started:
            return None
        end = parse_timestamp(started) + timedelta(seconds=int(seconds))
        return (end - self._now()).total_seconds()

    def _deadline_passed(self) -> bool:
        left = self._deadline_left()
        return left is not None and left <= 0

    def _check_deadline(self) -> None:
        if self._deadline_passed():
            raise JobEnded(Phase.FAILED, Reason.DEADLINE_EXCEEDED, self._deadline_message())

    def _deadline_message(self) -> str:
        limit = self.spec.get("activeDeadlineSeconds")
        return f"the job ran longer than activeDeadlineSeconds ({limit}), suspended time excluded"

    async def _finish(self, phase: Phase, reason: str, message: str) -> None:
        self._abort()
        self.set_phase(phase, reason, message)
        self.writer.start()
        await self.writer.flush()  # through API outages: the ending is never lost
        await self._save_profile()
        await self.event(reason, message, warning=phase is not Phase.SUCCEEDED)
        elapsed = time.monotonic() - self.started_at
        log.info(
            "%s: %s (%s) after %d API writes (%d status writes in %.1f s): %s",
            self.ref.name, phase, reason, self.kube.writes, self.writer.writes, elapsed, message,
        )  # fmt: skip
        await self._after_finish()

    async def _after_finish(self) -> None:
        """Clean up per the policy, then wait out ttlSecondsAfterFinished and delete the job."""
        if self.workers is not None:
            self.workers.disconnect_all("the job finished")
        policy = CleanupPolicy(self.spec.get("cleanupPolicy", CleanupPolicy.DELETE_WORKERS))
        if policy is CleanupPolicy.DELETE_WORKERS or (
            policy is CleanupPolicy.DELETE_WORKERS_ON_SUCCESS
            and self.status.phase is Phase.SUCCEEDED
        ):
            await self.children.delete()
        ttl = self.spec.get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        finished = self.status.completion_time
        end = parse_timestamp(finished) if finished else self._now()
        while (left := (end + timedelta(seconds=int(ttl)) - self._now()).total_seconds()) > 0:
            await self._sleep(left)
        with contextlib.suppress(KubeError):
            await self.kube.delete(path("BndlJob", self.ref.namespace, self.ref.name))

    async def _stopped(self) -> None:
        """Deleted: cancel what runs and say Cancelled. The operator exiting: detach."""
        if not self._deleted():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.writer.flush(), 5.0)  # progress, phase unchanged
            self._detach()
            return
        running = self.scheduler.counts().running if self.scheduler is not None else 0
        self._abort()
        if not self.status.phase.finished:
            message = f"the job was deleted; {running} running tasks were cancelled"
            self.set_phase(Phase.CANCELLED, Reason.DELETED, message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.writer.flush(), 10.0)
            await self.event("Cancelled", message)


def _check_for_kubernetes(plan: JobPlan) -> None:
    if plan.workers.replicas < 1:
        raise ManifestError(
            "spec.workers.replicas", "must be at least 1 on Kubernetes (a job needs workers)"
        )


def _error_of(task: Task) -> BaseException | None:
    try:
        return task.exception()
    except BaseException:
        return None


def _carry_over(plan: JobPlan, old: Job) -> Job:
    """A fresh job for ``plan`` in which the sinks that succeeded in ``old`` are done, with
    their results (which came back to the operator; other results stayed on the workers, which a
    suspension scales away)."""
    new = build_job(None, plan, results="sinks", keep_all=True)
    results = {t.id: t for t in old.tasks if t.succeeded and not t.dependents}
    for task in new.tasks:
        done = results.get(task.id)
        if done is not None and not task.dependents:
            try:
                value = done.result()
            except Exception:  # a result left on a worker (adopted): it runs again
                continue
            task.mark_done(value)
    return new
