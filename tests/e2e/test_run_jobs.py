"""`kubectl apply -f examples/<job>.yaml` runs the job on worker pods and reports it."""

from __future__ import annotations

import pytest

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import wait_for_cluster

from .conftest import OperatorProcess
from .jobs import EXAMPLES, events, example, expected, pods, printed, wait_finished

pytestmark = pytest.mark.cluster


def test_examples_succeed_with_counts_results_and_cleanup(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    docs = {name: example(name) for name in ("diamond", "wordcount")}
    for name in docs:  # both at once: the operator runs jobs side by side
        k8s_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / f"{name}.yaml"))
    for name, doc in docs.items():
        st = wait_finished(k8s_cluster, ns, name, timeout=240)
        assert st["phase"] == "Succeeded", st
        assert st["reason"] == "Succeeded"
        total = st["tasks"]["total"]
        assert total == {"diamond": 4, "wordcount": 19}[name]
        assert st["tasks"]["succeeded"] == total
        assert st["tasks"]["failed"] == 0 and st["tasks"]["running"] == 0
        assert st["tasksSummary"] == f"{total}/{total}"
        # Only the sinks' results come back from the workers into the status.
        sinks = {"diamond": {"d"}, "wordcount": {"top", "total"}}[name]
        assert set(st["results"]) == sinks
        for key in sinks:
            assert st["results"][key] == expected(doc)[key], key
        assert st["startTime"] <= st["completionTime"]
        conditions = {c["type"]: c for c in st["conditions"]}
        assert conditions["Complete"]["status"] == "True"
        assert conditions["WorkersReady"]["status"] == "True"
        assert conditions["Accepted"]["observedGeneration"] == st["observedGeneration"] == 1
        columns = printed(k8s_cluster, ns, name)
        assert columns["PHASE"] == "Succeeded"
        assert columns["TASKS"] == f"{total}/{total}"
        reasons = [e["reason"] for e in events(k8s_cluster, ns, name)]
        assert {"Created", "Started", "Succeeded"} <= set(reasons), reasons
        started = next(e for e in events(k8s_cluster, ns, name) if e["reason"] == "Started")
        assert "to 2 workers" in started["message"]

        # Cleaned up: the StatefulSet and its pods, Service, Secret and NetworkPolicy are gone.
        def cleaned(job: str = name) -> bool:
            left = k8s_cluster.kubectl(
                "get",
                "statefulsets,services,secrets,networkpolicies",
                "-n",
                ns,
                "-l",
                f"bndl.io/job={job}",
                "-o",
                "name",
            )
            return not left.strip() and not pods(k8s_cluster, ns, job)

        wait_for_cluster(
            cleaned,
            90,
            f"{name}'s workers to be cleaned up",
        )
