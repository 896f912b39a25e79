"""The BndlJob's status as plain data: phases, reasons, conditions, counts, results, diagnosis.

The runner changes a :class:`JobStatus` as things happen; :meth:`JobStatus.body` is what gets
patched onto ``.status``. Its size is bounded whatever the job's size: counts, not per-task maps,
and results only up to :data:`RESULTS_CAP` bytes. :func:`diagnose_pods` says why worker pods are not
Ready, in the words a user can act on. Nothing here reads a clock or talks to the API server.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bndl.execute.core import Counts

RESULTS_CAP = 16 * 1024
"""Bytes of JSON results kept in the status (results of sink tasks first)."""
MESSAGE_CAP = 4000
"""Characters of a status or condition message."""


class Phase(enum.StrEnum):
    PENDING = "Pending"
    AWAITING_WORKERS = "AwaitingWorkers"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    SUSPENDED = "Suspended"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


class Reason(enum.StrEnum):
    """Machine-readable reasons of phases and conditions."""

    CREATED = "Created"
    INVALID_SPEC = "InvalidSpec"
    ACCEPTED = "Accepted"
    AWAITING_WORKERS = "AwaitingWorkers"
    WORKERS_READY = "WorkersReady"
    WORKERS_NOT_READY = "WorkersNotReady"
    PARTIAL_START = "PartialStart"
    DISPATCHING = "Dispatching"
    SUCCEEDED = "Succeeded"
    TASK_FAILED = "TaskFailed"
    WORKER_KILLED_BY_TASK = "WorkerKilledByTask"
    SCHEDULING_FAILED = "SchedulingFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    DELETED = "Deleted"
    OPERATOR_ERROR = "OperatorError"
    CHILD_CONFLICT = "ChildConflict"
    API_ERROR = "APIError"
    TRANSIENT_API_ERROR = "TransientAPIError"
    RECONCILED = "Reconciled"
    ADOPTED = "Adopted"


class ConditionType(enum.StrEnum):
    ACCEPTED = "Accepted"
    WORKERS_READY = "WorkersReady"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"
    RECONCILED = "Reconciled"


def timestamp(when: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _cap(message: str) -> str:
    return message if len(message) <= MESSAGE_CAP else message[: MESSAGE_CAP - 3] + "..."


@dataclass
class JobStatus:
    """Everything the operator reports on one BndlJob."""

    generation: int = 0
    phase: Phase = Phase.PENDING
    reason: str = Reason.CREATED
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    workers_desired: int = 0
    workers_ready: int = 0
    tasks_total: int = 0
    counts: Counts | None = None
    failed_tasks: int = 0
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    results_omitted: int = 0
    results_config_map: dict[str, Any] = field(default_factory=dict)
    """``{name, results, omitted}`` of the ConfigMap holding every sink result
    (:mod:`bndl.k8s.results`), when the status could not."""
    failed_task: dict[str, Any] = field(default_factory=dict)
    """``{id, output}``: the task that failed the job and the end of what it printed (its worker
    pod may be gone when someone looks)."""
    selector: str = ""
    base: dict[str, int] = field(default_factory=dict)
    """Counts of earlier operator incarnations (read back at resume), added to this one's."""
    checkpoint: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resume(cls, status: Mapping[str, Any], generation: int) -> JobStatus:
        """The status as a previous run of the operator left it (conditions and times kept)."""
        out = cls(generation=generation)
        try:
            out.phase = Phase(status.get("phase", Phase.PENDING))
        except ValueError:
            out.phase = Phase.PENDING
        out.reason = str(status.get("reason", Reason.CREATED))
        out.message = str(status.get("message", ""))
        out.start_time = status.get("startTime")
        out.completion_time = status.get("completionTime")
        for c in status.get("conditions") or []:
            if isinstance(c, Mapping) and "type" in c:
                out.conditions[str(c["type"])] = dict(c)
        tasks = status.get("tasks") or {}
        for key in _CARRIED:
            value = tasks.get(key)
            if isinstance(value, int) and value > 0:
                out.base[key] = value
        failed = tasks.get("failed")
        out.failed_tasks = failed if isinstance(failed, int) and out.phase.finished else 0
        results = status.get("results")
        if isinstance(results, Mapping):
            out.results = dict(results)
        omitted = status.get("resultsOmitted")
        out.results_omitted = omitted if isinstance(omitted, int) else 0
        for key, attr in (
            ("resultsConfigMap", "results_config_map"),
            ("failedTask", "failed_task"),
        ):
            value = status.get(key)
            if isinstance(value, Mapping):
                setattr(out, attr, dict(value))
        checkpoint = status.get("checkpoint")
        if isinstance(checkpoint, Mapping):
            out.checkpoint = dict(checkpoint)
        return out

    def set_phase(self, phase: Phase, reason: str, message: str, now: datetime) -> bool:
        """Enter ``phase`` and set the conditions that go with it; False (nothing changed) when
        the job has finished already: finished phases are terminal."""
        if self.phase.finished:
            return False
        self.phase = phase
        self.reason = reason
        self.message = _cap(message)
        at = timestamp(now)
        if phase is Phase.RUNNING and self.start_time is None:
            self.start_time = at
        if phase.finished and self.completion_time is None:
            self.completion_time = at
        running = phase is Phase.RUNNING
        self.condition(ConditionType.RUNNING, running, reason, message, now)
        self.condition(ConditionType.SUSPENDED, phase is Phase.SUSPENDED, reason, message, now)
        if phase.finished:
            self.condition(ConditionType.COMPLETE, phase is Phase.SUCCEEDED, reason, message, now)
            self.condition(ConditionType.FAILED, phase is Phase.FAILED, reason, message, now)
        return True

    def restart_clock(self, now: datetime) -> None:
        """The job (re)starts now: ``activeDeadlineSeconds`` counts from here (not while
        suspended, as a batch Job resets its start time when it resumes)."""
        self.start_time = timestamp(now)

    def condition(
        self, kind: ConditionType, status: bool, reason: str, message: str, now: datetime
    ) -> None:
        """Set a standard condition; its lastTransitionTime moves only when its status does."""
        value = "True" if status else "False"
        old = self.conditions.get(kind)
        if old is None and not status and kind in (ConditionType.RUNNING, ConditionType.SUSPENDED):
            return  # a condition that never held is not worth a False entry
        changed = old is None or old.get("status") != value
        self.conditions[kind] = {
            "type": str(kind),
            "status": value,
            "observedGeneration": self.generation,
            "lastTransitionTime": timestamp(now) if changed else old["lastTransitionTime"],  # type: ignore[index]
            "reason": str(reason),
            "message": _cap(message),
        }

    def set_workers(self, ready: int, desired: int) -> None:
        self.workers_ready = ready
        self.workers_desired = desired

    def body(self) -> dict[str, Any]:
        """The ``.status`` to write (a complete replacement of the fields the operator owns)."""
        c = self.counts
        succeeded = c.succeeded if c else 0
        running = c.running if c else 0
        tasks = {
            "total": self.tasks_total,
            "pending": max(0, self.tasks_total - succeeded - running - self.failed_tasks),
            "running": running,
            "succeeded": succeeded,
            "failed": self.failed_tasks,
        }
        for key, attr in _CARRIED.items():
            tasks[key] = self.base.get(key, 0) + (int(getattr(c, attr, 0)) if c else 0)
        out: dict[str, Any] = {
            "phase": str(self.phase),
            "reason": str(self.reason),
            "message": self.message,
            "observedGeneration": self.generation,
            "workers": {"desired": self.workers_desired, "ready": self.workers_ready},
            "workersSummary": f"{self.workers_ready}/{self.workers_desired}",
            "tasks": tasks,
            "tasksSummary": f"{succeeded}/{self.tasks_total}",
            "conditions": list(self.conditions.values()),
            "startTime": self.start_time,
            "completionTime": self.completion_time,
        }
        if self.results:
            out["results"] = dict(self.results)
        if self.results_omitted:
            out["resultsOmitted"] = self.results_omitted
        if self.results_config_map:
            out["resultsConfigMap"] = dict(self.results_config_map)
        if self.failed_task:
            out["failedTask"] = dict(self.failed_task)
        if self.selector:
            out["selector"] = self.selector
        if self.checkpoint:
            out["checkpoint"] = dict(self.checkpoint)
        return out


