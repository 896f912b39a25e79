"""Bad input and impossible workers end in a clear refusal or a Failed phase, never a hang, and
the operator keeps serving the other jobs meanwhile."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.cluster import Cluster
from tests.cluster.procs import CommandError

from .conftest import OperatorProcess
from .jobs import EXAMPLES, apply, example, expected, job_doc, pods, wait_finished

pytestmark = pytest.mark.cluster

NUMBER = "bndl_examples.diamond:number"


def refused(cluster: Cluster, ns: str, doc: dict[str, Any]) -> str:
    with pytest.raises(CommandError) as err:
        apply(cluster, ns, doc)
    return err.value.stderr


def test_malformed_manifests_are_refused_or_fail_as_invalid_spec(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    # A valid job alongside the bad ones: the operator keeps serving it.
    k8s_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "diamond.yaml"))

    # The API server refuses what the CRD's schema and CEL rules catch, naming the field.
    wrong_type = job_doc("wrong-type", [{"id": "a", "call": NUMBER, "args": "3"}])
    assert "spec.tasks[0].args" in refused(k8s_cluster, ns, wrong_type)
    bad_weight = job_doc(
        "bad-weight",
        [
            {
                "id": "a",
                "call": NUMBER,
                "locality": {"preferred": [{"weight": 0, "labels": {"zone": "a"}}]},
            }
        ],
    )
    assert "spec.tasks[0].locality.preferred[0].weight" in refused(k8s_cluster, ns, bad_weight)
    self_dep = job_doc("self-dep", [{"id": "a", "call": NUMBER, "dependsOn": ["a"]}])
    assert "a task cannot depend on itself" in refused(k8s_cluster, ns, self_dep)
    bad_call = job_doc("bad-call", [{"id": "a", "call": "not a function"}])
    assert "spec.tasks[0].call" in refused(k8s_cluster, ns, bad_call)

    # What only the operator can see fails the job with reason InvalidSpec, naming the field.
    invalid = {
        "cycle": (
            [
                {"id": "a", "call": NUMBER, "args": [1], "dependsOn": ["b"]},
                {"id": "b", "call": NUMBER, "args": [{"fromTask": "a"}]},
            ],
            ["dependency cycle", "spec.tasks["],
        ),
        "unknown-dep": (
            [{"id": "a", "call": NUMBER, "args": [{"fromTask": "nope"}]}],
            ["spec.tasks[0].args[0].fromTask", "'nope'"],
        ),
        "bad-label": (
            [{"id": "a", "call": NUMBER, "locality": {"required": {"no spaces!": "x"}}}],
            ["spec.tasks[0].locality.required"],
        ),
    }
    for name, (tasks, _) in invalid.items():
        apply(k8s_cluster, ns, job_doc(name, tasks))
    for name, (_, words) in invalid.items():
        st = wait_finished(k8s_cluster, ns, name, timeout=60)
        assert st["phase"] == "Failed" and st["reason"] == "InvalidSpec", st
        for word in words:
            assert word in st["message"], (name, st["message"])
        accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
        assert not pods(k8s_cluster, ns, name)

    st = wait_finished(k8s_cluster, ns, "diamond", timeout=180)
    assert st["phase"] == "Succeeded", st
    assert st["results"] == {"d": expected(example("diamond"))["d"]}  # the sink's


def test_unsatisfiable_workers_fail_with_workers_not_ready_within_the_timeout(
    k8s_cluster: Cluster, k8s_namespace: str, operator: OperatorProcess
) -> None:
    ns = k8s_namespace
    tasks = [{"id": "a", "call": NUMBER, "args": [1]}]
    nowhere = job_doc(
        "nowhere",
        tasks,
        workers={
            "replicas": 2,
            "template": {"spec": {"nodeSelector": {"bndl.io/no-such-label": "x"}}},
        },
        awaitWorkers={"connectTimeoutSeconds": 8},
    )
    no_image = job_doc(
        "no-image",
        tasks,
        workers={
            "replicas": 1,
            "image": "localhost/bndl-no-such-image:1",
            "template": {"spec": {"containers": [{"name": "worker", "imagePullPolicy": "Never"}]}},
        },
        awaitWorkers={"connectTimeoutSeconds": 8},
    )
    start = time.monotonic()
    apply(k8s_cluster, ns, nowhere)
    apply(k8s_cluster, ns, no_image)
    st = wait_finished(k8s_cluster, ns, "nowhere", timeout=90)
    assert st["phase"] == "Failed" and st["reason"] == "WorkersNotReady", st
    assert "0 of 2 worker pods Ready after 8 s" in st["message"]
    assert "pod nowhere-workers-0: Unschedulable" in st["message"]
    assert "pod nowhere-workers-1: Unschedulable" in st["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "WorkersReady")
    assert ready["status"] == "False" and ready["reason"] == "WorkersNotReady"
    st = wait_finished(k8s_cluster, ns, "no-image", timeout=90)
    assert st["phase"] == "Failed" and st["reason"] == "WorkersNotReady", st
    assert "pod no-image-workers-0: ErrImageNeverPull" in st["message"]
    # Within the timeout (plus the time to create the objects and see the pods), not later.
    assert time.monotonic() - start < 8 + 45
