"""Sink results too big for the job's status: all of them (bounded) in a ConfigMap the job owns.

The status holds at most :data:`~bndl.k8s.status.RESULTS_CAP` (16 KiB) of JSON results. When a
finished job's sink results do not all fit there, the operator also writes them, before it
writes the final phase, to the ConfigMap ``<job base>-results``: one JSON line per task under
``results.jsonl`` (``{"task": id, "result": value}``, the lines ``bndl run`` prints), up to
:data:`MAX_RESULTS_BYTES`. Results that do not fit even there are left out, counted under
``omitted`` and said in ``note``; the status names the ConfigMap with the same counts
(``resultsConfigMap: {name, results, omitted}``). ``bndl results JOB`` reads it.

A value JSON cannot carry is kept as its ``repr``, as in the status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bndl.k8s import configmaps
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import Kube

log = logging.getLogger(__name__)

MAX_RESULTS_BYTES = 900 * 1024
"""Bytes of JSON lines kept (a ConfigMap holds 1 MiB in all, metadata included)."""
RESULTS_KEY = "results.jsonl"
OMITTED_KEY = "omitted"
NOTE_KEY = "note"
COMPONENT = "results"


def config_map_name(ref: JobRef) -> str:
    """``<job base>-results``."""
    return f"{ref.base}-results"


def json_lines(
    results: Iterable[tuple[str, Any]], limit: int = MAX_RESULTS_BYTES
) -> tuple[str, int, int]:
    """The results as JSON lines of at most ``limit`` bytes in all, in the given order; and how
    many were kept and left out (a result is left out whole, never cut)."""
    lines: list[str] = []
    size = kept = omitted = 0
    for task, value in results:
        if isinstance(value, str | bytes | bytearray) and len(value) > limit:
            omitted += 1  # too big whatever else fits: not worth encoding
            continue
        try:
            line = json.dumps({"task": task, "result": value})
        except (TypeError, ValueError):
            line = json.dumps({"task": task, "result": repr(value)})
        cost = len(line) + 1  # ASCII: json.dumps escapes the rest
        if size + cost > limit:
            omitted += 1
            continue
        lines.append(line)
        size += cost
        kept += 1
    return "".join(f"{line}\n" for line in lines), kept, omitted


def parse(text: str) -> dict[str, Any]:
    """The results of :func:`json_lines` text, by task id."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            out[str(entry["task"])] = entry["result"]
    return out


def note(kept: int, omitted: int, limit: int = MAX_RESULTS_BYTES) -> str:
    """What the ConfigMap holds, in a sentence."""
    text = f"{kept:,} sink results"
    if omitted:
        text += f"; {omitted:,} more left out: they do not fit in {limit // 1024:,} KiB"
    return text


def results_config_map(ref: JobRef, text: str, kept: int, omitted: int) -> dict[str, Any]:
    """The ConfigMap ``<job base>-results``: owned by the job (deleted with it) and labelled
    like its other children."""
    data = {RESULTS_KEY: text, OMITTED_KEY: str(omitted), NOTE_KEY: note(kept, omitted)}
    return configmaps.owned(ref, config_map_name(ref), COMPONENT, data)


async def save(kube: Kube, ref: JobRef, results: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Write ``results`` (task id, value) to the job's results ConfigMap; returns what the
    status says of it (``{name, results, omitted}``). Raises
    :class:`~bndl.k8s.kube.KubeError`."""
    text, kept, omitted = await asyncio.to_thread(json_lines, results)
    name = await configmaps.put(kube, results_config_map(ref, text, kept, omitted))
    return {"name": name, "results": kept, "omitted": omitted}


async def keep(
    kube: Kube, ref: JobRef, results: Sequence[tuple[str, Any]], in_status: int
) -> dict[str, Any]:
    """:func:`save` when the status kept fewer than all ``results`` (``in_status``); ``{}``
    otherwise, or when the write failed (logged: results are a report, they never fail a
    job)."""
    if in_status >= len(results):
        return {}
    try:
        return await save(kube, ref, results)
    except Exception as e:
        log.warning("%s: results ConfigMap not written: %s", ref.name, e)
        return {}


def summary(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The status' ``resultsConfigMap`` (``{}`` when the status holds every result)."""
    value = status.get("resultsConfigMap")
    return value if isinstance(value, Mapping) and value.get("name") else {}
