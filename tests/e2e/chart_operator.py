"""The operator installed by the chart, as a pod, for end-to-end tests that cause faults for real.

``tests/e2e/conftest.py`` runs the session's operator as a local process; the tests here need the
operator the way users run it (``helm install charts/bndl``: a Deployment, its ServiceAccount and
RBAC, in-cluster configuration) so that they can kill its container, watch its memory, restart
the API server under it, or run two replicas. Each :class:`ChartOperator` has two namespaces of its
own, both enforcing the restricted Pod Security Standard: ``op-<hex>`` for the release and
``jobs-<hex>`` for BndlJobs, the only namespace it watches (unless installed cluster-wide). Neither
starts with ``t-``, so the session's process operator (which watches ``t-*``) never touches these
jobs.

Fixtures (tests/e2e/conftest.py imports them for every e2e test): ``operator_image`` (session)
and ``chart_operator`` (function: installed with the chart's defaults, uninstalled and cleaned up
afterwards, with the cluster's view and the operator's logs attached to a failed test's report).

The chart-level helpers (:data:`RESTRICTED`, :func:`split_image`, :func:`image_values`,
:func:`restricted_namespace`, :func:`release_finalizers`, :func:`diamond`) do not depend on how the
cluster is reached: they take a ``kubectl`` callable.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import Cluster
from tests.helpers.waiting import WaitTimeout, wait_for_cluster

from . import jobs

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bndl"
E2E_TAG = os.environ.get("BNDL_E2E_TAG", "e2e")
"""Tag of the images the end-to-end tests build; set ``BNDL_E2E_TAG`` to keep apart the images of
two checkouts tested at once on one machine (they share podman's storage)."""
OPERATOR_TAG = f"localhost/bndl-operator:{E2E_TAG}"
OPERATOR_DOCKERFILE = REPO / "Dockerfile"
CONTAINER = "operator"
"""Name of the operator's container in the chart's Deployment."""
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
READY_TIMEOUT = 180
JOB_TIMEOUT = 300

Kubectl = Callable[..., str]
"""``kubectl(*args, input=None, check=True) -> stdout``, e.g. ``Cluster.kubectl``."""


# ------------------------------------------------------------------------------ chart helpers


def split_image(ref: str) -> dict[str, str]:
    """``repo[:tag]`` or ``repo@sha256:...`` as the chart's {repository, tag, digest} values."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return {"repository": repo, "digest": digest}
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return {"repository": ref, "tag": "latest"}
    return {"repository": repo, "tag": tag}


def image_values(operator_image: str, worker_image: str, pull_policy: str) -> list[str]:
    """helm arguments that install these two images with this pull policy."""
    args = []
    for prefix, ref in (("image", operator_image), ("worker.image", worker_image)):
        for key, value in split_image(ref).items():
            args += ["--set-string", f"{prefix}.{key}={value}"]
    args += ["--set", f"image.pullPolicy={pull_policy}"]
    args += ["--set", f"worker.image.pullPolicy={pull_policy}"]
    return args


def restricted_namespace(kubectl: Kubectl, name: str) -> str:
    """Create (or update) namespace ``name`` enforcing the restricted Pod Security Standard."""
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": RESTRICTED},
    }
    kubectl("apply", "-f", "-", input=json.dumps(doc))
    return name


def release_finalizers(kubectl: Kubectl, namespace: str) -> None:
    """Drop kopf's finalizers from the namespace's BndlJobs: with the operator gone nothing else
    would, and the namespace would never finish deleting."""
    names = kubectl("get", "bndljobs", "-n", namespace, "-o", "name", check=False).split()
    for job in names:
        kubectl("patch", job, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip


def diamond(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """examples/diamond.yaml renamed, keeping its workers; and its expected results."""
    job = jobs.example("diamond")
    job["metadata"]["name"] = name
    job["spec"]["cleanupPolicy"] = "KeepWorkers"
    return job, jobs.expected(job)


def ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def restarts(pod: dict[str, Any], container: str = CONTAINER) -> int:
    for st in pod.get("status", {}).get("containerStatuses", []):
        if st["name"] == container:
            return int(st["restartCount"])
    return 0


# ------------------------------------------------------------------------------ the operator


class ChartOperator:
    """One release of charts/bndl on the test cluster, with its two namespaces.

    ``install``/``upgrade``/``uninstall`` drive helm; ``pods``/``wait_ready``/``leader``/``logs``
    observe the operator; ``kill``/``memory_kib`` reach its container's main process on the host;
    ``apply``/``status``/``wait_phase`` handle BndlJobs in ``jobs_namespace``.
    """

    def __init__(
        self,
        cluster: Cluster,
        operator_image: str,
        worker_image: str,
        *,
        run_id: str | None = None,
        release: str = "bndl",
        lease: str | None = None,
        pull_policy: str = "IfNotPresent",
        namespaced: bool = True,
    ) -> None:
        self.cluster = cluster
        self.operator_image = operator_image
        self.worker_image = worker_image
        self.run_id = run_id or secrets.token_hex(3)
        self.namespace = f"op-{self.run_id}"
        self.jobs_namespace = f"jobs-{self.run_id}"
        self.release = release
        # Cluster-scoped objects (ClusterRoles) are named after the full name: unique per run.
        self.fullname = f"bndl-{self.run_id}"
        self.lease = lease or f"{self.fullname}-leader"
        self.pull_policy = pull_policy
        self.namespaced = namespaced
        self.selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

    # --------------------------------------------------------------------------------- helm

    def create_namespaces(self) -> None:
        for ns in (self.namespace, self.jobs_namespace):
            restricted_namespace(self.cluster.kubectl, ns)
            # Pods are admitted only once the namespace's default ServiceAccount exists.
            wait_for_cluster(
                lambda ns=ns: self.cluster.kubectl(
                    "get", "serviceaccount", "default", "-n", ns, check=False
                ),
                30,
                f"default ServiceAccount in {ns}",
            )

    def _values(self, set_args: Sequence[str], replicas: int | None) -> list[str]:
        args = [
            str(CHART), "-n", self.namespace,
            "--set", f"fullnameOverride={self.fullname}",
            *image_values(self.operator_image, self.worker_image, self.pull_policy),
        ]  # fmt: skip
        if self.namespaced:
            args += ["--set", f"watch.namespaces={{{self.jobs_namespace}}}"]
        if replicas is not None:
            args += ["--set", f"replicaCount={replicas}"]
        for a in set_args:
            args += ["--set", a]
        return [*args, "--wait", "--timeout", f"{READY_TIMEOUT}s"]

    def install(self, *set_args: str, replicas: int | None = None) -> list[dict[str, Any]]:
        """``helm install --wait`` with ``--set`` for each of ``set_args`` (``key=value``);
        return the Ready operator pods."""
        self._helm("install", self.release, *self._values(set_args, replicas))
        return self.wait_ready(replicas or self._deployment_replicas())

    def upgrade(self, *set_args: str, replicas: int | None = None) -> list[dict[str, Any]]:
        """``helm upgrade --wait`` with the install's base values and these ``--set``s; return
        the Ready operator pods (new ones when the values changed the pod template)."""
        self._helm("upgrade", self.release, *self._values(set_args, replicas))
        return self.wait_ready(replicas or self._deployment_replicas())

    def uninstall(self, check: bool = True) -> None:
        self.cluster.helm(
            "uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "120s",
            check=check,
        )  # fmt: skip

    def _helm(self, *args: str) -> str:
        try:
            return self.cluster.helm(*args, timeout=READY_TIMEOUT + 60)
        except Exception as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from e

    def _deployment_replicas(self) -> int:
        dep = self.cluster.kubectl_json("get", "deployment", self.fullname, "-n", self.namespace)
        return int(dep["spec"]["replicas"])

    # --------------------------------------------------------------------------- observe

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods that are not terminating, oldest first."""
        items = self.cluster.kubectl_json("get", "pods", "-n", self.namespace, "-l", self.selector)
        live = [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["creationTimestamp"])

    def pod(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.cluster.kubectl_json("get", "pod", name, "-n", self.namespace)
        return out

    def wait_ready(
        self, count: int, timeout: float = READY_TIMEOUT, not_uids: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` operator pods are live, all Ready and none of
        ``not_uids``; return them."""
        old = set(not_uids)

        def check() -> list[dict[str, Any]] | None:
            pods = self.pods()
            fresh = all(p["metadata"]["uid"] not in old for p in pods)
            return pods if len(pods) == count and fresh and all(map(ready, pods)) else None

        try:
            return wait_for_cluster(
                check,
                timeout,
                f"{count} operator pods Ready",
            )
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from e

    def leader(self) -> str | None:
        """The Lease's holderIdentity; None when there is no Lease (or no holder)."""
        items = self.cluster.kubectl_json(
            "get", "leases", "-n", self.namespace, "--field-selector", f"metadata.name={self.lease}"
        )["items"]
        if not items:
            return None
        holder = items[0].get("spec", {}).get("holderIdentity")
        return str(holder) if holder else None

    def logs(self, pod: str | None = None) -> str:
        """The operator's log (of ``pod``, or of every operator pod), the previous container's
        log first when the container restarted."""
        pods = [self.pod(pod)] if pod else self.pods()
        parts = []
        for p in pods:
            name = p["metadata"]["name"]
            base = ["logs", "-n", self.namespace, name, "-c", CONTAINER, "--tail=-1"]
            if restarts(p):
                prev = self.cluster.kubectl(*base, "--previous", check=False)
                parts.append(f"--- {name} (previous container) ---\n{prev}")
            parts.append(f"--- {name} ---\n{self.cluster.kubectl(*base, check=False)}")
        return "\n".join(parts)

    def diagnostics(self) -> str:
        """What to look at when something went wrong: objects, events, Lease and logs."""
        parts = []
        for ns in (self.namespace, self.jobs_namespace):
            parts.append(f"=== kubectl get all,events -n {ns}")
            parts.append(
                self.cluster.kubectl("get", "all,events", "-n", ns, "-o", "wide", check=False)
            )
        parts.append(f"=== kubectl get bndljobs -n {self.jobs_namespace} -o yaml")
        parts.append(
            self.cluster.kubectl(
                "get", "bndljobs", "-n", self.jobs_namespace, "-o", "yaml", check=False
            )
        )
        parts.append(f"=== leader (Lease {self.lease}): {self._safe(self.leader)}")
        parts.append(f"=== operator logs\n{self._safe(self.logs)}")
        return "\n".join(parts)

    @staticmethod
    def _safe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # diagnostics must not hide the failure they describe
            return f"<{e!r}>"

    # ---------------------------------------------------------------------------- faults

    def kill(self, pod_name: str) -> int:
        """SIGKILL the operator container's main process (as the OOM killer would); its PID."""
        return self.cluster.kill_container(self.namespace, pod_name, CONTAINER, signal.SIGKILL)

    def memory_kib(self, pod_name: str) -> dict[str, int]:
        """``{"VmRSS": ..., "VmHWM": ...}`` (KiB) of the operator container's main process."""
        pid = self.cluster.pod_pids(self.namespace, pod_name, CONTAINER)[0]
        return self.cluster.process_memory_kib(pid)

    # -------------------------------------------------------------------------- BndlJobs

    def apply(self, doc: dict[str, Any] | str) -> str:
        return jobs.apply(self.cluster, self.jobs_namespace, doc)

    def get(self, name: str) -> dict[str, Any]:
        return jobs.get(self.cluster, self.jobs_namespace, name)

    def status(self, name: str) -> dict[str, Any]:
        return jobs.status(self.cluster, self.jobs_namespace, name)

    def wait_phase(
        self, name: str, phases: Iterable[str] | str, timeout: float = JOB_TIMEOUT
    ) -> dict[str, Any]:
        """Wait until the BndlJob's status.phase is one of ``phases``; return the status."""
        wanted = {phases} if isinstance(phases, str) else set(phases)
        try:
            return jobs.wait_status(
                self.cluster,
                self.jobs_namespace,
                name,
                lambda s: s.get("phase") in wanted,
                timeout,
                f"phase in {sorted(wanted)}",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from e

    # --------------------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        """Uninstall (if installed), release the BndlJobs' finalizers, delete both namespaces."""
        self.uninstall(check=False)
        for ns in (self.jobs_namespace, self.namespace):
            release_finalizers(self.cluster.kubectl, ns)
            self.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def operator_image(k8s_cluster: Cluster) -> str:
    """The operator image on every node: ``BNDL_E2E_OPERATOR_IMAGE`` (a podman image, loaded) or
    ./Dockerfile built once per session as ``localhost/bndl-operator:$BNDL_E2E_TAG`` (``e2e``)."""
    given = os.environ.get("BNDL_E2E_OPERATOR_IMAGE")
    if given:
        k8s_cluster.load_image(given)
        return given
    return k8s_cluster.build_image(OPERATOR_DOCKERFILE, REPO, OPERATOR_TAG)


@pytest.fixture
def chart_operator(
    request: pytest.FixtureRequest,
    k8s_cluster: Cluster,
    bndl_crd: str,
    operator_image: str,
    worker_image: str,
) -> Iterator[ChartOperator]:
    """An installed :class:`ChartOperator` (chart defaults), removed again after the test.

    Parametrize it indirectly with a tuple of ``key=value`` to install with those ``--set``s:
    ``@pytest.mark.parametrize("chart_operator", [("metrics.enabled=true",)], indirect=True)``.
    The item ``"cluster-wide"`` installs with the chart's default ``watch.namespaces: []`` (every
    namespace, with a ClusterRole; the operator then also sees the jobs of the process operator's
    ``t-*`` namespaces) instead of watching only its jobs namespace.
    """
    params = tuple(getattr(request, "param", ()))
    set_args = [p for p in params if p != "cluster-wide"]
    if bad := [p for p in set_args if "=" not in p]:
        raise ValueError(f"chart_operator: {bad} are neither key=value nor 'cluster-wide'")
    namespaced = "cluster-wide" not in params
    op = ChartOperator(k8s_cluster, operator_image, worker_image, namespaced=namespaced)
    failed_before = request.session.testsfailed
    try:
        op.create_namespaces()
        op.install(*set_args)
        yield op
    finally:
        # The call phase is reported before teardown, so a failed test has been counted.
        if request.session.testsfailed > failed_before:
            # "teardown" in the title: pytest prints the section under the test's failure.
            request.node.add_report_section("teardown", "chart operator", op.diagnostics())
        op.cleanup()


__all__ = [
    "CHART",
    "CONTAINER",
    "OPERATOR_TAG",
    "RESTRICTED",
    "ChartOperator",
    "chart_operator",
    "diamond",
    "image_values",
    "operator_image",
    "release_finalizers",
    "restricted_namespace",
    "split_image",
]
