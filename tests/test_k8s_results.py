"""``bndl.k8s.results``: sink results too big for the status go, bounded, into the job's owned
``<job>-results`` ConfigMap as the JSON lines ``bndl run`` prints; left-out results are counted
and said. Pure functions plus the write through a recording fake of the operator's Kube."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bndl.k8s import results
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import KubeError
from bndl.k8s.status import JobStatus

REF = JobRef("squares", "team-a", "uid-1")


class FakeKube:
    """``Kube.request`` recorded; POST answers 409 when the object exists, ``fail`` fails all."""

    def __init__(self, exists: bool = False, fail: bool = False) -> None:
        self.exists = exists
        self.fail = fail
        self.requests: list[tuple[str, str, Any]] = []

    async def request(
        self, method: str, url_path: str, *, body: Any = None, content_type: str = "json"
    ) -> Any:
        self.requests.append((method, url_path, body))
        if self.fail:
            raise KubeError(403, "forbidden", "Forbidden")
        if method == "POST" and self.exists:
            raise KubeError(409, "already exists", "AlreadyExists")
        return body


def test_json_lines_keep_whole_results_within_the_limit_in_order() -> None:
    values = [("a", 1), ("b", "x" * 50), ("c", [1, 2]), ("d", b"raw"), ("e", "y" * 10_000)]
    text, kept, omitted = results.json_lines(values, limit=200)
    lines = text.splitlines()
    assert lines[0] == '{"task": "a", "result": 1}'
    assert json.loads(lines[1])["result"] == "x" * 50
    assert [json.loads(line)["task"] for line in lines] == ["a", "b", "c", "d"]
    assert json.loads(lines[3])["result"] == "b'raw'"  # not JSON: its repr, as in the status
    assert (kept, omitted) == (4, 1) and len(text) <= 200
    assert results.parse(text) == {"a": 1, "b": "x" * 50, "c": [1, 2], "d": "b'raw'"}
    # one that does not fit leaves room for smaller ones after it
    text, kept, omitted = results.json_lines([("big", "z" * 300), ("small", 2)], limit=200)
    assert (results.parse(text), kept, omitted) == ({"small": 2}, 1, 1)


def test_the_config_map_is_owned_labelled_and_says_what_was_left_out() -> None:
    body = results.results_config_map(REF, '{"task": "a", "result": 1}\n', 1, 3)
    meta = body["metadata"]
    assert (meta["name"], meta["namespace"]) == ("squares-results", "team-a")
    assert meta["labels"]["app.kubernetes.io/component"] == "results"
    assert meta["labels"]["bndl.io/job-uid"] == "uid-1"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("BndlJob", "uid-1")
    assert body["data"]["omitted"] == "3"
    assert body["data"]["note"] == "1 sink results; 3 more left out: they do not fit in 900 KiB"
    assert results.note(5, 0) == "5 sink results"


def test_keep_writes_only_when_the_status_could_not_hold_them_all() -> None:
    done = [(f"t{i}", "v" * 1000) for i in range(40)]
    kube = FakeKube()
    assert asyncio.run(results.keep(kube, REF, done, in_status=40)) == {}  # type: ignore[arg-type]
    assert kube.requests == []
    summary = asyncio.run(results.keep(kube, REF, done, in_status=15))  # type: ignore[arg-type]
    assert summary == {"name": "squares-results", "results": 40, "omitted": 0}
    ((method, url, body),) = kube.requests
    assert (method, url) == ("POST", "/api/v1/namespaces/team-a/configmaps")
    assert results.parse(body["data"]["results.jsonl"]) == dict(done)
    again = FakeKube(exists=True)  # an adopting operator writes again: the data is replaced
    asyncio.run(results.keep(again, REF, done[:2], in_status=1))  # type: ignore[arg-type]
    method, url, body = again.requests[-1]
    assert (method, url) == ("PATCH", "/api/v1/namespaces/team-a/configmaps/squares-results")
    assert set(body) == {"data"} and results.parse(body["data"]["results.jsonl"]) == dict(done[:2])
    broken = FakeKube(fail=True)  # a report: a failed write never fails the job
    assert asyncio.run(results.keep(broken, REF, done, in_status=1)) == {}  # type: ignore[arg-type]


def test_the_status_names_the_config_map_and_the_failed_task_and_keeps_them_on_resume() -> None:
    status = JobStatus(generation=1)
    assert "resultsConfigMap" not in status.body() and "failedTask" not in status.body()
    status.results_config_map = {"name": "squares-results", "results": 40, "omitted": 0}
    status.failed_task = {"id": "b", "output": "line\n"}
    body = status.body()
    assert body["resultsConfigMap"]["name"] == "squares-results"
    assert body["failedTask"] == {"id": "b", "output": "line\n"}
    again = JobStatus.resume(body, 1)
    assert again.results_config_map == status.results_config_map
    assert again.failed_task == status.failed_task
    assert results.summary(body)["results"] == 40 and results.summary({}) == {}
