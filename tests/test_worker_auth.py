"""The request guard on a real worker: every refused request runs nothing.

Each refused request carries a task that would create a file; the file never appears. Requests are
made with a bare aiohttp session so the tests control every header and byte.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bndl.wire import TaskItem, sign
from bndl.wire.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from bndl.wire.tasks import encode_run, encode_task
from tests.test_worker_harness import SECRET, WorkerProcess, run, running_worker

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running_worker("w-auth", "--max-body", str(MAX_BODY)) as w:
        yield w


def touch_body(marker: Path, padding: int = 0) -> bytes:
    """A run request whose task appends a line to ``marker``."""

    def touch(path: str, _padding: bytes) -> str:
        with open(path, "a") as file:
            file.write("ran\n")
        return "touched"

    item = TaskItem("touch", touch, (str(marker), b"x" * padding))
    return encode_run([(item, encode_task(item))])


async def post(
    url: str, path: str, body: bytes | AsyncIterator[bytes], headers: dict[str, str]
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=body, headers=headers) as response,
    ):
        payload = await response.read()
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, payload


def refused(worker: WorkerProcess, marker: Path, body: bytes, headers: dict[str, str]) -> str:
    status, payload = run(lambda: post(worker.url, "/v1/run", body, headers))
    assert status == 401, payload
    assert not marker.exists(), "a refused request ran its task"
    return str(payload["error"])


def test_missing_signature_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    assert "missing authentication headers" in refused(worker, marker, body, {})
    headers = sign(SECRET, "POST", "/v1/run", body)
    del headers[SIGNATURE_HEADER]
    assert "missing" in refused(worker, marker, body, headers)


def test_bad_signature_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    wrong_secret = sign(b"another secret", "POST", "/v1/run", body)
    assert "bad signature" in refused(worker, marker, body, wrong_secret)
    other_path = sign(SECRET, "POST", "/v1/call", body)
    assert "bad signature" in refused(worker, marker, body, other_path)
    other_body = sign(SECRET, "POST", "/v1/run", body + b"!")
    assert "bad signature" in refused(worker, marker, body, other_body)


def test_stale_or_future_timestamp_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    for skew in (-120, 120):
        headers = sign(SECRET, "POST", "/v1/run", body, now=time.time() + skew)
        assert "outside the accepted window" in refused(worker, marker, body, headers)
    headers = sign(SECRET, "POST", "/v1/run", body)
    headers[TIMESTAMP_HEADER] = "not-a-number"
    assert "malformed timestamp" in refused(worker, marker, body, headers)


def test_replayed_request_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    headers = sign(SECRET, "POST", "/v1/run", body)
    status, _ = run(lambda: post(worker.url, "/v1/run", body, headers))
    assert status == 200
    assert marker.read_text() == "ran\n"
    status, payload = run(lambda: post(worker.url, "/v1/run", body, headers))
    assert (status, payload) == (401, {"error": "replayed nonce"})
    assert marker.read_text() == "ran\n", "the replay ran the task again"


def test_oversized_body_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker, padding=MAX_BODY)
    headers = sign(SECRET, "POST", "/v1/run", body)
    status, payload = run(lambda: post(worker.url, "/v1/run", body, headers))
    assert status == 413 and "over the limit" in payload["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    headers = sign(SECRET, "POST", "/v1/run", body)
    status, payload = run(lambda: post(worker.url, "/v1/run", chunks(), headers))
    assert status == 413 and "over the limit" in payload["error"]
    assert not marker.exists()


def test_browser_origin_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    headers = sign(SECRET, "POST", "/v1/run", body)
    headers["Origin"] = "http://evil.example"
    status, payload = run(lambda: post(worker.url, "/v1/run", body, headers))
    assert status == 403 and "Origin" in payload["error"]
    assert not marker.exists()

    async def probe() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(worker.url + "/healthz", headers={"Origin": "null"}) as response,
        ):
            return response.status

    assert run(probe) == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/held"),
        ("GET", "/v1/results/anything"),
        ("POST", "/v1/results/release"),
        ("POST", "/v1/cancel"),
        ("POST", "/v1/attach"),
        ("POST", "/v1/call"),
        ("POST", "/v1/profile/cpu/start"),
        ("GET", "/v1/profile/cpu/stats"),
        ("GET", "/v1/profile/memory/snapshot"),
    ],
)
def test_every_other_endpoint_requires_a_signature(
    worker: WorkerProcess, method: str, path: str
) -> None:
    async def request() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, worker.url + path) as response,
        ):
            return response.status

    assert run(request) == 401


def test_signed_request_runs(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    status, _ = run(
        lambda: post(worker.url, "/v1/run", body, sign(SECRET, "POST", "/v1/run", body))
    )
    assert status == 200 and marker.read_text() == "ran\n"


def test_undecodable_run_request_is_a_400_with_a_message(worker: WorkerProcess) -> None:
    body = b"definitely not a pickle"
    status, payload = run(
        lambda: post(worker.url, "/v1/run", body, sign(SECRET, "POST", "/v1/run", body))
    )
    assert status == 400 and "malformed run request" in payload["error"]
