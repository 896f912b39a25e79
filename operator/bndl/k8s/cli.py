"""``bndl submit|get|results|logs|profile|delete``: the ``bndl`` command for jobs on a cluster.

:func:`main` is the kubectl plugin ``kubectl-bndl`` (``kubectl bndl submit job.yaml --watch``);
:func:`add_commands` adds the same subcommands to ``bndl``'s parser (:mod:`bndl.cli`) and
:func:`run` runs one: one implementation, two entry points. The work is done by
:mod:`bndl.k8s.client` with the user's kubeconfig and context (``--kubeconfig``, ``--context``,
``-n``), like kubectl. ``submit --watch`` shows the progress bar of ``bndl run`` from the job's
status, then its sink results, and exits like ``argo submit --wait``: 0 when it Succeeded, 1 when
it Failed or was Cancelled (with the reason and message). ``results`` reads the job's
``<job>-results`` ConfigMap when its status could not hold them all; ``logs`` shows what a failed
task printed, from the status, after its worker pods are gone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from bndl.execute.core import Counts
from bndl.k8s import client
from bndl.k8s.client import Api, ClientError

COMMANDS = frozenset({"submit", "get", "results", "logs", "profile", "delete"})
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_commands(commands: Any) -> None:
    """The cluster subcommands, on ``commands`` (an ``add_subparsers()`` object)."""
    submit = commands.add_parser("submit", help="create (or replace) a BndlJob on the cluster")
    submit.add_argument("manifest", type=Path, help="a YAML file with a kind: BndlJob document")
    submit.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="show progress, then the results; exit 1 if it fails",
    )
    submit.add_argument("--timeout", type=float, help="with --watch: give up after S seconds")
    submit.add_argument("--no-progress", action="store_true", help="with --watch: no progress bar")
    get = commands.add_parser("get", help="list BndlJobs (or show one) like kubectl get")
    get.add_argument("job", nargs="?")
    get.add_argument("--all-namespaces", "-A", action="store_true")
    results = commands.add_parser(
        "results", help="a job's sink results (JSON lines, like bndl run)"
    )
    results.add_argument("job")
    logs = commands.add_parser(
        "logs",
        help="what a job's tasks printed (a failed task's output also after its pod is gone)",
    )
    logs.add_argument("job")
    logs.add_argument("--task", help="only the lines that runs of this task printed")
    profile = commands.add_parser("profile", help="the merged profile of a spec.profiling job")
    profile.add_argument("job")
    delete = commands.add_parser("delete", help="delete a BndlJob (cancels its running tasks)")
    delete.add_argument("job")
    for command in (submit, get, results, logs, profile, delete):
        command.add_argument("--namespace", "-n", help="default: the context's namespace")
        command.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
        command.add_argument("--context", help="default: the current context")


def main(argv: Sequence[str] | None = None) -> int:
    """``kubectl-bndl``: the cluster subcommands of ``bndl``."""
    parser = argparse.ArgumentParser(
        prog="kubectl bndl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


def run(
    args: argparse.Namespace,
    api: Callable[[], Api] | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Run one cluster subcommand; returns the exit code. ``api`` makes the :class:`Api`
    (tests pass a fake)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        kube = api() if api is not None else Api(args.kubeconfig, args.context)
        return _COMMANDS[args.command](kube, args, out, err)
    except ClientError as e:
        print(f"bndl {args.command}: {e}", file=err)
        return EXIT_USAGE if e.status is None and args.command == "submit" else EXIT_FAILED


def _submit(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    manifest = client.load_manifest(args.manifest)
    name = client.submit(manifest, args.namespace, api=api)
    namespace = args.namespace or manifest["metadata"].get("namespace")
    where = f"{namespace or api.default_namespace}/{name}"
    print(f"bndljob {where} submitted", file=err)
    if not args.watch:
        return 0
    latest: dict[str, Any] = {}
    from bndl.progress import NoBar, ProgressBar

    bar: Any = NoBar()
    if not args.no_progress:
        bar = ProgressBar(lambda: counts_of(latest), stream=err)
    try:
        with bar:
            for status in client.watch(name, namespace, args.timeout, api=api):
                latest = status
    except KeyboardInterrupt:
        print(f"stopped watching; the job runs on (bndl delete {name} to cancel it)", file=err)
        return EXIT_INTERRUPTED
    _print_results(client.read_results(name, namespace, api=api, job_status=latest), out, err)
    if client.profiled(manifest):  # on stderr, like bndl run's
        try:
            err.write("\n" + client.wait_profile(name, namespace, api=api))
        except client.JobNotFound as e:
            print(f"no profile: {e}", file=err)
    return _verdict(name, latest, err)


def _verdict(name: str, status: Mapping[str, Any], err: IO[str]) -> int:
    phase = status.get("phase", "Pending")
    if phase == "Succeeded":
        return 0
    reason, message = status.get("reason", ""), status.get("message", "")
    print(f"job {name!r} {phase}: {reason}: {message}", file=err)
    print(f"(what its tasks printed: bndl logs {name} [--task ID])", file=err)
    return EXIT_FAILED


def counts_of(status: Mapping[str, Any]) -> Counts | None:
    """The progress bar's figures from a job's ``status.tasks`` (None before there are any)."""
    tasks = status.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks.get("total"):
        return None
    return Counts(
        total=int(tasks.get("total", 0)),
        succeeded=int(tasks.get("succeeded", 0)),
        running=int(tasks.get("running", 0)),
        ready=int(tasks.get("pending", 0)),
        blocked=0,
        retried=int(tasks.get("retried", 0)),
        recomputed=int(tasks.get("recomputed", 0)),
        lost_runs=int(tasks.get("lostRuns", 0)),
    )


def _print_results(found: client.Results, out: IO[str], err: IO[str]) -> None:
    for task, result in found.values.items():
        print(json.dumps({"task": task, "result": result}), file=out, flush=True)
    if found.omitted:
        print(f"({found.omitted} results did not fit in {found.source})", file=err)


def _get(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.job:
        namespace = args.namespace or api.default_namespace
        jobs = [api.get_job(namespace, args.job)]
    else:
        namespace = None if args.all_namespaces else args.namespace or api.default_namespace
        jobs = sorted(api.list_jobs(namespace), key=lambda j: j["metadata"]["name"])
        if not jobs:
            print(f"No BndlJobs found in {namespace or 'any'} namespace.", file=err)
            return 0
    out.write(client.table(jobs, namespaces=args.all_namespaces))
    return 0


def _results(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    status = client.status(args.job, args.namespace, api=api)
    found = client.read_results(args.job, args.namespace, api=api, job_status=status)
    _print_results(found, out, err)
    phase = status.get("phase", "Pending")
    if not found.values and phase not in client.FINISHED:
        print(f"no results yet: the job is {phase}", file=err)
    return 0


def _logs(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    found = client.logs(args.job, args.namespace, args.task, api=api)
    for log in found:
        print(f"==> pod {log.pod}{' (previous container)' if log.previous else ''} <==", file=out)
        out.write(log.text if log.text.endswith("\n") else log.text + "\n")
    if found:
        return 0
    # no pods (cleanupPolicy deletes them) or none with the task's lines: what the status kept
    status = client.status(args.job, args.namespace, api=api)
    failed = client.failed_task(status)
    if failed is not None and args.task in (None, failed[0]):
        task, output = failed
        print(
            f"==> task {task} (failed the job; the end of its output, kept in the status) <==",
            file=out,
        )
        if output:
            out.write(output if output.endswith("\n") else output + "\n")
        else:
            print("(it printed and logged nothing)", file=err)
        return 0
    what = f"no lines of task {args.task!r}" if args.task else "no worker pods"
    print(f"{what} (worker pods are deleted by the job's cleanupPolicy)", file=err)
    if status.get("message"):
        print(f"the job's status: {status.get('phase')}: {status['message']}", file=err)
    return 0


def _profile(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    out.write(client.profile(args.job, args.namespace, api=api))
    return 0


def _delete(api: Api, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    client.delete(args.job, args.namespace, api=api)
    print(f"bndljob {args.job} deleted", file=out)
    return 0


_COMMANDS: dict[str, Callable[[Api, argparse.Namespace, IO[str], IO[str]], int]] = {
    "submit": _submit,
    "get": _get,
    "results": _results,
    "logs": _logs,
    "profile": _profile,
    "delete": _delete,
}


if __name__ == "__main__":
    sys.exit(main())
