"""The chart installed the way users install it, on a real cluster, running a real BndlJob.

``helm install`` of charts/bndl with the operator image (top-level Dockerfile) and the worker image
(worker-image/Dockerfile) brings the operator up as a pod that talks to the API server through
in-cluster configuration, as the chart's ServiceAccount with only the chart's RBAC. A BndlJob
applied with ``kubectl apply`` then runs to Succeeded on worker pods, with the right results. Both
namespaces enforce the restricted Pod Security Standard. ``helm upgrade`` with changed values rolls
the operator (and switches it to a namespaced install, which must work with Roles alone);
``helm uninstall`` removes it and nothing else. Bad values fail ``helm install`` with a message
naming them, before anything is created.

Which cluster (see also .github/workflows/e2e-kind.yml, which runs this file on kind):

* ``BNDL_E2E_CLUSTER=local`` (default): the multi-node cluster of tests/cluster, started for the
  session; both images are built with podman and loaded into its nodes.
* ``BNDL_E2E_CLUSTER=kubeconfig``: whatever cluster ``KUBECONFIG`` (or ~/.kube/config) points at,
  for example kind. The images must already be on its nodes (``kind load docker-image``) or
  pullable: name them with ``BNDL_E2E_OPERATOR_IMAGE`` and ``BNDL_E2E_WORKER_IMAGE``.
* ``BNDL_E2E_OPERATOR_IMAGE`` / ``BNDL_E2E_WORKER_IMAGE`` with the local cluster: use these
  (already built) podman images instead of building; they are loaded into the nodes.
* ``BNDL_E2E_PULL_POLICY`` (default IfNotPresent), ``BNDL_KUBECTL`` / ``BNDL_HELM`` (default: the
  binaries of tests/cluster for the local cluster, else kubectl and helm on PATH).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import config as cluster_config
from tests.helpers.waiting import wait_for_cluster

from .chart_operator import E2E_TAG, split_image

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "charts" / "bndl"
EXAMPLE = REPO / "examples" / "diamond.yaml"
OPERATOR_TAG = f"localhost/bndl-operator:{E2E_TAG}"
WORKER_TAG = f"localhost/bndl-worker:{E2E_TAG}"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
RELEASE = "bndl"
READY_TIMEOUT = 180
JOB_TIMEOUT = 300


class CommandFailed(AssertionError):
    def __init__(self, cmd: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
        self.stderr = proc.stderr


@dataclass
class Target:
    """A cluster to install the chart on: kubectl and helm commands, and the images to install."""

    kubectl_cmd: list[str]
    helm_cmd: list[str]
    env: dict[str, str]
    pull_policy: str
    operator_image: str = ""
    worker_image: str = ""
    figures: list[str] = field(default_factory=list)

    def _run(
        self, cmd: list[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and proc.returncode != 0:
            raise CommandFailed(cmd, proc)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        return self._run([*self.kubectl_cmd, *args], input, check, timeout).stdout

    def kubectl_refused(self, *args: str, input: str | None = None) -> str:
        """Run kubectl expecting failure; return its error output."""
        proc = self._run([*self.kubectl_cmd, *args], input, False, 120)
        assert proc.returncode != 0, f"kubectl {' '.join(args)} succeeded:\n{proc.stdout}"
        return proc.stderr

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return self._run([*self.helm_cmd, *args], None, check, timeout).stdout

    def helm_failure(self, *args: str) -> str:
        """Run helm expecting failure; return its error output."""
        proc = self._run([*self.helm_cmd, *args], None, False, 300)
        assert proc.returncode != 0, f"helm {' '.join(args)} succeeded:\n{proc.stdout}"
        return proc.stderr


def _binary(env_name: str, cached: Path, name: str) -> str:
    explicit = os.environ.get(env_name)
    if explicit:
        return explicit
    if cached.exists():
        return str(cached)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"no {name} binary: install it or set {env_name}")
    return found


def _external_target() -> Target:
    env = dict(os.environ)
    env.setdefault("HELM_CACHE_HOME", "/tmp/bndl-e2e-helm-cache")
    return Target(
        kubectl_cmd=[os.environ.get("BNDL_KUBECTL") or shutil.which("kubectl") or "kubectl"],
        helm_cmd=[os.environ.get("BNDL_HELM") or shutil.which("helm") or "helm"],
        env=env,
        pull_policy=os.environ.get("BNDL_E2E_PULL_POLICY", "IfNotPresent"),
    )


def _local_target(cluster: Any) -> Target:
    kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
    bin_dir = cluster_config.BIN
    return Target(
        kubectl_cmd=[_binary("BNDL_KUBECTL", bin_dir / "kubectl", "kubectl"), *kubeconfig],
        helm_cmd=[_binary("BNDL_HELM", bin_dir / "helm", "helm"), *kubeconfig],
        env=cluster.env(),
        pull_policy=os.environ.get("BNDL_E2E_PULL_POLICY", "IfNotPresent"),
    )


def _cluster_mode() -> str:
    mode = os.environ.get("BNDL_E2E_CLUSTER", "local")
    if mode not in ("local", "kubeconfig"):
        pytest.fail(f"BNDL_E2E_CLUSTER must be local or kubeconfig, not {mode!r}")
    return mode


class _Figures:
    """Prints the measured figures (image sizes, install-to-Ready times) in the session summary."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines:
            terminalreporter.write_line(f"chart e2e: {line}")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    """The cluster (images not needed yet)."""
    if _cluster_mode() == "kubeconfig":
        t = _external_target()
    else:
        t = _local_target(request.getfixturevalue("k8s_cluster"))
    request.config.pluginmanager.register(_Figures(t.figures), "bndl-chart-e2e-figures")
    return t


