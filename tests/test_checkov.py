"""A security scanner nobody here wrote: checkov over the rendered chart and a job's children.

checkov (https://www.checkov.io) runs its Kubernetes checks over ``helm template`` of the chart
with default values, and over the objects the operator creates for a job
(``bndl.k8s.builders.children`` of examples/diamond.yaml). Every failing check must be in one of
the allow-lists below, with its reason; any other failing check fails the test, and so does an
allow-listed check that passes now (delete its entry).

* ``DELIBERATE``: choices the chart README explains under "Security scan (checkov)"
  (test_every_deliberate_choice_is_explained_in_the_chart_readme keeps the two in step).
* ``PENDING_FIX``: findings to fix in files of other owners; each reason says the fix.

checkov pins old versions of packages the project also uses (pytest, packaging, networkx), so it
lives in its own virtualenv under ~/.cache/bndl-checkov/<version>, created by the first run
(a minute or a few; `BNDL_CHECKOV` may name a checkov binary instead).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bndl.k8s.builders import BuildSettings, JobRef, children, new_tls
from bndl.manifest import load_plan
from tests.cluster import config as cluster_config
from tests.conftest import find_helm

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "bndl"
CHECKOV_VERSION = "3.3.30"
CHECKOV_HOME = Path.home() / ".cache" / "bndl-checkov"

# Which scan a finding comes from: "chart" (helm template) or "children" (a job's objects).
Findings = dict[str, set[str]]

DELIBERATE: dict[str, dict[str, str]] = {
    "chart": {
        "CKV_K8S_11": "no CPU limit on the operator: a limit throttles it (CFS quota) while it "
        "answers the API server and workers; it has a CPU request and a memory limit",
        "CKV_K8S_15": "imagePullPolicy IfNotPresent, not Always: tags are versioned (or "
        "image.digest pins one), and images loaded into kind nodes must not be pulled",
        "CKV_K8S_38": "the operator mounts its ServiceAccount token: it is a Kubernetes client "
        "(worker pods mount none)",
        "CKV_K8S_43": "the image is referenced by tag by default: a chart cannot know the digest "
        "of an image built after it; image.digest pins one",
    },
    "children": {
        "CKV_K8S_11": "no CPU limit on workers: tasks are CPU-bound bursts that a CFS quota would "
        "throttle; worker.resources gives a CPU request and a memory limit",
        "CKV_K8S_15": "imagePullPolicy is the chart's worker.image.pullPolicy (IfNotPresent): "
        "versioned tags, and images loaded into kind nodes must not be pulled",
        "CKV_K8S_43": "the worker image is the job's or the operator's by tag; worker.image.digest "
        "(or a digest in spec.workers.image) pins one",
    },
}

PENDING_FIX: dict[str, dict[str, str]] = {
    "chart": {},
    "children": {},
}


def allowed(target: str) -> dict[str, str]:
    return {**DELIBERATE[target], **PENDING_FIX[target]}


# ------------------------------------------------------------------------------------- checkov


def _install_checkov(home: Path) -> Path:
    """checkov in its own virtualenv ``home``, made once (under a lock: xdist workers share it)."""
    binary = home / "bin" / "checkov"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f"{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        steps = [
            [sys.executable, "-m", "venv", str(home)],
            [str(home / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             f"checkov=={CHECKOV_VERSION}"],
        ]  # fmt: skip
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                raise AssertionError(
                    f"installing checkov into {home} failed ({' '.join(step)}):\n{proc.stderr}\n"
                    "set BNDL_CHECKOV to a checkov binary to use another one"
                )
    return binary


@pytest.fixture(scope="session")
def checkov() -> str:
    return os.environ.get("BNDL_CHECKOV") or str(_install_checkov(CHECKOV_HOME / CHECKOV_VERSION))


def scan(checkov: str, directory: Path) -> dict[str, tuple[dict[str, Any], Findings]]:
    """One checkov run over the targets in ``directory``, a folder of manifests each: by target
    (the folder's name), its summary and its failed checks by check id (each with the resources
    that fail it). One run for all: checkov's start-up is most of its time."""
    proc = subprocess.run(
        [checkov, "--directory", str(directory), "--framework", "kubernetes", "--output", "json",
         "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # Exit status 1 means "some checks failed", which the caller judges.
    assert proc.returncode in (0, 1), f"checkov failed ({proc.returncode}):\n{proc.stderr}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one report per framework
        [report] = [r for r in report if r.get("check_type") == "kubernetes"]
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse {directory}: {summary}"
    by_target: dict[str, tuple[dict[str, Any], Findings]] = {}
    for target in sorted(p.name for p in directory.iterdir()):
        results = {
            outcome: [
                c for c in report["results"].get(outcome, [])
                if c["file_path"].startswith(f"/{target}/")
            ]
            for outcome in ("passed_checks", "failed_checks", "skipped_checks")
        }  # fmt: skip
        failed: Findings = {}
        for check in results["failed_checks"]:
            failed.setdefault(check["check_id"], set()).add(check["resource"])
        resources = {c["resource"] for checks in results.values() for c in checks}
        assert resources, f"checkov found no resources in {directory / target}"
        counts = {key: len(results[f"{key}_checks"]) for key in ("passed", "failed", "skipped")}
        by_target[target] = counts, failed
    return by_target


def judge(target: str, summary: dict[str, Any], failed: Findings) -> None:
    print(
        f"checkov {target}: {summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['skipped']} skipped ({', '.join(sorted(failed)) or 'none failed'})"
    )
    allow = allowed(target)
    new = {check: sorted(resources) for check, resources in failed.items() if check not in allow}
    assert not new, (
        f"checkov finds new problems in the {target}: {new}. Fix them, or add each to "
        "DELIBERATE in tests/test_checkov.py with its reason and to the chart README's "
        '"Security scan (checkov)" list'
    )
    stale = sorted(set(allow) - set(failed))
    assert not stale, f"allow-listed checks pass now ({target}): delete {stale} from the lists"


# --------------------------------------------------------------------------------------- tests


def rendered_chart(helm: str) -> str:
    return subprocess.run(
        [helm, "template", "bndl", str(CHART), "-n", "bndl-system",
         "--kube-version", cluster_config.VERSIONS["K8S_VERSION"]],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/bndl-helm-cache"},
    ).stdout  # fmt: skip


def a_jobs_children() -> str:
    plan = load_plan(REPO / "examples" / "diamond.yaml")
    settings = BuildSettings(worker_metrics_port=9470)  # its NetworkPolicy rule and pod port too
    job = JobRef("j", "ns", "uid")
    objs = children(job, plan, settings, new_tls(job))
    return yaml.safe_dump_all(objs, sort_keys=False)


@pytest.fixture(scope="module")
def scanned(
    checkov: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], Findings]]:
    """checkov's findings by target: "chart" (when there is a helm) and "children", each in a
    folder of its own (nothing else in it)."""
    root = tmp_path_factory.mktemp("checkov")
    helm = find_helm()
    manifests = {"children": a_jobs_children()}
    if helm is not None:
        manifests["chart"] = rendered_chart(helm)
    for target, text in manifests.items():
        (root / target).mkdir()
        (root / target / f"{target}.yaml").write_text(text)
    return scan(checkov, root)


@pytest.mark.timeout(1800)  # the first run creates checkov's virtualenv
def test_the_rendered_chart_fails_no_checkov_check_but_the_allowed(
    helm_binary: str, scanned: dict[str, tuple[dict[str, Any], Findings]]
) -> None:
    judge("chart", *scanned["chart"])


@pytest.mark.timeout(1800)
def test_a_jobs_children_fail_no_checkov_check_but_the_allowed(
    scanned: dict[str, tuple[dict[str, Any], Findings]],
) -> None:
    judge("children", *scanned["children"])


def test_every_deliberate_choice_is_explained_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Security scan (checkov)", 1)
    assert len(section) == 2, 'charts/bndl/README.md has no "## Security scan (checkov)" section'
    body = section[1].split("\n## ", 1)[0]
    for target, checks in DELIBERATE.items():
        for check in checks:
            assert f"`{check}`" in body, f"{check} ({target}) is not explained in the chart README"
