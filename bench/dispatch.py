"""Task dispatch on 2 worker processes: bndl against Dask, Ray and ProcessPoolExecutor.

One invocation runs every system on the same three workloads, side by side:

- 10,000 trivial independent tasks;
- a 2,000-task chain (each task takes the previous task's result);
- 1,000 maps and a binary tree reduce over their results.

It prints tasks/s per system and each system's ratio to bndl, first with every system at its
default settings (bndl: one task per worker at a time, dispatched ahead, with mutual TLS between
the driver and its workers; Dask: one thread per worker; Ray: one CPU per worker), then, with
``--tuned``, with 8 slots per worker where a system has them (bndl's concurrency, Dask's
threads per worker). Ray and Dask run only if installed.
``bndl-plain`` is bndl with encryption off (a benchmark-only switch): what encryption costs.
Each system runs the workloads ``--rounds`` times in one session (3 by default; the first round
includes whatever warms up: connections, threads, imports) and the table shows the median round.
Run: python bench/dispatch.py [--scale 0.1] [--tuned] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

WORKERS = 2
# The tuned table: slots per worker (bndl's concurrency, Dask's threads per worker).
TUNED_SLOTS = 8


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


Workload = tuple[str, int, Callable[[Any, int], int]]
Rounds = dict[str, list[tuple[int, float]]]
"""Per workload, (tasks, seconds) of each round."""


# ----------------------------------------------------------------------------------- bndl


def bndl_independent(ctx: Any, n: int) -> int:
    from bndl.execute.job import Job, RmiTask

    tasks = [RmiTask(ctx, i, inc, (i,)) for i in range(n)]
    results = [t.result() for t in ctx.execute(Job(ctx, tasks), order_results=False)]
    assert len(results) == n
    return n


def bndl_chain(ctx: Any, n: int) -> int:
    from bndl.execute.job import Job, ResultOf, RmiTask

    tasks = [RmiTask(ctx, 0, inc, (0,))]
    for i in range(1, n):
        tasks.append(RmiTask(ctx, i, inc, (ResultOf(i - 1),)).depends_on(tasks[-1]))
    last = list(ctx.execute(Job(ctx, tasks)))[-1]
    assert last.result() == n
    return n


def bndl_tree(ctx: Any, n: int) -> int:
    from bndl.execute.job import Job, ResultOf, RmiTask

    layer = [RmiTask(ctx, ("map", i), inc, (i,)) for i in range(n)]
    tasks = list(layer)
    level = 0
    while len(layer) > 1:
        level += 1
        added = []
        for i in range(0, len(layer) - 1, 2):
            a, b = layer[i], layer[i + 1]
            t = RmiTask(ctx, (level, i), add, (ResultOf(a.id), ResultOf(b.id))).depends_on(a, b)
            added.append(t)
        tasks += added
        layer = added + layer[-1:] if len(layer) % 2 else added  # an odd one out goes up
    results = list(ctx.execute(Job(ctx, tasks), order_results=False))
    assert layer[0].result() == sum(range(1, n + 1))
    return len(results)


def run_bndl(workloads: list[tuple[str, int]], slots: int | None, insecure: bool = False) -> Rounds:
    from bndl.execute import CONCURRENCY
    from bndl.local import LocalCluster
    from bndl.wire.tls import BENCH_INSECURE_ENV

    fns = {"independent": bndl_independent, "chain": bndl_chain, "tree": bndl_tree}
    out: Rounds = {}
    config = {} if slots is None else {CONCURRENCY: slots}
    # Encryption off needs both the switch and the variable (the workers' environment only).
    plain: dict[str, Any] = (
        {"insecure_benchmark_only": True, "env": {BENCH_INSECURE_ENV: "1"}} if insecure else {}
    )
    with LocalCluster(workers=WORKERS, config=config, **plain) as ctx:
        bndl_independent(ctx, 100)  # warm up: imports on the workers, connections
        for name, n in workloads:
            start = time.perf_counter()
            count = fns[name](ctx, n)
            out.setdefault(name, []).append((count, time.perf_counter() - start))
    return out


def run_bndl_plain(workloads: list[tuple[str, int]], slots: int | None) -> Rounds:
    """bndl without encryption: what mutual TLS costs (never run a cluster like this)."""
    return run_bndl(workloads, slots, insecure=True)


# ----------------------------------------------------------------------------------- dask


def run_dask(workloads: list[tuple[str, int]], slots: int | None) -> Rounds:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return None  # type: ignore[return-value]

    out: Rounds = {}
    threads = {} if slots is None else {"threads_per_worker": slots}
    cluster = LocalCluster(n_workers=WORKERS, processes=True, dashboard_address=None, **threads)
    with cluster, Client(cluster) as client:
        client.gather(client.map(inc, range(100)))
        for name, n in workloads:
            start = time.perf_counter()
            if name == "independent":
                futures = client.map(inc, range(n), pure=False)
                client.gather(futures)
                count = n
            elif name == "chain":
                f = client.submit(inc, 0, pure=False)
                for _ in range(1, n):
                    f = client.submit(inc, f, pure=False)
                assert f.result() == n
                count = n
            else:
                layer = client.map(inc, range(n), pure=False)
                count = n
                while len(layer) > 1:
                    nxt = [
                        client.submit(add, layer[i], layer[i + 1], pure=False)
                        for i in range(0, len(layer) - 1, 2)
                    ]
                    if len(layer) % 2:
                        nxt.append(layer[-1])
                    count += len(layer) // 2
                    layer = nxt
                assert layer[0].result() == sum(range(1, n + 1))
            out.setdefault(name, []).append((count, time.perf_counter() - start))
    return out


# ------------------------------------------------------------------------------------ ray


def run_ray(workloads: list[tuple[str, int]], slots: int | None) -> Rounds | None:
    try:
        import ray
    except ImportError:
        return None
    if slots is not None:
        return None  # Ray's tasks take a CPU each: no slots to tune
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        rinc = ray.remote(inc)
        radd = ray.remote(add)
        ray.get([rinc.remote(i) for i in range(100)])
        out: Rounds = {}
        for name, n in workloads:
            start = time.perf_counter()
            if name == "independent":
                ray.get([rinc.remote(i) for i in range(n)])
                count = n
            elif name == "chain":
                ref = rinc.remote(0)
                for _ in range(1, n):
                    ref = rinc.remote(ref)
                assert ray.get(ref) == n
                count = n
            else:
                layer = [rinc.remote(i) for i in range(n)]
                count = n
                while len(layer) > 1:
                    nxt = [radd.remote(layer[i], layer[i + 1]) for i in range(0, len(layer) - 1, 2)]
                    if len(layer) % 2:
                        nxt.append(layer[-1])
                    count += len(layer) // 2
                    layer = nxt
                assert ray.get(layer[0]) == sum(range(1, n + 1))
            out.setdefault(name, []).append((count, time.perf_counter() - start))
        return out
    finally:
        ray.shutdown()


# --------------------------------------------------------------------- ProcessPoolExecutor


def run_pool(workloads: list[tuple[str, int]], slots: int | None) -> Rounds:
    if slots is not None:
        return None  # type: ignore[return-value]  # a process per worker: nothing to tune
    out: Rounds = {}
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(inc, range(100)))
        for name, n in workloads:
            start = time.perf_counter()
            if name == "independent":
                futures = [pool.submit(inc, i) for i in range(n)]
                [f.result() for f in futures]
                count = n
            elif name == "chain":  # no dependencies in the pool: the driver waits hop by hop
                value = 0
                for _ in range(n):
                    value = pool.submit(inc, value).result()
                count = n
            else:
                values = [f.result() for f in [pool.submit(inc, i) for i in range(n)]]
                count = n
                while len(values) > 1:
                    pairs = [
                        pool.submit(add, values[i], values[i + 1])
                        for i in range(0, len(values) - 1, 2)
                    ]
                    rest = [values[-1]] if len(values) % 2 else []
                    count += len(pairs)
                    values = [f.result() for f in pairs] + rest
                assert values[0] == sum(range(1, n + 1))
            out.setdefault(name, []).append((count, time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the workloads")
    parser.add_argument("--only", nargs="*", help="systems to run (bndl bndl-plain dask ray pool)")
    parser.add_argument(
        "--tuned", action="store_true", help=f"also a table with {TUNED_SLOTS} slots per worker"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of every workload per system (median)"
    )
    args = parser.parse_args()
    s = args.scale
    workloads = [
        ("independent", int(10_000 * s)),
        ("chain", int(2_000 * s)),
        ("tree", int(1_000 * s)),
    ] * args.rounds
    systems: dict[str, Callable[[list[tuple[str, int]], int | None], Any]] = {
        "bndl": run_bndl,
        "bndl-plain": run_bndl_plain,
        "dask": run_dask,
        "ray": run_ray,
        "pool": run_pool,
    }
    tables: list[tuple[str, int | None]] = [("every system at its default settings", None)]
    if args.tuned:
        tables.append((f"{TUNED_SLOTS} slots per worker where a system has them", TUNED_SLOTS))
    for title, slots in tables:
        results: dict[str, Rounds] = {}
        for name, fn in systems.items():
            if args.only and name not in args.only:
                continue
            measured = fn(workloads, slots)
            if measured is None:
                print(f"{name}: not installed or nothing to tune, skipped")
                continue
            results[name] = measured
        print_table(title, workloads[:3], results)


def print_table(title: str, workloads: list[tuple[str, int]], results: dict[str, Rounds]) -> None:
    """One line per workload and system: the median round (by seconds)."""
    print(f"\n{title} ({WORKERS} workers; the median of the rounds)")
    print(
        f"{'workload':<14}{'system':<12}{'tasks':>8}{'seconds':>9}{'tasks/s':>10}"
        f"{'ms/task':>9}{'bndl is':>10}"
    )
    for workload, _ in workloads:
        base = median(results["bndl"][workload]) if "bndl" in results else None
        for system, measured in results.items():
            count, seconds = median(measured[workload])
            rate = count / seconds
            ratio = ""
            if base and system != "bndl":
                ratio = f"{(base[0] / base[1]) / rate:.2f}x"
            print(
                f"{workload:<14}{system:<12}{count:>8}{seconds:>9.3f}{rate:>10,.0f}"
                f"{1000 * seconds / count:>9.3f}{ratio:>10}"
            )


def median(rounds: list[tuple[int, float]]) -> tuple[int, float]:
    return sorted(rounds, key=lambda r: r[1])[len(rounds) // 2]


if __name__ == "__main__":
    main()
