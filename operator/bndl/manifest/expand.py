"""Fan-out expansion and argument markers: from manifest entries to ``TaskSpec``s.

Each entry's arguments are compiled once: ``{fromTask: ..}`` becomes a ``FromTask``/``FromTasks``
marker, and the parts that differ between the tasks of a fan-out (``{fromItem: ..}``,
``{fromTask: .., sameIndex: true}``) become holes. Problems are reported once per entry, not once
per task, and each task of a fan-out is then stamped out of the compiled form in time proportional
to its arguments: 10,000 tasks cost 10,000 small copies.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError, join_path
from .locality import to_locality
from .markers import FromTask, FromTasks
from .model import TaskSpec

_EXPANDED = re.compile(r"^(.*)-(0|[1-9][0-9]*)$")
_TASK_KEYS = ("fromTask", "all", "sameIndex")
_CHECK_SPELLING = "check the spelling of the task id"

MAX_DEPENDENCIES = 10_000_000
"""Most dependencies among the tasks of one job (a task depending on a fan-out of 1,000 tasks
counts 1,000): each costs the scheduler memory, and 1,000 fan-outs of 1,000 tasks, each depending on
the 100 before it, would be 10^11 of them in a manifest the schema accepts."""

MAX_SUGGESTIONS = 10
"""Unknown task ids that get a "did you mean"; the others are reported without one."""


@dataclass(frozen=True, slots=True)
class _Item:
    """Hole for the fan-out item (``key`` None) or one key of it."""

    key: str | None


@dataclass(frozen=True, slots=True)
class _SameIndex:
    """Hole for the result of the task with the current index in fan-out ``entry``."""

    entry: str


@dataclass(slots=True)
class Entry:
    """One manifest entry of ``spec.tasks`` (already schema-valid)."""

    position: int
    raw: Mapping[str, Any]
    items: Sequence[Any] | None
    """The fan-out items, or None for a single task."""
    ids: tuple[str, ...] = ()
    """The ids of the tasks it expands to."""
    static_deps: set[str] = field(default_factory=set)
    fan_ins: set[str] = field(default_factory=set)
    """Fan-out entries all of whose tasks are in ``static_deps``."""
    """Task ids every one of its tasks depends on."""
    same_index: set[str] = field(default_factory=set)
    """Fan-out entries whose task with the same index each of its tasks depends on."""
    args: Any = None
    kwargs: Any = None

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def path(self) -> str:
        """JSON path of the entry in the manifest."""
        return f"spec.tasks[{self.position}]"


def fan_out_items(raw: Mapping[str, Any]) -> Sequence[Any] | None:
    """The items of an entry's ``forEach`` (schema-valid), or None if it has none."""
    for_each = raw.get("forEach")
    if for_each is None:
        return None
    if "range" in for_each:
        return range(for_each["range"])
    return list(for_each.get("values", []))


def task_count(raw_tasks: Sequence[Mapping[str, Any]]) -> int:
    """How many tasks schema-valid entries expand to, without expanding them."""
    count = 0
    for raw in raw_tasks:
        for_each = raw.get("forEach")
        if for_each is None:
            count += 1
        elif "range" in for_each:
            count += for_each["range"]
        else:
            count += len(for_each.get("values", ()))
    return count


