"""From a BndlJob manifest (YAML text, a file, or the object the API server hands the operator) to
a ``JobPlan``, reporting every problem at once.

Order of checks: JSON values only (no keys that are not strings, no NaN, dates or nesting deeper
than MAX_DEPTH: see ``jsonvalues``), sizes over the schema's limits (found without reading
through them), the document's header, the CRD schema (with defaults applied, unknown keys
reported), the number of tasks against ``max_tasks`` (counted from the entries, before any task
is made), then what a schema cannot say: the CRD's CEL rules again (the API server runs them, a
local file never met one), ids and references (at most MAX_DEPENDENCIES among tasks), locality,
importable functions, and cycles. Each step's cost is bounded by what the steps before it
accepted, so no document, however made, costs time or memory out of proportion to its text.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .calls import resolve_call
from .errors import ManifestError
from .expand import Expander, task_count
from .graph import CycleError, topological_order
from .jsonvalues import to_json_values
from .locality import check_locality
from .model import (
    API_VERSION,
    KIND,
    AwaitWorkers,
    CleanupPolicy,
    CodeSource,
    JobPlan,
    Profiling,
    WorkersSpec,
)
from .reading import read_manifest
from .schema import apply_defaults, crd_schema, schema_errors, size_errors

PathLike = str | os.PathLike[str]

CEL_RULES_CHECKED = frozenset(
    {
        "a task cannot depend on itself",
        "awaitWorkers.minimum cannot exceed awaitWorkers.count",
        "awaitWorkers.count cannot exceed workers.replicas",
    }
)
"""Messages of the CRD's CEL rules that ``validate_manifest`` checks too (a test keeps it whole)."""


MAX_TASKS_HINT = "raise the limit"
"""How ``plan_job``'s message on a job over ``max_tasks`` ends unless the caller says how."""


def validate_manifest(
    doc: Any,
    *,
    check_imports: bool = False,
    source: PathLike | None = None,
    max_tasks: int | None = None,
    max_tasks_hint: str = MAX_TASKS_HINT,
) -> list[ManifestError]:
    """Every problem of a manifest (empty if it is valid). See ``plan_job``."""
    return _build(doc, check_imports, source, _Limit(max_tasks, max_tasks_hint))[1]


def plan_job(
    doc: Any,
    *,
    check_imports: bool = False,
    source: PathLike | None = None,
    max_tasks: int | None = None,
    max_tasks_hint: str = MAX_TASKS_HINT,
) -> JobPlan:
    """The plan of a parsed manifest; raises ManifestError carrying every problem found.

    With ``check_imports``, each ``call`` is imported here (``spec.code.pythonPath`` entries are
    resolved against the folder of ``source``, else the working directory, while checking).

    With ``max_tasks``, a job that would expand to more tasks is refused at ``spec.tasks``
    before any task is made (the count comes from the entries' ``forEach`` sizes);
    ``max_tasks_hint`` ends the message with how to raise the limit, e.g. "raise the
    operator's --max-tasks".
    """
    plan, errors = _build(doc, check_imports, source, _Limit(max_tasks, max_tasks_hint))
    if errors or plan is None:
        raise ManifestError.collect(errors)
    return plan


def load_plan(
    path: PathLike,
    *,
    check_imports: bool = False,
    max_tasks: int | None = None,
    max_tasks_hint: str = MAX_TASKS_HINT,
) -> JobPlan:
    """``plan_job`` of a manifest file."""
    return plan_job(
        read_manifest(path),
        check_imports=check_imports,
        source=path,
        max_tasks=max_tasks,
        max_tasks_hint=max_tasks_hint,
    )


@dataclass(frozen=True, slots=True)
class _Limit:
    max_tasks: int | None
    hint: str

    def problem(self, raw_tasks: Sequence[Mapping[str, Any]]) -> ManifestError | None:
        if self.max_tasks is None:
            return None
        count = task_count(raw_tasks)
        if count <= self.max_tasks:
            return None
        return ManifestError(
            "spec.tasks",
            f"the job expands to {count:,} tasks, over the limit of {self.max_tasks:,} tasks: "
            f"split it into several jobs, or {self.hint}",
        )


@functools.cache
def _schema() -> dict[str, Any]:
    return crd_schema()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Copying a large manifest or stamping a million tasks makes millions of containers, and each
    700 of them start a cyclic collection that walks the young objects (and every so often all of
    them): with the collector paused, planning is about twice as fast. What planning makes has no
    cycles for it to find meanwhile."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@_gc_paused()
def _build(
    raw: Any, check_imports: bool, source: PathLike | None, limit: _Limit
) -> tuple[JobPlan | None, list[ManifestError]]:
    if not isinstance(raw, Mapping):
        return None, [ManifestError("", "a manifest must be a mapping (apiVersion, kind, ...)")]
    doc, errors = to_json_values(raw)
    if errors:
        return None, errors
    oversized = size_errors(doc)  # before the defaults are filled into 100,000 task entries
    if oversized:
        return None, [*_header(doc), *oversized]
    apply_defaults(doc, _schema())
    errors = list(_header(doc))
    errors.extend(schema_errors(doc))
    if errors:
        return None, errors
    spec = doc["spec"]
    too_big = limit.problem(spec["tasks"])
    if too_big is not None:
        return None, [too_big]
    errors.extend(_cel_rules(spec))
    errors.extend(_keywords(spec))
    for i, task in enumerate(spec["tasks"]):
        if "locality" in task:
            errors.extend(check_locality(task["locality"], f"spec.tasks[{i}].locality"))
    expander = Expander(spec["tasks"])
    expander.compile_all()
    errors.extend(expander.errors)
    if check_imports:
        errors.extend(_import_errors(spec, source))
    try:
        order = topological_order(list(expander.entries), expander.entry_deps())
    except CycleError as e:
        errors.append(_cycle_error(expander, e))
        return None, errors
    if errors:
        return None, errors
    return _plan(doc, list(expander.tasks(order)), source), []


