"""The scheduler core's vocabulary: what goes in (task specs) and comes out (decisions, counts,
errors) of :class:`~bndl.execute.core.SchedulerCore`. Pure data, like the core itself."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias, TypeVar

TaskId: TypeAlias = Hashable
WorkerName: TypeAlias = str
# A parameter keyed by task ids takes Mapping[TaskIds, ...], not Mapping[TaskId, ...]: Mapping is
# invariant in its key, so the latter would refuse a caller's dict[str, ...].
TaskIds = TypeVar("TaskIds", bound=Hashable)


class SchedulingError(Exception):
    """The job cannot be completed for a reason of scheduling, not of a task's own code."""

    def __init__(self, message: str, task: TaskId | None = None) -> None:
        super().__init__(message)
        self.task = task


class WorkerKilledByTask(SchedulingError):
    """A task was running on ``limit`` workers that were lost: it probably kills its worker.

    ``workers`` names the lost workers in order (a worker that came back and was lost again
    appears twice); ``causes`` maps worker names to why they were lost, when the shell could
    find out (say, ``"exit code 3"``).
    """

    def __init__(
        self,
        task: TaskId,
        workers: Sequence[WorkerName],
        limit: int,
        causes: Mapping[WorkerName, str] | None = None,
    ) -> None:
        self.workers = list(workers)
        self.losses = len(self.workers)
        self.limit = limit
        self.causes: dict[WorkerName, str] = dict(causes or {})
        super().__init__(self._describe(task), task)

    def add_causes(self, causes: Mapping[WorkerName, str]) -> None:
        """Record why workers were lost, and say so in the message."""
        self.causes.update(causes)
        self.args = (self._describe(self.task),)

    def _describe(self, task: TaskId) -> str:
        lost = "; " if self.causes else ", "
        names = lost.join(f"{w}: {self.causes[w]}" if w in self.causes else w for w in self.workers)
        plural = "worker that was" if self.losses == 1 else "workers that were"
        return (
            f"task {task!r} was running on {self.losses} {plural} lost ({names}); it probably "
            "kills its worker (a crash, os._exit, or running out of memory); "
            f"maxWorkerLosses is {self.limit}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.workers, self.limit, self.causes))


class FailureKind(Enum):
    """How a task run ended, when it did not succeed."""

    ERROR = "error"  # the task's own code raised: charged as an attempt
    LOST = "lost"  # the worker could not be reached (NotConnected): worker lost, a worker loss
    REQUEUE = "requeue"  # cancelled, or its output declared lost while running: not charged


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the core needs to know about a task."""

    id: TaskId
    dependencies: Sequence[TaskId] = ()
    priority: Any = None  # lower runs first; None means "position in the job"
    attempts: int | None = None  # per-task override of the job's attempts
    max_worker_losses: int | None = None  # per-task override of the job's max_worker_losses
    pipeline: bool = False
    """May be queued on a worker behind the runs that compute its inputs (see the module
    docstring): the shell says so when the worker resolves the task's inputs when it starts."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run ``task`` on ``worker``; events about this run must quote ``run``."""

    task: TaskId
    worker: WorkerName
    run: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop run ``run`` of ``task`` on ``worker``; its outcome will be ignored."""

    task: TaskId
    worker: WorkerName
    run: int


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Take queued run ``run`` of ``task`` back from ``worker`` if it has not started there: it
    then ends at once (an event with ``FailureKind.REQUEUE``); a run that started goes on."""

    task: TaskId
    worker: WorkerName
    run: int


@dataclass(frozen=True, slots=True)
class Emit:
    """``task`` succeeded for the first time: hand its result to the consumer."""

    task: TaskId


@dataclass(frozen=True, slots=True)
class Finished:
    """Every task of the job succeeded."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed: ``error`` is the task's own exception or a :class:`SchedulingError`."""

    error: BaseException
    task: TaskId | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job was cancelled by the driver."""


Decision: TypeAlias = Dispatch | Cancel | Withdraw | Emit | Finished | Failed | Cancelled


@dataclass(frozen=True, slots=True)
class Counts:
    """Progress figures, cheap to read after every event."""

    total: int
    succeeded: int
    running: int
    ready: int
    blocked: int
    retried: int  # runs that failed with an ordinary error and were retried
    recomputed: int  # runs of tasks whose output had been lost
    lost_runs: int  # runs abandoned because their worker was lost
    worker_losses: int = 0  # lost runs charged to their task (see ``max_worker_losses``)
    adopted: int = 0  # tasks whose output a worker held when the job started (``held``)
    reattached: int = 0  # runs adopted at the start (``running``)
    queued: int = 0  # dispatched and waiting for a slot on their worker (``ahead``)
