"""Cluster-wide profiling: yappi for CPU, tracemalloc for memory, merged over the workers.

The functions prefixed ``_on_worker_`` run on each worker through :meth:`Worker.call`; what they
return is plain data (tuples, tracemalloc snapshots) so that it pickles across the wire.
"""

from __future__ import annotations

import linecache
import os
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from bndl.execute.context import ExecutionContext
    from bndl.execute.workers import Worker


class FuncStat(NamedTuple):
    """One function's CPU figures (yappi's fields, picklable)."""

    module: str
    lineno: int
    name: str
    ncall: int
    nactualcall: int
    ttot: float
    tsub: float

    @property
    def tavg(self) -> float:
        return self.ttot / self.ncall if self.ncall else 0.0


def _on_worker_cpu_start() -> None:
    import yappi

    yappi.start()


def _on_worker_cpu_stop() -> None:
    import yappi

    yappi.stop()


def _on_worker_cpu_clear() -> None:
    import yappi

    yappi.clear_stats()


def _on_worker_cpu_stats() -> list[FuncStat]:
    import yappi

    return [
        FuncStat(s.module, s.lineno, s.name, s.ncall, s.nactualcall, s.ttot, s.tsub)
        for s in yappi.get_func_stats()
    ]


def _on_worker_memory_start(nframes: int = 1) -> None:
    tracemalloc.start(nframes)


def _on_worker_memory_stop() -> None:
    tracemalloc.stop()


def _on_worker_memory_snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot()


def _on_all(ctx: ExecutionContext, fn: Callable[[], Any]) -> list[tuple[Worker, Any]]:
    workers = ctx.workers
    if not workers:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(workers))) as pool:
        results = list(pool.map(lambda w: w.call(fn), workers))
    return list(zip(workers, results, strict=True))


def _strip(path: str) -> str:
    for prefix in sorted([os.getcwd(), *sys.path], key=len, reverse=True):
        if prefix and path.startswith(prefix.rstrip(os.sep) + os.sep):
            return path[len(prefix.rstrip(os.sep)) + 1 :]
    return path


def _as_tuple(modules: str | Sequence[str]) -> tuple[str, ...]:
    return (modules,) if isinstance(modules, str) else tuple(modules)


class CpuProfiling:
    """yappi on every worker: ``start()``, run jobs, ``stop()``, then ``print_stats()``.

    Stats accumulate across start/stop cycles until :meth:`clear`.
    """

    def __init__(self, ctx: ExecutionContext) -> None:
        self.ctx = ctx

    def start(self) -> None:
        """Start profiling on every worker."""
        _on_all(self.ctx, _on_worker_cpu_start)

    def stop(self) -> None:
        """Stop profiling on every worker; the stats stay."""
        _on_all(self.ctx, _on_worker_cpu_stop)

    def clear(self) -> None:
        """Forget the stats on every worker."""
        _on_all(self.ctx, _on_worker_cpu_clear)

    def get_stats(self, per_worker: bool = False) -> Any:
        """Merged stats (a list of :class:`FuncStat`), or (worker, stats) pairs."""
        results = _on_all(self.ctx, _on_worker_cpu_stats)
        if per_worker:
            return results
        merged: dict[tuple[str, int, str], FuncStat] = {}
        for _, stats in results:
            for s in stats:
                key = (s.module, s.lineno, s.name)
                m = merged.get(key)
                merged[key] = (
                    s
                    if m is None
                    else m._replace(
                        ncall=m.ncall + s.ncall,
                        nactualcall=m.nactualcall + s.nactualcall,
                        ttot=m.ttot + s.ttot,
                        tsub=m.tsub + s.tsub,
                    )
                )
        return list(merged.values())

    def print_stats(
        self,
        max_rows: int | None = 100,
        sort_by: str | None = None,
        sort_dir: str | None = None,
        columns: Sequence[tuple[str, int]] = (
            ("name", 84),
            ("ncall", 12),
            ("tsub", 8),
            ("ttot", 8),
            ("tavg", 8),
        ),
        per_worker: bool = False,
        strip_dirs: bool = True,
        include: str | Sequence[str] = (),
        exclude: str | Sequence[str] = (),
        file: IO[str] = sys.stdout,
    ) -> None:
        """Print the stats in yappi's table format, sorted (default: total time, descending)."""
        if per_worker:
            pairs = sorted(self.get_stats(per_worker=True), key=lambda p: p[0].name)
            for worker, stats in pairs:
                print(f"Worker: {worker.name}", file=file)
                self._print(
                    stats, max_rows, sort_by, sort_dir, columns, strip_dirs, include, exclude, file
                )
        else:
            self._print(
                self.get_stats(),
                max_rows,
                sort_by,
                sort_dir,
                columns,
                strip_dirs,
                include,
                exclude,
                file,
            )

    @staticmethod
    def _print(
        stats: list[FuncStat],
        max_rows: int | None,
        sort_by: str | None,
        sort_dir: str | None,
        columns: Sequence[tuple[str, int]],
        strip_dirs: bool,
        include: str | Sequence[str],
        exclude: str | Sequence[str],
        file: IO[str],
    ) -> None:
        sort_by = sort_by or "ttot"
        descending = (sort_dir or "desc") == "desc"
        includes = [m.replace(".", "/") for m in _as_tuple(include)]
        excludes = [m.replace(".", "/") for m in _as_tuple(exclude)]
        rows = []
        for s in stats:
            module = _strip(s.module) if strip_dirs else s.module
            if includes and not any(module.startswith(m) for m in includes):
                continue
            if any(module.startswith(m) for m in excludes):
                continue
            rows.append((s, f"{module}:{s.lineno} {s.name}"))
        rows.sort(key=lambda r: getattr(r[0], sort_by), reverse=descending)
        if max_rows is not None:
            rows = rows[:max_rows]
        print("\nClock type: CPU", file=file)
        print(f"Ordered by: {sort_by}, {'desc' if descending else 'asc'}\n", file=file)
        print("  ".join(name.ljust(width) for name, width in columns), file=file)
        for s, label in rows:
            cells = []
            for name, width in columns:
                if name == "name":
                    text = label if len(label) <= width else ".." + label[-(width - 2) :]
                    cells.append(text.ljust(width))
                elif name in ("ncall", "nactualcall"):
                    cells.append(str(getattr(s, name)).ljust(width))
                else:
                    cells.append(f"{getattr(s, name):.6f}"[:width].ljust(width))
            print("  ".join(cells), file=file)