class Expander:
    """Expands schema-valid entries into tasks, collecting every problem in ``errors``."""

    def __init__(self, raw_tasks: Sequence[Mapping[str, Any]]) -> None:
        self.errors: list[ManifestError] = []
        self.entries: dict[str, Entry] = {}
        self.origin: dict[str, str] = {}
        self._suggestions: dict[str, str] = {}
        self.dependencies = 0
        self._too_many = False
        """Task-level dependencies so far: what the scheduler will hold in memory."""
        for i, raw in enumerate(raw_tasks):
            entry = Entry(i, raw, fan_out_items(raw))
            if entry.id in self.entries:
                first = self.entries[entry.id].position
                self.errors.append(
                    ManifestError(
                        join_path(entry.path, "id"),
                        f"duplicate task id {entry.id!r} (also spec.tasks[{first}].id): "
                        "give every task its own id",
                    )
                )
                continue
            if entry.items is None:
                entry.ids = (entry.id,)
            else:
                entry.ids = tuple(f"{entry.id}-{k}" for k in range(len(entry.items)))
            self.entries[entry.id] = entry
        self._check_collisions()

    def _check_collisions(self) -> None:
        for entry in self.entries.values():
            hit = self._expanded(entry.id)
            if hit is not None:
                owner, k = hit
                self.errors.append(
                    ManifestError(
                        join_path(entry.path, "id"),
                        f"id {entry.id!r} is also the id of task {k} of fan-out {owner.id!r} "
                        f"(spec.tasks[{owner.position}]): rename one of them",
                    )
                )

    def _expanded(self, name: str) -> tuple[Entry, int] | None:
        """The fan-out entry and index of an expanded id such as ``map-3``, if it is one."""
        m = _EXPANDED.match(name)
        if not m:
            return None
        owner = self.entries.get(m.group(1))
        k = int(m.group(2))
        if owner is None or owner.items is None or k >= len(owner.items):
            return None
        return owner, k

    def _unknown(self, name: str, field: str) -> ManifestError:
        return ManifestError(field, f"no task has the id {name!r}: {self._suggest(name)}")

    def _suggest(self, name: str) -> str:
        # difflib costs ~1 ms per name against 1,000 ids: only the first few names get a
        # suggestion, so a manifest full of unknown ids is still reported in milliseconds.
        hint = self._suggestions.get(name)
        if hint is None:
            if len(self._suggestions) < MAX_SUGGESTIONS:
                close = difflib.get_close_matches(name, list(self.entries), n=1)
                hint = f"did you mean {close[0]!r}?" if close else _CHECK_SPELLING
            else:
                hint = _CHECK_SPELLING
            self._suggestions[name] = hint
        return hint

    # -- dependencies and markers -------------------------------------------------------

    def _resolve(self, entry: Entry, name: str, field: str) -> Entry | str | None:
        """A fan-out Entry, a task id, or None (after recording why)."""
        target = self.entries.get(name)
        if target is not None:
            if target is entry:
                self.errors.append(
                    ManifestError(field, f"task {name!r} cannot depend on its own result")
                )
                return None
            return target if target.items is not None else name
        hit = self._expanded(name)
        if hit is None:
            self.errors.append(self._unknown(name, field))
            return None
        if hit[0] is entry:
            self.errors.append(
                ManifestError(
                    field,
                    f"tasks of fan-out {entry.id!r} cannot depend on each other ({name!r})",
                )
            )
            return None
        return name

    def _depends_on(self, entry: Entry) -> None:
        field = join_path(entry.path, "dependsOn")
        for j, name in enumerate(entry.raw.get("dependsOn", [])):
            if name == entry.id:
                continue  # reported by the CRD's CEL rule (checked in loader)
            target = self._resolve(entry, name, join_path(field, j))
            if target is not None:
                self._depend(entry, target, join_path(field, j))

    def _depend(self, entry: Entry, target: Entry | str, field: str) -> None:
        """Make every task of ``entry`` depend on task ``target`` or on all tasks of fan-out
        ``target``, unless the job's dependencies pass MAX_DEPENDENCIES (then say so, once)."""
        if isinstance(target, Entry):
            if target.id in entry.fan_ins:
                return
            size = len(target.ids)
        elif target in entry.static_deps:
            return
        else:
            size = 1
        self.dependencies += size * len(entry.ids)
        if self.dependencies > MAX_DEPENDENCIES:
            if not self._too_many:
                self._too_many = True
                whom = f"the {size:,} tasks of {target.id!r}" if isinstance(target, Entry) else "it"
                self._fail(
                    field,
                    "the job's tasks depend on other tasks more than "
                    f"{MAX_DEPENDENCIES:,} times (here each of {len(entry.ids):,} tasks "
                    f"depends on {whom}): let one task reduce a fan-out, and depend on that",
                )
            return
        if isinstance(target, Entry):
            entry.fan_ins.add(target.id)
            entry.static_deps.update(target.ids)
        else:
            entry.static_deps.add(target)

    def _compile(self, entry: Entry, obj: Any, field: str) -> Any:
        if isinstance(obj, list):
            return [self._compile(entry, x, join_path(field, i)) for i, x in enumerate(obj)]
        if not isinstance(obj, dict):
            return obj
        if "fromTask" in obj:
            return self._from_task(entry, obj, field)
        if "fromItem" in obj:
            return self._from_item(entry, obj, field)
        return {k: self._compile(entry, v, join_path(field, k)) for k, v in obj.items()}

    def _from_task(self, entry: Entry, marker: Mapping[str, Any], field: str) -> Any:
        extra = [k for k in marker if k not in _TASK_KEYS]
        name, all_, same = marker["fromTask"], marker.get("all"), marker.get("sameIndex")
        if extra:
            return self._fail(
                join_path(field, extra[0]),
                f"unknown key {extra[0]!r} in a fromTask marker: it takes only fromTask, all "
                "and sameIndex",
            )
        if not isinstance(name, str):
            return self._fail(join_path(field, "fromTask"), "must be a task id (a string)")
        for key, value in (("all", all_), ("sameIndex", same)):
            if value is not None and not isinstance(value, bool):
                return self._fail(join_path(field, key), "must be true or false")
        if all_ and same:
            return self._fail(field, "use either all or sameIndex, not both")
        target = self._resolve(entry, name, join_path(field, "fromTask"))
        if target is None:
            return None
        if isinstance(target, str):
            if all_ or same:
                flag = "all" if all_ else "sameIndex"
                return self._fail(
                    join_path(field, flag),
                    f"{flag} applies to fan-outs only, and {name!r} is a single task: remove it",
                )
            self._depend(entry, target, join_path(field, "fromTask"))
            return FromTask(target)
        if all_:
            self._depend(entry, target, join_path(field, "fromTask"))
            return FromTasks(target.ids)
        if same:
            return self._same_index(entry, target, field)
        return self._fail(
            join_path(field, "fromTask"),
            f"{name!r} is a fan-out of {len(target.ids)} tasks: write {{fromTask: {name}, all: "
            f"true}} for the list of all their results, {{fromTask: {name}, sameIndex: true}} "
            f"inside a fan-out of the same size, or {{fromTask: {name}-<i>}} for one of them",
        )

    def _same_index(self, entry: Entry, target: Entry, field: str) -> Any:
        if entry.items is None:
            return self._fail(
                join_path(field, "sameIndex"),
                "sameIndex needs this task to have a forEach (it picks the task with the same "
                "index)",
            )
        if len(entry.ids) != len(target.ids):
            return self._fail(
                join_path(field, "sameIndex"),
                f"this fan-out has {len(entry.ids)} tasks and {target.id!r} has "
                f"{len(target.ids)}: sameIndex needs fan-outs of the same size",
            )
        entry.same_index.add(target.id)
        return _SameIndex(target.id)

    def _from_item(self, entry: Entry, marker: Mapping[str, Any], field: str) -> Any:
        key = marker["fromItem"]
        if len(marker) > 1:
            extra = next(k for k in marker if k != "fromItem")
            return self._fail(
                join_path(field, extra), f"unknown key {extra!r} in a fromItem marker"
            )
        if entry.items is None:
            return self._fail(
                join_path(field, "fromItem"),
                "fromItem is only meaningful in a task with forEach: add forEach or remove it",
            )
        if key is True:
            return _Item(None)
        if not isinstance(key, str):
            return self._fail(
                join_path(field, "fromItem"), "must be true (the item) or a key of the items"
            )
        for k, item in enumerate(entry.items):
            if not isinstance(item, dict) or key not in item:
                return self._fail(
                    join_path(field, "fromItem"),
                    f"item {k} of forEach ({item!r}) has no key {key!r}: fromItem: <key> needs "
                    "every item to be an object with that key",
                )
        return _Item(key)

    def _fail(self, field: str, message: str) -> None:
        self.errors.append(ManifestError(field, message))

    # -- driving it ---------------------------------------------------------------------

    def compile_all(self) -> None:
        """Resolve dependencies and markers of every entry (errors go to ``errors``)."""
        for entry in self.entries.values():
            if entry.items is not None:
                self.origin.update(dict.fromkeys(entry.ids, entry.id))
        for entry in self.entries.values():
            self._depends_on(entry)
            entry.args = self._compile(entry, entry.raw.get("args", []), entry.path + ".args")
            entry.kwargs = self._compile(entry, entry.raw.get("kwargs", {}), entry.path + ".kwargs")

    def entry_deps(self) -> dict[str, set[str]]:
        """For each entry id, the entry ids it depends on (the graph to order)."""
        return {
            entry.id: {self.origin.get(d, d) for d in entry.static_deps} | entry.same_index
            for entry in self.entries.values()
        }

    def tasks(self, order: Sequence[str]) -> Iterator[TaskSpec]:
        """Stamp out the tasks of the entries, in the given order of entry ids."""
        for entry_id in order:
            entry = self.entries[entry_id]
            raw = entry.raw
            # what every task of the entry shares is read once: a million tasks are a million
            # calls of the loop's body, and each dictionary lookup in it shows
            call, priority, group = raw["call"], raw.get("priority", 0), raw.get("group")
            attempts, losses = raw.get("attempts"), raw.get("maxWorkerLosses")
            locality = to_locality(raw.get("locality"))
            static = frozenset(entry.static_deps)
            ids_of = self._ids_of
            args, kwargs = _stamper(entry.args, ids_of), _stamper(entry.kwargs, ids_of)
            items = entry.items
            # the task ids of same-index fan-outs, shared rather than formatted again per task
            same = [self.entries[e].ids for e in entry.same_index]
            for k, task_id in enumerate(entry.ids):
                deps = static
                if same:
                    deps = static.union([ids[k] for ids in same])
                item = None if items is None else items[k]
                yield TaskSpec(
                    id=task_id,
                    call=call,
                    args=args(item, k),
                    kwargs=kwargs(item, k),
                    depends_on=deps,
                    priority=priority,
                    group=group,
                    locality=locality,
                    attempts=attempts,
                    max_worker_losses=losses,
                    origin=entry_id,
                    index=None if items is None else k,
                    item=item,
                )

    def _ids_of(self, entry_id: str) -> tuple[str, ...]:
        return self.entries[entry_id].ids


