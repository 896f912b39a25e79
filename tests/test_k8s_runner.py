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


class FakeKube:
    writes = 0

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.posted.append(body)


class FakeScheduler:
    def __init__(self) -> None:
        self.retried = 0

    def counts(self) -> Any:
        return type("C", (), {"retried": self.retried})()


def test_retry_storms_make_one_summarised_warning_event() -> None:
    import asyncio

    from bndl.k8s.runner import STORM_RETRIES, JobRunner
    from bndl.k8s.settings import OperatorSettings

    async def scenario() -> list[dict[str, Any]]:
        kube = FakeKube()
        body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u-1", "generation": 1}}
        runner = JobRunner(
            body,
            kube,
            None,
            OperatorSettings(),
            lambda: False,
            lambda: False,  # type: ignore[arg-type]
        )
        scheduler = FakeScheduler()
        runner.scheduler = scheduler  # type: ignore[assignment]
        for retried in (1, 3, STORM_RETRIES + 2, STORM_RETRIES + 30, STORM_RETRIES + 60):
            scheduler.retried = retried
            runner._check_storm()
        await asyncio.gather(*runner._tasks)
        return kube.posted

    posted = asyncio.run(scenario())
    assert len(posted) == 1
    event = posted[0]
    assert event["reason"] == "RetryStorm" and event["type"] == "Warning"
    assert event["involvedObject"]["uid"] == "u-1"
    assert f"{STORM_RETRIES + 2} task runs failed and were retried" in event["message"]
