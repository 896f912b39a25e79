"""How jobs end: a failing task, the active deadline, the cleanup policy and the TTL."""

from __future__ import annotations

import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.procs import CommandError
from tests.helpers.waiting import wait_for_cluster

from .conftest import OperatorProcess
from .jobs import apply, job_doc, pods, wait_finished

pytestmark = pytest.mark.cluster

NUMBER = "bndl_examples.diamond:number"


def test_failure_deadline_cleanup_policy_and_ttl(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    # A task that raises: Failed with reason TaskFailed naming it; DeleteWorkersOnSuccess keeps
    # the workers of a failed job for debugging.
    apply(
        k8s_cluster,
        ns,
        job_doc(
            "broken",
            [
                # First in the job: it runs before "bad" fails the job (one worker).
                {"id": "fine", "call": NUMBER, "args": [2]},
                {"id": "ok", "call": NUMBER, "args": [1]},
                {"id": "bad", "call": NUMBER, "args": [], "dependsOn": ["ok"]},
            ],
            attempts=2,
            cleanupPolicy="DeleteWorkersOnSuccess",
        ),
    )
    # A job running past activeDeadlineSeconds: Failed with reason DeadlineExceeded.
    apply(
        k8s_cluster,
        ns,
        job_doc(
            "late",
            [{"id": "nap", "call": "time:sleep", "args": [600]}],
            activeDeadlineSeconds=20,
        ),
    )
    # A finished job with ttlSecondsAfterFinished disappears.
    apply(
        k8s_cluster,
        ns,
        job_doc("brief", [{"id": "one", "call": NUMBER, "args": [1]}], ttlSecondsAfterFinished=2),
    )

    st = wait_finished(k8s_cluster, ns, "broken", timeout=120)
    assert st["phase"] == "Failed" and st["reason"] == "TaskFailed", st
    assert "task 'bad' failed: TypeError" in st["message"]
    assert st["tasks"]["retried"] == 1 and st["tasks"]["failed"] == 1
    # Sinks' results only ("ok" feeds "bad": its result stayed on its worker).
    assert st["results"] == {"fine": 2}
    assert len(pods(k8s_cluster, ns, "broken")) == 1  # kept: the policy deletes on success only

    st = wait_finished(k8s_cluster, ns, "late", timeout=120)
    assert st["phase"] == "Failed" and st["reason"] == "DeadlineExceeded", st
    assert "activeDeadlineSeconds (20)" in st["message"]
    wait_for_cluster(
        lambda: not pods(k8s_cluster, ns, "late"),
        60,
        "late's workers gone",
    )

    def gone() -> bool:
        try:
            k8s_cluster.kubectl("get", "bndljob", "brief", "-n", ns)
        except CommandError as e:
            return "NotFound" in e.stderr
        return False

    wait_for_cluster(
        gone,
        90,
        "the TTL to delete the finished job",
    )