_Stamp = Callable[[Any, int], Any]
"""Makes a fresh copy of compiled arguments with the holes filled for one task (item, index)."""


def _stamper(obj: Any, ids_of: Callable[[str], tuple[str, ...]]) -> _Stamp:
    """The ``_Stamp`` of compiled arguments ``obj``: built once per entry and called once per
    task, it tests no types, and copies the parts without holes with the fastest copy that fits."""
    if isinstance(obj, _Item):
        key = obj.key
        if key is None:
            return lambda item, index: item
        return lambda item, index: item[key]
    if isinstance(obj, _SameIndex):
        ids = ids_of(obj.entry)
        return lambda item, index: FromTask(ids[index])
    if isinstance(obj, list):
        if not any(isinstance(x, list | dict | _Item | _SameIndex) for x in obj):
            return lambda item, index: list(obj)
        parts = [_stamper(x, ids_of) for x in obj]
        return lambda item, index: [part(item, index) for part in parts]
    if isinstance(obj, dict):
        if not any(isinstance(x, list | dict | _Item | _SameIndex) for x in obj.values()):
            return lambda item, index: dict(obj)
        fields = [(k, _stamper(v, ids_of)) for k, v in obj.items()]
        return lambda item, index: {k: part(item, index) for k, part in fields}
    return lambda item, index: obj
