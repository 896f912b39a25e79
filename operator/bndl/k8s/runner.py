"""One BndlJob from creation to its end: the body of the kopf daemon that runs the job.

The runner is level-triggered: it sleeps on one wake-up event (pods changed, the spec changed, the
scheduler finished, the job was deleted) and then looks at the whole state again. Steps: plan the
job (an invalid one fails with ``InvalidSpec``), create its children, wait for Ready worker pods
(``WorkersNotReady`` with the stuck pods and why on timeout), run the engine's
:class:`~bndl.execute.scheduler.Scheduler` on this event loop with one :class:`HttpWorker` per
Ready pod, and write a coalesced status. Pods that stop being Ready are lost workers; pods that
become Ready join. ``suspend`` cancels what runs, keeps the results the operator already holds and
scales the workers to zero; resuming runs only what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from bndl.driver import AttachedLoop, HttpWorker
from bndl.execute.core import SchedulingError
from bndl.execute.job import Job, Task
from bndl.execute.scheduler import Scheduler, root_exc
from bndl.jobs import build_job
from bndl.k8s import builders
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.settings import OperatorSettings
from bndl.k8s.status import (
    ConditionType,
    JobStatus,
    Phase,
    Reason,
    diagnose_pods,
    parse_timestamp,
    pod_ready,
    small_results,
)
from bndl.manifest import CleanupPolicy, JobPlan, ManifestError, plan_job
from bndl.wire import WorkerClient

log = logging.getLogger(__name__)

# Longest sleep of the runner's loop: its heartbeat for the liveness probe.
BEAT = 5.0
# A retry storm: this many retried runs within STORM_WINDOW seconds make one summarised event.
STORM_RETRIES = 10
STORM_WINDOW = 60.0
# Least seconds between two attempts to let a lost worker with a Ready pod join again.
REJOIN_PAUSE = 2.0


class Stop(Exception):
    """The job was deleted, or the operator is exiting: leave at once."""


class JobRunner:
    """Runs one BndlJob. ``body`` is kopf's live view of the object (updated as it changes)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        kube: Kube,
        session: aiohttp.ClientSession,
        settings: OperatorSettings,
        is_stopped: Callable[[], bool],
        deleted: Callable[[], bool],
    ) -> None:
        self.body = body
        self.ref = JobRef.of(body)
        self.kube = kube
        self.session = session
        self.settings = settings
        self._is_stopped = is_stopped
        self._deleted = deleted
        meta = body["metadata"]
        self.status = JobStatus.resume(body.get("status") or {}, int(meta.get("generation", 0)))
        self.wake = asyncio.Event()
        self.beat = time.monotonic()
        self.plan: JobPlan | None = None
        self.job: Job | None = None
        self.scheduler: Scheduler | None = None
        self._run_no = 0
        self._token = b""
        self._pods: dict[str, dict[str, Any]] = {}
        self._workers: dict[str, tuple[str, HttpWorker]] = {}  # pod name -> (uid, worker)
        self._node_labels: dict[str, dict[str, str]] = {}
        self._loop: AttachedLoop | None = None
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._job_error: BaseException | None = None
        self._job_done = False
        self._retries_seen = 0
        self._seen_losses = (0, 0)
        self._rejoined: dict[str, float] = {}
        self._storm_start = 0.0
        self._storm_retries = 0
        self.first_dispatch: float | None = None
        self.ready_at: float | None = None

    # ------------------------------------------------------------------------------ helpers

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def suspended(self) -> bool:
        return bool(self.spec.get("suspend", False))

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
        """A Kubernetes Event on the BndlJob (best effort)."""
        now = self.status_time()
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.ref.base}.", "namespace": self.ref.namespace},
            "involvedObject": {
                "apiVersion": "bndl.io/v1alpha1",
                "kind": "BndlJob",
                "name": self.ref.name,
                "namespace": self.ref.namespace,
                "uid": self.ref.uid,
            },
            "reason": reason,
            "message": message[:1000],
            "type": "Warning" if warning else "Normal",
            "source": {"component": builders.MANAGER},
            "reportingComponent": builders.MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.request("POST", path("Event", self.ref.namespace), body=obj)
        except KubeError as e:
            log.warning("%s: event %s not posted: %s", self.ref.name, reason, e)

    def status_time(self) -> str:
        return self._now().strftime("%Y-%m-%dT%H:%M:%SZ")

    # ------------------------------------------------------------------------------- status

    def _refresh_counts(self) -> None:
        if self.scheduler is not None:
            self.status.counts = self.scheduler.counts()
        self.status.set_workers(len(self._workers), self._desired())

    def _desired(self) -> int:
        if self.plan is None:
            return 0
        return 0 if self.suspended else self.plan.workers.replicas

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def _status_writer(self) -> None:
        """Patch the status when it changed, at most once per ``status_interval``."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.write_status()
            await asyncio.sleep(self.settings.status_interval)  # the rate limit, not a wait

    async def write_status(self) -> None:
        self.status.generation = int(self.body["metadata"].get("generation", 0))
        self._refresh_counts()
        try:
            await self.kube.patch(
                path("BndlJob", self.ref.namespace, self.ref.name, "status"),
                {"status": self.status.body()},
            )
        except KubeError as e:
            if e.status == 404:
                return  # deleted meanwhile
            log.warning("%s: status not written: %s", self.ref.name, e)

    async def set_phase(self, phase: Phase, reason: str, message: str, *, now: bool = True) -> None:
        self.status.generation = int(self.body["metadata"].get("generation", 0))
        self.status.set_phase(phase, reason, message, self._now())
        if now:
            await self.write_status()
        else:
            self.mark_dirty()

    # ----------------------------------------------------------------------------- the job

    async def run(self) -> None:
        """The whole life of the job; returns when it is over (or deleted, or on exit)."""
        try:
            await self._run()
        except Stop:
            await self._stopped()
        except asyncio.CancelledError:
            self._abort()
            raise
        except Exception as e:  # a bug must fail this job, never the operator or other jobs
            log.exception("%s: the operator failed running the job", self.ref.name)
            self._abort()
            with contextlib.suppress(Exception):
                await self.set_phase(
                    Phase.FAILED, Reason.OPERATOR_ERROR, f"{type(e).__name__}: {e}"
                )
        finally:
            for task in self._tasks:
                task.cancel()
            self._tasks.clear()

    async def _run(self) -> None:
        if self.status.phase.finished:
            await self._after_finish()
            return
        try:
            self.plan = plan_job(self.body)
            _check_for_kubernetes(self.plan)
        except ManifestError as e:
            self.status.condition(
                ConditionType.ACCEPTED, False, Reason.INVALID_SPEC, str(e), self._now()
            )
            await self.set_phase(Phase.FAILED, Reason.INVALID_SPEC, f"invalid spec: {e}")
            await self.event(Reason.INVALID_SPEC, str(e), warning=True)
            await self._after_finish()
            return
        self.status.tasks_total = len(self.plan.tasks)
        self.status.condition(
            ConditionType.ACCEPTED,
            True,
            Reason.ACCEPTED,
            f"{len(self.plan.tasks)} tasks",
            self._now(),
        )
        self.job = build_job(None, self.plan)
        await self._create_children()
        self._loop = AttachedLoop(self.session)
        self._tasks.append(asyncio.create_task(self._watch_pods(), name=f"pods-{self.ref.name}"))
        self._tasks.append(
            asyncio.create_task(self._status_writer(), name=f"status-{self.ref.name}")
        )
        while True:
            self._check_stop()
            if self._deadline_passed():
                await self._finish(Phase.FAILED, Reason.DEADLINE_EXCEEDED, self._deadline_message())
                return
            if self.suspended:
                await self._suspend()
                continue
            started = await self._await_workers()
            if started is None:
                continue
            if not started:
                return
            if await self._execute():
                return

    async def _create_children(self) -> None:
        assert self.plan is not None
        token = builders.new_token()
        objs = builders.children(
            self.ref, self.plan, self.settings.build, token, suspended=self.suspended
        )
        for obj in objs:
            created = await self.kube.create(obj)
            if obj["kind"] == "Secret":
                self._token = builders.token_of(created)
        await self.event("Created", f"created the workers' StatefulSet {self.ref.workers}")

    # ------------------------------------------------------------------------ worker pods

    async def _watch_pods(self) -> None:
        """Keep ``_pods`` equal to the job's pods (list, then watch; relist when it breaks)."""
        url = path("Pod", self.ref.namespace)
        params = {
            "labelSelector": ",".join(f"{k}={v}" for k, v in builders.selector(self.ref).items())
        }
        delay = 0.5
        while True:
            try:
                listing = await self.kube.get(url, params)
                self._pods = {p["metadata"]["name"]: p for p in listing.get("items", [])}
                await self._sync_workers()
                version = listing["metadata"]["resourceVersion"]
                while True:
                    async for kind, obj in self.kube.watch(url, params, version):
                        if kind == "ERROR":
                            raise KubeError(int(obj.get("code", 0)), str(obj.get("message")))
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        if kind == "DELETED":
                            self._pods.pop(name, None)
                        else:
                            self._pods[name] = obj
                        await self._sync_workers()
                    delay = 0.5
            except KubeError as e:
                log.debug("%s: pod watch restarts: %s", self.ref.name, e)
                await asyncio.sleep(delay)  # back off before listing again
                delay = min(delay * 2, 10.0)

    async def _sync_workers(self) -> None:
        """Make the workers match the Ready pods: lose the gone, add the new (with node labels)."""
        ready = {n: p for n, p in self._pods.items() if pod_ready(p)}
        for name, (uid, worker) in list(self._workers.items()):
            pod = ready.get(name)
            if pod is None or pod["metadata"]["uid"] != uid:
                del self._workers[name]
                worker.disconnect("its pod is gone or not Ready")
                if self.scheduler is not None and self.job is not None:
                    held = sum(
                        1
                        for t in self.job.tasks
                        if t.succeeded and getattr(self.scheduler.holder_of(t), "name", "") == name
                    )
                    self.scheduler.lose_worker(name)
                    log.info("%s: worker %s lost, holding %d results", self.ref.name, name, held)
        for name, pod in ready.items():
            if name in self._workers:
                continue
            labels = await self._labels_of(pod.get("spec", {}).get("nodeName"))
            if name in self._workers or not pod_ready(self._pods.get(name, {})):
                continue  # changed while the node was read
            worker = self._worker(pod, labels)
            self._workers[name] = (pod["metadata"]["uid"], worker)
            self.ready_at = time.monotonic()  # the latest worker to join (dispatch latency)
            if self.scheduler is not None:
                self.scheduler.add_worker(worker)
                log.info("%s: worker %s joined", self.ref.name, name)
        self.mark_dirty()
        self.poke()

    def _worker(self, pod: Mapping[str, Any], labels: Mapping[str, str]) -> HttpWorker:
        assert self.plan is not None and self._loop is not None
        name = pod["metadata"]["name"]
        url = f"http://{pod['status']['podIP']}:{self.plan.workers.port}"
        client = WorkerClient(name, url, self._token, self.session)
        return HttpWorker(client, self._loop, labels)

    async def _labels_of(self, node: str | None) -> dict[str, str]:
        if not node:
            return {}
        if node not in self._node_labels:
            try:
                obj = await self.kube.get(path("Node", name=node))
            except KubeError as e:
                log.warning("%s: labels of node %s unknown: %s", self.ref.name, node, e)
                return {}
            self._node_labels[node] = dict(obj["metadata"].get("labels") or {})
        return self._node_labels[node]

    async def _scale(self, replicas: int) -> None:
        url = path("StatefulSet", self.ref.namespace, self.ref.workers)
        await self.kube.patch(url, {"spec": {"replicas": replicas}})

    # -------------------------------------------------------------------------- waiting

    async def _await_workers(self) -> bool | None:
        """True: enough workers; False: the job failed; None: suspended meanwhile."""
        assert self.plan is not None
        wait = self.plan.await_workers
        count = wait.count or self.plan.workers.replicas
        minimum = wait.minimum or count
        if len(self._workers) < count:
            await self.set_phase(
                Phase.AWAITING_WORKERS,
                Reason.AWAITING_WORKERS,
                f"waiting for {count} Ready worker pods",
            )
            self.status.condition(
                ConditionType.WORKERS_READY, False, Reason.AWAITING_WORKERS, "", self._now()
            )
        deadline = time.monotonic() + wait.connect_timeout
        while len(self._workers) < count:
            if self.suspended:
                return None
            if self._deadline_passed():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                if len(self._workers) >= minimum:
                    await self.event(
                        Reason.PARTIAL_START,
                        f"starting with {len(self._workers)} of {count} workers",
                    )
                    break
                stuck = diagnose_pods(list(self._pods.values()), self.plan.workers.replicas)
                message = (
                    f"{len(self._workers)} of {count} worker pods Ready after "
                    f"{wait.connect_timeout:g} s: {stuck}"
                )
                self.status.condition(
                    ConditionType.WORKERS_READY,
                    False,
                    Reason.WORKERS_NOT_READY,
                    message,
                    self._now(),
                )
                await self._finish(Phase.FAILED, Reason.WORKERS_NOT_READY, message)
                return False
            await self._sleep(left)
        self.status.condition(
            ConditionType.WORKERS_READY,
            True,
            Reason.WORKERS_READY,
            f"{len(self._workers)} worker pods Ready",
            self._now(),
        )
        return True

    # ------------------------------------------------------------------------- execution

    async def _execute(self) -> bool:
        """Run the scheduler until the job ends (True) or is suspended (False)."""
        assert self.plan is not None and self.job is not None
        self._run_no += 1
        self._job_error = None
        self._job_done = False
        workers = [w for _, w in self._workers.values()]
        self.scheduler = Scheduler(
            self.job.tasks,
            self._on_done,
            workers,
            self.plan.concurrency,
            self.plan.attempts,
            wait_for_workers=True,
            job_key=f"{self.ref.uid[:8]}-{self._run_no}",
        )
        self.job.counter = self.scheduler.counts
        todo = self.scheduler.counts().total - self.scheduler.counts().succeeded
        # Dispatch first, report after: the status and event writes are not on the way.
        self.scheduler.start()
        if self.first_dispatch is None and self.ready_at is not None:
            self.first_dispatch = time.monotonic()
            created = parse_timestamp(self.body["metadata"]["creationTimestamp"])
            log.info(
                "%s: first dispatch %.1f ms after the last worker was seen Ready, %.1f s after "
                "the job was created",
                self.ref.name,
                (self.first_dispatch - self.ready_at) * 1000,
                (self._now() - created).total_seconds(),
            )
        self.status.counts = self.scheduler.counts()
        resumed = self._run_no > 1
        await self.set_phase(
            Phase.RUNNING,
            Reason.RESUMED if resumed else Reason.DISPATCHING,
            f"running {len(self.job.tasks)} tasks on {len(workers)} workers",
        )
        await self.event(
            Reason.RESUMED if resumed else "Started",
            f"dispatching {todo} tasks to {len(workers)} workers",
        )
        while not self._job_done:
            await self._sleep(self._deadline_left())
            self._check_storm()
            self._rejoin_workers()
            if self._job_done:
                break
            if self._deadline_passed():
                self._abort()
                await self._finish(Phase.FAILED, Reason.DEADLINE_EXCEEDED, self._deadline_message())
                return True
            if self.suspended:
                self._abort()
                self.job = _carry_over(self.plan, self.job)
                self.scheduler = None
                return False
        await self._job_finished()
        return True

    def _on_done(self, item: Any) -> None:
        """The scheduler's consumer: a succeeded task, then an error (if any), then None."""
        if isinstance(item, BaseException):
            self._job_error = item
        elif item is None:
            self._job_done = True
            self.poke()
        self.mark_dirty()

    def _rejoin_workers(self) -> None:
        """Workers whose pods are Ready but whom the scheduler lost (a connection failed) join
        again, with a fresh client; at most once per turn of the loop."""
        if self.scheduler is None:
            return
        c = self.scheduler.counts()
        if (c.lost_runs, c.recomputed) != self._seen_losses:
            self._seen_losses = (c.lost_runs, c.recomputed)
            log.info("%s: %d lost runs, %d recomputed so far", self.ref.name, *self._seen_losses)
        live = {w.name for w in self.scheduler.workers}
        now = time.monotonic()
        for name, (uid, old) in list(self._workers.items()):
            if name not in live and now - self._rejoined.get(name, 0.0) > REJOIN_PAUSE:
                self._rejoined[name] = now
                pod = self._pods.get(name)
                if pod is None:
                    continue
                labels = old.labels
                worker = self._worker(pod, labels)
                self._workers[name] = (uid, worker)
                self.scheduler.add_worker(worker)
                log.info("%s: worker %s rejoined after a lost connection", self.ref.name, name)

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
            self._tasks.append(
                asyncio.create_task(
                    self.event(
                        "RetryStorm",
                        f"{self._storm_retries} task runs failed and were retried in the last "
                        f"{STORM_WINDOW:g} s ({retried} in all); see the workers' logs",
                        warning=True,
                    )
                )
            )

    def _abort(self) -> None:
        if self.scheduler is not None and not self.scheduler.finished:
            self.scheduler.abort(CancelledError("the job was stopped"))

    async def _job_finished(self) -> None:
        assert self.job is not None and self.plan is not None
        self._collect_results()
        self._refresh_counts()
        error = self._job_error
        if error is None:
            c = self.status.counts
            await self._finish(
                Phase.SUCCEEDED,
                Reason.SUCCEEDED,
                f"{len(self.job.tasks)} tasks succeeded"
                + (f" ({c.retried} retried, {c.recomputed} recomputed)" if c else ""),
            )
            return
        root = root_exc(error)
        if isinstance(root, SchedulingError):
            await self._finish(Phase.FAILED, Reason.SCHEDULING_FAILED, str(root))
            return
        failed = next((t for t in self.job.tasks if t.failed and _error_of(t) is error), None)
        if failed is None:
            failed = next((t for t in self.job.tasks if t.failed), None)
        self.status.failed_tasks = 1
        where = f"task {failed.id!r}" if failed is not None else "a task"
        await self._finish(
            Phase.FAILED, Reason.TASK_FAILED, f"{where} failed: {type(root).__name__}: {root}"
        )

    def _collect_results(self) -> None:
        assert self.job is not None
        done = [(str(t.id), t.result()) for t in self.job.tasks if t.succeeded]
        sinks = [str(t.id) for t in self.job.tasks if not t.dependents]
        self.status.results, self.status.results_omitted = small_results(done, sinks)

    # ----------------------------------------------------------------------- suspension

    async def _suspend(self) -> None:
        await self._scale(0)
        self.status.condition(
            ConditionType.WORKERS_READY, False, Reason.SUSPENDED, "suspended", self._now()
        )
        await self.set_phase(Phase.SUSPENDED, Reason.SUSPENDED, "suspended: workers scaled to 0")
        await self.event(
            Reason.SUSPENDED, "suspended: running tasks cancelled, workers scaled to 0"
        )
        while self.suspended:
            await self._sleep(None)
        assert self.plan is not None
        await self._scale(self.plan.workers.replicas)
        await self.event(Reason.RESUMED, f"resumed: scaling to {self.plan.workers.replicas}")

    # ----------------------------------------------------------------------------- endings

    def _deadline(self) -> datetime | None:
        seconds = self.spec.get("activeDeadlineSeconds")
        created = self.body["metadata"].get("creationTimestamp")
        if not seconds or not created:
            return None
        return parse_timestamp(created) + timedelta(seconds=int(seconds))

    def _deadline_left(self) -> float | None:
        deadline = self._deadline()
        return None if deadline is None else (deadline - self._now()).total_seconds()

    def _deadline_passed(self) -> bool:
        left = self._deadline_left()
        return left is not None and left <= 0

    def _deadline_message(self) -> str:
        limit = self.spec.get("activeDeadlineSeconds")
        return f"the job ran longer than activeDeadlineSeconds ({limit})"

    async def _finish(self, phase: Phase, reason: str, message: str) -> None:
        self._refresh_counts()
        await self.set_phase(phase, reason, message)
        await self.event(reason, message, warning=phase is not Phase.SUCCEEDED)
        log.info(
            "%s: %s (%s) after %d API writes: %s",
            self.ref.name,
            phase,
            reason,
            self.kube.writes,
            message,
        )
        await self._after_finish()

    async def _after_finish(self) -> None:
        """Clean up per the policy, then wait out ttlSecondsAfterFinished and delete the job."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._workers.clear()
        policy = CleanupPolicy(self.spec.get("cleanupPolicy", CleanupPolicy.DELETE_WORKERS))
        if policy is CleanupPolicy.DELETE_WORKERS or (
            policy is CleanupPolicy.DELETE_WORKERS_ON_SUCCESS
            and self.status.phase is Phase.SUCCEEDED
        ):
            await self._delete_children()
        ttl = self.spec.get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        finished = self.status.completion_time
        end = parse_timestamp(finished) if finished else self._now()
        while (left := (end + timedelta(seconds=int(ttl)) - self._now()).total_seconds()) > 0:
            await self._sleep(left)
        with contextlib.suppress(KubeError):
            await self.kube.delete(path("BndlJob", self.ref.namespace, self.ref.name))

    async def _delete_children(self) -> None:
        ns = self.ref.namespace
        for kind, name in (
            ("StatefulSet", self.ref.workers),
            ("NetworkPolicy", self.ref.workers),
            ("Service", self.ref.workers),
            ("Secret", self.ref.secret),
        ):
            try:
                await self.kube.delete(path(kind, ns, name))
            except KubeError as e:
                log.warning("%s: %s %s not deleted: %s", self.ref.name, kind, name, e)

    async def _stopped(self) -> None:
        """Deleted (or the operator exits): cancel what runs; a deleted job says Cancelled."""
        running = self.scheduler.counts().running if self.scheduler is not None else 0
        self._abort()
        if self._deleted() and not self.status.phase.finished:
            message = f"the job was deleted; {running} running tasks were cancelled"
            self._refresh_counts()
            await self.set_phase(Phase.CANCELLED, "Deleted", message)
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
    """A fresh job for ``plan`` in which what succeeded in ``old`` is done, with its results."""
    new = build_job(None, plan)
    results = {t.id: t for t in old.tasks if t.succeeded}
    for task in new.tasks:
        done = results.get(task.id)
        if done is not None:
            task.mark_done(done.result())
    return new
