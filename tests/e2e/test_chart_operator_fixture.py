"""The chart-installed operator fixture works end to end: a job runs, memory is measured on the
host, and a SIGKILLed operator container is restarted by the kubelet and becomes Ready again."""

from __future__ import annotations

import pytest

from tests.e2e.chart_operator import ChartOperator, diamond, restarts
from tests.helpers.waiting import wait_for_cluster

pytestmark = pytest.mark.cluster


def test_chart_operator_runs_a_job_and_survives_a_kill(chart_operator: ChartOperator) -> None:
    op = chart_operator
    pods = {p["metadata"]["name"]: p for p in op.pods()}
    leader = wait_for_cluster(op.leader, 60, "a leader")
    assert leader in pods, (leader, sorted(pods))

    job, expected = diamond("diamond-chart-op")
    op.apply(job)
    status = op.wait_phase("diamond-chart-op", ("Succeeded", "Failed", "Cancelled"))
    assert status["phase"] == "Succeeded", status
    # Only the sinks' results reach the status.
    assert status["results"] == {"d": expected["d"]}, status["results"]

    mem = op.memory_kib(leader)
    assert 20 * 1024 < mem["VmRSS"] <= mem["VmHWM"], mem

    before = pods[leader]
    op.kill(leader)
    wait_for_cluster(
        lambda: restarts(op.pod(leader)) > restarts(before),
        60,
        "the operator container restarted",
    )
    again = {p["metadata"]["name"]: p for p in op.wait_ready(len(pods))}
    assert again.keys() == pods.keys()  # the same pods: restarted in place, not replaced
    [st] = [s for s in again[leader]["status"]["containerStatuses"] if s["name"] == "operator"]
    assert st["lastState"]["terminated"]["exitCode"] == 137, st
    assert f"--- {leader} (previous container) ---" in op.logs(leader)
    assert wait_for_cluster(op.leader, 60, "a leader after the kill") in pods
