"""Engine jobs from BndlJob plans: the bridge between ``bndl.manifest`` and ``bndl.execute``.

``bndl run`` and the operator both turn a :class:`~bndl.manifest.JobPlan` into a
:class:`~bndl.execute.job.Job` here: each planned task becomes a :class:`PlannedTask` that calls the
named function with its JSON arguments, ``fromTask`` markers become results of other tasks, and
node-label locality becomes the engine's per-worker locality.

What comes back to the driver is a choice of :func:`build_job`: every result (``bndl run``
prints them all), or only the results of sink tasks (the operator, whose memory must not grow
with the data of intermediate stages; their results stay on the workers, fetched on demand).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from bndl.execute.context import ExecutionContext
from bndl.execute.job import Job, ResultOf, RmiTask
from bndl.execute.workers import Worker
from bndl.manifest import JobPlan, Locality, NamedCall, TaskSpec, references, substitute

FORBIDDEN = -1.0


def locality_on(locality: Locality, labels: Mapping[str, str]) -> float:
    """-1 when ``labels`` miss a required label, else the summed weights of the preferences met."""
    for key, value in locality.required.items():
        if labels.get(key) != value:
            return FORBIDDEN
    return float(
        sum(
            p.weight
            for p in locality.preferred
            if all(labels.get(k) == v for k, v in p.labels.items())
        )
    )


class PlannedTask(RmiTask):
    """A task of a BndlJob: ``call`` with JSON arguments, placed by node labels.

    The function travels by name (:class:`NamedCall`), so the driver needs no task code.
    """

    def __init__(self, ctx: ExecutionContext | None, spec: TaskSpec) -> None:
        refs = {ref: ResultOf(ref) for ref in references((spec.args, spec.kwargs))}
        super().__init__(
            ctx,
            spec.id,
            NamedCall(spec.call),
            substitute(spec.args, refs),
            substitute(spec.kwargs, refs),
            priority=(-spec.priority, spec.index or 0),
            name=spec.id,
            desc=spec.call,
            group=spec.group,
        )
        self.spec = spec
        self.max_attempts = spec.attempts
        self.max_worker_losses = spec.max_worker_losses

    def locality(self, workers: Iterable[Worker]) -> Iterable[tuple[Worker, float]]:
        locality = self.spec.locality
        if not locality.required and not locality.preferred:
            return ()
        return [(w, locality_on(locality, getattr(w, "labels", {}))) for w in workers]


def build_job(
    ctx: ExecutionContext | None,
    plan: JobPlan,
    *,
    results: Literal["all", "sinks"] = "all",
    keep_all: bool = False,
) -> Job:
    """The engine job for ``plan``, its tasks in plan order with their dependencies wired.

    ``results="sinks"``: only tasks without dependents send their result to the driver; the
    others leave it on their worker (``task.result()`` fetches it from there). ``keep_all``:
    every worker keeps every result it computed until the job ends, sinks too, so that a
    driver that restarts can adopt them.
    """
    if results not in ("all", "sinks"):
        raise ValueError(f"results must be 'all' or 'sinks', not {results!r}")
    tasks: dict[str, PlannedTask] = {}
    for spec in plan.tasks:
        tasks[spec.id] = PlannedTask(ctx, spec)
    for spec in plan.tasks:
        task = tasks[spec.id]
        task.depends_on(*(tasks[d] for d in spec.depends_on))
    for task in tasks.values():
        if results == "sinks" and task.dependents:
            task.reply = False
        if keep_all:
            task.keep = True
    return Job(ctx, list(tasks.values()), name=plan.name)


def result_json(value: Any) -> Any:
    """``value`` if JSON can carry it, else its repr (results of ``bndl run`` are JSON lines)."""
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
