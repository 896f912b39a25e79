"""The ``bndl`` command: run a BndlJob manifest on this machine, or on a cluster.

``bndl run job.yaml`` checks the manifest (schema, ids, cycles, importable functions) before it
starts any worker, runs the job on a local cluster with a progress bar on stderr, and prints the
result of each sink task (one that no other task depends on: the job's answer) as a JSON line on
stdout; ``--all-results`` prints every task's. ``bndl validate job.yaml`` only checks. Either
refuses a manifest that expands to more than ``--max-tasks`` tasks before making any.

``bndl submit|get|results|logs|profile|delete`` work with BndlJobs on a Kubernetes cluster, with
the user's kubeconfig and context (``bndl.k8s.cli``, also the kubectl plugin ``kubectl bndl``).
They are imported only when used: ``run`` and ``validate`` need neither the cluster code nor the
``operator`` extra (kubernetes, kopf).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bndl.execute.core import SchedulingError
from bndl.manifest import JobPlan, ManifestError, load_plan

if TYPE_CHECKING:
    from bndl.execute.context import ExecutionContext
    from bndl.manifest.model import Profiling

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

DEFAULT_MAX_TASKS = 1_000_000
"""``--max-tasks`` unless given: a plan of a million tasks takes about a GB on the driver."""

MAX_PROBLEMS_SHOWN = 50
"""Problems of an invalid manifest printed one per line; the rest are counted."""


LOCAL_COMMANDS = frozenset({"run", "validate"})
"""The commands that run on this machine; every other one may be a cluster command."""
CLUSTER_EXTRA = "pip install 'bndl-kubernetes[operator]'"


def _parser(cluster: bool = True) -> argparse.ArgumentParser:
    """The ``bndl`` parser; with ``cluster``, also the cluster subcommands (this imports
    :mod:`bndl.k8s.cli`, but not the kubernetes package)."""
    parser = argparse.ArgumentParser(
        prog="bndl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a BndlJob manifest on local worker processes")
    run.add_argument("manifest", type=Path, help="a YAML file with a kind: BndlJob document")
    run.add_argument(
        "--workers", type=int, help="worker processes to start (default: spec.workers.replicas)"
    )
    run.add_argument("--concurrency", type=int, help="override spec.concurrency")
    run.add_argument("--attempts", type=int, help="override spec.attempts")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument(
        "--all-results",
        action="store_true",
        help="print every task's result (default: only those of tasks nothing depends on)",
    )
    validate = commands.add_parser("validate", help="check a manifest without running it")
    validate.add_argument("manifest", type=Path)
    for command in (run, validate):
        command.add_argument(
            "--max-tasks",
            type=int,
            default=DEFAULT_MAX_TASKS,
            metavar="N",
            help=f"refuse a job of more than N tasks (default: {DEFAULT_MAX_TASKS:,})",
        )
    if cluster:
        from bndl.k8s.cli import add_commands

        add_commands(commands)
    return parser


def _load(path: Path, max_tasks: int) -> JobPlan:
    """The plan, with task functions checked on this machine (code.pythonPath on sys.path)."""
    plan = load_plan(
        path,
        check_imports=True,
        max_tasks=max_tasks,
        max_tasks_hint="raise the limit with --max-tasks",
    )
    for entry in reversed(plan.local_python_path()):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return plan


def _report_invalid(path: Path, error: ManifestError) -> None:
    errors = error.errors or (error,)
    print(
        f"{path}: invalid BndlJob ({len(errors):,} problem(s)); nothing was started:",
        file=sys.stderr,
    )
    for e in errors[:MAX_PROBLEMS_SHOWN]:
        print(f"  {e.field or '<manifest>'}: {e.message}", file=sys.stderr)
    if len(errors) > MAX_PROBLEMS_SHOWN:
        print(f"  ... and {len(errors) - MAX_PROBLEMS_SHOWN:,} more", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    local = bool(argv) and argv[0] in LOCAL_COMMANDS
    try:
        parser = _parser(cluster=not local)
    except ImportError as e:  # a partial install: the cluster code or its dependencies missing
        print(
            f"bndl: the cluster commands are not available ({e}): {CLUSTER_EXTRA}", file=sys.stderr
        )
        return EXIT_INVALID
    args = parser.parse_args(argv)
    if args.command not in LOCAL_COMMANDS:
        from bndl.k8s import cli as cluster_cli

        return cluster_cli.run(args)
    if args.max_tasks < 1:
        print(f"--max-tasks must be at least 1, not {args.max_tasks}", file=sys.stderr)
        return EXIT_INVALID
    try:
        plan = _load(args.manifest, args.max_tasks)
    except FileNotFoundError:
        print(f"{args.manifest}: no such file", file=sys.stderr)
        return EXIT_INVALID
    except ManifestError as e:
        _report_invalid(args.manifest, e)
        return EXIT_INVALID
    if args.command == "validate":
        print(f"{args.manifest}: valid BndlJob {plan.name!r} with {len(plan.tasks)} tasks")
        return 0
    for name in ("workers", "concurrency", "attempts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"--{name} must be at least 1, not {value}", file=sys.stderr)
            return EXIT_INVALID
    return run(
        plan,
        args.workers,
        args.concurrency,
        args.attempts,
        not args.no_progress,
        all_results=args.all_results,
    )


def sink_ids(plan: JobPlan) -> frozenset[str]:
    """The tasks no other task depends on: their results are the job's answer."""
    needed: set[str] = set()
    for task in plan.tasks:
        needed.update(task.depends_on)
    return frozenset(t.id for t in plan.tasks if t.id not in needed)


