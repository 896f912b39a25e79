"""References to results held on workers, placed in a task's arguments.

The driver does not ship a dependency's result through itself: it puts a :class:`RemoteRef` in the
dependent task's arguments and the worker that runs the task resolves it, from its own store when
it holds the result, else from the holder over HTTP. Refs are found in (and replaced in) lists,
tuples, dicts (values), sets and frozensets, however deeply nested; other objects are left as they
are, so a ref hidden inside an arbitrary object's attributes is not resolved.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RemoteRef:
    """Stands for the result stored under ``key`` on worker ``holder`` (at ``holder_url``).

    ``task_id`` is the scheduler's id of the task that produced it, reported back in
    ``DependenciesFailed({holder: [task_id]})`` when the result is lost.
    """

    key: str
    task_id: Hashable
    holder: str
    holder_url: str


_CONTAINERS = (list, tuple, dict, set, frozenset)


def find_refs(obj: Any) -> list[RemoteRef]:
    """Every :class:`RemoteRef` in ``obj`` (depth first, duplicates kept)."""
    found: list[RemoteRef] = []
    _collect(obj, found)
    return found


def _collect(obj: Any, found: list[RemoteRef]) -> None:
    if isinstance(obj, RemoteRef):
        found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect(value, found)
    elif isinstance(obj, _CONTAINERS):
        for value in obj:
            _collect(value, found)


def replace_refs(obj: Any, resolve: Callable[[RemoteRef], Any]) -> Any:
    """A copy of ``obj`` with each ref replaced by ``resolve(ref)``; containers without refs are
    returned as they are. Subclasses of the containers (e.g. namedtuples) are rebuilt with their
    own type where possible."""
    if isinstance(obj, RemoteRef):
        return resolve(obj)
    if isinstance(obj, dict):
        values = {k: replace_refs(v, resolve) for k, v in obj.items()}
        if all(values[k] is v for k, v in obj.items()):
            return obj
        if type(obj) is dict:
            return values
        copy = obj.copy()
        copy.update(values)
        return copy
    if isinstance(obj, _CONTAINERS):
        items = [replace_refs(v, resolve) for v in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    return obj