class MemoryProfiling:
    """tracemalloc on every worker: ``start()``, run jobs, ``print_top()``, ``stop()``."""

    def __init__(self, ctx: ExecutionContext) -> None:
        self.ctx = ctx

    def start(self) -> None:
        _on_all(self.ctx, _on_worker_memory_start)

    def stop(self) -> None:
        """Stop tracing on every worker (this discards the traces)."""
        _on_all(self.ctx, _on_worker_memory_stop)

    def take_snapshot(self, per_worker: bool = False) -> Any:
        """One snapshot with every worker's traces, or (worker, snapshot) pairs."""
        results = _on_all(self.ctx, _on_worker_memory_snapshot)
        if per_worker:
            return results
        return _merge_snapshots([snapshot for _, snapshot in results])

    def print_top(
        self,
        group_by: str = "lineno",
        limit: int = 30,
        compare_to: tracemalloc.Snapshot | None = None,
        per_worker: bool = False,
        strip_dirs: bool = True,
        include: str | Sequence[str] = (),
        exclude: str | Sequence[str] = (),
        file: IO[str] = sys.stdout,
    ) -> Any:
        """Print the top allocations; returns the filtered snapshot(s), usable as ``compare_to``."""
        if per_worker and compare_to is not None:
            raise ValueError("compare_to and per_worker cannot be combined")
        filters = _filters(include, exclude)
        if per_worker:
            filtered = []
            for worker, snapshot in sorted(self.take_snapshot(True), key=lambda p: p[0].name):
                print(f"Worker: {worker.name}", file=file)
                snapshot = snapshot.filter_traces(filters)
                _print_top(snapshot.statistics(group_by), limit, strip_dirs, file)
                filtered.append((worker, snapshot))
            return filtered
        snapshot = self.take_snapshot().filter_traces(filters)
        if compare_to is not None:
            stats: Iterable[Any] = snapshot.compare_to(compare_to, group_by)
        else:
            stats = snapshot.statistics(group_by)
        _print_top(list(stats), limit, strip_dirs, file)
        return snapshot


def _merge_snapshots(snapshots: list[tracemalloc.Snapshot]) -> tracemalloc.Snapshot:
    traces: list[Any] = []
    limit = 1
    for snapshot in snapshots:
        traces.extend(snapshot.traces._traces)  # type: ignore[attr-defined]
        limit = max(limit, snapshot.traceback_limit)
    return tracemalloc.Snapshot(traces, limit)


def _filters(
    include: str | Sequence[str], exclude: str | Sequence[str]
) -> list[tracemalloc.BaseFilter]:
    filters: list[tracemalloc.BaseFilter] = [
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ]
    for inclusive, modules in ((True, include), (False, exclude)):
        for module in _as_tuple(modules):
            path = module.replace(".", os.sep)
            for entry in sys.path:
                if entry:
                    filters.append(tracemalloc.Filter(inclusive, os.path.join(entry, path, "*")))
                    filters.append(tracemalloc.Filter(inclusive, os.path.join(entry, path + ".py")))
    return filters


