"""``bndl`` for the cluster as a user runs it: the command line as a real subprocess with the
test cluster's kubeconfig in ``KUBECONFIG`` (as kubectl finds it), against the operator installed
by the chart (``chart_operator``), with tasks of ``bndl_examples.probes`` from the worker image.

* ``bndl submit --watch`` of a job with ``spec.profiling`` shows the progress bar, prints every
  sink result (more than the status holds: they come from the job's ``<job>-results``
  ConfigMap, as do those of ``bndl results``) and the profile, which names the job's own task
  function, and exits 0.
* A failing task: ``bndl submit --watch`` exits 1 with the reason; after the worker pods are
  deleted (the default cleanupPolicy), ``bndl logs`` still shows what the task printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import wait_for_cluster

from . import jobs
from .chart_operator import JOB_TIMEOUT, ChartOperator

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PROBES = "bndl_examples.probes"
SPIN = "spin  (bndl_examples/probes.py:"
"""The profile's entry of the job's task function."""
SINKS = 40
SINK_SIZE = 2000
"""40 results of 2,000 characters: 80 KB of JSON, five times what a job's status holds."""
TIMEOUT = 1200
"""pytest-timeout counts the setup: the first test of a session builds the cluster and both
images (8 minutes on a loaded 2-core machine), then installs the chart."""


def bndl(
    cluster: Cluster, *args: str, timeout: float = JOB_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``bndl ARGS`` in a process of its own, finding the cluster through ``KUBECONFIG``."""
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": str(REPO / "operator"),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bndl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    print(f"bndl {' '.join(args)}: exit {done.returncode} after {time.monotonic() - started:.1f} s")
    return done


def small_workers(replicas: int) -> dict[str, Any]:
    """Workers with small requests, so that they fit on the test cluster's 2 cores."""
    resources = {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "512Mi"}}
    return {
        "replicas": replicas,
        "template": {"spec": {"containers": [{"name": "worker", "resources": resources}]}},
    }


def manifest(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{doc['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def lines(stdout: str) -> dict[str, Any]:
    return {d["task"]: d["result"] for d in map(json.loads, stdout.splitlines())}


@pytest.mark.timeout(TIMEOUT)
def test_submit_watch_shows_progress_all_results_and_the_profile(
    chart_operator: ChartOperator, tmp_path: Path
) -> None:
    op, ns = chart_operator, chart_operator.jobs_namespace
    doc = jobs.job_doc(
        "cli-profiled",
        [
            {"id": "spin", "call": f"{PROBES}:spin", "forEach": {"range": 4}, "args": [1.5]},
            {
                "id": "text",
                "call": f"{PROBES}:text",
                "forEach": {"range": SINKS},
                "args": [SINK_SIZE, {"fromItem": True}],
            },
        ],
        workers=small_workers(2),
        concurrency=2,
        profiling={"cpu": True, "top": 40},
    )
    done = bndl(op.cluster, "submit", manifest(tmp_path, doc), "--watch", "-n", ns)
    print(done.stderr[-4000:])
    assert done.returncode == 0, done.stderr
    assert f"bndljob {ns}/cli-profiled submitted" in done.stderr
    total = 4 + SINKS
    assert f"[{'#' * 30}] {total}/{total} done" in done.stderr  # bndl run's progress bar
    want = {f"text-{i}": str(i % 10) * SINK_SIZE for i in range(SINKS)}
    got = lines(done.stdout)
    assert {k: v for k, v in got.items() if k.startswith("text-")} == want
    assert sorted(k for k in got if k.startswith("spin-")) == [f"spin-{i}" for i in range(4)]
    # the profile, on stderr after the progress bar, names the job's own task function
    profile = done.stderr[done.stderr.index(f"{total}/{total} done") :]
    assert "CPU profile (yappi, CPU time over 2 worker(s))" in profile, profile
    assert SPIN in profile, profile

    status = op.status("cli-profiled")
    assert len(status["results"]) < total and status["resultsOmitted"] > 0  # the status: 16 KiB
    assert status["resultsConfigMap"] == {
        "name": "cli-profiled-results",
        "results": total,
        "omitted": 0,
    }
    results = bndl(op.cluster, "results", "cli-profiled", "-n", ns)
    assert results.returncode == 0, results.stderr
    assert lines(results.stdout) == got and results.stderr == ""
    profiled = bndl(op.cluster, "profile", "cli-profiled", "-n", ns)
    assert profiled.returncode == 0 and SPIN in profiled.stdout, profiled.stderr
    print("bndl profile cli-profiled:\n" + "\n".join(profiled.stdout.splitlines()[:14]))
    table = bndl(op.cluster, "get", "-n", ns)
    assert table.returncode == 0 and "cli-profiled" in table.stdout and "Succeeded" in table.stdout


@pytest.mark.timeout(TIMEOUT)
def test_logs_show_what_a_failed_task_printed_after_its_pods_are_gone(
    chart_operator: ChartOperator, tmp_path: Path
) -> None:
    op, ns = chart_operator, chart_operator.jobs_namespace
    said = ["reading the input", "row 7 looks odd: 'n/a'", "giving up on row 7"]
    doc = jobs.job_doc(
        "cli-fails",
        [
            {"id": "fine", "call": f"{PROBES}:where"},
            {"id": "loud", "call": f"{PROBES}:shout", "args": said, "dependsOn": ["fine"]},
        ],
        workers=small_workers(1),
        attempts=1,
    )
    done = bndl(op.cluster, "submit", manifest(tmp_path, doc), "--watch", "-n", ns)
    assert done.returncode == 1, done.stderr
    assert "job 'cli-fails' Failed: TaskFailed: task 'loud' failed: RuntimeError" in done.stderr
    assert "bndl logs cli-fails" in done.stderr
    # the default cleanupPolicy deletes the worker pods of a failed job
    wait_for_cluster(
        lambda: not jobs.pods(op.cluster, ns, "cli-fails"),
        120,
        "no worker pods",
    )
    for args in ([], ["--task", "loud"]):
        logs = bndl(op.cluster, "logs", "cli-fails", "-n", ns, *args)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.startswith("==> task loud (failed the job;"), logs.stdout
        for line in said:
            assert line in logs.stdout
    other = bndl(op.cluster, "logs", "cli-fails", "-n", ns, "--task", "fine")
    assert other.returncode == 0 and other.stdout == ""
    assert "no lines of task 'fine'" in other.stderr
    deleted = bndl(op.cluster, "delete", "cli-fails", "-n", ns)
    assert deleted.returncode == 0 and "bndljob cli-fails deleted" in deleted.stdout
