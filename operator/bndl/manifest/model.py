"""The plan of a job: what a valid BndlJob manifest means, as plain data.

Everything downstream (the scheduler, `bndl run`, the operator) works from a ``JobPlan`` and never
re-reads the YAML: fan-outs are expanded, ``fromTask`` markers are ``FromTask``/``FromTasks``
objects, implied dependencies are explicit and defaults are filled in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP = "bndl.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BndlJob"
PLURAL = "bndljobs"


class CleanupPolicy(enum.StrEnum):
    """What happens to a finished job's workers (see ``spec.cleanupPolicy`` in the CRD)."""

    DELETE_WORKERS = "DeleteWorkers"
    DELETE_WORKERS_ON_SUCCESS = "DeleteWorkersOnSuccess"
    KEEP_WORKERS = "KeepWorkers"


@dataclass(frozen=True, slots=True)
class Preference:
    """A weighted set of node labels a task would like its worker's node to carry."""

    weight: int
    """1 to 100; the preferences a worker matches add up."""
    labels: Mapping[str, str]
    """All of these labels must be on the node for the preference to count."""


@dataclass(frozen=True, slots=True)
class Locality:
    """Where a task may run (``required``) and where it should (``preferred``)."""

    required: Mapping[str, str] = field(default_factory=dict)
    """Labels a worker's node must carry; workers without them are forbidden for the task."""
    preferred: tuple[Preference, ...] = ()
    """Weighted preferences among the allowed workers."""

    def __bool__(self) -> bool:
        return bool(self.required or self.preferred)


@dataclass(slots=True)
class TaskSpec:
    """One task of the plan, after fan-out expansion."""

    id: str
    """Unique id; ``<entry id>-<index>`` for tasks of a fan-out."""
    call: str
    """``package.module:function``; resolve with ``bndl.manifest.resolve_call``."""
    args: list[Any] = field(default_factory=list)
    """Positional arguments; may contain ``FromTask``/``FromTasks`` markers."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments; may contain markers."""
    depends_on: frozenset[str] = frozenset()
    """Every task that must succeed first: ``dependsOn`` plus those the markers name."""
    priority: int = 0
    """Higher runs first among ready tasks."""
    group: str | None = None
    """Free-form grouping label."""
    locality: Locality = field(default_factory=Locality)
    """Node-label constraints and preferences."""
    attempts: int | None = None
    """Per-task override of ``JobPlan.attempts`` (None: use the job's)."""
    max_worker_losses: int | None = None
    """Per-task override of ``JobPlan.max_worker_losses`` (None: use the job's)."""
    origin: str = ""
    """Id of the manifest entry this task came from (equals ``id`` unless fanned out)."""
    index: int | None = None
    """Position in its fan-out, or None."""
    item: Any = None
    """The fan-out item this task was made for, or None."""


@dataclass(frozen=True, slots=True)
class WorkersSpec:
    """The worker pods (Kubernetes mode; ``bndl run`` starts local processes instead)."""

    replicas: int = 1
    port: int = 8470
    image: str | None = None
    template: Mapping[str, Any] | None = None
    """The PodTemplateSpec as written, or None."""


@dataclass(frozen=True, slots=True)
class AwaitWorkers:
    """How many workers to wait for and for how long."""

    count: int | None = None
    """None: all of ``WorkersSpec.replicas``."""
    minimum: int | None = None
    """Start with at least this many after ``connect_timeout`` (None: same as count)."""
    connect_timeout: float = 300.0
    """Seconds."""
    stable_timeout: float = 60.0
    """Seconds."""


@dataclass(frozen=True, slots=True)
class CodeSource:
    """Where task code comes from."""

    config_map: str | None = None
    """ConfigMap mounted into the workers at ``mount_path``; None: the code is in the image."""
    mount_path: str = "/opt/bndl/code"
    python_path: tuple[str, ...] = ()
    """Directories prepended to sys.path on workers, as written (may be relative)."""


@dataclass(frozen=True, slots=True)
class Profiling:
    """Which profilers run on the workers during the job."""

    cpu: bool = False
    memory: bool = False
    top: int = 20


@dataclass(slots=True)
class JobPlan:
    """A validated BndlJob: settings, and tasks in an order compatible with their dependencies."""

    name: str
    namespace: str | None
    tasks: list[TaskSpec]
    concurrency: int = 1
    attempts: int = 1
    order_results: bool = True
    max_worker_losses: int = 3
    """Workers lost while one task ran before that task fails the job (WorkerKilledByTask)."""
    workers: WorkersSpec = field(default_factory=WorkersSpec)
    await_workers: AwaitWorkers = field(default_factory=AwaitWorkers)
    active_deadline_seconds: int | None = None
    suspend: bool = False
    ttl_seconds_after_finished: int | None = None
    cleanup_policy: CleanupPolicy = CleanupPolicy.DELETE_WORKERS
    code: CodeSource = field(default_factory=CodeSource)
    profiling: Profiling = field(default_factory=Profiling)
    source: Path | None = None
    """The manifest file the plan was read from, if any."""

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id (KeyError if none)."""
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def local_python_path(self) -> list[str]:
        """``code.pythonPath`` for ``bndl run``: relative entries against the manifest's folder."""
        base = self.source.parent if self.source is not None else Path.cwd()
        return [str((base / p).resolve()) for p in self.code.python_path]
