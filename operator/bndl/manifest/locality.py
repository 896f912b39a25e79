"""Checking task locality: node-label selectors that Kubernetes would accept and could match.

The CRD can check values and sizes, but not the syntax of map keys, and not that a preference
contradicts a requirement (such a preference can never count). Both are checked here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ManifestError, join_path
from .model import Locality, Preference

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key, or None if it is."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r} has an invalid prefix: it must be a DNS subdomain"
    if len(name) > 63 or not _NAME.match(name):
        return (
            f"label key {key!r} is invalid: the name part must be 1-63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or None if it is."""
    if value == "" or (len(value) <= 63 and _NAME.match(value)):
        return None
    return (
        f"label value {value!r} is invalid: use at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit"
    )


def _labels(labels: Mapping[str, str], field: str) -> Iterator[ManifestError]:
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            yield ManifestError(join_path(field, key), problem)


def check_locality(spec: Mapping[str, Any], field: str) -> list[ManifestError]:
    """Problems of one task's (schema-valid) ``locality`` at JSON path ``field``."""
    required: Mapping[str, str] = spec.get("required", {})
    errors = list(_labels(required, join_path(field, "required")))
    for i, pref in enumerate(spec.get("preferred", [])):
        where = join_path(join_path(field, "preferred"), i)
        errors.extend(_labels(pref["labels"], join_path(where, "labels")))
        for key, value in pref["labels"].items():
            if key in required and required[key] != value:
                errors.append(
                    ManifestError(
                        join_path(join_path(where, "labels"), key),
                        f"can never match: locality.required already demands "
                        f"{key}={required[key]}; remove this preference or change the requirement",
                    )
                )
    return errors


def to_locality(spec: Mapping[str, Any] | None) -> Locality:
    """The model of a (checked) ``locality`` mapping."""
    if not spec:
        return Locality()
    return Locality(
        required=dict(spec.get("required", {})),
        preferred=tuple(
            Preference(weight=p["weight"], labels=dict(p["labels"]))
            for p in spec.get("preferred", [])
        ),
    )
