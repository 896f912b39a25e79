"""The development loop itself: the fast tier's selection, the marker, and the CI workflows.

``make unit`` runs lint and every test that needs no cluster and no root, selected with
``-m "not cluster"``; these tests keep that selection honest (nothing under tests/cluster or
tests/e2e slips into the fast tier) and lint the GitHub workflows with actionlint, the binary
``tests/cluster/build.sh`` caches beside the cluster's.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cluster import config as cluster_config

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
CLUSTER_TEST_DIRS = ("tests/cluster", "tests/e2e")


def actionlint_binary() -> str | None:
    """``BNDL_ACTIONLINT``, else the one build.sh caches, else ``actionlint`` on PATH."""
    explicit = os.environ.get("BNDL_ACTIONLINT")
    if explicit:
        return explicit
    cached = cluster_config.BIN / "actionlint"
    if cached.exists():
        return str(cached)
    return shutil.which("actionlint")


def test_the_workflows_pass_actionlint() -> None:
    binary = actionlint_binary()
    if binary is None:
        pytest.skip("no actionlint: run `bash tests/cluster/build.sh actionlint` (make test does)")
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, f"no workflows in {WORKFLOWS}"
    proc = subprocess.run(
        [binary, "-no-color", *(str(f.relative_to(REPO)) for f in files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_ci_runs_the_fast_tier_and_the_kind_end_to_end_job() -> None:
    ci = (WORKFLOWS / "ci.yml").read_text()
    assert "make unit" in ci
    assert "HYPOTHESIS_PROFILE: ci" in ci, "CI tries every example of the property tests"
    assert "pull_request" in ci and "push" in ci
    assert (WORKFLOWS / "e2e-kind.yml").exists()


def marks_cluster(node: ast.expr) -> bool:
    """``pytest.mark.cluster``, alone or in a list or tuple of marks."""
    if isinstance(node, ast.List | ast.Tuple):
        return any(marks_cluster(e) for e in node.elts)
    return ast.unparse(node) == "pytest.mark.cluster"


def test_every_cluster_and_end_to_end_test_module_carries_the_cluster_marker() -> None:
    """``make unit`` deselects by this marker, so a module without it would run there."""
    modules = [p for d in CLUSTER_TEST_DIRS for p in sorted((REPO / d).glob("test_*.py"))]
    assert modules
    unmarked = []
    for module in modules:
        tree = ast.parse(module.read_text(), str(module))
        if not any(
            isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets)
            and marks_cluster(stmt.value)
            for stmt in tree.body
        ):
            unmarked.append(str(module.relative_to(REPO)))
    assert not unmarked, f"no `pytestmark = pytest.mark.cluster` in {unmarked}"


def make_dry_run(target: str) -> list[str]:
    """The commands of ``make target`` by default: without the variables of the make (and the
    hypothesis profile) this test may run under, as `make test` and the GitHub workflow set it."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    unset = {"HYPOTHESIS_PROFILE", "JOBS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
        env=env,
    )  # fmt: skip
    return proc.stdout.splitlines()


def test_make_unit_is_lint_and_the_tests_without_the_cluster_marker() -> None:
    lines = make_dry_run("unit")
    pytest_lines = [line for line in lines if "-m pytest" in line]
    assert pytest_lines == [pytest_lines[0]] and '-m "not cluster"' in pytest_lines[0], lines
    assert "-n auto --dist loadfile" in pytest_lines[0], "the fast tier runs on every core"
    assert "HYPOTHESIS_PROFILE=dev " in pytest_lines[0], "the development loop's short profile"
    for tool in ("ruff check .", "ruff format --check .", "mypy", "lint-imports"):
        assert tool in lines, f"make unit does not run {tool!r}: {lines}"
    assert not any("build.sh" in line or "pip install" in line for line in lines), lines


def test_make_test_still_runs_everything_after_building_the_cluster() -> None:
    lines = make_dry_run("test")
    pytest_lines = [line for line in lines if "-m pytest" in line]
    assert len(pytest_lines) == 1 and " -m " not in pytest_lines[0].split("pytest", 1)[1], lines
    assert pytest_lines[0].startswith("HYPOTHESIS_PROFILE=ci "), "every example of each property"
    build = next(i for i, line in enumerate(lines) if "tests/cluster/build.sh" in line)
    assert build < lines.index(pytest_lines[0]), "build.sh (which builds actionlint) runs first"
