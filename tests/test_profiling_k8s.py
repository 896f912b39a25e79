"""``bndl.k8s.profiling`` (issue 14), the operator's side of ``spec.profiling``: started and
collected with async client calls on real worker processes (a LocalCluster's HttpWorkers, on its
DriverLoop as the operator's are on kopf's loop), and the ConfigMap the summary goes to."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from bndl.driver import HttpWorker
from bndl.execute.job import Job, RmiTask
from bndl.k8s import profiling
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import KubeError
from bndl.local import LocalCluster
from bndl.manifest import Profiling
from tests.test_profiling_tasks import burn_cpu_for_the_profile, hold_memory_for_the_profile

T = TypeVar("T")


def on_loop(cluster: LocalCluster, coro: Coroutine[Any, Any, T]) -> T:
    assert cluster.loop is not None
    return cluster.loop.run(coro).result(120)


def http_workers(cluster: LocalCluster) -> list[HttpWorker]:
    return [p.worker for p in cluster.processes]


def test_start_and_collect_merge_every_worker_s_profile() -> None:
    spec = Profiling(cpu=True, memory=True, top=5)
    cluster = LocalCluster(workers=2)
    with cluster as ctx:
        workers = http_workers(cluster)
        on_loop(cluster, profiling.start(workers, spec))
        tasks = [RmiTask(ctx, f"burn-{i}", burn_cpu_for_the_profile, (200_000,)) for i in range(4)]
        tasks.append(RmiTask(ctx, "hold", hold_memory_for_the_profile, (2_000_000,)))
        results = {t.id: t.result() for t in ctx.execute(Job(ctx, tasks))}
        assert results["hold"] == 2_000_000
        text = on_loop(cluster, profiling.collect(workers, spec))
    cpu, memory = text.split("Memory profile")
    assert cpu.startswith("CPU profile (yappi, CPU time over 2 worker(s)): top 5")
    assert "burn_cpu_for_the_profile  (tests/test_profiling_tasks.py:" in cpu
    assert "_HELD.append(bytearray(size))" in memory
    assert "left out (not reachable" not in text


def test_a_lost_worker_is_left_out_and_named() -> None:
    spec = Profiling(cpu=True, top=3)
    cluster = LocalCluster(workers=2)
    with cluster:
        workers = http_workers(cluster)
        on_loop(cluster, profiling.start(workers, spec))
        lost = cluster.processes[1]
        lost.process.kill()
        lost.process.wait()
        text = on_loop(cluster, profiling.collect(workers, spec))
    assert "over 1 worker(s)" in text
    assert "Workers left out (not reachable or not profiling):\n  cpu local-1: " in text


def test_collect_does_not_block_the_loop() -> None:
    """While the summary is merged (on a thread) the loop keeps turning."""
    spec = Profiling(cpu=True, memory=True, top=3)
    cluster = LocalCluster(workers=1)
    with cluster:
        workers = http_workers(cluster)
        on_loop(cluster, profiling.start(workers, spec))

        async def collect_and_count_turns() -> tuple[str, int]:
            turns = 0
            collecting = asyncio.ensure_future(profiling.collect(workers, spec))
            while not collecting.done():
                turns += 1
                await asyncio.sleep(0)
            return collecting.result(), turns

        text, turns = on_loop(cluster, collect_and_count_turns())
    assert "CPU profile" in text and "Memory profile" in text
    assert turns > 10


def test_the_summary_is_bounded_with_a_note() -> None:
    text = "é" * 300_000
    cut = profiling.bounded(text)
    assert len(cut.encode()) <= profiling.MAX_PROFILE_BYTES
    assert cut.endswith(f"[... cut: the profile had 600,000 bytes, {256 * 1024:,} are kept]\n")
    assert profiling.bounded("short") == "short"


def test_the_config_map_is_owned_and_labelled_like_the_job_s_children() -> None:
    ref = JobRef("squares", "team-a", "0b1c2d3e-aaaa-bbbb-cccc-000000000000")
    body = profiling.profile_config_map(ref, "CPU profile ...\n")
    assert body["kind"] == "ConfigMap" and body["apiVersion"] == "v1"
    meta = body["metadata"]
    assert (meta["name"], meta["namespace"]) == ("squares-profile", "team-a")
    assert meta["labels"]["bndl.io/job-uid"] == ref.uid
    assert meta["labels"]["app.kubernetes.io/component"] == "profile"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("BndlJob", ref.uid, True)
    assert body["data"] == {"profile.txt": "CPU profile ...\n"}
    long = profiling.profile_config_map(ref, "x" * 600_000)
    assert len(long["data"]["profile.txt"]) <= profiling.MAX_PROFILE_BYTES


class FakeKube:
    """``Kube.request`` recorded; POST answers 409 when the object exists."""

    def __init__(self, exists: bool = False) -> None:
        self.exists = exists
        self.requests: list[tuple[str, str, Any, str]] = []

    async def request(
        self, method: str, url_path: str, *, body: Any = None, content_type: str = "json"
    ) -> Any:
        self.requests.append((method, url_path, body, content_type))
        if method == "POST" and self.exists:
            raise KubeError(409, "already exists", "AlreadyExists")
        return body


def test_save_creates_the_config_map_or_replaces_its_data() -> None:
    ref = JobRef("squares", "team-a", "uid-1")
    kube = FakeKube()
    assert asyncio.run(profiling.save(kube, ref, "one")) == "squares-profile"  # type: ignore[arg-type]
    ((method, url, body, _),) = kube.requests
    assert (method, url) == ("POST", "/api/v1/namespaces/team-a/configmaps")
    assert body == profiling.profile_config_map(ref, "one")
    kube = FakeKube(exists=True)
    asyncio.run(profiling.save(kube, ref, "two"))  # type: ignore[arg-type]
    method, url, body, content_type = kube.requests[-1]
    assert (method, url) == ("PATCH", "/api/v1/namespaces/team-a/configmaps/squares-profile")
    assert body == {"data": {"profile.txt": "two"}}
    assert content_type == "application/merge-patch+json"
