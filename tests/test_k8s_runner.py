"""Pure pieces of the job runner: what survives a suspension, and Kubernetes-only spec checks."""

from __future__ import annotations

from typing import Any

import pytest

from bndl.jobs import build_job
from bndl.k8s.runner import _carry_over, _check_for_kubernetes
from bndl.manifest import ManifestError, plan_job


def plan(**spec: Any) -> Any:
    tasks = [
        {"id": "a", "call": "bndl_examples.diamond:number", "args": [3]},
        {"id": "b", "call": "bndl_examples.diamond:square", "args": [{"fromTask": "a"}]},
    ]
    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "j"},
        "spec": {"tasks": tasks, **spec},
    }
    return plan_job(doc)


def test_a_resumed_job_keeps_what_succeeded_with_its_results() -> None:
    p = plan()
    old = build_job(None, p)
    old.tasks[0].mark_done(3)
    new = _carry_over(p, old)
    a, b = new.tasks
    assert a is not old.tasks[0]
    assert a.succeeded and a.result() == 3
    assert not b.started  # runs again after the resume
    assert b.dependencies == {a}


def test_kubernetes_needs_at_least_one_worker() -> None:
    _check_for_kubernetes(plan(workers={"replicas": 1}))
    with pytest.raises(ManifestError) as err:
        _check_for_kubernetes(plan(workers={"replicas": 0}))
    assert err.value.field == "spec.workers.replicas"