IMAGES = (
    ("BNDL_E2E_OPERATOR_IMAGE", OPERATOR_TAG, REPO / "Dockerfile"),
    ("BNDL_E2E_WORKER_IMAGE", WORKER_TAG, REPO / "worker-image" / "Dockerfile"),
)


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest, target: Target) -> Target:
    """The target with both images on its nodes: given by the environment, or built and loaded."""
    found: dict[str, str] = {}
    if _cluster_mode() == "kubeconfig":
        missing = [name for name, _, _ in IMAGES if not os.environ.get(name)]
        if missing:
            pytest.fail(f"BNDL_E2E_CLUSTER=kubeconfig needs {' and '.join(missing)}")
        found = {name: os.environ[name] for name, _, _ in IMAGES}
    else:
        cluster = request.getfixturevalue("k8s_cluster")
        for name, tag, dockerfile in IMAGES:
            t0 = time.monotonic()
            given = os.environ.get(name)
            if given:
                cluster.load_image(given)
            elif tag == WORKER_TAG and _shared_worker_image(request) == tag:
                pass  # built once per session by tests/e2e/conftest.py, same Dockerfile and tag
            else:
                cluster.build_image(dockerfile, REPO, tag)
            found[name] = given or tag
            what = "loaded" if given else "built and loaded"
            size = image_size(found[name])
            target.figures.append(
                f"{found[name]}: {what} in {time.monotonic() - t0:.0f}s, {size / 1e6:.0f} MB"
            )
    target.operator_image = found["BNDL_E2E_OPERATOR_IMAGE"]
    target.worker_image = found["BNDL_E2E_WORKER_IMAGE"]
    return target


def _shared_worker_image(request: pytest.FixtureRequest) -> str | None:
    try:
        return str(request.getfixturevalue("worker_image"))
    except pytest.FixtureLookupError:
        return None


def image_size(ref: str) -> int:
    """Size of a local podman image in bytes (what `podman image inspect` reports)."""
    from tests.cluster import images as cluster_images

    out = cluster_images.podman("image", "inspect", ref, "--format", "{{.Size}}")
    return int(out.strip())


def _namespace(target: Target, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    labels = {"metadata": {"name": name, "labels": RESTRICTED}}
    target.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", **labels})
    )
    return name


