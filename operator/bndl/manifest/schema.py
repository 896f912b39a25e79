"""The BndlJob schema, read from the CRD, applied to local manifests.

The CRD (``crds/bndljob.yaml``, shipped here as ``bndljob.crd.yaml``) is the one source of the
schema. The API server validates with it; ``bndl run`` must refuse the same manifests without a
cluster, so this module turns the CRD's ``openAPIV3Schema`` into a JSON Schema that jsonschema
understands, applies its defaults the way the API server does, and turns validation failures into
``ManifestError``s with field paths.

One difference is deliberate: the API server silently *prunes* unknown fields of a structural
schema, which hides typos (``dependson:``). Locally, every object that lists its ``properties`` and
does not preserve unknown fields is closed, and each unknown key is reported.
"""

from __future__ import annotations

import copy
import difflib
import functools
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

import jsonschema
import yaml

from .errors import ManifestError, join_path

CRD_RESOURCE = "bndljob.crd.yaml"
"""File name of the packaged copy of ``crds/bndljob.yaml``."""

_PRESERVE = "x-kubernetes-preserve-unknown-fields"

_HINTS = {
    "id": "use lower-case letters, digits, '-', '_' and '.', starting and ending with a letter "
    "or digit (at most 63 characters)",
    "call": "write it as 'package.module:function', e.g. 'bndl_examples.diamond:add'",
    "mountPath": "use an absolute path",
}

_SUGGESTIONS = 10
"""Unknown fields of one object that get a "did you mean"."""

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4
_REPR.maxlevel = 2

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


