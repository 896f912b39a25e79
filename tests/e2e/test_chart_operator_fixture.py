"""The chart-installed operator fixture works end to end: a job runs, memory is measured on the
host, and a SIGKILLed operator container is restarted by the kubelet and becomes Ready again."""

from __future__ import annotations

import pytest

# The fixtures are imported (rather than registered with pytest_plugins, which would import this
# module before pytest could rewrite its asserts); the test's argument then shadows the import.
from tests.e2e.chart_operator import (  # noqa: F401
    ChartOperator,
    chart_operator,
    diamond,
    operator_image,
    restarts,
)

pytestmark = pytest.mark.cluster


def test_chart_operator_runs_a_job_and_survives_a_kill(
    chart_operator: ChartOperator,  # noqa: F811
) -> None:
    op = chart_operator
    [pod] = op.pods()
    name = pod["metadata"]["name"]
    assert op.leader() is None  # today's chart: one replica, no Lease

    job, expected = diamond("diamond-chart-op")
    op.apply(job)
    status = op.wait_phase("diamond-chart-op", ("Succeeded", "Failed", "Cancelled"))
    assert status["phase"] == "Succeeded", status
    assert status["results"] == expected

    mem = op.memory_kib(name)
    assert 20 * 1024 < mem["VmRSS"] <= mem["VmHWM"], mem

    op.kill(name)
    op.cluster.wait_for(
        lambda: restarts(op.pod(name)) >= restarts(pod) + 1, 60, "the operator container restarted"
    )
    [again] = op.wait_ready(1)
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]
    last = next(s for s in again["status"]["containerStatuses"] if s["name"] == "operator")
    assert last["lastState"]["terminated"]["exitCode"] == 137, last
    assert "--- " + name + " (previous container) ---" in op.logs(name)
