"""A manifest as the JSON values the API server would store, or why it is not one.

YAML (and a Python caller) can hand validation things JSON has no word for: keys that are numbers,
booleans or null (``{1: a}``, an unquoted ``y:``), dates, ``!!binary``, ``!!set``, NaN, infinities,
integers beyond 64 bits, and values nested without end or containing themselves. kubectl would
turn some of these into strings and refuse others, so the same file would mean different things
in the two modes; here each is refused with its field, before anything else looks at the
document. The copy is made without recursion, and the depth and size of what it copies are bounded,
so every later step may recurse over the document safely.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from .errors import ManifestError, join_path

MAX_DEPTH = 100
"""Deepest nesting of objects and lists accepted (a pod template is about 12 levels deep)."""

MAX_VALUES = 5_000_000
"""Most values (objects, lists and scalars) one manifest may hold, shared ones counted per use."""

_INT64 = 2**63

_Link = tuple[Any, str | int] | None
_Todo = tuple[Any, Any, Any, _Link, int]
"""A value to copy, where to put the copy (container and key), its path and its depth."""
"""The path to a value as (path to its parent, key): joined into a string only for an error."""


def _path(link: _Link) -> str:
    keys: list[str | int] = []
    while link is not None:
        link, key = link
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out = join_path(out, key)
    return out


def _key_text(key: Any) -> str:
    """The string kubectl makes of a non-string key (``true``, ``1``, ``null``)."""
    if key is None:
        return "null"
    if isinstance(key, bool):
        return str(key).lower()
    return str(key)


def _key_problem(key: Any) -> str:
    if isinstance(key, bool):
        return (
            f"YAML reads this unquoted key (y, n, yes, no, on, off...) as {key}: "
            f'quote it, e.g. "{_key_text(key)}": 1'
        )
    return (
        f"the key {_key_text(key)} is not a string, and JSON keys are strings: quote it, "
        f'e.g. "{_key_text(key)}"'
    )


def _leaf_problem(value: Any) -> str | None:
    """Why a non-container ``value`` is not a JSON value, or None."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return None
        return "this whole number does not fit in 64 bits, as Kubernetes needs: pass it as a string"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{value} is not a JSON number (JSON has no NaN or infinity): write a number"
    if isinstance(value, datetime.date):
        return (
            f"YAML reads the unquoted {value.isoformat()} as a date, which JSON does not have: "
            f'quote it, e.g. "{value.isoformat()}"'
        )
    return (
        f"a {type(value).__name__} (such as YAML's !!binary or !!set) is not a JSON value: "
        "write a string, number, boolean, null, list or object"
    )


def to_json_values(doc: Any) -> tuple[Any, list[ManifestError]]:
    """A copy of ``doc`` made of dicts with string keys, lists and JSON scalars, and its problems.

    Any Mapping becomes a dict, any list or tuple a list; the caller's objects are not changed.
    A non-string key is reported and kept as the string kubectl would make of it; an
    out-of-bounds nesting or size stops the copy (the copy is then None).
    """
    errors: list[ManifestError] = []
    root: list[Any] = [None]
    stack: list[_Todo] = []
    count = 0

    def put(into: Any, key: Any, value: Any, link: _Link, depth: int) -> None:
        kind = type(value)
        # the common scalars are copied here, without a trip through the stack
        if kind is str or kind is bool or value is None or (kind is int and abs(value) < _INT64):
            into[key] = value
        elif isinstance(value, dict | list | tuple | Mapping):
            into[key] = None  # keeps the order of the keys
            stack.append((value, into, key, (link, key), depth))
        else:
            problem = _leaf_problem(value)
            if problem is not None:
                errors.append(ManifestError(_path((link, key)), problem))
            into[key] = value

    if isinstance(doc, dict | list | tuple | Mapping):
        stack.append((doc, root, 0, None, 0))
    else:
        root[0] = doc
    while stack:
        value, into, key, link, depth = stack.pop()
        if depth >= MAX_DEPTH:
            message = (
                f"nested more than {MAX_DEPTH} levels deep (or contains itself): a manifest "
                "is never that deep, flatten the data"
            )
            return None, [*errors, ManifestError(_path(link), message)]
        count += len(value)
        if count > MAX_VALUES:
            message = f"the manifest holds more than {MAX_VALUES:,} values: split the job"
            return None, [*errors, ManifestError("", message)]
        start = len(stack)
        if isinstance(value, dict | Mapping):
            out: Any = {}
            into[key] = out
            for k, v in value.items():
                if type(k) is not str:
                    errors.append(ManifestError(_path((link, _key_text(k))), _key_problem(k)))
                    k = _key_text(k)
                put(out, k, v, link, depth + 1)
        else:
            out = [None] * len(value)
            into[key] = out
            for i, v in enumerate(value):
                put(out, i, v, link, depth + 1)
        stack[start:] = reversed(stack[start:])  # the first child is copied (and checked) first
    return root[0], errors
