"""Property tests: random DAGs driven through random failures, losses and cancellations.

A small simulator plays the workers. Whatever happens, the core must keep dependency order,
emit each task at most once (exactly once when the job finishes), never exceed a worker's slots,
never charge more attempts or worker losses than allowed, never dispatch to a forbidden or dead
worker, and always end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bndl.execute.core import (
    Cancel,
    Cancelled,
    Decision,
    Dispatch,
    Emit,
    Failed,
    FailureKind,
    Finished,
    SchedulerCore,
    SchedulingError,
    TaskSpec,
    WorkerKilledByTask,
)
from tests.helpers.hypothesis_profiles import examples


@dataclass
class Scenario:
    deps: list[list[int]]
    workers: list[str]
    concurrency: int
    attempts: int
    forbidden: dict[int, set[str]]
    preferred: dict[int, dict[str, float]]
    done_before: set[int]
    max_worker_losses: int = 3
    choices: list[int] = field(default_factory=list)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 25))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=4)) if i else []) for i in range(n)]
    workers = [f"w{i}" for i in range(draw(st.integers(1, 4)))]
    forbidden: dict[int, set[str]] = {}
    preferred: dict[int, dict[str, float]] = {}
    for i in range(n):
        if draw(st.integers(0, 5)) == 0:
            forbidden[i] = draw(st.sets(st.sampled_from(workers), max_size=len(workers)))
        if draw(st.integers(0, 3)) == 0:
            w = draw(st.sampled_from(workers))
            if w not in forbidden.get(i, set()):
                preferred[i] = {w: draw(st.sampled_from([1.0, 3.0, 5.0]))}
    done_before = draw(st.sets(st.integers(0, n - 1), max_size=3))
    return Scenario(
        deps=deps,
        workers=workers,
        concurrency=draw(st.integers(1, 3)),
        attempts=draw(st.integers(1, 3)),
        forbidden=forbidden,
        preferred=preferred,
        done_before=done_before,
        max_worker_losses=draw(st.integers(1, 3)),
        choices=draw(st.lists(st.integers(0, 1000), min_size=20, max_size=150)),
    )


class Simulator:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        locality: dict[int, dict[str, float]] = {}
        for i, ws in sc.forbidden.items():
            locality.setdefault(i, {}).update({w: -1.0 for w in ws})
        for i, prefs in sc.preferred.items():
            locality.setdefault(i, {}).update(prefs)
        self.core = SchedulerCore(
            [TaskSpec(i, sc.deps[i]) for i in range(len(sc.deps))],
            sc.workers,
            concurrency=sc.concurrency,
            attempts=sc.attempts,
            locality=locality,
            succeeded=sc.done_before,
            max_worker_losses=sc.max_worker_losses,
        )
        self.live = set(sc.workers)
        self.running: dict[tuple[int, int], str] = {}
        self.available = {i: i in sc.done_before for i in range(len(sc.deps))}
        self.holder: dict[int, str | None] = dict.fromkeys(sc.done_before)
        self.emitted: list[int] = []
        self.errors = [0] * len(sc.deps)
        self.end: Decision | None = None

    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            assert self.end is None, f"decision {d} after the end {self.end}"
            if isinstance(d, Dispatch):
                assert d.worker in self.live, "dispatch to a dead worker"
                assert d.worker not in self.sc.forbidden.get(d.task, set()), "forbidden worker"
                for dep in self.sc.deps[d.task]:  # type: ignore[index]
                    assert self.available[dep], f"{d.task} dispatched before {dep}"
                assert all(t != d.task for t, _ in self.running), "task running twice"
                self.running[(d.task, d.run)] = d.worker  # type: ignore[index]
                load = sum(1 for w in self.running.values() if w == d.worker)
                assert load <= self.sc.concurrency, "slots exceeded"
            elif isinstance(d, Cancel):
                self.running.pop((d.task, d.run), None)  # type: ignore[arg-type]
            elif isinstance(d, Emit):
                self.emitted.append(d.task)  # type: ignore[arg-type]
            else:
                self.end = d

    def step(self, choice: int) -> None:
        if not self.running:
            return
        (task, run), worker = sorted(self.running.items())[choice % len(self.running)]
        kind = (choice // 7) % 10
        if kind < 5:  # success
            del self.running[(task, run)]
            self.available[task] = True
            self.holder[task] = worker
            self.apply(self.core.task_succeeded(task, run))
        elif kind < 7:  # the task's own error
            del self.running[(task, run)]
            self.errors[task] += 1
            self.apply(self.core.task_failed(task, run, ValueError(task)))
        elif kind == 7:  # the worker is lost, and may come back
            del self.running[(task, run)]
            self.live.discard(worker)
            self.running = {k: w for k, w in self.running.items() if w != worker}
            # Its outputs are gone, but the core learns that only from DependenciesFailed.
            if choice % 3 == 0:  # removed on purpose by the driver: nothing is charged
                self.apply(self.core.worker_lost(worker, charge=False))
            else:
                self.apply(self.core.task_failed(task, run, ConnectionError(), FailureKind.LOST))
            if self.end is None and choice % 2:
                self.live.add(worker)
                self.apply(self.core.worker_added(worker, self.locality_of(worker)))
        elif kind == 8:  # an output it needed was lost (or a stale report)
            deps = self.sc.deps[task]
            if not deps:
                return
            dep = deps[choice % len(deps)]
            del self.running[(task, run)]
            named = self.holder.get(dep) if choice % 3 else None
            if choice % 5 == 0:
                named = "stale-worker"
            elif named is None or named == self.holder.get(dep):
                self.available[dep] = False
            self.apply(self.core.dependencies_failed(task, run, {named: [dep]}))
        else:  # the run was cancelled on the worker's side
            del self.running[(task, run)]
            self.apply(self.core.task_failed(task, run, RuntimeError(), FailureKind.REQUEUE))

    def locality_of(self, worker: str) -> dict[int, float]:
        loc: dict[int, float] = {i: -1.0 for i, ws in self.sc.forbidden.items() if worker in ws}
        for i, prefs in self.sc.preferred.items():
            if worker in prefs:
                loc[i] = prefs[worker]
        return loc

    def finish(self) -> None:
        """After the random script: let everything succeed, so the job must end."""
        guard = 0
        while self.end is None and self.running:
            (task, run), worker = sorted(self.running.items())[0]
            del self.running[(task, run)]
            self.available[task] = True
            self.holder[task] = worker
            self.apply(self.core.task_succeeded(task, run))
            guard += 1
            assert guard < 10_000, "the job does not end"


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_under_random_events(sc: Scenario) -> None:
    sim = Simulator(sc)
    sim.apply(sim.core.start())
    for choice in sc.choices:
        if sim.end is not None:
            break
        sim.step(choice)
    sim.finish()

    assert sim.end is not None, "the job neither finished nor failed"
    assert len(sim.emitted) == len(set(sim.emitted)), "a task was emitted twice"
    if isinstance(sim.end, Finished):
        assert sorted(sim.emitted) == list(range(len(sc.deps)))
        assert all(e < sc.attempts for e in sim.errors)
    else:
        assert isinstance(sim.end, Failed | Cancelled)
        if isinstance(sim.end, Failed) and isinstance(sim.end.error, ValueError):
            task = sim.end.error.args[0]
            assert sim.errors[task] == sc.attempts, "failed before the attempts were used up"
        elif isinstance(sim.end, Failed) and isinstance(sim.end.error, WorkerKilledByTask):
            error = sim.end.error
            assert error.losses == sc.max_worker_losses == error.limit
            assert sim.core.worker_losses(error.task) == error.workers
        elif isinstance(sim.end, Failed):
            assert isinstance(sim.end.error, SchedulingError)
    for t, e in enumerate(sim.errors):
        assert e <= sc.attempts, f"task {t} ran after its attempts were used up"
        losses = len(sim.core.worker_losses(t))
        assert losses <= sc.max_worker_losses, f"task {t} ran after its worker losses"
        if isinstance(sim.end, Finished):
            assert losses < sc.max_worker_losses


@settings(max_examples=examples(200), deadline=None)
@given(scenarios(), st.integers(0, 30))
def test_cancel_at_any_point_ends_the_job_with_nothing_running(sc: Scenario, at: int) -> None:
    sim = Simulator(sc)
    sim.apply(sim.core.start())
    for choice in sc.choices[:at]:
        if sim.end is not None:
            break
        sim.step(choice)
    if sim.end is None:
        sim.apply(sim.core.cancel())
        assert isinstance(sim.end, Cancelled)
        assert not sim.running, "a run survived the cancel"