def run(
    plan: JobPlan,
    workers: int | None = None,
    concurrency: int | None = None,
    attempts: int | None = None,
    progress: bool = True,
    *,
    all_results: bool = False,
) -> int:
    """Run ``plan`` on a local cluster; returns the process exit code.

    Prints the result of each sink task (``sink_ids``) as a JSON line, or of every task with
    ``all_results``; the others are never fetched.
    """
    from bndl.jobs import build_job, result_json
    from bndl.local import LocalCluster
    from bndl.progress import NoBar, ProgressBar

    size = workers or plan.workers.replicas or 1
    printed = None if all_results else sink_ids(plan)
    with LocalCluster(size, python_path=plan.local_python_path()) as ctx:
        job = build_job(ctx, plan)
        results = ctx.execute(
            job,
            order_results=plan.order_results,
            concurrency=concurrency or plan.concurrency,
            attempts=attempts or plan.attempts,
        )
        bar: Any = ProgressBar(job.counts) if progress else NoBar()
        with _profiling(ctx, plan.profiling, sys.stderr):
            try:
                with bar:
                    for task in results:
                        if printed is not None and task.id not in printed:
                            continue
                        line = {"task": task.id, "result": result_json(task.result())}
                        print(json.dumps(line), flush=True)
            except KeyboardInterrupt:
                results.close()
                print("interrupted: the running tasks were cancelled", file=sys.stderr)
                return EXIT_INTERRUPTED
            except SchedulingError as e:
                print(f"job {plan.name!r} failed: {e}", file=sys.stderr)
                return EXIT_FAILED
            except Exception as e:
                failed = _failed_task(job)
                where = f"task {failed!r}" if failed else "a task"
                print(
                    f"job {plan.name!r} failed: {where} raised {type(e).__name__}: {e}",
                    file=sys.stderr,
                )
                traceback.print_exception(e, file=sys.stderr)
                _print_output(where, e)
                return EXIT_FAILED
    return 0


def _print_output(where: str, error: BaseException) -> None:
    """The tail of what a failed task printed and logged (``task_output``), when it did."""
    output = getattr(error, "task_output", "")
    if output:
        print(f"--- what {where} printed and logged (its end) ---", file=sys.stderr)
        print(output.rstrip("\n"), file=sys.stderr)
        print("---", file=sys.stderr)


@contextmanager
def _profiling(ctx: ExecutionContext, spec: Profiling, out: IO[str]) -> Iterator[None]:
    """``spec.profiling``: profile every worker while the body runs, then write the merged top
    entries to ``out`` (also when the job failed; a profiling failure is reported, not raised)."""
    if not (spec.cpu or spec.memory):
        yield
        return
    if spec.cpu:
        ctx.cpu_profiling.clear()
        ctx.cpu_profiling.start()
    if spec.memory:
        ctx.memory_profiling.start()
    try:
        yield
    finally:
        try:
            out.write(_profile_report(ctx, spec))
        except Exception as e:
            print(f"profiling failed: {type(e).__name__}: {e}", file=out)


def _profile_report(ctx: ExecutionContext, spec: Profiling) -> str:
    from bndl.execute.profile import format_cpu_top, format_memory_top

    parts = []
    workers = len(ctx.workers)
    if spec.cpu:
        ctx.cpu_profiling.stop()
        stats = ctx.cpu_profiling.get_stats()
        parts.append(format_cpu_top(stats, spec.top, workers=workers))
    if spec.memory:
        snapshots = [snapshot for _, snapshot in ctx.memory_profiling.take_snapshot(True)]
        ctx.memory_profiling.stop()
        parts.append(format_memory_top(snapshots, spec.top))
    return "\n" + "\n".join(parts)


def _failed_task(job: Any) -> str | None:
    for task in job.tasks:
        if task.failed:
            return str(task.id)
    return None


if __name__ == "__main__":
    sys.exit(main())