_CARRIED = {
    "retried": "retried",
    "recomputed": "recomputed",
    "lostRuns": "lost_runs",
    "workerLosses": "worker_losses",
    "adopted": "adopted",
    "reattached": "reattached",
}
"""Status counts (and the engine's Counts fields) that add up across operator incarnations."""


def small_results(
    results: Iterable[tuple[str, Any]], sinks: Iterable[str], cap: int = RESULTS_CAP
) -> tuple[dict[str, Any], int]:
    """Results that fit in ``cap`` bytes of JSON, sinks (tasks nothing depends on) first.

    Returns them and how many were left out. A value JSON cannot carry is shown as its repr.
    """
    items = list(results)
    first = set(sinks)
    ordered = [kv for kv in items if kv[0] in first] + [kv for kv in items if kv[0] not in first]
    out: dict[str, Any] = {}
    size = 2
    omitted = 0
    for key, value in ordered:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
            text = json.dumps(value)
        cost = len(key) + len(text) + 6
        if size + cost > cap:
            omitted += 1
            continue
        out[key] = value
        size += cost
    return out, omitted


# ----------------------------------------------------------------------------- pod diagnosis

STUCK_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready, with an IP, and not being deleted."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def why_not_ready(pod: Mapping[str, Any]) -> str:
    """Why one pod is not Ready: the reason Kubernetes gives, with its message."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"{c.get('reason') or 'Unschedulable'}: {c.get('message', '')}".rstrip(": ")
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    for cs in statuses:
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if last:
            restarts = cs.get("restartCount", 0)
            return (
                f"container {cs.get('name')} exited with {last.get('reason', 'an error')} "
                f"(code {last.get('exitCode')}, {restarts} restarts)"
            )
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return f"not ready (phase {status.get('phase', 'Unknown')})"


def diagnose_pods(pods: Sequence[Mapping[str, Any]], desired: int) -> str:
    """One message naming every worker pod that is not Ready and why."""
    lines = []
    stuck = sorted(
        (p for p in pods if not pod_ready(p)), key=lambda p: p.get("metadata", {}).get("name", "")
    )
    for p in stuck:
        lines.append(f"pod {p['metadata']['name']}: {why_not_ready(p)}")
    missing = desired - len(pods)
    if missing > 0:
        lines.append(
            f"{missing} of {desired} pods do not exist (see the StatefulSet's events: quota, "
            "admission or Pod Security rejections)"
        )
    return "; ".join(lines) if lines else "all pods are Ready"


def termination_cause(pod: Mapping[str, Any], container: str = "worker") -> str | None:
    """Why the container last died, as Kubernetes tells it: ``OOMKilled (exit code 137)``,
    ``Error (exit code 3)``, ``killed by signal 9``; None when it never terminated."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        for state in (
            (cs.get("state") or {}).get("terminated"),
            (cs.get("lastState") or {}).get("terminated"),
        ):
            if state:
                reason = state.get("reason") or "terminated"
                if state.get("signal"):
                    return f"{reason} (killed by signal {state['signal']})"
                return f"{reason} (exit code {state.get('exitCode')})"
    return None


def restarts(pod: Mapping[str, Any], container: str = "worker") -> int:
    """How often the container was restarted."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return int(cs.get("restartCount") or 0)
    return 0
