"""The operator's pure status logic: phases, conditions, counts, results and pod diagnosis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bndl.execute.core import Counts
from bndl.k8s.status import (
    RESULTS_CAP,
    JobStatus,
    Phase,
    Reason,
    diagnose_pods,
    pod_ready,
    small_results,
    why_not_ready,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def counts(**kw: int) -> Counts:
    base = dict(
        total=10, succeeded=0, running=0, ready=0, blocked=0, retried=0, recomputed=0, lost_runs=0
    )
    base.update(kw)
    return Counts(**base)


def test_body_reports_counts_summaries_and_bounded_fields() -> None:
    st = JobStatus(generation=3, tasks_total=10)
    st.set_workers(2, 3)
    st.counts = counts(succeeded=4, running=2, retried=1, recomputed=3)
    st.set_phase(Phase.RUNNING, Reason.DISPATCHING, "go", T0)
    body = st.body()
    assert body["phase"] == "Running" and body["observedGeneration"] == 3
    assert body["workersSummary"] == "2/3"
    assert body["tasksSummary"] == "4/10"
    assert body["tasks"] == {
        "total": 10,
        "pending": 4,
        "running": 2,
        "succeeded": 4,
        "failed": 0,
        "retried": 1,
        "recomputed": 3,
        "lostRuns": 0,
        "workerLosses": 0,
        "adopted": 0,
        "reattached": 0,
    }
    assert body["startTime"] == "2026-01-01T12:00:00Z" and body["completionTime"] is None
    json.dumps(body)  # what gets patched is plain JSON


def test_conditions_move_their_transition_time_only_on_change() -> None:
    st = JobStatus(generation=1)
    st.set_phase(Phase.RUNNING, Reason.DISPATCHING, "a", T0)
    st.set_phase(Phase.RUNNING, Reason.DISPATCHING, "b", T0 + timedelta(seconds=5))
    running = st.conditions["Running"]
    assert running["status"] == "True"
    assert running["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert running["message"] == "b"
    st.set_phase(Phase.SUCCEEDED, Reason.SUCCEEDED, "done", T0 + timedelta(seconds=9))
    types = {c["type"]: c for c in st.body()["conditions"]}
    assert types["Running"]["status"] == "False"
    assert types["Running"]["lastTransitionTime"] == "2026-01-01T12:00:09Z"
    assert types["Complete"]["status"] == "True"
    assert types["Failed"]["status"] == "False"
    assert "Suspended" not in types  # never held: no entry
    assert st.completion_time == "2026-01-01T12:00:09Z"
    assert all(c["observedGeneration"] == 1 for c in types.values())


def test_failure_sets_failed_condition_with_reason() -> None:
    st = JobStatus()
    st.set_phase(Phase.FAILED, Reason.WORKERS_NOT_READY, "pod x: Unschedulable", T0)
    c = {c["type"]: c for c in st.body()["conditions"]}
    assert c["Failed"]["status"] == "True" and c["Failed"]["reason"] == "WorkersNotReady"
    assert c["Complete"]["status"] == "False"


def test_resume_keeps_what_a_previous_operator_wrote() -> None:
    st = JobStatus(generation=2)
    st.set_phase(Phase.SUCCEEDED, Reason.SUCCEEDED, "ok", T0)
    again = JobStatus.resume(st.body(), 2)
    assert again.phase is Phase.SUCCEEDED and again.phase.finished
    assert again.completion_time == st.completion_time
    assert again.conditions.keys() == st.conditions.keys()
    assert JobStatus.resume({"phase": "Bogus"}, 1).phase is Phase.PENDING


def test_messages_are_capped() -> None:
    st = JobStatus()
    st.set_phase(Phase.FAILED, Reason.TASK_FAILED, "x" * 100_000, T0)
    assert len(st.body()["message"]) <= 4000
    assert all(len(c["message"]) <= 4000 for c in st.body()["conditions"])


def test_small_results_prefer_sinks_and_respect_the_cap() -> None:
    results = [(f"square-{i}", i * i) for i in range(10_000)] + [("total", 333283335000)]
    kept, omitted = small_results(results, sinks=["total"])
    assert kept["total"] == 333283335000
    assert len(json.dumps(kept)) <= RESULTS_CAP
    assert omitted == len(results) - len(kept) > 0
    kept, omitted = small_results([("a", {1, 2})], sinks=[])
    assert kept == {"a": "{1, 2}"} and omitted == 0


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": name + "-uid"}, "status": status}


READY = [{"type": "Ready", "status": "True"}]


def test_pod_ready_needs_condition_ip_and_no_deletion() -> None:
    assert pod_ready(pod("a", podIP="1.2.3.4", conditions=READY))
    assert not pod_ready(pod("a", conditions=READY))
    gone = pod("a", podIP="1.2.3.4", conditions=READY)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not pod_ready(gone)


def test_diagnosis_names_stuck_pods_and_why() -> None:
    unschedulable = pod(
        "w-0",
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node selector.",
            }
        ],
    )
    never_pull = pod(
        "w-1",
        phase="Pending",
        containerStatuses=[
            {
                "name": "worker",
                "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}},
            }
        ],
    )
    crashing = pod(
        "w-2",
        phase="Running",
        containerStatuses=[
            {
                "name": "worker",
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 2}},
            }
        ],
    )
    ok = pod("w-3", podIP="1.1.1.1", conditions=READY)
    assert why_not_ready(unschedulable).startswith("Unschedulable: 0/3 nodes")
    assert why_not_ready(never_pull) == "ErrImageNeverPull: not present"
    assert why_not_ready(crashing) == "CrashLoopBackOff: back-off"
    text = diagnose_pods([ok, crashing, never_pull, unschedulable], desired=5)
    assert "w-3" not in text
    assert text.index("w-0") < text.index("w-1") < text.index("w-2")
    assert "1 of 5 pods do not exist" in text
    assert diagnose_pods([ok], desired=1) == "all pods are Ready"