@functools.cache
def crd() -> dict[str, Any]:
    """The BndlJob CustomResourceDefinition, as packaged with bndl."""
    text = resources.files(__package__).joinpath(CRD_RESOURCE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def crd_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version (a copy: callers may change it)."""
    (version,) = (v for v in crd()["spec"]["versions"] if v.get("storage"))
    return copy.deepcopy(version["schema"]["openAPIV3Schema"])


@functools.cache
def _json_schema() -> dict[str, Any]:
    return to_json_schema(crd_schema())


@functools.cache
def _validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_json_schema())


def json_schema() -> dict[str, Any]:
    """The CRD schema as a JSON Schema (draft 4), closed against unknown fields."""
    return copy.deepcopy(_json_schema())


def to_json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """Convert one Kubernetes structural-schema node (recursively) to JSON Schema.

    ``x-kubernetes-list-type: set`` becomes ``uniqueItems``, ``x-kubernetes-int-or-string`` an
    ``anyOf``, ``nullable`` a ``null`` type; objects with ``properties`` and without
    ``x-kubernetes-preserve-unknown-fields`` get ``additionalProperties: false``. CEL rules
    (``x-kubernetes-validations``) are dropped here: the loader checks each in Python.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "x-kubernetes-list-type" and value == "set":
            out["uniqueItems"] = True
        elif key == "x-kubernetes-int-or-string" and value:
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description", "format"):
            continue
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and not node.get(_PRESERVE) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def apply_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Fill in ``default`` values in place, as the API server does before validating.

    Defaults apply to absent properties of objects that are present (an absent object is not
    created), in list items and in map values; values of the wrong type are left to validation.
    """
    stack: list[tuple[Any, Mapping[str, Any]]] = [(instance, schema)]
    while stack:
        value, node = stack.pop()
        if isinstance(value, dict):
            for name, sub in node.get("properties", {}).items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value:
                    stack.append((value[name], sub))
            extra = node.get("additionalProperties")
            if isinstance(extra, Mapping):
                stack.extend((v, extra) for v in value.values())
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            stack.extend((v, node["items"]) for v in value)


def schema_errors(doc: Any) -> list[ManifestError]:
    """Validate ``doc`` (defaults already applied) against the CRD schema; every problem found.

    Lists, maps and strings over the schema's size limits are reported alone (see
    ``size_errors``): the rest of the schema is not checked on such a document.
    """
    too_big = size_errors(doc)
    if too_big:
        return too_big
    validator = _validator()
    errors: list[ManifestError] = []
    for error in validator.iter_errors(doc):
        errors.extend(_convert(error))
    errors.extend(list_map_errors(doc, crd_schema()))
    return errors


def size_errors(instance: Any, schema: Mapping[str, Any] | None = None) -> list[ManifestError]:
    """Lists, maps and strings longer than the schema's ``maxItems``, ``maxProperties`` and
    ``maxLength``, found without looking inside them.

    A schema validator checks every item of a list, however many the limit allows, and quotes
    the whole value in its message: 100,000 task entries took 14 s and made a message of
    megabytes. This walk stops at each oversized value, so it costs no more than the values
    the schema allows.
    """
    errors: list[ManifestError] = []
    root = _json_schema() if schema is None else schema
    stack: list[tuple[Any, Mapping[str, Any], str]] = [(instance, root, "")]
    while stack:
        value, node, path = stack.pop()
        if isinstance(value, str):
            if len(value) > node.get("maxLength", len(value)):
                errors.append(_too_long(path, len(value), node["maxLength"], "characters"))
        elif isinstance(value, dict):
            if len(value) > node.get("maxProperties", len(value)):
                errors.append(_too_long(path, len(value), node["maxProperties"], "entries"))
                continue
            properties = node.get("properties", {})
            extra = node.get("additionalProperties")
            for name, sub in value.items():
                if name in properties:
                    stack.append((sub, properties[name], join_path(path, name)))
                elif isinstance(extra, Mapping):
                    stack.append((sub, extra, join_path(path, _short(name))))
        elif isinstance(value, list):
            if len(value) > node.get("maxItems", len(value)):
                errors.append(_too_long(path, len(value), node["maxItems"], "items"))
                continue
            if isinstance(node.get("items"), Mapping):
                stack.extend((v, node["items"], join_path(path, i)) for i, v in enumerate(value))
    errors.sort(key=lambda e: e.field)
    return errors


def _too_long(path: str, size: int, limit: int, unit: str) -> ManifestError:
    return ManifestError(path, f"has {size:,} {unit}, more than the {limit:,} allowed")


def _short(text: str, limit: int = 60) -> str:
    """``text``, cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a message must stay readable whatever the value."""
    return _REPR.repr(value)


def list_map_errors(instance: Any, schema: Mapping[str, Any]) -> list[ManifestError]:
    """Duplicate keys in ``x-kubernetes-list-type: map`` lists (such as two tasks with one id),
    which the API server refuses as part of the schema and JSON Schema cannot express."""
    errors: list[ManifestError] = []
    stack: list[tuple[Any, Mapping[str, Any], str]] = [(instance, schema, "")]
    while stack:
        value, node, path = stack.pop()
        if isinstance(value, dict):
            for name, sub in node.get("properties", {}).items():
                if name in value:
                    stack.append((value[name], sub, join_path(path, name)))
        elif isinstance(value, list) and isinstance(node.get("items"), Mapping):
            if node.get("x-kubernetes-list-type") == "map":
                errors.extend(_duplicates(value, node["x-kubernetes-list-map-keys"], path))
            stack.extend((v, node["items"], join_path(path, i)) for i, v in enumerate(value))
    return errors


def _duplicates(items: list[Any], keys: list[str], path: str) -> Iterator[ManifestError]:
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(k in item for k in keys):
            continue
        key = tuple(repr(item[k]) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k}={item[k]!r}" for k in keys)
            yield ManifestError(
                join_path(join_path(path, i), keys[0]),
                f"duplicate {shown} (also {join_path(path, seen[key])}): each must be unique",
            )
        else:
            seen[key] = i


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out = join_path(out, part)
    return out


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _convert(error: jsonschema.ValidationError) -> Iterator[ManifestError]:
    field = _path(error.absolute_path)
    kind = error.validator
    expected: Any = error.validator_value
    instance: Any = error.instance
    schema: Any = error.schema
    last = error.absolute_path[-1] if error.absolute_path else ""
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        unknown = [key for key in instance if key not in known]
        for n, key in enumerate(unknown):
            # difflib for the first few only: 100,000 unknown keys took 8 s
            close = difflib.get_close_matches(key, known, n=1) if n < _SUGGESTIONS else []
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            yield ManifestError(
                join_path(field, _short(key)), f"unknown field {_shown(key)}: {hint}"
            )
    elif kind == "required":
        for name in expected:
            if name not in instance:
                yield ManifestError(join_path(field, name), f"required field {name!r} is missing")
    elif kind == "type":
        yield ManifestError(field, f"must be of type {expected}, not {_json_type(instance)}")
    elif kind == "pattern":
        hint = _HINTS.get(str(last), f"it must match the pattern {expected}")
        yield ManifestError(field, f"{_shown(instance)} is not valid here: {hint}")
    elif kind == "enum":
        choices = ", ".join(str(c) for c in expected)
        yield ManifestError(field, f"{_shown(instance)} is not one of: {choices}")
    elif kind == "oneOf" and all(set(sub) == {"required"} for sub in expected):
        choices = " or ".join(name for sub in expected for name in sub["required"])
        yield ManifestError(field, f"needs exactly one of {choices}")
    elif kind == "uniqueItems":
        yield ManifestError(field, "lists the same value twice: remove the duplicates")
    else:
        yield ManifestError(field, _short(error.message, 300))  # it may quote the whole value
