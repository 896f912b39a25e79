"""The operator's pure builders: the children of a BndlJob, checked without a cluster."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bndl.k8s import builders
from bndl.k8s.builders import BuildSettings, JobRef
from bndl.manifest import plan_job

JOB = JobRef("wordcount", "team-a", "1234-uid")
TLS = builders.new_tls(JOB)
SETTINGS = BuildSettings(worker_image="registry.example/bndl-worker:1")


def plan(**spec: Any) -> Any:
    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "wordcount", "namespace": "team-a"},
        "spec": {"tasks": [{"id": "a", "call": "mod:fn"}], **spec},
    }
    return plan_job(doc)


def worker_container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def test_every_child_is_owned_labelled_and_in_the_jobs_namespace() -> None:
    objs = builders.children(JOB, plan(), SETTINGS, TLS)
    assert [o["kind"] for o in objs] == ["Secret", "Service", "NetworkPolicy", "StatefulSet"]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "bndl.io/v1alpha1",
                "kind": "BndlJob",
                "name": "wordcount",
                "uid": "1234-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["bndl.io/job-uid"] == "1234-uid"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "bndl-operator"


def test_secret_holds_the_tls_material_and_reads_back() -> None:
    secret = builders.secret(JOB, TLS)
    assert secret["metadata"]["name"] == "wordcount-tls"
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"}
    assert base64.b64decode(secret["data"]["tls.key"]) == TLS.worker.key
    assert builders.tls_of(secret) == TLS
    other = builders.new_tls(JOB)
    assert other.worker.ca != TLS.worker.ca  # a fresh authority per job
    for broken in ({}, {"ca.crt": "!!"}, {**secret["data"], "client.key": "not base64!"}):
        with pytest.raises(builders.SecretUnusable):
            builders.tls_of({"data": broken})


def test_headless_service_selects_the_jobs_pods_by_uid() -> None:
    svc = builders.service(JOB, plan())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {
        "bndl.io/job-uid": "1234-uid",
        "app.kubernetes.io/component": "worker",
    }
    assert svc["spec"]["ports"][0]["port"] == 8470


def test_network_policy_admits_only_peers_and_the_operator_on_the_worker_port() -> None:
    settings = BuildSettings(operator_namespace="bndl-system", operator_cidrs=("10.0.0.0/8",))
    pol = builders.network_policy(JOB, plan(workers={"port": 9000}), settings)
    spec = pol["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"]["bndl.io/job-uid"] == "1234-uid"
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    peers, operator, cidr = rule["from"]
    assert peers == {"podSelector": {"matchLabels": builders.selector(JOB)}}
    assert operator["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "bndl-system"}
    }
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert cidr == {"ipBlock": {"cidr": "10.0.0.0/8"}}


def test_stateful_set_runs_the_worker_with_secret_probes_and_restricted_security() -> None:
    sts = builders.stateful_set(JOB, plan(workers={"replicas": 3}), SETTINGS)
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "wordcount-workers"
    assert spec["selector"]["matchLabels"] == builders.selector(JOB)
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = worker_container(sts)
    assert c["image"] == "registry.example/bndl-worker:1"
    assert c["command"] == ["python", "-m", "bndl.worker"]
    assert "--url=https://$(BNDL_POD_IP):8470" in c["args"]
    assert "--health-port=8471" in c["args"]
    assert "--bind=0.0.0.0" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["BNDL_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["BNDL_TLS_DIR"]["value"] == "/var/run/bndl/tls"
    assert c["ports"][:2] == [
        {"name": "bndl", "containerPort": 8470, "protocol": "TCP"},
        {"name": "bndl-health", "containerPort": 8471, "protocol": "TCP"},
    ]
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/healthz")):  # fmt: skip
        assert c[probe]["httpGet"] == {"path": path, "port": "bndl-health"}  # plain HTTP
    # A busy node answers late: only a worker silent for a minute is restarted.
    liveness = c["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, liveness
    assert liveness["timeoutSeconds"] >= 5, liveness
    assert c["readinessProbe"]["timeoutSeconds"] > 1, c["readinessProbe"]
    security = c["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls = volumes["bndl-tls"]["secret"]
    assert (tls["secretName"], tls["defaultMode"]) == ("wordcount-tls", 0o440)
    # the operator's own key stays out of the pods
    assert [i["key"] for i in tls["items"]] == ["ca.crt", "tls.crt", "tls.key"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/run/bndl/tls"]["readOnly"] is True and "/tmp" in mounts


def test_user_template_is_kept_and_completed() -> None:
    template = {
        "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
        "spec": {
            "nodeSelector": {"disk": "ssd"},
            "securityContext": {"runAsUser": 1000},
            "containers": [
                {
                    "name": "worker",
                    "image": "mine:2",
                    "env": [{"name": "MY_VAR", "value": "1"}],
                    "resources": {"limits": {"memory": "1Gi"}},
                },
                {"name": "sidecar", "image": "side:1"},
            ],
        },
    }
    sts = builders.stateful_set(JOB, plan(workers={"template": template}), SETTINGS)
    tpl = sts["spec"]["template"]
    assert tpl["metadata"]["labels"]["team"] == "a"
    assert tpl["metadata"]["labels"]["bndl.io/job-uid"] == "1234-uid"
    assert tpl["metadata"]["annotations"] == {"note": "x"}
    assert tpl["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert tpl["spec"]["securityContext"]["runAsUser"] == 1000  # the user's choice wins
    c = worker_container(sts)
    assert c["image"] == "mine:2"
    assert c["resources"] == {"limits": {"memory": "1Gi"}}
    assert {"MY_VAR", "BNDL_TLS_DIR"} <= {e["name"] for e in c["env"]}
    assert [x["name"] for x in tpl["spec"]["containers"]] == ["worker", "sidecar"]
    assert template["spec"]["containers"][0].get("command") is None  # the input is not changed


def test_image_shortcut_overrides_the_template_and_suspend_scales_to_zero() -> None:
    p = plan(workers={"image": "short:1", "template": {"spec": {"containers": []}}})
    objs = builders.children(JOB, p, SETTINGS, TLS, suspended=True)
    sts = objs[-1]
    assert sts["spec"]["replicas"] == 0
    assert worker_container(sts)["image"] == "short:1"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ({"pythonPath": ["."]}, ["/opt/bndl/code"]),
        ({"pythonPath": ["lib", "/abs"]}, ["/opt/bndl/code/lib", "/abs"]),
        ({"configMap": "src", "mountPath": "/code"}, ["/code"]),
        ({}, []),
    ],
)
def test_python_path_resolves_against_the_mount(code: dict[str, Any], expected: list[str]) -> None:
    p = plan(code=code)
    assert builders.python_path(p) == expected
    env = {
        e["name"]: e.get("value")
        for e in worker_container(builders.stateful_set(JOB, p, SETTINGS))["env"]
    }
    assert env.get("PYTHONPATH") == (":".join(expected) if expected else None)


def test_config_map_code_is_mounted() -> None:
    sts = builders.stateful_set(JOB, plan(code={"configMap": "my-code"}), SETTINGS)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["bndl-code"] == {"name": "bndl-code", "configMap": {"name": "my-code"}}
    mounts = {m["name"]: m for m in worker_container(sts)["volumeMounts"]}
    assert mounts["bndl-code"]["mountPath"] == "/opt/bndl/code"


def test_long_job_names_give_short_child_names() -> None:
    job = JobRef("x" * 200, "ns", "uid")
    assert len(job.base) == builders.MAX_BASE
    assert len(job.workers) <= 63 - 11  # room for the controller-revision-hash suffix
    assert len(job.pod_name(9999)) <= 63  # the pod-name label
    assert job.base != JobRef("x" * 199, "ns", "uid").base
