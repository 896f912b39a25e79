"""End-to-end fixtures: the BndlJob CRD, the worker image and ONE operator process per session.

The operator is ``python -m bndl.k8s`` started as its own process inside the test cluster's
network namespace (so it reaches pod IPs, as it would from its pod), with the admin kubeconfig,
watching every namespace. Each test runs its jobs in a fresh namespace. The operator's log is
printed when a test fails, and the operator must still be alive (and its liveness endpoint
healthy) after every test: one job's trouble must never take it down.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import config
from tests.cluster.cluster import Cluster, base_env
from tests.cluster.procs import ProcRecord, start_process, stop_processes
from tests.helpers.waiting import wait_for_cluster

from .chart_operator import E2E_TAG, chart_operator, operator_image  # noqa: F401  (fixtures for every e2e test)

REPO = Path(__file__).resolve().parents[2]
WORKER_IMAGE = f"localhost/bndl-worker:{E2E_TAG}"
LIVENESS_PORT = 18080
MEASUREMENTS: list[str] = []
"""Figures the tests measured, printed in the terminal summary."""


@dataclass
class OperatorProcess:
    record: ProcRecord
    log: Path
    cluster: Cluster

    def alive(self) -> bool:
        return self.record.alive()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def liveness(self) -> tuple[int, Any]:
        """Status and JSON of the operator's liveness endpoint (reached inside the netns)."""

        def get() -> tuple[int, Any]:
            url = f"http://127.0.0.1:{LIVENESS_PORT}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode(errors="replace")

        return self.cluster.call_in_netns(get)


@pytest.fixture(scope="session")
def bndl_crd(k8s_cluster: Cluster) -> str:
    k8s_cluster.kubectl("apply", "-f", str(REPO / "crds" / "bndljob.yaml"))
    k8s_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/bndljobs.bndl.io", "--timeout=60s"
    )
    return "bndljobs.bndl.io"


@pytest.fixture(scope="session")
def worker_image(k8s_cluster: Cluster) -> str:
    """The worker image built from worker-image/Dockerfile on the local base, on every node."""
    return k8s_cluster.build_image(REPO / "worker-image" / "Dockerfile", REPO, WORKER_IMAGE)


@pytest.fixture(scope="session")
def bndl_operator(
    k8s_cluster: Cluster, bndl_crd: str, worker_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = base_env()
    env["KUBECONFIG"] = str(k8s_cluster.kubeconfig_in_netns)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO)])
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "bndl.k8s",
        f"--worker-image={worker_image}",
        "--worker-image-pull-policy=IfNotPresent",
        f"--liveness=http://127.0.0.1:{LIVENESS_PORT}/healthz",
        "--operator-cidr=198.18.0.0/16",  # the operator runs outside the pod network here
        # Only the k8s_namespace fixture's namespaces: chart-installed operators of other tests
        # run the jobs of their own namespaces.
        "--namespace=t-*",
        "--log-level=INFO",
    ]
    record = start_process("bndl-operator", cmd, log, netns=k8s_cluster.netns, env=env)
    operator = OperatorProcess(record, log, k8s_cluster)
    try:

        def healthy() -> bool:
            if not operator.alive():
                raise RuntimeError(f"the operator exited:\n{operator.log_text()[-3000:]}")
            return operator.liveness()[0] == 200

        wait_for_cluster(
            healthy,
            60,
            "the operator's liveness endpoint",
        )
        yield operator
    finally:
        stop_processes([record], timeout=30)
        sys.stderr.write(f"\n--- operator log tail ---\n{operator.log_text()[-6000:]}\n")


@pytest.fixture
def operator(bndl_operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session's operator, checked alive and healthy after the test."""
    yield bndl_operator
    assert bndl_operator.alive(), f"the operator died:\n{bndl_operator.log_text()[-3000:]}"
    status, body = bndl_operator.liveness()
    assert status == 200, f"liveness failed: {body}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "operator" in getattr(item, "funcargs", {}):
        op = item.funcargs["operator"]
        report.sections.append(("operator log", op.log_text()[-8000:]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in MEASUREMENTS:
        terminalreporter.write_line(f"bndl operator: {line}")


__all__ = ["MEASUREMENTS", "WORKER_IMAGE", "OperatorProcess", "config"]
