"""The scheduler core against graphlib.TopologicalSorter on the same graphs.

Both build the graph and hand out every node in dependency order; the core also places each task
on one of 8 no-op workers (4 slots each), so it does strictly more. Run: python bench/scheduler.py
"""

from __future__ import annotations

import argparse
import graphlib
import time
from collections import deque
from collections.abc import Callable, Hashable

from bndl.execute.core import Dispatch, Finished, SchedulerCore, TaskSpec

Graph = dict[Hashable, list[Hashable]]


def independent(n: int) -> Graph:
    return {i: [] for i in range(n)}


def all_to_all(n: int) -> Graph:
    maps: list[Hashable] = [("map", i) for i in range(n)]
    graph: Graph = {m: [] for m in maps}
    graph.update({("reduce", i): maps for i in range(n)})
    return graph


def chain(n: int) -> Graph:
    return {i: [i - 1] if i else [] for i in range(n)}


def run_core(graph: Graph, workers: int = 8, concurrency: int = 4) -> int:
    """Schedule the graph on no-op workers; returns the number of decisions made."""
    core = SchedulerCore(
        [TaskSpec(t, deps) for t, deps in graph.items()],
        [f"w{i}" for i in range(workers)],
        concurrency=concurrency,
    )
    decisions = 0
    queue: deque[Dispatch] = deque()
    out = core.start()
    while True:
        decisions += len(out)
        for d in out:
            if type(d) is Dispatch:
                queue.append(d)
        if not queue:
            break
        d = queue.popleft()
        out = core.task_succeeded(d.task, d.run)
    assert core.closed and isinstance(out[-1], Finished), "the job did not finish"
    return decisions


def run_graphlib(graph: Graph) -> int:
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    handed_out = 0
    while sorter.is_active():
        ready = sorter.get_ready()
        handed_out += len(ready)
        sorter.done(*ready)
    return handed_out


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the graphs (e.g. 0.1)")
    args = parser.parse_args()
    s = args.scale
    cases = [
        (f"(a) {int(100_000 * s):,} independent tasks, 8 workers", independent(int(100_000 * s))),
        (
            f"(b) {int(1000 * s):,} x {int(1000 * s):,} all-to-all ({int(1000 * s) ** 2:,} edges)",
            all_to_all(int(1000 * s)),
        ),
        (f"(c) {int(10_000 * s):,}-task chain", chain(int(10_000 * s))),
    ]
    print(
        f"{'graph':<52} {'bndl s':>8} {'tasks/s':>10} {'decisions/s':>12} "
        f"{'graphlib s':>10} {'ratio':>6}"
    )
    for name, graph in cases:
        core_s, decisions = timed(lambda g=graph: run_core(g))  # type: ignore[misc]
        lib_s, _ = timed(lambda g=graph: run_graphlib(g))  # type: ignore[misc]
        n = len(graph)
        print(
            f"{name:<52} {core_s:>8.3f} {n / core_s:>10,.0f} {decisions / core_s:>12,.0f} "
            f"{lib_s:>10.3f} {core_s / lib_s:>5.1f}x"
        )


if __name__ == "__main__":
    main()