def _cycle_error(expander: Expander, cycle: CycleError) -> ManifestError:
    return ManifestError(
        expander.entries[cycle.path[0]].path,
        f"dependency cycle: {' -> '.join(cycle.path)} ('->' means 'depends on'): "
        "remove one of these dependencies",
    )


def _header(doc: Mapping[str, Any]) -> Iterator[ManifestError]:
    if doc.get("apiVersion") != API_VERSION:
        yield ManifestError("apiVersion", f"must be {API_VERSION!r}, not {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        yield ManifestError("kind", f"must be {KIND!r}, not {doc.get('kind')!r}")
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        yield ManifestError("metadata.name", "required: give the job a name")
    elif not metadata["name"]:
        yield ManifestError("metadata.name", "must not be empty")


def _cel_rules(spec: Mapping[str, Any]) -> Iterator[ManifestError]:
    """The CRD's CEL rules (see CEL_RULES_CHECKED), for manifests that never met an API server."""
    for i, task in enumerate(spec["tasks"]):
        for j, dep in enumerate(task.get("dependsOn", [])):
            if dep == task["id"]:
                yield ManifestError(
                    f"spec.tasks[{i}].dependsOn[{j}]",
                    "a task cannot depend on itself: remove its own id from dependsOn",
                )
    wait = spec.get("awaitWorkers", {})
    if "minimum" in wait and "count" in wait and wait["minimum"] > wait["count"]:
        yield ManifestError(
            "spec.awaitWorkers.minimum",
            f"awaitWorkers.minimum ({wait['minimum']}) cannot exceed awaitWorkers.count "
            f"({wait['count']})",
        )
    replicas = spec.get("workers", {}).get("replicas")
    if "count" in wait and replicas is not None and wait["count"] > replicas:
        yield ManifestError(
            "spec.awaitWorkers.count",
            f"awaitWorkers.count ({wait['count']}) cannot exceed workers.replicas ({replicas})",
        )


def _keywords(spec: Mapping[str, Any]) -> Iterator[ManifestError]:
    for i, task in enumerate(spec["tasks"]):
        for key in task.get("kwargs", {}):
            if not key.isidentifier():  # keys are strings (see jsonvalues)
                yield ManifestError(
                    f"spec.tasks[{i}].kwargs.{key}",
                    f"keyword argument {key!r} is not a Python identifier: pass it in args instead",
                )


def _import_errors(spec: Mapping[str, Any], source: PathLike | None) -> list[ManifestError]:
    base = Path(source).parent if source is not None else Path.cwd()
    extra = [str((base / p).resolve()) for p in spec.get("code", {}).get("pythonPath", [])]
    saved = list(sys.path)
    sys.path[:0] = extra
    errors = []
    try:
        for i, task in enumerate(spec["tasks"]):
            try:
                resolve_call(task["call"], f"spec.tasks[{i}].call")
            except ManifestError as e:
                errors.append(e)
    finally:
        sys.path[:] = saved
    return errors


def _plan(doc: Mapping[str, Any], tasks: list[Any], source: PathLike | None) -> JobPlan:
    spec, metadata = doc["spec"], doc["metadata"]
    workers = spec.get("workers", {})
    wait = spec.get("awaitWorkers", {})
    code = spec.get("code", {})
    profiling = spec.get("profiling", {})
    return JobPlan(
        name=metadata["name"],
        namespace=metadata.get("namespace"),
        tasks=tasks,
        concurrency=spec["concurrency"],
        attempts=spec["attempts"],
        order_results=spec["orderResults"],
        max_worker_losses=spec["maxWorkerLosses"],
        workers=WorkersSpec(
            replicas=workers.get("replicas", 1),
            port=workers.get("port", 8470),
            image=workers.get("image"),
            template=workers.get("template"),
        ),
        await_workers=AwaitWorkers(
            count=wait.get("count"),
            minimum=wait.get("minimum"),
            connect_timeout=float(wait.get("connectTimeoutSeconds", 300)),
            stable_timeout=float(wait.get("stableTimeoutSeconds", 60)),
        ),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        suspend=spec["suspend"],
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
        cleanup_policy=CleanupPolicy(spec["cleanupPolicy"]),
        code=CodeSource(
            config_map=code.get("configMap"),
            mount_path=code.get("mountPath", "/opt/bndl/code"),
            python_path=tuple(code.get("pythonPath", ())),
        ),
        profiling=Profiling(
            cpu=profiling.get("cpu", False),
            memory=profiling.get("memory", False),
            top=profiling.get("top", 20),
        ),
        source=Path(source) if source is not None else None,
    )
