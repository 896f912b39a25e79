"""Placeholders for the results of other tasks inside a task's arguments.

A manifest writes ``{fromTask: a}`` where task ``a``'s result should go; the plan carries a
``FromTask("a")`` there instead (and ``FromTasks([...])`` for the fan-in of a whole fan-out), so
that whoever holds the results (a worker fetching its inputs, or the driver) can call
``substitute`` once the values exist. The markers are frozen dataclasses: cheap, hashable and
picklable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FromTask:
    """Stands for the result of task ``id``."""

    id: str


@dataclass(frozen=True, slots=True, repr=False)
class FromTasks:
    """Stands for the list of results of tasks ``ids``, in that order."""

    ids: Sequence[str]
    """Any sequence may be given; it is kept as a tuple, so the marker stays hashable."""

    def __repr__(self) -> str:  # a fan-in of 10,000 tasks should not flood a log line
        if len(self.ids) <= 6:
            return f"FromTasks({list(self.ids)!r})"
        return (
            f"FromTasks([{self.ids[0]!r}, {self.ids[1]!r}, ... {self.ids[-1]!r}] ({len(self.ids)}))"
        )

    def __post_init__(self) -> None:
        if not isinstance(self.ids, tuple):  # accept any sequence, keep it hashable
            object.__setattr__(self, "ids", tuple(self.ids))


Marker = FromTask | FromTasks


def substitute(obj: Any, results: Mapping[str, Any]) -> Any:
    """Return ``obj`` with every marker replaced by the result(s) it stands for.

    Lists, tuples and dict values are walked (and copied only where something changed); other
    values are returned as they are. A missing result raises KeyError naming the task id.
    """
    if isinstance(obj, FromTask):
        return results[obj.id]
    if isinstance(obj, FromTasks):
        return [results[i] for i in obj.ids]
    if isinstance(obj, list):
        return [substitute(x, results) for x in obj]
    if isinstance(obj, tuple):
        return tuple(substitute(x, results) for x in obj)
    if isinstance(obj, dict):
        return {k: substitute(v, results) for k, v in obj.items()}
    return obj


def references(obj: Any) -> Iterator[str]:
    """Yield the task ids of every marker inside ``obj`` (in order, with repeats)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, FromTask):
            yield item.id
        elif isinstance(item, FromTasks):
            yield from item.ids
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
