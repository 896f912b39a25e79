"""``spec.profiling`` on Kubernetes: profile the worker pods while a job runs, merge, keep the text.

The operator runs its schedulers on kopf's event loop, so everything here is async and talks to the
workers through their :class:`~bndl.wire.WorkerClient` (one request per worker, all at once);
merging the workers' stats, which can take a while for large profiles, runs on a thread. The
merged summary (the same tables ``bndl run`` prints) is bounded to :data:`MAX_PROFILE_BYTES`
and stored in a ConfigMap owned by the job (:func:`profile_config_map`), which ``bndl profile JOB``
prints.

A worker that cannot be profiled (gone, or restarted and not profiling) is left out of the merge
and named in the summary: profiling never fails a job.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bndl.driver import HttpWorker
from bndl.execute.profile import cpu_stats_of, format_cpu_top, format_memory_top
from bndl.k8s import configmaps
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import Kube
from bndl.manifest import Profiling
from bndl.wire import merge_cpu_stats

MAX_PROFILE_BYTES = 256 * 1024
"""Largest summary kept (UTF-8 bytes); a longer one is cut, with a note. ConfigMaps hold 1 MiB."""
PROFILE_KEY = "profile.txt"
"""The key of the summary in the job's profile ConfigMap."""
COMPONENT = "profile"

T = TypeVar("T")


def config_map_name(ref: JobRef) -> str:
    """``<job base>-profile``."""
    return f"{ref.base}-profile"


async def _on_all(
    workers: Sequence[HttpWorker], call: Callable[[HttpWorker], Awaitable[T]]
) -> tuple[list[tuple[HttpWorker, T]], list[str]]:
    """``call`` on every worker at once: the answers, and a line per worker that failed."""
    outcomes = await asyncio.gather(*(call(w) for w in workers), return_exceptions=True)
    done, failed = [], []
    for worker, outcome in zip(workers, outcomes, strict=True):
        if isinstance(outcome, Exception):
            failed.append(f"{worker.name}: {type(outcome).__name__}: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            done.append((worker, outcome))
    return done, failed


async def start(workers: Sequence[HttpWorker], spec: Profiling, *, clear: bool = True) -> None:
    """Start the profilers ``spec`` asks for on every worker, CPU stats cleared first unless
    ``clear`` is false (an operator that adopts a running job keeps what its predecessor began).

    Call it again with the workers that join later. A worker that cannot be reached is skipped
    (and named by :func:`collect`)."""
    if spec.cpu:

        async def start_cpu(worker: HttpWorker) -> None:
            if clear:
                await worker.client.cpu_profiling("clear")
            await worker.client.cpu_profiling("start")

        await _on_all(workers, start_cpu)
    if spec.memory:
        await _on_all(workers, lambda w: w.client.memory_profiling("start"))


async def collect(workers: Sequence[HttpWorker], spec: Profiling) -> str:
    """Stop the profilers and return the merged summary of every worker that answered, at most
    :data:`MAX_PROFILE_BYTES` long."""
    parts: list[str] = []
    failures: list[str] = []
    if spec.cpu:
        await _on_all(workers, lambda w: w.client.cpu_profiling("stop"))
        blobs, failed = await _on_all(workers, lambda w: w.client.cpu_stats())
        failures += [f"cpu {line}" for line in failed]
        parts.append(await asyncio.to_thread(_cpu_summary, [b for _, b in blobs], spec.top))
    if spec.memory:
        snapshots, failed = await _on_all(workers, lambda w: w.client.memory_snapshot())
        failures += [f"memory {line}" for line in failed]
        await _on_all(workers, lambda w: w.client.memory_profiling("stop"))
        parts.append(await asyncio.to_thread(_memory_summary, [s for _, s in snapshots], spec.top))
    if failures:
        parts.append(
            "Workers left out (not reachable or not profiling):\n"
            + "".join(f"  {line}\n" for line in failures)
        )
    return bounded("\n".join(parts))


def _cpu_summary(blobs: list[bytes], top: int) -> str:
    return format_cpu_top(cpu_stats_of(merge_cpu_stats(blobs)), top, workers=len(blobs))


def _memory_summary(snapshots: list[tracemalloc.Snapshot], top: int) -> str:
    return format_memory_top(snapshots, top)


def bounded(text: str, limit: int = MAX_PROFILE_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, ending with a note saying so when it was."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f"\n[... cut: the profile had {len(data):,} bytes, {limit:,} are kept]\n"
    head = data[: limit - len(note.encode())].decode(errors="ignore")
    return head + note


def profile_config_map(ref: JobRef, text: str) -> dict[str, Any]:
    """The ConfigMap ``<job base>-profile`` holding the summary under ``profile.txt``: owned by
    the job (deleted with it) and labelled like its other children."""
    return configmaps.owned(ref, config_map_name(ref), COMPONENT, {PROFILE_KEY: bounded(text)})


async def save(kube: Kube, ref: JobRef, text: str) -> str:
    """Write the summary to the job's profile ConfigMap (created, or its data replaced when it
    exists: an operator that adopted the job collects again); returns the ConfigMap's name.
    Raises :class:`~bndl.k8s.kube.KubeError` like every write of the operator."""
    return await configmaps.put(kube, profile_config_map(ref, text))