@pytest.fixture
def namespaces(target: Target) -> Iterator[tuple[str, str]]:
    """(operator namespace, jobs namespace), both enforcing the restricted Pod Security Standard."""
    made = [_namespace(target, "bndl-op"), _namespace(target, "bndl-jobs")]
    try:
        yield made[0], made[1]
    finally:
        # A test that failed half-way leaves its release (and cluster-scoped RBAC) behind.
        target.helm("uninstall", RELEASE, "-n", made[0], "--wait", "--timeout", "60s", check=False)
        for ns in made:
            # With the operator uninstalled, nothing would remove kopf's finalizers.
            for job in target.kubectl(
                "get", "bndljobs", "-n", ns, "-o", "name", check=False
            ).split():
                target.kubectl("patch", job, "-n", ns, "--type=merge",
                               "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
            target.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def image_values(target: Target) -> list[str]:
    args = []
    for prefix, ref in (("image", target.operator_image), ("worker.image", target.worker_image)):
        for key, value in split_image(ref).items():
            args += ["--set-string", f"{prefix}.{key}={value}"]
    args += ["--set", f"image.pullPolicy={target.pull_policy}"]
    args += ["--set", f"worker.image.pullPolicy={target.pull_policy}"]
    return args


# ---------------------------------------------------------------------------- waiting helpers


REPLICAS = 2
"""The chart's default replicaCount: a leader and a standby."""


def operator_pod(target: Target, ns: str, not_uids: set[str]) -> dict[str, Any] | None:
    """The leader's pod when all the chart's replicas are Running, Ready and new, else None."""
    pods = target.kubectl_json(
        "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != REPLICAS or any(p["metadata"]["uid"] in not_uids for p in live):
        return None
    for pod in live:
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conds.get("Ready") != "True":
            return None
    leases = target.kubectl_json("get", "leases", "-n", ns)["items"]
    holders = {(lease.get("spec") or {}).get("holderIdentity") for lease in leases}
    return next((p for p in live if p["metadata"]["name"] in holders), None)


def operator_uids(target: Target, ns: str) -> set[str]:
    pods = target.kubectl_json(
        "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    return {p["metadata"]["uid"] for p in pods}


def wait_operator_ready(
    target: Target, ns: str, not_uids: set[str] | None = None
) -> dict[str, Any]:
    """The leader's pod once the chart's replicas are all Ready (and none of ``not_uids``)."""

    def ready() -> dict[str, Any] | None:
        return operator_pod(target, ns, not_uids or set())

    try:
        return wait_for_cluster(
            ready,
            READY_TIMEOUT,
            f"operator pod Ready in {ns}",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{diagnose(target, ns)}") from e


def diagnose(target: Target, ns: str) -> str:
    """What to look at when the operator is not Ready: pods, events and the operator's log."""
    parts = [
        target.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False),
        target.kubectl(
            "logs", "-n", ns, "-l", "app.kubernetes.io/component=operator", "--tail=80",
            "--all-containers", "--prefix", check=False,
        ),
    ]  # fmt: skip
    return "\n".join(parts)


def diamond(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """examples/diamond.yaml renamed and keeping its workers; and its expected results."""
    job = yaml.safe_load(EXAMPLE.read_text())
    job["metadata"]["name"] = name
    job["spec"]["cleanupPolicy"] = "KeepWorkers"
    expected = json.loads(job["metadata"]["annotations"]["examples.bndl.io/expected"])
    return job, expected


def wait_job_finished(target: Target, ns: str, name: str, op_ns: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job = target.kubectl_json("get", "bndljob", name, "-n", ns)
        phase = job.get("status", {}).get("phase")
        return job if phase in ("Succeeded", "Failed", "Cancelled") else None

    try:
        return wait_for_cluster(
            finished,
            JOB_TIMEOUT,
            f"BndlJob {ns}/{name} finished",
        )
    except TimeoutError as e:
        extra = target.kubectl("get", "bndljob,pods,events", "-n", ns, "-o", "wide", check=False)
        raise AssertionError(f"{e}\n{extra}\n{diagnose(target, op_ns)}") from e


def run_diamond(target: Target, ns: str, name: str, op_ns: str) -> list[dict[str, Any]]:
    """Apply the example, wait for Succeeded, check its results; return its worker pods."""
    job, expected = diamond(name)
    target.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
    done = wait_job_finished(target, ns, name, op_ns)
    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    results = status.get("results", {})
    assert results, f"no results in the status: {status}"
    assert {k: expected[k] for k in results} == results
    assert results.get("d") == expected["d"]
    uid = done["metadata"]["uid"]
    pods = target.kubectl_json("get", "pods", "-n", ns, "-l", f"bndl.io/job-uid={uid}")["items"]
    assert len(pods) == job["spec"]["workers"]["replicas"], [p["metadata"]["name"] for p in pods]
    return pods  # type: ignore[no-any-return]


def gone(target: Target, *args: str) -> bool:
    out = target.kubectl("get", *args, "--ignore-not-found", "-o", "name")
    return out.strip() == ""


# -------------------------------------------------------------------------------------- tests


def test_bad_values_fail_helm_install_with_a_clear_message(
    target: Target, namespaces: tuple[str, str]
) -> None:
    op_ns, _ = namespaces
    cases = [
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (
            ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled requires metrics.enabled=true",
        ),
        (["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
    ]
    for args, message in cases:
        err = target.helm_failure("install", "bad", str(CHART), "-n", op_ns, *args)
        assert message in err
    assert json.loads(target.helm("list", "-n", op_ns, "-a", "-o", "json")) == []
    assert gone(target, "deployments,serviceaccounts,roles", "-n", op_ns, "-l",
                "app.kubernetes.io/instance=bad")  # fmt: skip


def test_install_run_upgrade_uninstall(images: Target, namespaces: tuple[str, str]) -> None:
    target = images
    op_ns, jobs_ns = namespaces
    release = RELEASE
    # Cluster-scoped names derive from the full name: one per run avoids clashes with another run
    # on a shared cluster.
    fullname = f"bndl-{op_ns}"
    for ns in namespaces:
        assert_restricted_enforced(target, ns)
    common = [
        str(CHART),
        "-n",
        op_ns,
        "--set",
        f"fullnameOverride={fullname}",
        *image_values(target),
    ]

    # --- install: the operator comes up as a Ready pod, as the chart's ServiceAccount.
    t0 = time.monotonic()
    target.helm("install", release, *common)
    pod = wait_operator_ready(target, op_ns)
    target.figures.append(f"helm install -> operator Ready in {time.monotonic() - t0:.1f}s")
    spec = pod["spec"]
    assert spec["serviceAccountName"] == fullname
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["image"] == rendered(target.operator_image)
    assert any(
        m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
        for m in container["volumeMounts"]
    ), "the operator needs its ServiceAccount token (in-cluster configuration)"
    sa = f"system:serviceaccount:{op_ns}:{fullname}"
    # Least privilege, checked by the API server's own authorizer.
    assert can_i(target, sa, "watch", "bndljobs.bndl.io", "-A")
    assert can_i(target, sa, "create", "statefulsets.apps", "-n", jobs_ns)
    assert not can_i(target, sa, "list", "secrets", "-A")
    assert not can_i(target, sa, "create", "pods", "-n", jobs_ns)
    assert not can_i(target, sa, "delete", "nodes")
    assert can_i(target, sa, "update", "leases.coordination.k8s.io", "-n", op_ns)
    assert not can_i(target, sa, "update", "leases.coordination.k8s.io", "-n", jobs_ns)

    # --- a BndlJob runs to Succeeded on worker pods from the worker image, under PSS restricted.
    workers = run_diamond(target, jobs_ns, "diamond", op_ns)
    for w in workers:
        wspec = w["spec"]
        assert wspec["automountServiceAccountToken"] is False
        assert not any(
            "serviceaccount" in m["mountPath"]
            for c in wspec["containers"]
            for m in c.get("volumeMounts", [])
        ), "a worker pod has a ServiceAccount token mounted"
        assert wspec["securityContext"]["runAsNonRoot"] is True
        worker = next(c for c in wspec["containers"] if c["name"] == "worker")
        assert worker["image"] == rendered(target.worker_image)
        uid = target.kubectl("exec", "-n", jobs_ns, w["metadata"]["name"], "-c", "worker", "--",
                             "python", "-c", "import os; print(os.getuid())")  # fmt: skip
        assert uid.strip() != "0"

    assert_events_posted(target, jobs_ns, "diamond")
    assert_no_forbidden(target, op_ns)

    # --- upgrade with changed values: a new operator pod, now watching only the jobs namespace
    # with a Role there (no ClusterRole for jobs), and it still runs jobs.
    old_uids = operator_uids(target, op_ns)
    t0 = time.monotonic()
    target.helm(
        "upgrade", release, *common,
        "--set", f"watch.namespaces={{{jobs_ns}}}", "--set", "operator.logLevel=debug",
    )  # fmt: skip
    pod = wait_operator_ready(target, op_ns, not_uids=old_uids)
    target.figures.append(f"helm upgrade -> new operator Ready in {time.monotonic() - t0:.1f}s")
    assert "--log-level=DEBUG" in pod["spec"]["containers"][0]["args"]
    assert gone(target, "clusterrole", fullname)
    assert can_i(target, sa, "create", "statefulsets.apps", "-n", jobs_ns)
    assert not can_i(target, sa, "create", "statefulsets.apps", "-n", op_ns)
    run_diamond(target, jobs_ns, "diamond-again", op_ns)
    assert_events_posted(target, jobs_ns, "diamond-again")
    assert_no_forbidden(target, op_ns)

    # --- uninstall: everything of the release goes; the CRD and the BndlJobs stay.
    target.helm("uninstall", release, "-n", op_ns, "--wait", "--timeout", "120s")
    wait_for_cluster(
        lambda: gone(target, "deployments,pods,serviceaccounts,services", "-n", op_ns,
                     "-l", f"app.kubernetes.io/instance={release}"),
        READY_TIMEOUT, "the release's namespaced objects deleted",
    )  # fmt: skip
    assert gone(
        target, "roles,rolebindings", "-n", jobs_ns, "-l", "app.kubernetes.io/managed-by=Helm"
    )
    for name in (fullname, f"{fullname}-framework", f"{fullname}-node-reader"):
        assert gone(
            target, "clusterroles,clusterrolebindings", "--field-selector", f"metadata.name={name}"
        )
    assert not gone(target, "crd", "bndljobs.bndl.io")
    assert not gone(target, "bndljob", "diamond", "-n", jobs_ns)


def assert_restricted_enforced(target: Target, ns: str) -> None:
    """The namespace really refuses pods that break the restricted Pod Security Standard."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pss-probe"},
        "spec": {"containers": [{"name": "c", "image": target.worker_image}]},
    }
    err = target.kubectl_refused(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(pod)
    )
    assert "violates PodSecurity" in err, err


def assert_no_forbidden(target: Target, op_ns: str) -> None:
    """A permission the chart misses shows as 403 in the operator's log even when jobs succeed
    (an Event not posted, kopf falling back); none may appear."""
    log = target.kubectl(
        "logs", "-n", op_ns, "-l", "app.kubernetes.io/component=operator", "--tail=-1"
    )
    bad = [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]
    assert not bad, "the chart's RBAC misses a permission:\n" + "\n".join(bad[:10])


def assert_events_posted(target: Target, ns: str, job: str) -> None:
    events = target.kubectl_json(
        "get", "events", "-n", ns,
        "--field-selector", f"involvedObject.kind=BndlJob,involvedObject.name={job}",
    )["items"]  # fmt: skip
    assert events, f"no Events on BndlJob {ns}/{job}"


def rendered(ref: str) -> str:
    """The image reference the chart renders from ``ref`` (split into its values)."""
    parts = split_image(ref)
    if "digest" in parts:
        return f"{parts['repository']}@{parts['digest']}"
    return f"{parts['repository']}:{parts['tag']}"


def can_i(target: Target, user: str, verb: str, resource: str, *scope: str) -> bool:
    out = target.kubectl("auth", "can-i", verb, resource, *scope, "--as", user, check=False)
    return out.strip() == "yes"