def _print_top(stats: list[Any], limit: int, strip_dirs: bool, file: IO[str]) -> None:
    for index, stat in enumerate(stats[:limit], 1):
        frame = stat.traceback[0]
        filename = _strip(frame.filename) if strip_dirs else frame.filename
        print(f"#{index}: {filename}:{frame.lineno}: {stat.size / 1024:.1f} KiB", file=file)
        line = linecache.getline(frame.filename, frame.lineno).strip()
        if line:
            print(f"    {line}", file=file)
    other = stats[limit:]
    if other:
        print(f"{len(other)} other: {sum(s.size for s in other) / 1024:.1f} KiB", file=file)
    print(f"Total allocated size: {sum(s.size for s in stats) / 1024:.1f} KiB", file=file)


# --- summaries of a job's profile (bndl run, the operator's <job>-profile ConfigMap) --------------

MACHINERY: tuple[str, ...] = (
    "bndl/worker",
    "bndl/wire",
    "bndl/execute/profile",
    "bndl/manifest/calls",
    "<frozen importlib",
    "importlib",
    "asyncio",
    "aiohttp",
    "multidict",
    "yarl",
    "selectors",
    "threading",
    "queue",
    "concurrent",
    "socket",
    "ssl",
    "contextlib",
    "yappi",
    "tracemalloc",
)
"""Code of the worker itself (its event loop, HTTP server, task threads, the wrapper that imports
a task's function, the import system), left out of job summaries so that the table shows the
job's own functions. Path fragments, matched anywhere in a module's file name (the workers'
paths need not be the summarising process's), or a prefix for names such as ``<frozen ...>``."""


_NO_SOURCE = frozenset(
    ["<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<unknown>"]
)
"""Allocations of the import system and of no known line: left out of the memory summary whatever
the machinery."""


def _is_machinery(path: str, machinery: Sequence[str]) -> bool:
    if path.startswith("<"):
        return any(path.startswith(m) for m in machinery if m.startswith("<"))
    path = "/" + path.replace(os.sep, "/")
    return any(f"/{m}/" in path or path.endswith(f"/{m}.py") for m in machinery)


def cpu_stats_of(yappi_stats: Iterable[Any]) -> list[FuncStat]:
    """Plain :class:`FuncStat` from yappi's stats (``bndl.wire.merge_cpu_stats``, say)."""
    return [
        FuncStat(s.module, s.lineno, s.name, s.ncall, s.nactualcall, s.ttot, s.tsub)
        for s in yappi_stats
    ]


def format_cpu_top(
    stats: Iterable[FuncStat], top: int, machinery: Sequence[str] = MACHINERY, workers: int = 0
) -> str:
    """The ``top`` functions by total time (callees included) as a table, worker code left out."""
    shown, hidden = [], 0
    for s in stats:
        if _is_machinery(s.module, machinery):
            hidden += 1
        else:
            shown.append(s)
    shown.sort(key=lambda s: s.ttot, reverse=True)
    where = f" over {workers} worker(s)" if workers else ""
    lines = [
        f"CPU profile (yappi, CPU time{where}): top {min(top, len(shown))} of {len(shown)} "
        f"functions by total time; {hidden} of the worker's own left out",
        f"{'ttot s':>10}  {'tsub s':>10}  {'calls':>10}  {'tavg ms':>10}  function",
    ]
    for s in shown[:top]:
        label = f"{s.name}  ({_strip(s.module)}:{s.lineno})"
        lines.append(
            f"{s.ttot:10.4f}  {s.tsub:10.4f}  {s.ncall:10d}  {s.tavg * 1000:10.3f}  {label}"
        )
    return "\n".join(lines) + "\n"


def format_memory_top(
    snapshots: Sequence[tracemalloc.Snapshot],
    top: int,
    machinery: Sequence[str] = MACHINERY,
) -> str:
    """The ``top`` source lines by memory allocated and still held, over all the snapshots."""
    # Grouped by line first, then judged once per file: a worker's snapshot holds some 100,000
    # traces, and tracemalloc's filters would match each against every pattern (seconds of CPU).
    left_out: dict[str, bool] = {}

    def shown(stat: tracemalloc.Statistic) -> bool:
        filename = stat.traceback[0].filename
        if filename not in left_out:
            left_out[filename] = filename in _NO_SOURCE or _is_machinery(filename, machinery)
        return not left_out[filename]

    stats = list(filter(shown, _merge_snapshots(list(snapshots)).statistics("lineno")))
    total = sum(s.size for s in stats)
    lines = [
        f"Memory profile (tracemalloc, held at the end over {len(snapshots)} worker(s)): "
        f"top {min(top, len(stats))} of {len(stats)} lines, {total / 1024:.1f} KiB in all",
        f"{'KiB':>10}  {'blocks':>8}  line",
    ]
    for s in stats[:top]:
        frame = s.traceback[0]
        source = linecache.getline(frame.filename, frame.lineno).strip()
        where = f"{_strip(frame.filename)}:{frame.lineno}"
        lines.append(
            f"{s.size / 1024:10.1f}  {s.count:8d}  {where}" + (f"  {source}" if source else "")
        )
    return "\n".join(lines) + "\n"
