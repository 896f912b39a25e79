"""Every manifest in examples/ validates, and its plan, run in-process, gives the documented result.

The expected results live in each manifest (annotation ``examples.bndl.io/expected``, a JSON object
of task id -> result), next to the prose that documents them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bndl.manifest import (
    JobPlan,
    load_plan,
    parse_manifest,
    read_manifest,
    resolve_call,
    substitute,
    validate_manifest,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
EXPECTED = "examples.bndl.io/expected"


def run_in_process(plan: JobPlan) -> dict[str, Any]:
    """Run the plan's tasks one by one in plan order, as the simplest possible executor would."""
    results: dict[str, Any] = {}
    for task in plan.tasks:
        assert task.depends_on <= results.keys(), f"{task.id} comes before its dependencies"
        fn = resolve_call(task.call)
        results[task.id] = fn(*substitute(task.args, results), **substitute(task.kwargs, results))
    return results


def test_there_are_examples() -> None:
    names = {p.stem for p in MANIFESTS}
    assert {"wordcount", "diamond"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_example_runs_to_its_documented_result(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    plan = load_plan(path, check_imports=True)
    assert plan.local_python_path() == [str(EXAMPLES)]
    expected = json.loads(read_manifest(path)["metadata"]["annotations"][EXPECTED])
    results = json.loads(json.dumps(run_in_process(plan)))  # compare as JSON, as `bndl run` prints
    assert {task_id: results[task_id] for task_id in expected} == expected


def test_readme_manifest_is_valid() -> None:
    text = (EXAMPLES / "README.md").read_text()
    snippet = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert validate_manifest(parse_manifest(snippet)) == []
