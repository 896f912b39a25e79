"""Pure pieces of the job runner: what survives a suspension, Kubernetes-only spec checks, retry
storms, and the runner's parts against a fake API (children, status writer, Lease, pod routing).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from bndl.jobs import build_job
from bndl.k8s.builders import BuildSettings, JobRef
from bndl.k8s.children import ChildConflict, Children
from bndl.k8s.kube import KubeError
from bndl.k8s.leader import LeaderElector, LeaseSettings, LostLeadership
from bndl.k8s.podwatch import PodWatch
from bndl.k8s.retry import Backoff, transient
from bndl.k8s.runner import _carry_over, _check_for_kubernetes
from bndl.k8s.status import JobStatus, Phase
from bndl.k8s.status_writer import StatusWriter
from bndl.manifest import ManifestError, plan_job


def plan(**spec: Any) -> Any:
    tasks = [
        {"id": "a", "call": "bndl_examples.diamond:number", "args": [3]},
        {"id": "b", "call": "bndl_examples.diamond:square", "args": [{"fromTask": "a"}]},
    ]
    doc = {
        "apiVersion": "bndl.io/v1alpha1",
        "kind": "BndlJob",
        "metadata": {"name": "j"},
        "spec": {"tasks": tasks, **spec},
    }
    return plan_job(doc)


def test_a_resumed_suspension_keeps_the_sinks_that_came_back() -> None:
    p = plan()
    old = build_job(None, p, results="sinks", keep_all=True)
    old.tasks[0].mark_done(3)  # an intermediate: its result stayed on a scaled-away worker
    old.tasks[1].mark_done(9)  # a sink: its result came back to the operator
    a, b = _carry_over(p, old).tasks
    assert not a.started
    assert b.succeeded and b.result() == 9
    assert b.dependencies == {a}


def test_kubernetes_needs_at_least_one_worker() -> None:
    _check_for_kubernetes(plan(workers={"replicas": 1}))
    with pytest.raises(ManifestError) as err:
        _check_for_kubernetes(plan(workers={"replicas": 0}))
    assert err.value.field == "spec.workers.replicas"


def test_transient_and_permanent_api_errors() -> None:
    for status in (0, 408, 409, 429, 500, 503):
        assert transient(KubeError(status, "x"))
    for status in (400, 403, 404, 422):
        assert not transient(KubeError(status, "x"))


# ---------------------------------------------------------------------------- a fake API server


class FakeKube:
    """Objects by URL path, with resourceVersions, failures to inject and a record of calls."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.failures: list[KubeError] = []
        self.calls: list[tuple[str, str, Any]] = []
        self.writes = 0
        self.version = 0

    def scoped(self) -> FakeKube:
        return self

    def _fail(self) -> None:
        if self.failures:
            raise self.failures.pop(0)

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self.calls.append((method, path, copy.deepcopy(body)))
        self._fail()
        if method == "GET":
            if path not in self.objects:
                raise KubeError(404, "not found")
            return copy.deepcopy(self.objects[path])
        self.writes += 1
        if method == "POST":
            if body.get("kind") == "Event":
                return body
            full = f"{path}/{body['metadata']['name']}"
            if full in self.objects:
                raise KubeError(409, "exists")
            return self._store(full, body)
        if method == "PUT":
            current = self.objects.get(path)
            given = body["metadata"].get("resourceVersion")
            if current is None or current["metadata"]["resourceVersion"] != given:
                raise KubeError(409, "conflict")
            return self._store(path, body)
        if method == "PATCH":
            if path not in self.objects:
                raise KubeError(404, "not found")
            merged = _merge(self.objects[path], body)
            return self._store(path, merged)
        if method == "DELETE":
            if self.objects.pop(path, None) is None:
                raise KubeError(404, "not found")
            return {}
        raise AssertionError(method)

    def _store(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.objects[path] = obj
        return copy.deepcopy(obj)

    async def get(self, path: str, params: Any = None) -> Any:
        return await self.request("GET", path)

    async def patch(self, path: str, patch: Any) -> Any:
        return await self.request("PATCH", path, body=patch)

    async def delete(self, path: str) -> bool:
        try:
            await self.request("DELETE", path)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True


def _merge(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(old)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


REF = JobRef("j", "ns", "uid-1")


def test_children_are_created_adopted_scaled_and_foreign_ones_refused() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        children = Children(kube, REF, BuildSettings())  # type: ignore[arg-type]
        changes = await children.reconcile(plan(), 2)
        assert len(changes) == 4 and children.tls and children.client_tls
        sts = "/apis/apps/v1/namespaces/ns/statefulsets/j-workers"
        assert kube.objects[sts]["spec"]["replicas"] == 2
        tls = children.tls
        # A second pass changes nothing; a deleted Service comes back; replicas follow the spec.
        assert await children.reconcile(plan(), 2) == []
        del kube.objects["/api/v1/namespaces/ns/services/j-workers"]
        assert await children.reconcile(plan(), 3) == [
            "created Service j-workers",
            "scaled the workers from 2 to 3",
        ]
        assert kube.objects[sts]["spec"]["replicas"] == 3
        assert children.tls is tls  # the Secret was adopted, not replaced
        # A new operator (a restart, an upgrade) reads the material of the job's Secret.
        resumed = Children(kube, REF, BuildSettings())  # type: ignore[arg-type]
        assert await resumed.reconcile(plan(), 3) == []
        assert resumed.tls == tls
        # Another job's Secret under the same name is never adopted.
        other = Children(kube, JobRef("j", "ns", "uid-2"), BuildSettings())  # type: ignore[arg-type]
        with pytest.raises(ChildConflict, match="Secret ns/j-tls exists and is not owned"):
            await other.reconcile(plan(), 1)

    asyncio.run(scenario())


def test_status_writer_retries_through_an_outage_and_never_goes_back() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        url = "/apis/bndl.io/v1alpha1/namespaces/ns/bndljobs/j/status"
        kube.objects[url] = {"metadata": {"name": "j"}}
        status = JobStatus()
        writer = StatusWriter(
            kube,
            "ns",
            "j",
            status.body,
            interval=0.01,
            backoff=Backoff(0.01, 0.05),  # type: ignore[arg-type]
        )
        writer.start()
        status.set_phase(Phase.RUNNING, "Dispatching", "", _now())
        writer.mark()
        # The API server goes away for a while when the job finishes.
        kube.failures = [KubeError(0, "refused", "Unreachable")] * 3 + [KubeError(503, "x")]
        status.set_phase(Phase.SUCCEEDED, "Succeeded", "done", _now())
        await asyncio.wait_for(writer.flush(), 30)
        assert kube.objects[url]["status"]["phase"] == "Succeeded"
        # Finished phases are terminal: a late Running changes nothing.
        assert not status.set_phase(Phase.RUNNING, "Dispatching", "", _now())
        writer.mark()
        await asyncio.wait_for(writer.flush(), 5)
        assert kube.objects[url]["status"]["phase"] == "Succeeded"
        await writer.stop()

    asyncio.run(scenario())


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_resumed_status_carries_counts_and_results() -> None:
    status = JobStatus.resume(
        {
            "phase": "Running",
            "tasks": {"retried": 2, "lostRuns": 5, "adopted": 1},
            "results": {"d": 16},
        },
        3,
    )
    assert status.results == {"d": 16}
    body = status.body()
    assert body["tasks"]["retried"] == 2 and body["tasks"]["lostRuns"] == 5
    assert body["tasks"]["adopted"] == 1 and body["tasks"]["reattached"] == 0


# ------------------------------------------------------------------------------------ the Lease


def lease_settings(identity: str) -> LeaseSettings:
    return LeaseSettings("ops", "lead", identity, lease_duration=0.3, renew_deadline=0.2,
                         retry_period=0.05)  # fmt: skip


def test_one_leader_at_a_time_and_a_clean_handover() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        a = LeaderElector(kube, lease_settings("a"))  # type: ignore[arg-type]
        b = LeaderElector(kube, lease_settings("b"))  # type: ignore[arg-type]
        await a.acquire()
        url = a.url
        assert kube.objects[url]["spec"]["holderIdentity"] == "a"
        waiting = asyncio.create_task(b.acquire())
        keeper = asyncio.create_task(a.keep())
        await asyncio.sleep(0.5)  # b stands by while a renews (a duration, not a sync point)
        assert not waiting.done()
        keeper.cancel()
        await a.release()
        await asyncio.wait_for(waiting, 5)
        assert kube.objects[url]["spec"]["holderIdentity"] == "b"
        assert kube.objects[url]["spec"]["leaseTransitions"] == 1

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_steps_down_and_a_dead_one_is_replaced() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        a = LeaderElector(kube, lease_settings("a"))  # type: ignore[arg-type]
        b = LeaderElector(kube, lease_settings("b"))  # type: ignore[arg-type]
        await a.acquire()
        kube.failures = [KubeError(0, "down")] * 100
        with pytest.raises(LostLeadership):
            await asyncio.wait_for(a.keep(), 5)
        kube.failures = []
        # a is gone without releasing: b takes over once the lease ran out unrenewed.
        await asyncio.wait_for(b.acquire(), 5)
        assert kube.objects[b.url]["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


def test_create_race_creates_the_lease_once() -> None:
    async def scenario() -> None:
        kube = FakeKube()
        a = LeaderElector(kube, lease_settings("a"))  # type: ignore[arg-type]
        assert await a._try()
        b = LeaderElector(kube, lease_settings("b"))  # type: ignore[arg-type]
        assert not await b._try()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------ pod routing


def pod(name: str, uid: str, ns: str = "ns", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": name + "-uid",
                     "labels": {"bndl.io/job-uid": uid}},
        "status": {"podIP": "198.18.1.2",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


def test_one_pod_watch_routes_pods_to_their_jobs() -> None:
    watch = PodWatch(None, namespaces=("team-*",))  # type: ignore[arg-type]
    poked: list[str] = []
    watch.subscribe("u1", lambda: poked.append("u1"))
    watch.subscribe("u2", lambda: poked.append("u2"))
    watch._replace(None, [pod("a-0", "u1", "team-a"), pod("b-0", "u2", "team-b"),
                          pod("c-0", "u1", "other")])  # fmt: skip
    assert set(watch.pods("u1")) == {"a-0"} and set(watch.pods("u2")) == {"b-0"}
    assert sorted(poked) == ["u1", "u2"]
    poked.clear()
    watch._apply("MODIFIED", pod("a-1", "u1", "team-a"))
    watch._apply("DELETED", pod("b-0", "u2", "team-b"))
    assert set(watch.pods("u1")) == {"a-0", "a-1"} and watch.pods("u2") == {}
    assert poked == ["u1", "u2"]
    # A relist replaces what the watch knew (a pod deleted while it was broken is gone).
    watch._replace(None, [pod("a-1", "u1", "team-a")])
    assert set(watch.pods("u1")) == {"a-1"}


def test_termination_causes_name_oom_kills_and_exit_codes() -> None:
    from bndl.k8s.status import termination_cause

    p = pod("w-0", "u")
    assert termination_cause(p) is None
    p["status"]["containerStatuses"] = [
        {"name": "worker", "restartCount": 1,
         "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}},
    ]  # fmt: skip
    assert termination_cause(p) == "OOMKilled (exit code 137)"
    p["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"reason": "Error", "exitCode": 3}
    }
    assert termination_cause(p) == "Error (exit code 3)"
