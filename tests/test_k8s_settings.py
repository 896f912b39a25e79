"""The operator's configuration (flags over environment) and its liveness check."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bndl.k8s.handlers import STALL_SECONDS, Operator
from bndl.k8s.settings import DEFAULT_LIVENESS, OperatorSettings, parse


def test_defaults_watch_all_namespaces_with_liveness() -> None:
    s = parse([], environ={})
    assert s.lease is None and s.max_tasks == 200_000
    assert s.build.worker_resources == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "2Gi"},
    }
    assert s.namespaces == ()
    assert s.liveness == DEFAULT_LIVENESS
    assert s.standalone is True
    assert s.status_interval == 1.0
    assert s.build.worker_image == "ghcr.io/bndl/bndl-worker:0.1.0"
    assert s.build.operator_labels == {
        "app.kubernetes.io/name": "bndl",
        "app.kubernetes.io/component": "operator",
    }


def test_environment_then_flags() -> None:
    env = {
        "BNDL_NAMESPACES": "team-a, team-b",
        "BNDL_WORKER_IMAGE": "reg/worker:2",
        "BNDL_LIVENESS": "off",
        "BNDL_OPERATOR_NAMESPACE": "bndl-system",
        "BNDL_OPERATOR_LABELS": "app=op",
        "BNDL_OPERATOR_CIDRS": "10.0.0.0/8",
        "BNDL_STATUS_INTERVAL": "2.5",
    }
    s = parse([], environ=env)
    assert s.namespaces == ("team-a", "team-b")
    assert s.liveness is None
    assert s.status_interval == 2.5
    assert s.build.worker_image == "reg/worker:2"
    assert s.build.operator_namespace == "bndl-system"
    assert s.build.operator_labels == {"app": "op"}
    assert s.build.operator_cidrs == ("10.0.0.0/8",)
    s = parse(["--namespace", "x", "--worker-image", "w:3", "--peering"], environ=env)
    assert s.namespaces == ("x",)
    assert s.build.worker_image == "w:3"
    assert s.standalone is False


def test_bad_values_are_usage_errors() -> None:
    with pytest.raises(SystemExit):
        parse(["--status-interval", "-1"], environ={})
    with pytest.raises(SystemExit):
        parse(["--operator-labels", "novalue"], environ={})


class FakeRunner:
    def __init__(self, name: str, beat: float) -> None:
        self.beat = beat
        self.ref = type("Ref", (), {"name": name})()


def test_liveness_fails_when_a_job_loop_stalls() -> None:
    op = Operator(OperatorSettings())
    assert op.health() == {"role": "standby", "jobs": 0, "loopLagSeconds": 0.0}
    op.runners["u1"] = FakeRunner("fresh", time.monotonic())  # type: ignore[assignment]
    assert op.health()["jobs"] == 1
    op.runners["u2"] = FakeRunner("stuck", time.monotonic() - STALL_SECONDS - 1)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="stuck"):
        op.health()
    del op.runners["u2"]
    op.lag = 60.0
    with pytest.raises(RuntimeError, match="lag"):
        op.health()


def test_credentials_send_the_service_account_token(tmp_path: Any) -> None:
    from kubernetes import client

    from bndl.k8s.kube import Credentials

    cfg = client.Configuration()
    cfg.host = "https://10.0.0.1:443"
    cfg.api_key = {"BearerToken": "abc"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    assert Credentials(cfg).headers() == {"Authorization": "Bearer abc"}
    cfg.api_key = {}
    assert Credentials(cfg).headers() == {}


def test_leader_election_and_worker_resources_from_the_environment() -> None:
    env = {
        "BNDL_LEADER_ELECTION": "true",
        "BNDL_OPERATOR_NAMESPACE": "ops",
        "BNDL_POD_NAME": "op-0",
        "BNDL_LEASE_NAME": "lead",
        "BNDL_WORKER_CPU_REQUEST": "",
        "BNDL_WORKER_MEMORY_LIMIT": "1Gi",
        "BNDL_MAX_TASKS": "5000",
    }
    s = parse([], environ=env)
    assert s.lease is not None
    assert (s.lease.namespace, s.lease.name, s.lease.identity) == ("ops", "lead", "op-0")
    assert s.lease.renew_deadline < s.lease.lease_duration
    assert s.max_tasks == 5000
    assert s.build.worker_resources == {
        "requests": {"memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    with pytest.raises(SystemExit):
        parse(["--renew-deadline=20"], environ=env)
