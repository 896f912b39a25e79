"""BndlJob manifests: parsing, every class of invalid manifest (with its exact field path),
fan-out expansion, markers, and the shape of the CRD the schema comes from."""

from __future__ import annotations

import copy
import pickle
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bndl.manifest import (
    CEL_RULES_CHECKED,
    CleanupPolicy,
    CycleError,
    FromTask,
    FromTasks,
    JobPlan,
    ManifestError,
    Preference,
    crd,
    parse_manifest,
    plan_job,
    references,
    resolve_call,
    split_call,
    substitute,
    topological_order,
    validate_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "crds" / "bndljob.yaml"
PACKAGED_CRD = ROOT / "operator" / "bndl" / "manifest" / "bndljob.crd.yaml"


def job(*tasks: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A manifest with these task entries and spec fields."""
    return {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "test"},
        "spec": {"tasks": list(tasks), **spec},
    }


def task(id: str, *args: Any, **fields: Any) -> dict[str, Any]:
    return {"id": id, "call": "operator:add", "args": list(args), **fields}


def problems(doc: Any, **kw: Any) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in validate_manifest(doc, **kw)]


def fields(doc: Any, **kw: Any) -> list[str]:
    return [f for f, _ in problems(doc, **kw)]


def only_problem(doc: Any, **kw: Any) -> tuple[str, str]:
    found = problems(doc, **kw)
    assert len(found) == 1, found
    return found[0]


DIAMOND = job(
    task("d", {"fromTask": "b"}, {"fromTask": "c"}),
    task("b", {"fromTask": "a"}, 1),
    task("c", kwargs={"x": {"nested": [{"fromTask": "a"}]}}, dependsOn=["b"]),
    task("a", 1, 2),
)


# -- valid manifests ---------------------------------------------------------------------------


def test_valid_manifest_plans_in_dependency_order_with_defaults() -> None:
    plan = plan_job(DIAMOND)
    assert isinstance(plan, JobPlan)
    assert [t.id for t in plan.tasks] == ["a", "b", "c", "d"]
    assert (plan.name, plan.namespace) == ("test", None)
    assert (plan.concurrency, plan.attempts, plan.order_results, plan.suspend) == (
        1,
        1,
        True,
        False,
    )
    assert plan.cleanup_policy is CleanupPolicy.DELETE_WORKERS
    by_id = {t.id: t for t in plan.tasks}
    assert by_id["d"].args == [FromTask("b"), FromTask("c")]
    assert by_id["d"].depends_on == {"b", "c"}
    assert by_id["c"].kwargs == {"x": {"nested": [FromTask("a")]}}
    assert by_id["c"].depends_on == {"a", "b"}  # implied by fromTask, plus dependsOn
    assert by_id["a"].depends_on == frozenset()
    assert by_id["a"].priority == 0 and by_id["a"].attempts is None


def test_the_input_document_is_not_modified() -> None:
    doc = copy.deepcopy(DIAMOND)
    plan_job(doc)
    assert doc == DIAMOND


def test_any_mapping_is_accepted() -> None:
    from types import MappingProxyType

    def frozen(obj: Any) -> Any:  # like the read-only views kopf hands to handlers
        if isinstance(obj, dict):
            return MappingProxyType({k: frozen(v) for k, v in obj.items()})
        if isinstance(obj, list):
            return tuple(frozen(v) for v in obj)
        return obj

    assert [t.id for t in plan_job(frozen(DIAMOND)).tasks] == ["a", "b", "c", "d"]


def test_settings_reach_the_plan() -> None:
    doc = job(
        task(
            "a",
            priority=5,
            group="g",
            attempts=3,
            locality={
                "required": {"topology.kubernetes.io/zone": "a"},
                "preferred": [{"weight": 10, "labels": {"disk": "ssd"}}],
            },
        ),
        concurrency=4,
        attempts=2,
        orderResults=False,
        workers={"replicas": 3, "port": 9000, "image": "img:1", "template": {"spec": {}}},
        awaitWorkers={"count": 3, "minimum": 2, "connectTimeoutSeconds": 10},
        activeDeadlineSeconds=600,
        suspend=True,
        ttlSecondsAfterFinished=60,
        cleanupPolicy="KeepWorkers",
        code={"configMap": "code", "pythonPath": ["lib"]},
        profiling={"cpu": True},
    )
    doc["metadata"]["namespace"] = "ns"
    plan = plan_job(doc)
    assert (plan.namespace, plan.concurrency, plan.attempts, plan.order_results) == (
        "ns",
        4,
        2,
        False,
    )
    assert (plan.workers.replicas, plan.workers.port, plan.workers.image) == (3, 9000, "img:1")
    assert plan.workers.template == {"spec": {}}
    assert (plan.await_workers.count, plan.await_workers.minimum) == (3, 2)
    assert (plan.await_workers.connect_timeout, plan.await_workers.stable_timeout) == (10.0, 60.0)
    assert (plan.active_deadline_seconds, plan.suspend, plan.ttl_seconds_after_finished) == (
        600,
        True,
        60,
    )
    assert plan.cleanup_policy is CleanupPolicy.KEEP_WORKERS
    assert (plan.code.config_map, plan.code.mount_path, plan.code.python_path) == (
        "code",
        "/opt/bndl/code",
        ("lib",),
    )
    assert plan.profiling.cpu and not plan.profiling.memory and plan.profiling.top == 20
    (t,) = plan.tasks
    assert (t.priority, t.group, t.attempts) == (5, "g", 3)
    assert t.locality.required == {"topology.kubernetes.io/zone": "a"}
    assert t.locality.preferred == (Preference(10, {"disk": "ssd"}),)


def test_yaml_multi_document_takes_the_first_bndljob() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: code}
        ---
        apiVersion: bndl.io/v1alpha1
        kind: BndlJob
        metadata: {name: first}
        spec:
          tasks: [{id: a, call: "operator:add", args: [1, 2]}]
        ---
        apiVersion: bndl.io/v1alpha1
        kind: BndlJob
        metadata: {name: second}
        spec: {tasks: []}
        """
    )
    assert plan_job(parse_manifest(text)).name == "first"


def test_yaml_errors_and_missing_bndljob() -> None:
    with pytest.raises(ManifestError, match="not valid YAML") as e:
        parse_manifest("spec: [unclosed", "job.yaml")
    assert e.value.field == ""
    with pytest.raises(ManifestError, match="no BndlJob"):
        parse_manifest("kind: A\n---\nkind: B\n")


# -- invalid manifests: the exact field of each problem ------------------------------------------


def test_unknown_keys_are_reported_with_a_suggestion() -> None:
    doc = job(task("a", dependson=["x"]), concurency=2)
    found = dict(problems(doc))
    assert "did you mean 'dependsOn'" in found["spec.tasks[0].dependson"]
    assert "did you mean 'concurrency'" in found["spec.concurency"]
    doc = job(task("a", locality={"preferred": [{"weigth": 1, "labels": {"a": "b"}}]}))
    assert sorted(fields(doc)) == [
        "spec.tasks[0].locality.preferred[0].weight",  # missing
        "spec.tasks[0].locality.preferred[0].weigth",  # unknown
    ]


def test_preserved_fields_accept_anything() -> None:
    doc = job(task("a", {"any": {"thing": [1, None]}}, kwargs={"k": {"deep": True}}))
    doc["spec"]["workers"] = {"template": {"spec": {"containers": [{"name": "worker"}]}}}
    doc["status"] = {"phase": "Running", "kopf": {"progress": {}}}
    assert problems(doc) == []


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["spec"]["tasks"][0].pop("call"), "spec.tasks[0].call", "missing"),
        (lambda d: d["spec"].pop("tasks"), "spec.tasks", "missing"),
        (lambda d: d["spec"].update(tasks=[]), "spec.tasks", "non-empty"),
        (lambda d: d["spec"]["tasks"][0].update(call="os.path"), "spec.tasks[0].call", "module:"),
        (lambda d: d["spec"]["tasks"][0].update(id="A b"), "spec.tasks[0].id", "lower-case"),
        (lambda d: d["spec"].update(concurrency="2"), "spec.concurrency", "type integer"),
        (lambda d: d["spec"].update(concurrency=0), "spec.concurrency", "minimum"),
        (lambda d: d["spec"].update(attempts=True), "spec.attempts", "not boolean"),
        (lambda d: d["spec"].update(cleanupPolicy="Nope"), "spec.cleanupPolicy", "DeleteWorkers"),
        (lambda d: d["spec"]["tasks"][0].update(args={"a": 1}), "spec.tasks[0].args", "array"),
        (
            lambda d: d["spec"]["tasks"][0].update(dependsOn=["b", "b"]),
            "spec.tasks[0].dependsOn",
            "twice",
        ),
        (lambda d: d.update(apiVersion="v1"), "apiVersion", "bndl.io/v1alpha1"),
        (lambda d: d.update(kind="Job"), "kind", "BndlJob"),
        (lambda d: d.pop("metadata"), "metadata.name", "name"),
        (lambda d: d["spec"].update(code={"mountPath": "rel"}), "spec.code.mountPath", "absolute"),
    ],
)
def test_schema_problems_name_their_field(mutate: Any, field: str, words: str) -> None:
    doc = job(task("a", 1, 2), task("b"))
    mutate(doc)
    found = problems(doc)
    assert [f for f, _ in found] == [field], found
    assert words in found[0][1]


