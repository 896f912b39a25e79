"""The Helm chart without a cluster: `helm lint`, rendered manifests, and refused values.

These run the real helm binary (the one tests/cluster/build.sh caches, or ``BNDL_HELM`` / ``helm``
on PATH) with ``helm template``, which applies values.schema.json and the chart's ``fail`` checks
exactly as ``helm install`` does. The same refusals are checked against a real API server by
tests/e2e/test_chart.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import config as cluster_config

pytestmark = pytest.mark.usefixtures("helm_binary")

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "bndl"
KUBE_VERSION = cluster_config.VERSIONS["K8S_VERSION"]


def helm_binary() -> str:
    explicit = os.environ.get("BNDL_HELM")
    if explicit:
        return explicit
    cached = cluster_config.BIN / "helm"
    if cached.exists():
        return str(cached)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("no helm binary: run tests/cluster/build.sh, install helm, or set BNDL_HELM")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/bndl-helm-cache"}
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    return [a for k, v in (values or {}).items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


def template(
    values: dict[str, Any] | None = None, namespace: str = "bndl-system"
) -> list[dict[str, Any]]:
    out = helm(
        "template", "bndl", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION,
        *set_args(values),
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def refused(values: dict[str, Any]) -> str:
    proc = helm(
        "template", "bndl", str(CHART), "--kube-version", KUBE_VERSION, *set_args(values),
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0, f"values {values} were accepted"
    return proc.stderr


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    """The chart rendered with its default values, once for the tests that only read it (a test
    that compares two renderings calls ``template`` itself)."""
    return template()


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return container  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watch.namespaces": ["jobs-a", "jobs-b"], "rbac.nodeLocality": False},
        {"metrics.enabled": True, "metrics.serviceMonitor.enabled": True},
    ],
    ids=["defaults", "namespaced", "servicemonitor"],
)
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *set_args(values))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# -------------------------------------------------------------------------------- the defaults


def test_defaults_render_two_operators_electing_a_leader_with_restricted_security(
    defaults: list[dict[str, Any]],
) -> None:
    docs = defaults
    deploy = only(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["BNDL_LEADER_ELECTION"]["value"] == "true"
    assert env["BNDL_LEASE_NAME"]["value"] == "bndl-leader"
    assert env["BNDL_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["BNDL_MAX_TASKS"]["value"] == "200000"
    assert env["BNDL_WORKER_MEMORY_LIMIT"]["value"] == "2Gi"
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]
    anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    [lease_role] = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "bndl-leader"]
    assert lease_role["metadata"]["namespace"] == "bndl-system"
    assert rules_of(lease_role) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    single = only(template({"replicaCount": 1, "leaderElection.enabled": False}), "Deployment")
    assert single["spec"]["replicas"] == 1
    assert not by_kind(template({"replicaCount": 1}), "PodDisruptionBudget")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(docs)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["image"] == "ghcr.io/bndl/bndl-operator:0.1.0"
    # The image's entrypoint is `python -m bndl.k8s`; the chart only passes arguments.
    assert "command" not in c
    # No --namespace flag: every namespace.
    assert not [a for a in c["args"] if a.startswith("--namespace")]
    assert "--log-level=INFO" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert f"--liveness=http://0.0.0.0:{health['health']}/healthz" in c["args"]
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_only_the_operator_pod_mounts_a_service_account_token(
    defaults: list[dict[str, Any]],
) -> None:
    docs = defaults
    sa = only(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True


@pytest.mark.parametrize("values", [{}, {"nameOverride": "jobs", "fullnameOverride": "x"}])
def test_workers_network_policy_admits_the_operator_pod(values: dict[str, Any]) -> None:
    """The operator puts BNDL_OPERATOR_LABELS/NAMESPACE into each job's NetworkPolicy: they must
    select the operator's own pod, or a policy-enforcing CNI (kind's) cuts it off its workers."""
    docs = template(values, namespace="ops")
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    wanted = dict(kv.split("=", 1) for kv in env["BNDL_OPERATOR_LABELS"]["value"].split(","))
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert wanted.items() <= pod_labels.items()
    assert wanted["app.kubernetes.io/component"] == "operator"
    ns = env["BNDL_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ns == "metadata.namespace"


def test_worker_image_defaults_to_the_app_version_and_digest_wins(
    defaults: list[dict[str, Any]],
) -> None:
    env = {e["name"]: e.get("value") for e in operator_container(defaults)["env"]}
    assert env["BNDL_WORKER_IMAGE"] == "ghcr.io/bndl/bndl-worker:0.1.0"
    digest = "sha256:" + "a" * 64
    docs = template({"worker.image.digest": digest, "image.tag": "v9"})
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    assert env["BNDL_WORKER_IMAGE"] == f"ghcr.io/bndl/bndl-worker@{digest}"
    assert operator_container(docs)["image"] == "ghcr.io/bndl/bndl-operator:v9"


def test_every_resource_carries_the_standard_labels(defaults: list[dict[str, Any]]) -> None:
    for doc in defaults:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "bndl", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == "bndl"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "bndl-0.1.0"


def test_changed_values_change_the_pod_template() -> None:
    """`helm upgrade` with any changed value rolls the operator (checksum annotation)."""

    def checksum(values: dict[str, Any]) -> str:
        meta = only(template(values), "Deployment")["spec"]["template"]["metadata"]
        return meta["annotations"]["checksum/values"]  # type: ignore[no-any-return]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"rbac.nodeLocality": False})


def test_metrics_service_and_optional_service_monitor(defaults: list[dict[str, Any]]) -> None:
    assert not by_kind(defaults, "Service")
    docs = template({"metrics.enabled": True})
    svc = only(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not by_kind(docs, "ServiceMonitor")
    docs = template(
        {"metrics.enabled": True, "metrics.serviceMonitor.enabled": True, "metrics.port": 9400}
    )
    monitor = only(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    ports = {p["name"]: p["containerPort"] for p in operator_container(docs)["ports"]}
    assert ports["metrics"] == 9400
    off = template({"metrics.enabled": False})
    assert not by_kind(off, "Service")
    assert "metrics" not in {p["name"] for p in operator_container(off)["ports"]}


# ------------------------------------------------------------------------------------- RBAC


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_cluster_wide_install_binds_one_cluster_role_and_the_node_reader(
    defaults: list[dict[str, Any]],
) -> None:
    docs = defaults
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    assert set(roles) == {"bndl", "bndl-framework", "bndl-node-reader"}
    assert rules_of(roles["bndl-node-reader"]) == {("", "nodes"): {"get"}}
    assert rules_of(roles["bndl-framework"]) == FRAMEWORK_RULES
    jobs = rules_of(roles["bndl"])
    assert ("", "nodes") not in jobs
    assert {"watch", "patch"} <= jobs[("bndl.io", "bndljobs")]
    assert "patch" in jobs[("bndl.io", "bndljobs/status")]
    # Least privilege: nothing may list or watch every Secret of the cluster, nothing uses "*".
    assert not {"list", "watch"} & jobs[("", "secrets")]
    for role in roles.values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    bindings = by_kind(docs, "ClusterRoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "bndl", "namespace": "bndl-system"}
        ]
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role")] == ["bndl-leader"]


FRAMEWORK_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def test_namespaced_install_uses_a_role_per_namespace() -> None:
    docs = template({"watch.namespaces": ["jobs-a", "jobs-b"], "rbac.nodeLocality": False})
    # The only cluster-scoped access left is kopf's read-only view of CRDs and namespaces.
    [framework] = by_kind(docs, "ClusterRole")
    assert rules_of(framework) == FRAMEWORK_RULES
    assert len(by_kind(docs, "ClusterRoleBinding")) == 1
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "bndl"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["jobs-a", "jobs-b"]
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "bndl"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["jobs-a", "jobs-b"]
    args = operator_container(docs)["args"]
    assert "--namespace=jobs-a" in args and "--namespace=jobs-b" in args
    docs = template({"watch.namespaces": ["jobs-a"]})
    names = {r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")}
    assert names == {"bndl-framework", "bndl-node-reader"}


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = template({"rbac.create": False, "serviceAccount.create": False,
                     "serviceAccount.name": "mine"})  # fmt: skip
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
    }
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# --------------------------------------------------------------------------- refused values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
        ({"image.repository": ""}, "repository"),
        ({"metrics.port": 80}, "port"),
        ({"watch.namespaces": ["Not_A_Namespace"]}, "namespaces"),
        ({"operator.logLevel": "loud"}, "logLevel"),
        ({"worker.image.digest": "latest"}, "digest"),
        ({"serviceAccount.create": False}, "serviceAccount.name is required"),
        ({"metrics.enabled": False, "metrics.serviceMonitor.enabled": True},
         "metrics.serviceMonitor.enabled requires metrics.enabled=true"),
        ({"metrics.enabled": True, "metrics.port": 8080}, "must differ"),
        ({"watch.namespaces": ["a", "a"]}, "watch.namespaces lists a namespace twice"),
        ({"podSecurityContext.runAsUser": 0}, "the operator never runs as root"),
        ({"securityContext.allowPrivilegeEscalation": True}, "privilege escalation are refused"),
        ({"leaderElection.enabled": False}, "replicaCount > 1 requires leaderElection.enabled"),
        ({"leaderElection.renewDeadlineSeconds": 20}, "must be shorter than"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    assert message in refused(values)


# ------------------------------------------------------------------------ values documentation


def documented_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values documented one by one: leaves, and free-form objects whole."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.append(path)
        node = schema["properties"].get(key, {})
        if isinstance(value, dict) and "properties" in node:
            out.pop()
            out += documented_paths(value, node, f"{path}.")
    return out


def test_every_value_is_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in documented_paths(yaml.safe_load(text), schema):
        node, idx = schema, -1
        for depth, part in enumerate(path.split(".")):
            assert part in node.get("properties", {}), f"value {path} is not in the schema"
            node = node["properties"][part]
            # The key's line inside its parent's block.
            key_line = re.compile(rf"^{'  ' * depth}{re.escape(part)}:")
            idx = next(i for i in range(idx + 1, len(lines)) if key_line.match(lines[i]))
        # A "# -- " comment (helm-docs style) sits in the comment block right above the key.
        above = idx - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            if lines[above].lstrip().startswith("# -- "):
                break
            above -= 1
        assert above >= 0 and lines[above].lstrip().startswith("# -- "), f"{path} undocumented"


def test_schema_objects_refuse_unknown_keys() -> None:
    def walk(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for k, v in node["properties"].items():
                walk(v, f"{where}.{k}")

    walk(json.loads((CHART / "values.schema.json").read_text()), "values")
