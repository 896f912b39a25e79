"""The scheduler core: a pure state machine that decides which task runs where.

Events go in (a task succeeded, failed, lost its output; a worker came or went; cancel), decisions
come out (dispatch task T to worker W, cancel a run, emit a task to the consumer, the job finished
or failed). The core does no I/O, starts no threads and reads no clock, so every interleaving can
be replayed in a unit test, and the same core runs behind the thread-based shell of the Python API
and behind the asyncio shell of the Kubernetes operator.

Semantics follow the original ``bndl.execute`` scheduler with its known bugs fixed:

- exactly ``concurrency`` running tasks per worker, from the first task on; with ``ahead``,
  up to that many more are *queued* on each worker (dispatched, waiting for a slot there), so a
  worker never waits a round trip for its next task. Workers run their queue in dispatch order,
  so the ``concurrency`` oldest runs on a worker are the running ones. Queued runs are dispatched
  only once every worker's slots are full, and a worker with a free slot and nothing to pick
  takes (steals) the newest queued run of another worker: the core asks that worker to take
  the run back (:class:`Withdraw`) and, once it did, dispatches it again; a run the worker
  started meanwhile goes on there, so stealing never runs a task twice. A queued run lost with
  its worker is never charged a worker loss;
- *pipelining* (with ``ahead`` and ``concurrency`` 1): a task whose missing inputs are all being
  computed by runs already dispatched to one worker may be queued on that worker behind them
  (:attr:`TaskSpec.pipeline`), so a chain runs hop after hop on the worker without waiting a
  round trip through the driver. The worker runs its queue in order, so the inputs are there when
  the task starts; if one failed, the task reports ``DependenciesFailed`` and waits, uncharged,
  as any task whose input was lost. Pipelined runs are never stolen;
- a task that no live worker may run fails the job at once, naming the task;
- preferred locality never overrides a forbidden worker;
- a task that failed on a worker prefers another worker for its retry, and falls back to the same
  worker when there is no other (so ``attempts > 1`` works on a one-worker cluster);
- a task is emitted exactly once, on its first success; results are never "missing";
- lost workers and lost dependency outputs are never charged as attempts;
- but a task running on a worker that is lost is charged a *worker loss* (a task that kills its
  worker, by a crash, ``os._exit`` or running out of memory, would otherwise be re-run forever);
  at ``max_worker_losses`` the job fails with :class:`WorkerKilledByTask`. Losses the driver
  caused on purpose (a pod deleted or scaled away) are reported uncharged;
- many-to-many dependencies cost O(1) per edge (a counter per task, no per-edge sets).

Runs are numbered per task: every dispatch carries a run number and every event names the run it
is about, so late events from an abandoned run (a lost worker that answers after all) are ignored.

A new driver can adopt what an earlier one left on the workers (an operator that restarted):
``held`` tasks start succeeded with their output on the named worker, ``running`` tasks start
running there (``start()`` dispatches them as run 1, so the shell attaches to the run instead of
starting it). Either is adopted only when its worker is live; otherwise it simply runs again.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bndl.execute.decisions import (
    Cancel,
    Cancelled,
    Counts,
    Decision,
    Dispatch,
    Emit,
    Failed,
    FailureKind,
    Finished,
    SchedulingError,
    TaskId,
    TaskIds,
    TaskSpec,
    Withdraw,
    WorkerKilledByTask,
    WorkerName,
)

__all__ = [
    "DATA_LOCALITY",
    "DATA_LOCALITY_MAX_DEPS",
    "MAX_DEPENDENCY_FAILURES",
    "PIPELINE_MAX_EDGES",
    "Cancel",
    "Cancelled",
    "Counts",
    "Decision",
    "Dispatch",
    "Emit",
    "Failed",
    "FailureKind",
    "Finished",
    "SchedulerCore",
    "SchedulingError",
    "TaskId",
    "TaskIds",
    "TaskSpec",
    "Withdraw",
    "WorkerKilledByTask",
    "WorkerName",
]

# Task states.
_BLOCKED = 0  # waiting for dependencies (or for lost outputs to be recomputed)
_READY = 1  # may be dispatched
_RUNNING = 2  # dispatched to a worker
_SUCCEEDED = 3  # its output exists on ``holder``

# How many times one task may report lost dependencies before the job gives up: a bound on
# livelock (a holder that keeps losing what it computes), far above any honest recovery.
MAX_DEPENDENCY_FAILURES = 100

# Pipelining: only tasks with at most this many dependencies are queued behind their inputs, and
# only the dependents of tasks with at most this many dependents are looked at (O(1) per edge).
PIPELINE_MAX_EDGES = 8

# Data locality: a ready task with at most this many dependencies prefers the workers that hold
# their outputs (so its inputs need no fetch from a peer), with this weight, below any explicit
# preference. Tasks with more dependencies (all-to-all stages) gain little from it.
DATA_LOCALITY_MAX_DEPS = 8
DATA_LOCALITY = 0.5


class SchedulerCore:
    """The state machine for one job. Not thread-safe: the shell serialises events."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        workers: Iterable[WorkerName],
        *,
        concurrency: int = 1,
        attempts: int = 1,
        locality: Mapping[TaskIds, Mapping[WorkerName, float]] | None = None,
        succeeded: Iterable[TaskId] = (),
        wait_for_workers: bool = False,
        max_worker_losses: int = 3,
        held: Mapping[TaskIds, WorkerName] | None = None,
        running: Mapping[TaskIds, WorkerName] | None = None,
        ahead: int = 0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        if max_worker_losses < 1:
            raise ValueError(f"max_worker_losses must be at least 1, not {max_worker_losses}")
        if ahead < 0:
            raise ValueError(f"ahead must not be negative, not {ahead}")
        self.concurrency = concurrency
        self.ahead = ahead
        self.attempts = attempts
        self.max_worker_losses = max_worker_losses
        self.wait_for_workers = wait_for_workers

        n = len(tasks)
        self._ids: list[TaskId] = [t.id for t in tasks]
        self._index: dict[TaskId, int] = {}
        for i, tid in enumerate(self._ids):
            if tid in self._index:
                raise ValueError(f"duplicate task id {tid!r}")
            self._index[tid] = i
        self._prio: list[Any] = [
            i if t.priority is None else t.priority for i, t in enumerate(tasks)
        ]
        self._attempts: list[int] = [t.attempts or attempts for t in tasks]
        self._max_losses: list[int] = [t.max_worker_losses or max_worker_losses for t in tasks]
        done = {self._index[t] for t in succeeded if t in self._index}
        self._deps: list[list[int]] = [[] for _ in range(n)]
        self._dependents: list[list[int]] = [[] for _ in range(n)]
        index = self._index
        for i, t in enumerate(tasks):
            if not t.dependencies:
                continue
            try:
                dep_idx = [index[d] for d in t.dependencies]
            except KeyError as e:
                raise ValueError(
                    f"task {t.id!r} depends on {e.args[0]!r}, which is not a task of this job"
                ) from e
            self._deps[i] = dep_idx
            for j in dep_idx:
                self._dependents[j].append(i)

        self._state = [_BLOCKED] * n
        self._remaining = [0] * n  # dependencies (and awaited recomputations) not yet succeeded
        self._emitted = [False] * n
        self._failures = [0] * n
        self._dep_failures = [0] * n
        self._run = [0] * n
        self._running_on: list[WorkerName | None] = [None] * n
        self._holder: list[WorkerName | None] = [None] * n
        self._ready_ver = [0] * n
        self._ever_succeeded = [False] * n
        self._initially_done = done
        self._held = {self._index[t]: w for t, w in (held or {}).items() if t in self._index}
        self._adopt_running = {
            self._index[t]: w for t, w in (running or {}).items() if t in self._index
        }
        self._lost_on: dict[int, list[WorkerName]] = {}  # charged worker losses per task
        # Extra waits: a task that reported a lost output of a task that is not its direct
        # dependency waits for that recomputation too.
        self._waiters: dict[int, set[int]] = {}

        # Pipelining: tasks that may be queued behind their inputs, tasks to look at, and tasks
        # that may be queued on a worker once it has room.
        self._pipelining = ahead > 0 and concurrency == 1
        self._pipe_ok = [
            self._pipelining and t.pipeline and 0 < len(self._deps[i]) <= PIPELINE_MAX_EDGES
            for i, t in enumerate(tasks)
        ]
        self._pipe_new: deque[int] = deque()
        self._pipe_room: dict[WorkerName, deque[int]] = {}
        # Stealing: queued runs asked back from their worker, with the worker that wants them.
        self._withdrawing: dict[int, WorkerName] = {}

        self._forbidden: dict[int, set[WorkerName]] = {}
        self._avoid: dict[int, set[WorkerName]] = {}
        self._preferred_on: dict[WorkerName, dict[int, float]] = {}

        self._live: dict[WorkerName, None] = {}
        # The runs dispatched to each worker, in dispatch order (the first ``concurrency`` run).
        self._running: dict[WorkerName, dict[int, None]] = {}
        self._global: list[tuple[Any, int, int]] = []  # (priority, index, ready version)
        self._restricted: dict[WorkerName, list[tuple[Any, int, int]]] = {}
        self._pref: dict[WorkerName, list[tuple[float, int, int]]] = {}
        self._idle: set[WorkerName] = set()

        self._succeeded = 0
        self._ready = 0
        self._running_count = 0
        self._retried = 0
        self._recomputed = 0
        self._lost_runs = 0
        self._worker_losses = 0
        self._adopted = 0
        self._reattached = 0
        self._closed = False
        self._started = False

        for w in workers:
            self._live[w] = None
            self._running[w] = {}
        if locality:
            for tid, per_worker in locality.items():
                if tid in index:
                    for w, value in per_worker.items():
                        self._set_locality(index[tid], w, value)

    # ----------------------------------------------------------------------------------- events

    def start(self) -> list[Decision]:
        """Emit the already-succeeded tasks and dispatch the first runs."""
        if self._started:
            raise RuntimeError("the scheduler core was started already")
        self._started = True
        out: list[Decision] = []
        if not self._live and not self.wait_for_workers:
            return self._fail(SchedulingError("no workers available"), out)
        for i in range(len(self._ids)):
            holder = self._held.get(i)
            adopted = holder is not None and holder in self._live
            if adopted or i in self._initially_done:
                self._state[i] = _SUCCEEDED
                self._holder[i] = holder if adopted else None
                self._adopted += adopted
                self._ever_succeeded[i] = True
                self._succeeded += 1
        for i in range(len(self._ids)):
            if self._state[i] == _SUCCEEDED:
                self._emit(i, out)
            # Counted for succeeded tasks too: they may have to run again if their output is lost.
            remaining = 0
            for j in self._deps[i]:
                if self._state[j] != _SUCCEEDED:
                    remaining += 1
            self._remaining[i] = remaining
        if self._live:
            for i in self._forbidden:
                if self._state[i] != _SUCCEEDED and self._nowhere_to_run(i):
                    return self._fail(self._forbidden_error(i), out)
        for i, worker in self._adopt_running.items():
            if self._state[i] == _BLOCKED and worker in self._live:
                self._reattached += 1
                self._start_run(i, worker, out)
        for i in range(len(self._ids)):
            if self._state[i] == _BLOCKED and self._remaining[i] == 0:
                self._make_ready(i)
        return self._finish_step(out)

    def task_succeeded(self, task: TaskId, run: int) -> list[Decision]:
        """Run ``run`` of ``task`` completed; its output now lives on the worker it ran on."""
        out: list[Decision] = []
        i = self._current_run(task, run)
        if i is None:
            return out
        worker = self._stop_run(i)
        self._mark_succeeded(i, worker, out)
        return self._finish_step(out)

    def task_failed(
        self, task: TaskId, run: int, error: BaseException, kind: FailureKind = FailureKind.ERROR
    ) -> list[Decision]:
        """Run ``run`` of ``task`` failed."""
        out: list[Decision] = []
        i = self._current_run(task, run)
        if i is None:
            return out
        started = self._started_on(i)
        worker = self._stop_run(i)
        if kind is FailureKind.LOST:
            self._lost_runs += 1
            self._requeue(i)
            killer = self._charge_loss(i, worker) if started else None
            if killer is not None:
                return self._fail(killer, out, task=self._ids[i])
            self._lose_worker(worker, out, charge=True)
        elif kind is FailureKind.REQUEUE:
            self._requeue(i)
        else:
            self._failures[i] += 1
            if self._failures[i] >= self._attempts[i]:
                return self._fail(error, out, task=self._ids[i])
            self._retried += 1
            self._avoid.setdefault(i, set()).add(worker)
            self._requeue(i)
        return self._finish_step(out)

    def dependencies_failed(
        self,
        task: TaskId,
        run: int,
        failures: Mapping[WorkerName | None, Iterable[TaskId]],
    ) -> list[Decision]:
        """Run ``run`` of ``task`` could not obtain outputs of other tasks.

        ``failures`` maps the worker that held them (``None``: never computed anywhere) to task
        ids. Outputs that really were on that worker are recomputed; reports about outputs that
        were recomputed elsewhere since are stale and ignored. The reporter runs again once
        everything it named is available. Nothing is charged as an attempt.
        """
        out: list[Decision] = []
        i = self._current_run(task, run)
        if i is None:
            return out
        self._stop_run(i)
        named = [(w, d) for w, ids in failures.items() for d in ids]
        unknown = [d for _, d in named if d not in self._index]
        if unknown:
            return self._fail(
                SchedulingError(
                    f"task {task!r} reported lost dependencies {unknown!r}, "
                    "which are not tasks of this job",
                    task,
                ),
                out,
                task=task,
            )
        self._dep_failures[i] += 1
        if self._dep_failures[i] > MAX_DEPENDENCY_FAILURES:
            return self._fail(
                SchedulingError(
                    f"task {task!r} reported lost dependencies {self._dep_failures[i]} times; "
                    "their outputs keep disappearing (are the holding workers restarting?)",
                    task,
                ),
                out,
                task=task,
            )
        direct = set(self._deps[i])
        for w, d in named:
            j = self._index[d]
            holder = self._holder[j]
            if self._state[j] == _SUCCEEDED and (w is None or holder is None or holder == w):
                self._unsucceed(j)
            if self._state[j] != _SUCCEEDED and j not in direct:
                waiters = self._waiters.setdefault(j, set())
                if i not in waiters:
                    waiters.add(i)
                    self._remaining[i] += 1
        self._requeue(i)
        if self._pipe_ok[i]:
            self._pipe_new.append(i)  # its inputs may be computed again on one worker
        return self._finish_step(out)

    def output_lost(self, task: TaskId) -> list[Decision]:
        """The output of a succeeded ``task`` is gone (``mark_failed(FailedDependency())``)."""
        out: list[Decision] = []
        i = self._index.get(task)
        if i is None or self._closed or self._state[i] != _SUCCEEDED:
            return out
        self._unsucceed(i)
        return self._finish_step(out)

    def worker_added(
        self, worker: WorkerName, locality: Mapping[TaskIds, float] | None = None
    ) -> list[Decision]:
        """A worker joined (or came back); ``locality`` maps task ids to its locality there."""
        out: list[Decision] = []
        if self._closed or worker in self._live:
            return out
        self._live[worker] = None
        self._running[worker] = {}
        self._forget_worker_locality(worker)
        if locality:
            for tid, value in locality.items():
                i = self._index.get(tid)
                if i is not None:
                    self._set_locality(i, worker, value)
        # Constrained ready tasks that may run here must be offered to this worker too.
        for i in self._forbidden:
            if self._state[i] == _READY and worker not in self._forbidden[i]:
                heapq.heappush(
                    self._restricted.setdefault(worker, []),
                    (self._prio[i], i, self._ready_ver[i]),
                )
        return self._finish_step(out)

    def worker_lost(self, worker: WorkerName, *, charge: bool = True) -> list[Decision]:
        """A worker is gone: its runs are abandoned and run elsewhere.

        With ``charge``, each task running there is charged a worker loss (never an attempt);
        pass ``charge=False`` when the driver removed the worker on purpose.
        """
        out: list[Decision] = []
        if self._closed or worker not in self._live:
            return out
        self._lose_worker(worker, out, charge=charge)
        return self._finish_step(out)

    def cancel(self) -> list[Decision]:
        """Stop the job: cancel every run and dispatch nothing more."""
        out: list[Decision] = []
        if self._closed:
            return out
        self._cancel_all(out)
        self._closed = True
        out.append(Cancelled())
        return out

    # ------------------------------------------------------------------------------ inspection

    @property
    def closed(self) -> bool:
        """True once the job finished, failed or was cancelled."""
        return self._closed

    @property
    def workers(self) -> list[WorkerName]:
        """The live workers, in the order they joined."""
        return list(self._live)

    def counts(self) -> Counts:
        n = len(self._ids)
        queued = 0
        if self.ahead:
            for runs in self._running.values():
                queued += max(0, len(runs) - self.concurrency)
        return Counts(
            total=n,
            succeeded=self._succeeded,
            running=self._running_count - queued,
            ready=self._ready,
            blocked=n - self._succeeded - self._running_count - self._ready,
            retried=self._retried,
            recomputed=self._recomputed,
            lost_runs=self._lost_runs,
            worker_losses=self._worker_losses,
            adopted=self._adopted,
            reattached=self._reattached,
            queued=queued,
        )

    def holder(self, task: TaskId) -> WorkerName | None:
        """The worker that holds the output of a succeeded task (None: not computed here)."""
        return self._holder[self._index[task]]

    def source(self, task: TaskId) -> WorkerName | None:
        """Where the output of ``task`` is or will be: its holder when it succeeded, the worker
        it is dispatched to when it runs (the inputs of a pipelined task), else None."""
        i = self._index[task]
        if self._state[i] == _RUNNING:
            return self._running_on[i]
        return self._holder[i]

    def running_on(self, worker: WorkerName) -> list[TaskId]:
        return [self._ids[i] for i in self._running.get(worker, ())]

    def failures(self, task: TaskId) -> int:
        """Ordinary failures charged to ``task`` so far."""
        return self._failures[self._index[task]]

    def worker_losses(self, task: TaskId) -> list[WorkerName]:
        """The workers lost while running ``task`` whose loss was charged to it, in order."""
        return list(self._lost_on.get(self._index[task], ()))

    # -------------------------------------------------------------------------------- internal

    def _current_run(self, task: TaskId, run: int) -> int | None:
        if self._closed:
            return None
        i = self._index.get(task)
        if i is None or self._state[i] != _RUNNING or self._run[i] != run:
            return None
        return i

    def _started_on(self, i: int) -> bool:
        """Whether run ``i`` is among the ``concurrency`` oldest on its worker: running there,
        not queued (the worker runs its queue in dispatch order)."""
        worker = self._running_on[i]
        if worker is None:
            return False
        runs = self._running[worker]
        if len(runs) <= self.concurrency:
            return True
        return i in itertools.islice(runs, self.concurrency)

    def _stop_run(self, i: int) -> WorkerName:
        worker = self._running_on[i]
        assert worker is not None
        self._running_on[i] = None
        del self._running[worker][i]
        self._withdrawing.pop(i, None)
        self._running_count -= 1
        self._state[i] = _BLOCKED
        if worker in self._live:
            self._idle.discard(worker)
        return worker

    def _mark_succeeded(self, i: int, worker: WorkerName | None, out: list[Decision]) -> None:
        self._state[i] = _SUCCEEDED
        self._holder[i] = worker
        self._succeeded += 1
        if self._ever_succeeded[i]:
            self._recomputed += 1
        self._ever_succeeded[i] = True
        self._emit(i, out)
        state = self._state
        remaining = self._remaining
        for k in self._dependents[i]:
            remaining[k] -= 1
            if remaining[k] == 0 and state[k] == _BLOCKED:
                self._make_ready(k)
        if self._pipelining:
            self._pipe_consider(i)
        waiters = self._waiters.pop(i, None)
        if waiters:
            for k in waiters:
                remaining[k] -= 1
                if remaining[k] == 0 and state[k] == _BLOCKED:
                    self._make_ready(k)

    def _unsucceed(self, j: int) -> None:
        """The output of succeeded task ``j`` is lost: run it again before its dependents."""
        self._succeeded -= 1
        self._holder[j] = None
        state = self._state
        for k in self._dependents[j]:
            self._remaining[k] += 1
            if state[k] == _READY:
                state[k] = _BLOCKED
                self._ready -= 1
        state[j] = _BLOCKED
        if self._remaining[j] == 0:
            self._make_ready(j)

    def _requeue(self, i: int) -> None:
        if self._remaining[i] == 0:
            self._make_ready(i)

    def _make_ready(self, i: int) -> None:
        self._state[i] = _READY
        self._ready += 1
        self._ready_ver[i] += 1
        entry = (self._prio[i], i, self._ready_ver[i])
        forbidden = self._forbidden.get(i)
        if forbidden:
            for w in self._live:
                if w not in forbidden:
                    heapq.heappush(self._restricted.setdefault(w, []), entry)
        else:
            heapq.heappush(self._global, entry)
        for w, pref in self._preferred_on.items():
            value = pref.get(i)
            if value is not None and w in self._live:
                heapq.heappush(self._pref.setdefault(w, []), (-value, i, self._ready_ver[i]))
        deps = self._deps[i]
        if 0 < len(deps) <= DATA_LOCALITY_MAX_DEPS:
            for j in deps:
                holder = self._holder[j]
                if holder is not None and holder in self._live:
                    entry = (-DATA_LOCALITY, i, self._ready_ver[i])
                    heapq.heappush(self._pref.setdefault(holder, []), entry)
        self._idle.clear()

    def _emit(self, i: int, out: list[Decision]) -> None:
        if not self._emitted[i]:
            self._emitted[i] = True
            out.append(Emit(self._ids[i]))

    def _set_locality(self, i: int, worker: WorkerName, value: float) -> None:
        if value < 0:
            self._forbidden.setdefault(i, set()).add(worker)
        elif value > 0:
            self._preferred_on.setdefault(worker, {})[i] = value

    def _forget_worker_locality(self, worker: WorkerName) -> None:
        self._preferred_on.pop(worker, None)
        self._pref.pop(worker, None)
        self._restricted.pop(worker, None)
        for forbidden in self._forbidden.values():
            forbidden.discard(worker)
        for avoid in self._avoid.values():
            avoid.discard(worker)

    def _nowhere_to_run(self, i: int) -> bool:
        forbidden = self._forbidden.get(i)
        return forbidden is not None and all(w in forbidden for w in self._live)

    def _forbidden_error(self, i: int) -> SchedulingError:
        tid = self._ids[i]
        return SchedulingError(
            f"task {tid!r} cannot run on any available worker: its locality forbids "
            f"{sorted(self._live)} (check the task's required locality against the workers)",
            tid,
        )

    def _charge_loss(self, i: int, worker: WorkerName) -> WorkerKilledByTask | None:
        """Charge task ``i`` the loss of ``worker``; the error once it reached its limit."""
        lost = self._lost_on.setdefault(i, [])
        lost.append(worker)
        self._worker_losses += 1
        if len(lost) >= self._max_losses[i]:
            return WorkerKilledByTask(self._ids[i], lost, self._max_losses[i])
        return None

    def _lose_worker(self, worker: WorkerName, out: list[Decision], *, charge: bool) -> None:
        if worker not in self._live:
            return
        del self._live[worker]
        # A retry that avoided the remaining workers for this one may run on them now.
        self._idle.clear()
        self._pipe_room.pop(worker, None)
        self._pref.pop(worker, None)
        self._restricted.pop(worker, None)
        killer: WorkerKilledByTask | None = None
        runs = list(self._running[worker])
        for position, i in sorted(enumerate(runs), key=lambda run: run[1]):
            out.append(Cancel(self._ids[i], worker, self._run[i]))
            self._stop_run(i)
            self._lost_runs += 1
            self._requeue(i)
            if charge and position < self.concurrency:  # queued runs never ran there
                error = self._charge_loss(i, worker)
                killer = killer or error
        del self._running[worker]
        if killer is not None:
            self._fail(killer, out)
            return
        if not self._live:
            if not self.wait_for_workers:
                self._fail(SchedulingError("all workers were lost; the job cannot complete"), out)
            return
        for i in self._forbidden:
            if self._state[i] != _SUCCEEDED and self._nowhere_to_run(i):
                self._fail(self._forbidden_error(i), out)
                return

    def _eligible(self, i: int, worker: WorkerName) -> bool:
        forbidden = self._forbidden.get(i)
        if forbidden and worker in forbidden:
            return False
        avoid = self._avoid.get(i)
        if avoid and worker in avoid:
            # Prefer another worker for a retry; fall back when no other may run it.
            for w in self._live:
                if w not in avoid and not (forbidden and w in forbidden):
                    return False
        return True

    def _pop_valid(self, heap: list[tuple[Any, int, int]], worker: WorkerName) -> int | None:
        """Pop the best entry of ``heap`` that is ready and eligible on ``worker``."""
        state = self._state
        ver = self._ready_ver
        skipped = []
        found = None
        while heap:
            _, i, v = heap[0]
            if state[i] != _READY or ver[i] != v:
                heapq.heappop(heap)
                continue
            if self._eligible(i, worker):
                heapq.heappop(heap)
                found = i
                break
            skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def _peek_valid(self, heap: list[tuple[Any, int, int]], worker: WorkerName) -> Any:
        state = self._state
        ver = self._ready_ver
        while heap:
            _, i, v = heap[0]
            if state[i] != _READY or ver[i] != v:
                heapq.heappop(heap)
                continue
            if not self._eligible(i, worker):
                return None  # rare (retries avoiding this worker): let _pop_valid scan
            return heap[0]
        return None

    def _select(self, worker: WorkerName) -> int | None:
        pref = self._pref.get(worker)
        if pref:
            i = self._pop_valid(pref, worker)
            if i is not None:
                return i
        restricted = self._restricted.get(worker)
        glob = self._global
        if restricted and glob:
            top_r = self._peek_valid(restricted, worker)
            top_g = self._peek_valid(glob, worker)
            if top_r is not None and top_g is not None:
                return self._pop_valid(restricted if top_r < top_g else glob, worker)
        if restricted:
            i = self._pop_valid(restricted, worker)
            if i is not None:
                return i
        return self._pop_valid(glob, worker) if glob else None

    def _dispatch(self, i: int, worker: WorkerName, out: list[Decision]) -> None:
        self._ready -= 1
        self._start_run(i, worker, out)

    def _start_run(self, i: int, worker: WorkerName, out: list[Decision]) -> None:
        self._state[i] = _RUNNING
        self._run[i] += 1
        self._running_on[i] = worker
        self._running[worker][i] = None
        self._running_count += 1
        out.append(Dispatch(self._ids[i], worker, self._run[i]))
        if self._pipelining:
            self._pipe_consider(i)

    def _pipe_consider(self, i: int) -> None:
        """The dependents of ``i`` may now be queued behind their inputs: look at them."""
        dependents = self._dependents[i]
        if len(dependents) <= PIPELINE_MAX_EDGES:
            pipe_ok = self._pipe_ok
            self._pipe_new.extend(k for k in dependents if pipe_ok[k])

    def _fill(self, out: list[Decision]) -> None:
        """Fill every worker's free slots, then its queue (``ahead``), then let workers with a
        free slot and nothing to pick steal queued runs."""
        self._fill_to(self.concurrency, out)
        if self.ahead:
            self._queue_ahead(out)
            if self._pipelining:
                self._pipeline(out)
            self._steal(out)

    def _fill_to(self, limit: int, out: list[Decision]) -> None:
        for w in self._live:
            if not self._ready:
                return
            if w in self._idle:
                continue
            running = self._running[w]
            while len(running) < limit and self._ready:
                i = self._select(w)
                if i is None:
                    self._idle.add(w)
                    break
                self._dispatch(i, w, out)

    def _low(self, w: WorkerName) -> bool:
        """Whether the queue of ``w`` is down to half of ``ahead``: then it is topped up, many
        runs at once (one message), instead of one run per completion."""
        return len(self._running[w]) <= self.concurrency + self.ahead // 2

    def _queue_ahead(self, out: list[Decision]) -> None:
        """Top up the queues that are low, one run per worker per round, so that ready tasks
        scarcer than queue places spread over the workers."""
        limit = self.concurrency + self.ahead
        low = [w for w in self._live if w not in self._idle and self._low(w)]
        placed = True
        while placed and self._ready:
            placed = False
            for w in low:
                if not self._ready:
                    return
                if w in self._idle or len(self._running[w]) >= limit:
                    continue
                i = self._select(w)
                if i is None:
                    self._idle.add(w)
                    continue
                self._dispatch(i, w, out)
                placed = True

    def _pipe_target(self, k: int) -> WorkerName | None:
        """The worker that task ``k`` may be queued on behind its inputs, if any: every input
        not yet computed is being computed there, and ``k`` waits for nothing else."""
        if self._state[k] != _BLOCKED:
            return None
        state = self._state
        target = None
        pending = 0
        for j in self._deps[k]:
            s = state[j]
            if s == _SUCCEEDED:
                holder = self._holder[j]
                if holder is not None and holder not in self._live:
                    return None
            elif s == _RUNNING:
                if self._run[j] == 1 and j in self._adopt_running:
                    return None  # a run of an earlier driver: not in this job's queue there
                w = self._running_on[j]
                if target is None:
                    target = w
                elif w != target:
                    return None
                pending += 1
            else:
                return None
        if target is None or pending != self._remaining[k] or not self._eligible(k, target):
            return None
        return target

    def _pipeline(self, out: list[Decision]) -> None:
        """Queue tasks behind the runs that compute their inputs, on the workers whose queue is
        low (the others keep them for later, in order)."""
        limit = self.concurrency + self.ahead
        running = self._running
        topping = {w for w in self._live if self._low(w)}
        for w, waiting in self._pipe_room.items():
            if w in topping:
                while waiting and len(running[w]) < limit:
                    k = waiting.popleft()
                    if self._pipe_target(k) == w:
                        self._start_run(k, w, out)
        new = self._pipe_new
        while new:
            k = new.popleft()
            target = self._pipe_target(k)
            if target is None:
                continue
            if target in topping and len(running[target]) < limit:
                self._start_run(k, target, out)
            else:
                self._pipe_room.setdefault(target, deque()).append(k)

    def _pipelined(self, i: int) -> bool:
        """Whether run ``i`` waits on its worker for inputs still being computed, or has such
        runs waiting behind it."""
        if self._remaining[i]:
            return True
        dependents = self._dependents[i]
        if len(dependents) > PIPELINE_MAX_EDGES:
            return False
        return any(self._state[k] == _RUNNING and self._remaining[k] for k in dependents)

    def _steal(self, out: list[Decision]) -> None:
        """Move queued runs to workers with free slots: ask for the newest queued run of the
        worker with the longest queue that may run there back; it runs on the first worker with
        a free slot once its worker gave it back (the run's outcome, a requeue)."""
        concurrency = self.concurrency
        wanted: dict[WorkerName, int] = {}
        for asked, thief in list(self._withdrawing.items()):
            if self._started_on(asked):  # it reached a slot there: it runs there, as we know
                del self._withdrawing[asked]
            else:
                wanted[thief] = wanted.get(thief, 0) + 1
        for w in self._live:
            runs = self._running[w]
            while len(runs) + wanted.get(w, 0) < concurrency:
                victim = None
                longest = concurrency
                for v, queue in self._running.items():
                    if len(queue) > longest:
                        victim, longest = v, len(queue)
                if victim is None:
                    return  # nothing is queued anywhere
                i = self._newest_eligible(victim, w)
                if i is None:
                    break
                out.append(Withdraw(self._ids[i], victim, self._run[i]))
                self._withdrawing[i] = w
                wanted[w] = wanted.get(w, 0) + 1

    def _newest_eligible(self, victim: WorkerName, worker: WorkerName) -> int | None:
        """The newest queued run on ``victim`` that may run on ``worker`` and is not asked back
        already (nor waits there for inputs, or has runs waiting behind it for its output)."""
        queue = list(self._running[victim])[self.concurrency :]
        for i in reversed(queue):
            if i in self._withdrawing or not self._eligible(i, worker):
                continue
            if not (self._pipelining and self._pipelined(i)):
                return i
        return None

    def _finish_step(self, out: list[Decision]) -> list[Decision]:
        if self._closed:
            return out
        if self._succeeded == len(self._ids):
            self._cancel_all(out)
            self._closed = True
            out.append(Finished())
            return out
        self._fill(out)
        if self._running_count == 0 and self._live:
            # Nothing runs and nothing could be dispatched: only an impossible task can cause
            # this (say, a task done before the job, forbidden everywhere, whose output is lost).
            return self._fail(self._stall_error(), out)
        return out

    def _stall_error(self) -> SchedulingError:
        for i, state in enumerate(self._state):
            if state == _READY and self._nowhere_to_run(i):
                return self._forbidden_error(i)
        return SchedulingError(  # pragma: no cover - an invariant of the core
            f"the job stalled with {self._ready} ready and "
            f"{len(self._ids) - self._succeeded - self._ready} blocked tasks"
        )

    def _cancel_all(self, out: list[Decision]) -> None:
        for w, running in self._running.items():
            for i in list(running):
                out.append(Cancel(self._ids[i], w, self._run[i]))
                self._stop_run(i)

    def _fail(
        self, error: BaseException, out: list[Decision], task: TaskId | None = None
    ) -> list[Decision]:
        if not self._closed:
            self._cancel_all(out)
            self._closed = True
            out.append(Failed(error, task if task is not None else getattr(error, "task", None)))
        return out
