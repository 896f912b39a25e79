"""Exceptions that cross the boundary between tasks, workers and the scheduler."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping


class TaskCancelled(Exception):
    """Raised inside a task's thread on a worker when the driver cancels the task."""


class DependenciesFailed(Exception):
    """A task could not obtain the outputs of some of its dependencies.

    ``failures`` maps the name of the worker that held the lost outputs (or ``None`` when the
    outputs were never computed anywhere) to the ids of the dependencies concerned. The
    scheduler re-executes exactly those dependencies, then the task that raised this. It is
    never charged as an attempt of the reporting task.
    """

    def __init__(self, failures: Mapping[str | None, Iterable[Hashable]]) -> None:
        self.failures: dict[str | None, list[Hashable]] = {
            worker: list(ids) for worker, ids in failures.items()
        }
        super().__init__(self.failures)

    def __reduce__(
        self,
    ) -> tuple[type[DependenciesFailed], tuple[dict[str | None, list[Hashable]]]]:
        return (DependenciesFailed, (self.failures,))

    def __str__(self) -> str:
        parts = [f"{worker or 'never computed'}: {ids}" for worker, ids in self.failures.items()]
        return "dependencies failed (" + "; ".join(parts) + ")"


class NotConnected(Exception):
    """The worker could not be reached (refused, reset, timed out, or gone).

    A task failing with this is never charged an attempt: its worker counts as lost. It is
    charged a worker loss (``maxWorkerLosses``) unless ``timed_out``: a worker that only stopped
    answering in time (a busy or stopped process) may be alive, so it is not evidence against
    the task; a closed or refused connection is.
    """

    def __init__(self, worker: str, reason: str = "", timed_out: bool = False) -> None:
        self.worker = worker
        self.reason = reason
        self.timed_out = timed_out
        super().__init__(worker, reason, timed_out)

    def __str__(self) -> str:
        return f"worker {self.worker} not connected" + (f": {self.reason}" if self.reason else "")