def test_kwargs_keys_must_be_identifiers() -> None:
    field, message = only_problem(job(task("a", kwargs={"ok": 1, "not-ok": 2})))
    assert field == "spec.tasks[0].kwargs.not-ok" and "identifier" in message


def test_yaml_reads_y_and_n_as_kubectl_does() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: bndl.io/v1alpha1
        kind: BndlJob
        metadata: {name: yn}
        spec:
          tasks: [{id: a, call: "operator:add", args: [y, "y"], kwargs: {"x": 1, y: 2}}]
        """
    )
    doc = parse_manifest(text)
    assert doc["spec"]["tasks"][0]["args"] == [True, "y"]
    field, message = only_problem(doc)
    assert field == "spec.tasks[0].kwargs.true" and "quote it" in message


def test_duplicate_ids() -> None:
    field, message = only_problem(job(task("a"), task("b"), task("a")))
    assert field == "spec.tasks[2].id"
    assert "duplicate id='a'" in message and "spec.tasks[0]" in message
    # reported with the schema's problems, as the API server does
    assert fields(job(task("a"), task("a"), concurrency=0)) == [
        "spec.concurrency",
        "spec.tasks[1].id",
    ]


def test_dependencies_on_unknown_tasks() -> None:
    doc = job(task("alpha"), task("b", {"x": [0, {"fromTask": "alpa"}]}, dependsOn=["zzz"]))
    assert problems(doc) == [
        (
            "spec.tasks[1].dependsOn[0]",
            "no task has the id 'zzz': check the spelling of the task id",
        ),
        ("spec.tasks[1].args[0].x[1].fromTask", "no task has the id 'alpa': did you mean 'alpha'?"),
    ]


def test_a_task_cannot_depend_on_itself() -> None:
    field, message = only_problem(job(task("a", dependsOn=["a"])))  # the CRD's CEL rule
    assert field == "spec.tasks[0].dependsOn[0]" and "remove its own id" in message
    field, message = only_problem(job(task("a", {"fromTask": "a"})))
    assert field == "spec.tasks[0].args[0].fromTask" and "its own result" in message


def test_cycles_report_their_path() -> None:
    doc = job(
        task("ok"),
        task("a", {"fromTask": "b"}),
        task("b", dependsOn=["c", "ok"]),
        task("c", kwargs={"v": {"fromTask": "a"}}),
    )
    field, message = only_problem(doc)
    assert field == "spec.tasks[1]"
    assert "dependency cycle: a -> b -> c -> a" in message


def test_all_problems_are_reported_together() -> None:
    doc = job(
        task("a", dependsOn=["nope"]),
        task("b", {"fromTask": "missing"}),
        {"id": "c", "call": "no_such_module_xyz:f"},
    )
    with pytest.raises(ManifestError) as info:
        plan_job(doc, check_imports=True)
    err = info.value
    assert [e.field for e in err.errors] == [
        "spec.tasks[0].dependsOn[0]",
        "spec.tasks[1].args[0].fromTask",
        "spec.tasks[2].call",
    ]
    assert err.field == "spec.tasks[0].dependsOn[0]"  # the exception is the first problem
    assert str(err).startswith("3 problems in the manifest:\n  spec.tasks[0].dependsOn[0]: no task")
    again = pickle.loads(pickle.dumps(err))
    assert [(e.field, e.message) for e in again.errors] == [
        (e.field, e.message) for e in err.errors
    ]


def test_bad_locality() -> None:
    doc = job(
        task(
            "a",
            locality={
                "required": {"bad key!": "x", "zone": "a", "ok": "no spaces"},
                "preferred": [
                    {"weight": 0, "labels": {"zone": "b"}},
                ],
            },
        )
    )
    assert fields(doc) == ["spec.tasks[0].locality.preferred[0].weight"]
    doc["spec"]["tasks"][0]["locality"]["preferred"][0]["weight"] = 5
    found = problems(doc)
    assert [f for f, _ in found] == [
        "spec.tasks[0].locality.required.bad key!",
        "spec.tasks[0].locality.required.ok",
        "spec.tasks[0].locality.preferred[0].labels.zone",
    ]
    assert "can never match" in found[2][1] and "zone=a" in found[2][1]
    doc = job(task("a", locality={"preferred": [{"weight": 5, "labels": {}}]}))
    assert fields(doc) == ["spec.tasks[0].locality.preferred[0].labels"]


def test_await_workers_bounds() -> None:
    doc = job(task("a"), awaitWorkers={"count": 2, "minimum": 3}, workers={"replicas": 1})
    assert fields(doc) == ["spec.awaitWorkers.minimum", "spec.awaitWorkers.count"]


def test_imports_are_checked_only_when_asked() -> None:
    doc = job(
        {"id": "a", "call": "no_such_module_xyz:f"},
        {"id": "b", "call": "os.path:no_such_function"},
        {"id": "c", "call": "os:sep"},
        {"id": "d", "call": "os.path:join"},
    )
    assert problems(doc) == []
    found = problems(doc, check_imports=True)
    assert [f for f, _ in found] == [
        "spec.tasks[0].call",
        "spec.tasks[1].call",
        "spec.tasks[2].call",
    ]
    assert "cannot import module 'no_such_module_xyz'" in found[0][1]
    assert "has no attribute 'no_such_function'" in found[1][1]
    assert "not a function" in found[2][1]


def test_python_path_is_used_for_import_checks(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "bndl_test_tasks_xyz.py").write_text("def f():\n    return 1\n")
    doc = job({"id": "a", "call": "bndl_test_tasks_xyz:f"}, code={"pythonPath": ["code"]})
    assert problems(doc, check_imports=True, source=tmp_path / "job.yaml") == []
    assert plan_job(doc, source=tmp_path / "job.yaml").local_python_path() == [
        str(tmp_path / "code")
    ]


# -- calls --------------------------------------------------------------------------------------


def test_resolve_call() -> None:
    assert resolve_call("os.path:join") is __import__("os").path.join
    assert resolve_call("pathlib:Path.cwd") == Path.cwd
    assert split_call("a.b:c.d") == ("a.b", "c.d")
    for bad in ("os.path", "os:", ":f", "a b:c", "os.path:join()"):
        with pytest.raises(ManifestError, match=r"package\.module:function") as e:
            resolve_call(bad, field="spec.tasks[0].call")
        assert e.value.field == "spec.tasks[0].call"
    with pytest.raises(ManifestError, match="cannot import module"):
        resolve_call("no_such_module_xyz:f")


# -- fan-out ------------------------------------------------------------------------------------


def test_fan_out_over_a_range() -> None:
    doc = job(
        task("map", {"fromItem": True}, "x", forEach={"range": 3}, priority=2),
        task("sum", {"fromTask": "map", "all": True}),
        task("after", dependsOn=["map"]),
    )
    plan = plan_job(doc)
    assert [t.id for t in plan.tasks] == ["map-0", "map-1", "map-2", "sum", "after"]
    m1 = plan.tasks[1]
    assert (m1.args, m1.origin, m1.index, m1.item, m1.priority) == ([1, "x"], "map", 1, 1, 2)
    total, after = plan.tasks[3], plan.tasks[4]
    assert total.args == [FromTasks(("map-0", "map-1", "map-2"))]
    assert total.depends_on == after.depends_on == {"map-0", "map-1", "map-2"}
    assert (total.origin, total.index) == ("sum", None)


def test_fan_out_over_values_with_keys_and_same_index() -> None:
    doc = job(
        task(
            "load",
            kwargs={"path": {"fromItem": "path"}, "whole": {"fromItem": True}},
            forEach={"values": [{"path": "a.csv"}, {"path": "b.csv"}]},
        ),
        task("parse", {"fromTask": "load", "sameIndex": True}, forEach={"range": 2}),
        task("one", {"fromTask": "parse-1"}),
    )
    plan = plan_job(doc)
    by_id = {t.id: t for t in plan.tasks}
    assert by_id["load-1"].kwargs == {"path": "b.csv", "whole": {"path": "b.csv"}}
    assert by_id["parse-0"].args == [FromTask("load-0")]
    assert by_id["parse-1"].depends_on == {"load-1"}
    assert by_id["one"].depends_on == {"parse-1"}
    results = {"load-0": "A", "load-1": "B"}
    assert substitute(by_id["parse-1"].args, results) == ["B"]


@pytest.mark.parametrize(
    ("tasks", "field", "words"),
    [
        (
            [task("m", forEach={"range": 2}), task("r", {"fromTask": "m"})],
            "spec.tasks[1].args[0].fromTask",
            "all: true",
        ),
        (
            [task("m", forEach={"range": 2}), task("r", {"fromTask": "m", "sameIndex": True})],
            "spec.tasks[1].args[0].sameIndex",
            "forEach",
        ),
        (
            [
                task("m", forEach={"range": 2}),
                task("r", {"fromTask": "m", "sameIndex": True}, forEach={"range": 3}),
            ],
            "spec.tasks[1].args[0].sameIndex",
            "same size",
        ),
        (
            [task("a"), task("r", {"fromTask": "a", "all": True})],
            "spec.tasks[1].args[0].all",
            "single task",
        ),
        (
            [task("a"), task("r", {"fromTask": "a", "every": True})],
            "spec.tasks[1].args[0].every",
            "fromTask, all and sameIndex",
        ),
        ([task("a", {"fromItem": True})], "spec.tasks[0].args[0].fromItem", "forEach"),
        (
            [task("a", {"fromItem": "k"}, forEach={"values": [{"k": 1}, 2]})],
            "spec.tasks[0].args[0].fromItem",
            "item 1",
        ),
        (
            [task("a", forEach={"range": 2, "values": [1]})],
            "spec.tasks[0].forEach",
            "exactly one",
        ),
        ([task("a", forEach={})], "spec.tasks[0].forEach", "exactly one"),
        (
            [task("m", forEach={"range": 3}), task("m-1")],
            "spec.tasks[1].id",
            "task 1 of fan-out 'm'",
        ),
        (
            [task("m", {"fromTask": "m-0"}, forEach={"range": 3})],
            "spec.tasks[0].args[0].fromTask",
            "each other",
        ),
        ([task("m", forEach={"range": 0})], "spec.tasks[0].forEach.range", "minimum"),
    ],
)
def test_fan_out_problems(tasks: list[dict[str, Any]], field: str, words: str) -> None:
    found_field, message = only_problem(job(*tasks))
    assert found_field == field
    assert words in message


def test_ten_thousand_tasks_by_fan_out() -> None:
    doc = job(
        task("sq", {"fromItem": True}, forEach={"range": 10_000}),
        task("inc", {"fromTask": "sq", "sameIndex": True}, forEach={"range": 10_000}),
        task("total", {"fromTask": "inc", "all": True}),
    )
    plan = plan_job(doc)
    assert len(plan.tasks) == 20_001
    assert plan.tasks[-1].id == "total" and len(plan.tasks[-1].depends_on) == 10_000
    assert plan.tasks[10_000 + 9_999].depends_on == {"sq-9999"}
    results = {f"inc-{i}": i for i in range(10_000)}
    assert substitute(plan.tasks[-1].args, results) == [list(range(10_000))]


def test_long_chains_and_cycles_need_no_recursion() -> None:
    n = 1000  # the CRD's maxItems for entries
    chain = [task("t0")] + [task(f"t{i}", {"fromTask": f"t{i - 1}"}) for i in range(1, n)]
    plan = plan_job(job(*reversed(chain)))
    assert [t.id for t in plan.tasks] == [f"t{i}" for i in range(n)]
    chain[0]["dependsOn"] = [f"t{n - 1}"]
    field, message = only_problem(job(*chain))
    assert field == "spec.tasks[0]" and message.count(" -> ") == n


# -- markers and graph --------------------------------------------------------------------------


def test_markers_are_picklable_and_substituted_anywhere() -> None:
    args = [FromTask("a"), {"k": (FromTasks(["a", "b"]), 3)}, "plain"]
    assert pickle.loads(pickle.dumps(args)) == args
    assert substitute(args, {"a": 1, "b": 2}) == [1, {"k": ([1, 2], 3)}, "plain"]
    assert list(references(args)) == ["a", "a", "b"]
    with pytest.raises(KeyError, match="'b'"):
        substitute(FromTask("b"), {})
    assert "(10000)" in repr(FromTasks([str(i) for i in range(10_000)]))


def test_topological_order_is_stable_and_cycles_are_named() -> None:
    assert topological_order(["c", "b", "a"], {"c": ["a"], "b": []}) == ["b", "a", "c"]
    with pytest.raises(CycleError) as e:
        topological_order(["x", "a", "b"], {"a": ["b"], "b": ["a"], "x": ["a"]})
    assert e.value.path == ["a", "b", "a"]


# -- the CRD ------------------------------------------------------------------------------------


def test_packaged_crd_is_identical_to_crds_folder() -> None:
    assert PACKAGED_CRD.read_bytes() == CRD_FILE.read_bytes(), (
        "operator/bndl/manifest/bndljob.crd.yaml must be a copy of crds/bndljob.yaml: "
        "cp crds/bndljob.yaml operator/bndl/manifest/bndljob.crd.yaml"
    )
    assert crd() == yaml.safe_load(CRD_FILE.read_text())


def test_crd_identity_and_columns() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
    )
    spec = doc["spec"]
    assert (
        doc["metadata"]["name"]
        == "bndljobs.bndl.io"
        == f"{spec['names']['plural']}.{spec['group']}"
    )
    assert (spec["group"], spec["scope"]) == ("bndl.io", "Namespaced")
    assert spec["names"]["kind"] == "BndlJob" and spec["names"]["shortNames"] == ["bj"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.workers.replicas",
            "statusReplicasPath": ".status.workers.ready",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Workers"] == ".status.workersSummary"
    assert columns["Tasks"] == ".status.tasksSummary"
    assert columns["Age"] == ".metadata.creationTimestamp"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "AwaitingWorkers",
        "Running",
        "Succeeded",
        "Failed",
        "Cancelled",
        "Suspended",
    ]
    assert set(status["tasks"]["properties"]) == {
        "total",
        "pending",
        "running",
        "succeeded",
        "failed",
        "retried",
        "recomputed",
        "lostRuns",
        "workerLosses",
        "adopted",
        "reattached",
    }


# What apiextensions.k8s.io/v1 JSONSchemaProps accepts; anything else is refused by the API server.
_ALLOWED = {
    "type", "description", "properties", "items", "additionalProperties", "required", "enum",
    "default", "format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
    "maxItems", "minProperties", "maxProperties", "nullable", "allOf", "anyOf", "oneOf", "not",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "example", "title",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def test_crd_schema_is_structural_and_documented() -> None:
    (version,) = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert set(node) <= _ALLOWED, (path, set(node) - _ALLOWED)
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert "type" in node or untyped_ok, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) is not False, path
        assert node.get("uniqueItems") is not True, path  # forbidden: use list-type set
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"]["required"]), path
        if path == ".metadata":  # the API server refuses anything more, even a description
            assert node == {"type": "object"}
        elif path.count(".") and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
    spec = root["properties"]["spec"]["properties"]
    assert {
        "tasks", "concurrency", "attempts", "orderResults", "workers", "awaitWorkers",
        "activeDeadlineSeconds", "suspend", "ttlSecondsAfterFinished", "cleanupPolicy", "code",
        "profiling",
    } <= set(spec)  # fmt: skip
    assert spec["workers"]["properties"]["template"]["x-kubernetes-preserve-unknown-fields"]


def test_every_cel_rule_is_also_checked_locally() -> None:
    (version,) = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"]
    rules = [
        rule
        for _, node in _nodes(version["schema"]["openAPIV3Schema"])
        for rule in node.get("x-kubernetes-validations", [])
    ]
    # Transition rules (oldSelf) compare an update with the stored object: a local file has none.
    messages = {rule["message"] for rule in rules if "oldSelf" not in rule["rule"]}
    assert messages and messages == set(CEL_RULES_CHECKED)
    assert any("oldSelf" in rule["rule"] for rule in rules)


def test_max_tasks_counts_ranges_values_and_single_tasks() -> None:
    doc = job(
        task("a"),
        task("b", forEach={"range": 3}),
        task("c", forEach={"values": [1, 2]}),
    )
    assert len(plan_job(doc, max_tasks=6).tasks) == 6
    assert len(plan_job(doc).tasks) == 6  # no limit unless asked
    field, message = only_problem(doc, max_tasks=5)
    assert field == "spec.tasks"
    assert message == (
        "the job expands to 6 tasks, over the limit of 5 tasks: split it into several jobs, "
        "or raise the limit"
    )
    # a schema problem is reported as such, not hidden behind the size
    doc["spec"]["concurrency"] = 0
    assert fields(doc, max_tasks=5) == ["spec.concurrency"]
