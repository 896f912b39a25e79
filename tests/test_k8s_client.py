"""``bndl.k8s.client`` and the cluster subcommands (``kubectl bndl ...``) against a fake API
server: manifests, apply semantics, waiting, exit codes, tables, logs by task, profiles. The real
``kubernetes`` package is exercised where it needs no server (kubeconfig contexts, a refused
connection); runs on a real cluster belong to tests/e2e."""

from __future__ import annotations

import argparse
import copy
import functools
import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bndl.k8s import cli as k8s_cli
from bndl.k8s import client
from bndl.k8s.client import ClientError, JobNotFound, WaitTimeout

JOB = """\
apiVersion: bndl.io/v1alpha1
kind: BndlJob
metadata: {name: squares}
spec:
  tasks:
    - {id: a, call: "m:f"}
"""


class FakeApi:
    """The :class:`bndl.k8s.client.Api` calls, on dicts. ``statuses`` are what successive
    reads of a job's status return (the last one repeats)."""

    default_namespace = "team"

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.pod_logs: dict[tuple[str, bool], str] = {}
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.jobs.get((namespace, name))
        if job is None:
            raise JobNotFound(f"bndljob {namespace}/{name}: not found", 404)
        if self.statuses:
            job["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return copy.deepcopy(job)

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        return [j for (ns, _), j in self.jobs.items() if namespace in (None, ns)]

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create {namespace}")
        key = (namespace, body["metadata"]["name"])
        if key in self.jobs:
            raise ClientError("already exists", 409)
        body = copy.deepcopy(body)
        body["metadata"].update(uid="uid-1", resourceVersion="7", generation=1)
        self.jobs[key] = body
        return body

    def replace_job(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"replace {namespace} rv={body['metadata'].get('resourceVersion')}")
        self.jobs[(namespace, name)] = copy.deepcopy(body)
        return body

    def delete_job(self, namespace: str, name: str) -> None:
        self.get_job(namespace, name)
        del self.jobs[(namespace, name)]

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(f"pods {selector}")
        return self.pods

    def pod_log(self, namespace: str, pod: str, container: str, previous: bool) -> str:
        try:
            return self.pod_logs[(pod, previous)]
        except KeyError:
            raise ClientError("previous terminated container not found", 400) from None

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self.config_maps[(namespace, name)]
        except KeyError:
            raise JobNotFound(f"configmap {namespace}/{name}: not found", 404) from None


def cli(api: FakeApi, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    k8s_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    code = k8s_cli.run(parser.parse_args(argv), lambda: api, out, err)  # type: ignore[arg-type, return-value]
    return code, out.getvalue(), err.getvalue()


def job_file(tmp_path: Path, text: str = JOB) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def status(phase: str, done: int = 0, total: int = 3, **more: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "observedGeneration": 1,
        "tasks": {"total": total, "succeeded": done, "running": 1, "pending": total - done - 1},
        **more,
    }


# --- manifests and apply ------------------------------------------------------------------------


def test_manifests_load_from_a_path_text_or_dict(tmp_path: Path) -> None:
    path = job_file(tmp_path, "# a comment\n---\n" + JOB)
    assert client.load_manifest(path)["metadata"]["name"] == "squares"
    assert client.load_manifest(str(path))["spec"]["tasks"][0]["id"] == "a"
    assert client.load_manifest(JOB)["kind"] == "BndlJob"
    body = client.load_manifest(JOB)
    assert client.load_manifest(body) == body and client.load_manifest(body) is not body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Pod\napiVersion: v1\n", "exactly one kind: BndlJob document, found 0"),
        (JOB + "---\n" + JOB, "found 2"),
        (JOB.replace("metadata: {name: squares}", "metadata: {}"), "no metadata.name"),
        (JOB.replace("v1alpha1", "v9"), "not a BndlJob"),
    ],
)
def test_bad_manifests_are_refused(text: str, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        client.load_manifest(text)


def test_submit_creates_then_replaces_like_apply(tmp_path: Path) -> None:
    api = FakeApi()
    assert client.submit(job_file(tmp_path), api=api) == "squares"  # type: ignore[arg-type]
    assert ("team", "squares") in api.jobs  # the context's namespace
    client.submit(job_file(tmp_path), api=api)  # type: ignore[arg-type]
    assert api.calls == ["create team", "create team", "replace team rv=7"]
    client.submit(client.load_manifest(JOB), "other", api=api)  # type: ignore[arg-type]
    assert api.jobs[("other", "squares")]["metadata"]["namespace"] == "other"


def test_the_namespace_flag_and_the_manifest_must_agree(tmp_path: Path) -> None:
    api = FakeApi()
    text = JOB.replace("{name: squares}", "{name: squares, namespace: ns1}")
    client.submit(text, api=api)  # type: ignore[arg-type]
    assert ("ns1", "squares") in api.jobs
    with pytest.raises(ClientError, match="'ns1' does not match the requested 'ns2'"):
        client.submit(text, "ns2", api=api)  # type: ignore[arg-type]


# --- waiting ------------------------------------------------------------------------------------


def test_wait_returns_the_finished_status_and_skips_a_stale_one() -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    api.jobs[("team", "squares")]["metadata"]["generation"] = 2  # replaced: the operator lags
    stale = status("Failed", observedGeneration=1)
    api.statuses = [stale, status("Running", observedGeneration=2), status("Succeeded", 3)]
    api.statuses[-1]["observedGeneration"] = 2
    seen = list(client.watch("squares", api=api, poll=0))  # type: ignore[arg-type]
    assert [s["phase"] for s in seen] == ["Failed", "Running", "Succeeded"]
    api.statuses = [status("Cancelled", observedGeneration=2)]
    assert client.wait("squares", api=api)["phase"] == "Cancelled"  # type: ignore[arg-type]


def test_wait_times_out_and_a_missing_job_is_not_found() -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    api.statuses = [status("Running")]
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 1.0

    with pytest.raises(WaitTimeout, match="did not finish within 3 s \\(phase Running\\)"):
        list(client.watch("squares", None, 3, api=api, clock=lambda: now[0], sleep=sleep))  # type: ignore[arg-type]
    with pytest.raises(JobNotFound):
        client.wait("nope", api=api)  # type: ignore[arg-type]


# --- the subcommands ----------------------------------------------------------------------------


@pytest.fixture
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """``submit --watch`` reads the status every 10 ms, not every second: the fake API answers
    at once, and each status it holds is read once whatever the interval."""
    monkeypatch.setattr(client, "watch", functools.partial(client.watch, poll=0.01))


def test_submit_watch_shows_progress_and_results_and_exits_0(
    tmp_path: Path, quick_polls: None
) -> None:
    api = FakeApi()
    done = status("Succeeded", 3, results={"total": 14, "top": ["a", 2]})
    api.statuses = [{}, status("Running", 1), done]
    code, out, err = cli(api, "submit", str(job_file(tmp_path)), "--watch")
    assert code == 0, err
    assert out.splitlines() == [
        '{"task": "total", "result": 14}',
        '{"task": "top", "result": ["a", 2]}',
    ]
    assert "bndljob team/squares submitted" in err
    assert "[##############################] 3/3 done" in err  # bndl run's progress bar


def test_submit_watch_of_a_failed_job_exits_1_with_the_reason(tmp_path: Path) -> None:
    api = FakeApi()
    api.statuses = [
        status("Failed", 1, reason="TaskFailed", message="task 'b' raised ValueError: no"),
    ]
    code, _, err = cli(api, "submit", str(job_file(tmp_path)), "-w", "--no-progress", "-n", "x")
    assert code == 1
    assert "job 'squares' Failed: TaskFailed: task 'b' raised ValueError: no" in err
    assert "bndl logs squares" in err
    api.statuses = [status("Cancelled")]
    assert cli(api, "submit", str(job_file(tmp_path)), "-w", "--no-progress")[0] == 1


def test_submit_without_watch_and_a_bad_manifest(tmp_path: Path) -> None:
    api = FakeApi()
    assert cli(api, "submit", str(job_file(tmp_path)))[0] == 0
    code, _, err = cli(api, "submit", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err


def test_counts_for_the_progress_bar() -> None:
    counts = k8s_cli.counts_of(
        {"tasks": {"total": 5, "succeeded": 2, "running": 1, "pending": 2, "retried": 1}}
    )
    assert counts is not None
    assert (counts.total, counts.succeeded, counts.running, counts.retried) == (5, 2, 1, 1)
    assert k8s_cli.counts_of({}) is None and k8s_cli.counts_of({"tasks": {"total": 0}}) is None


def test_get_prints_a_kubectl_like_table() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    jobs = [
        {
            "metadata": {"name": "squares", "creationTimestamp": "2026-01-02T11:55:00Z"},
            "status": {"phase": "Running", "workersSummary": "2/2", "tasksSummary": "10/20"},
        },
        {
            "metadata": {"name": "a-long-job-name", "creationTimestamp": "2025-12-30T12:00:00Z"},
            "status": {"phase": "Failed", "reason": "TaskFailed", "tasksSummary": "1/3"},
        },
    ]
    assert client.table(jobs, now).splitlines() == [
        "NAME              PHASE     WORKERS   TASKS   REASON       AGE",
        "squares           Running   2/2       10/20                5m",
        "a-long-job-name   Failed              1/3     TaskFailed   3d",
    ]
    assert client.age("2026-01-02T11:59:18Z", now) == "42s"
    assert client.age("2026-01-02T09:00:00Z", now) == "3h"
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    code, out, _ = cli(api, "get")
    assert code == 0 and out.startswith("NAME ") and "\nsqueres" not in out and "squares" in out
    code, _, err = cli(api, "get", "-n", "empty")
    assert code == 0 and "No BndlJobs found in empty namespace." in err


def test_results_profile_and_delete() -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    api.statuses = [status("Succeeded", 3, results={"total": 14}, resultsOmitted=2)]
    code, out, err = cli(api, "results", "squares")
    assert (code, out) == (0, '{"task": "total", "result": 14}\n')
    assert "2 results did not fit" in err
    assert client.results("squares", api=api) == {"total": 14}  # type: ignore[arg-type]
    api.statuses = [status("Running", 1)]
    code, out, err = cli(api, "results", "squares")
    assert (code, out) == (0, "") and "no results yet: the job is Running" in err
    code, _, err = cli(api, "profile", "squares")
    assert code == 1 and "has no profile (yet)" in err
    api.config_maps[("team", "squares-profile")] = {"data": {"profile.txt": "CPU profile\n"}}
    assert cli(api, "profile", "squares")[:2] == (0, "CPU profile\n")
    assert cli(api, "delete", "squares")[:2] == (0, "bndljob squares deleted\n")
    code, _, err = cli(api, "delete", "squares")
    assert code == 1 and "bndl delete: bndljob team/squares: not found" in err


def test_results_too_big_for_the_status_are_read_from_the_config_map(tmp_path: Path) -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    stored = {"name": "squares-results", "results": 3, "omitted": 1}
    api.statuses = [
        status("Succeeded", 3, results={"a": 1}, resultsOmitted=3, resultsConfigMap=stored)
    ]
    api.config_maps[("team", "squares-results")] = {
        "data": {
            "results.jsonl": '{"task": "a", "result": 1}\n{"task": "b", "result": [2]}\n'
            '{"task": "c", "result": "three"}\n',
            "omitted": "1",
        }
    }
    code, out, err = cli(api, "results", "squares")
    assert code == 0
    assert out.splitlines() == [
        '{"task": "a", "result": 1}',
        '{"task": "b", "result": [2]}',
        '{"task": "c", "result": "three"}',
    ]
    assert "(1 results did not fit in configmap squares-results)" in err
    assert client.results("squares", api=api) == {"a": 1, "b": [2], "c": "three"}  # type: ignore[arg-type]
    code, out, _ = cli(api, "submit", str(job_file(tmp_path)), "--watch", "--no-progress")
    assert code == 0 and len(out.splitlines()) == 3  # --watch prints them all too
    del api.config_maps[("team", "squares-results")]  # gone: what the status kept
    found = client.read_results("squares", api=api)  # type: ignore[arg-type]
    assert (found.values, found.omitted, found.source) == ({"a": 1}, 3, "the job's status")


def test_submit_watch_of_a_profiled_job_prints_its_profile_once_written(tmp_path: Path) -> None:
    api = FakeApi()
    profiled = JOB.replace("spec:\n", "spec:\n  profiling: {cpu: true}\n")
    api.statuses = [status("Succeeded", 3, results={"a": 1})]
    api.config_maps[("team", "squares-profile")] = {"data": {"profile.txt": "CPU: m.py:f\n"}}
    code, out, err = cli(api, "submit", str(job_file(tmp_path, profiled)), "--watch")
    assert (code, out) == (0, '{"task": "a", "result": 1}\n')
    assert err.endswith("\nCPU: m.py:f\n")  # after the progress bar, like bndl run's
    code, _, err = cli(api, "submit", str(job_file(tmp_path)), "--watch")  # none asked for
    assert code == 0 and "CPU" not in err
    # written a moment after the final phase: waited for, within a bound
    del api.config_maps[("team", "squares-profile")]
    now, sleeps = [0.0], []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 2:
            api.config_maps[("team", "squares-profile")] = {"data": {"profile.txt": "late\n"}}

    def wait(timeout: float) -> str:
        fake: Any = api
        return client.wait_profile(
            "squares", None, timeout, api=fake, clock=lambda: now[0], sleep=sleep
        )

    assert wait(10) == "late\n" and sleeps == [1.0, 1.0]
    del api.config_maps[("team", "squares-profile")]
    with pytest.raises(JobNotFound, match="has no profile \\(yet\\)"):
        wait(1.5)
    assert client.profiled(client.load_manifest(profiled))
    assert not client.profiled(client.load_manifest(JOB))


def test_logs_after_a_failure_show_the_failed_task_s_output_from_the_status() -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    failed = {"id": "b", "output": "loading\nTraceback ... ValueError: bad row 7\n"}
    api.statuses = [status("Failed", reason="TaskFailed", message="...", failedTask=failed)]
    code, out, err = cli(api, "logs", "squares")  # no pods: cleanupPolicy deleted them
    assert code == 0, err
    assert out == (
        "==> task b (failed the job; the end of its output, kept in the status) <==\n"
        "loading\nTraceback ... ValueError: bad row 7\n"
    )
    assert cli(api, "logs", "squares", "--task", "b")[1] == out
    code, out, err = cli(api, "logs", "squares", "--task", "a")
    assert (code, out) == (0, "") and "no lines of task 'a'" in err
    api.statuses = [status("Failed", failedTask={"id": "b", "output": ""})]
    code, out, err = cli(api, "logs", "squares")
    assert out.endswith("kept in the status) <==\n") and "(it printed and logged nothing)" in err
    assert client.failed_task({"failedTask": {"id": "x"}}) == ("x", "")
    assert client.failed_task({}) is None


def test_logs_of_a_task_include_a_restarted_container_s_previous_log() -> None:
    api = FakeApi()
    client.submit(JOB, api=api)  # type: ignore[arg-type]
    api.pods = [
        {"metadata": {"name": "squares-workers-1"}, "status": {}},
        {
            "metadata": {"name": "squares-workers-0"},
            "status": {"containerStatuses": [{"name": "worker", "restartCount": 1}]},
        },
    ]
    api.pod_logs = {
        ("squares-workers-0", True): "[0b1c2d3e.x1/b.0] before the crash\nworker noise\n",
        ("squares-workers-0", False): "[0b1c2d3e.x1/b.1] retried\n[0b1c2d3e.x1/bb.0] other\n",
        ("squares-workers-1", False): "[0b1c2d3e.x1/a.0] a's line\n",
    }
    code, out, _ = cli(api, "logs", "squares", "--task", "b")
    assert code == 0
    assert out == (
        "==> pod squares-workers-0 (previous container) <==\n"
        "[0b1c2d3e.x1/b.0] before the crash\n"
        "==> pod squares-workers-0 <==\n"
        "[0b1c2d3e.x1/b.1] retried\n"
    )
    assert api.calls[-1] == "pods bndl.io/job-uid=uid-1,app.kubernetes.io/component=worker"
    everything = client.logs("squares", api=api)  # type: ignore[arg-type]
    assert [(p.pod, p.previous) for p in everything] == [
        ("squares-workers-0", True),
        ("squares-workers-0", False),
        ("squares-workers-1", False),
    ]
    api.pods = []
    api.statuses = [status("Failed", reason="TaskFailed", message="task 'b' raised ...")]
    code, _, err = cli(api, "logs", "squares")
    assert code == 0 and "no worker pods" in err
    assert "the job's status: Failed: task 'b' raised ..." in err


def test_task_lines_match_whole_task_ids_of_local_and_cluster_keys() -> None:
    text = "[a.0] x\n[job/a.2] y\n[a-1.0] no\n[ab.0] no\n[a.0]no-space\n plain\n"
    assert client.task_lines(text, "a") == "[a.0] x\n[job/a.2] y\n"


# --- the real kubernetes package, no server -----------------------------------------------------


KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: one
clusters:
  - name: c
    cluster: {server: "https://127.0.0.1:1"}
users:
  - name: u
    user: {token: t}
contexts:
  - name: one
    context: {cluster: c, user: u, namespace: first}
  - name: two
    context: {cluster: c, user: u}
"""


def test_the_kubeconfig_s_context_gives_the_namespace_and_errors_are_client_errors(
    tmp_path: Path,
) -> None:
    pytest.importorskip("kubernetes")  # the "operator" extra
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    assert client.Api(str(path)).default_namespace == "first"
    api = client.Api(str(path), context="two")
    assert api.default_namespace == "default"
    with pytest.raises(ClientError, match="bndljob default/x: "):
        api.get_job("default", "x")  # nothing listens on port 1
    with pytest.raises(ClientError, match="kubeconfig"):
        client.Api(str(path), context="three")


def test_the_cli_modules_import_without_kubernetes() -> None:
    code = (
        "import sys, bndl.cli, bndl.k8s.cli, bndl.k8s.client; "
        "assert 'kubernetes' not in sys.modules and 'kopf' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
