"""Who may talk to a real worker, and what it refuses: every refused request runs nothing.

The task port speaks mutual TLS only: a client without a certificate of the cluster's authority
(none, or one of another cluster's) fails the handshake. Members' requests still pass the request
guard: a browser Origin (403), an oversized body (413), malformed input (a 4xx, never a 500).
Each refused request carries a task that would create a file; the file never appears. Requests are
made with a bare aiohttp session so the tests control every header and byte.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bndl.wire import TaskItem
from bndl.wire.tasks import encode_run, encode_task
from bndl.wire.tls import new_cluster
from tests.test_worker_harness import TLS, WorkerProcess, run, running_worker

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
    url: str,
    path: str,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | bool = TLS,
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=body, headers=headers or {}, ssl=tls) as response,
    ):
        payload = await response.read()
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, payload


def without_certificate() -> ssl.SSLContext:
    """A client that trusts any server but has no certificate of its own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param(without_certificate(), id="no-certificate"),
        pytest.param(new_cluster("another").client.client_context(), id="another-cluster"),
    ],
)
def test_a_client_outside_the_cluster_fails_the_handshake(
    worker: WorkerProcess, tmp_path: Path, tls: ssl.SSLContext
) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        run(lambda: post(worker.url, "/v1/run", body, tls=tls))
    assert not marker.exists(), "a request of a non-member ran its task"


def test_plain_http_on_the_task_port_gets_no_answer(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    plain = worker.url.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        run(lambda: post(plain, "/v1/run", body, tls=False))
    assert not marker.exists()


def test_a_member_request_runs(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    status, _ = run(lambda: post(worker.url, "/v1/run", touch_body(marker)))
    assert status == 200 and marker.read_text() == "ran\n"


def test_oversized_body_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker, padding=MAX_BODY)
    status, payload = run(lambda: post(worker.url, "/v1/run", body))
    assert status == 413 and "over the limit" in payload["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    status, payload = run(lambda: post(worker.url, "/v1/run", chunks()))
    assert status == 413 and "over the limit" in payload["error"]
    assert not marker.exists()


def test_browser_origin_is_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = touch_body(marker)
    status, payload = run(
        lambda: post(worker.url, "/v1/run", body, {"Origin": "http://evil.example"})
    )
    assert status == 403 and "Origin" in payload["error"]
    assert not marker.exists()


def test_undecodable_run_request_is_a_400_with_a_message(worker: WorkerProcess) -> None:
    status, payload = run(lambda: post(worker.url, "/v1/run", b"definitely not a pickle"))
    assert status == 400 and "malformed run request" in payload["error"]


async def raw_exchange(worker: WorkerProcess, request: bytes) -> bytes:
    """Send raw bytes over a member's TLS connection; what comes back until the worker closes."""
    host, port = worker.url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=TLS)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 16), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "header",
    [b"X-Bndl-Signature: \xff\xfe\r\n", b"Content-Type: \xc3\x28\r\n", b"X-\xff: 1\r\n"],
    ids=["signature", "content-type", "name"],
)
def test_non_utf8_headers_are_not_a_500(worker: WorkerProcess, header: bytes) -> None:
    request = (
        b"POST /v1/cancel HTTP/1.1\r\nHost: w\r\nConnection: close\r\n"
        + header
        + b'Content-Length: 12\r\n\r\n{"keys": []}'
    )
    answer = run(lambda: raw_exchange(worker, request))
    status = int(answer.split(b" ", 2)[1])
    assert status < 500, answer[:200]
    assert b"Traceback" not in answer


@pytest.mark.parametrize("path", ["/v1/cancel", "/v1/results/fetch", "/v1/results/release"])
def test_deeply_nested_json_is_a_400(worker: WorkerProcess, path: str) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    status, payload = run(lambda: post(worker.url, path, body))
    assert 400 <= status < 500, payload


def test_probes_are_served_plain_on_their_own_port(worker: WorkerProcess) -> None:
    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            for path, status in [("/healthz", "alive"), ("/readyz", "ready")]:
                async with session.get(worker.health + path) as response:
                    assert response.status == 200
                    assert await response.json() == {"name": worker.name, "status": status}
            for method, path in [("POST", "/v1/run"), ("GET", "/v1/held"), ("POST", "/v1/call")]:
                async with session.request(method, worker.health + path) as response:
                    assert response.status == 404  # nothing but the probes there
            headers = {"Origin": "null"}
            async with session.get(worker.health + "/healthz", headers=headers) as response:
                assert response.status == 403

    run(check)


def free_pair() -> int:
    """A port whose successor is free too (both bound once to check)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no pair of free ports")


def test_the_health_port_is_the_task_port_plus_one_by_default() -> None:
    port = free_pair()
    with running_worker("w-ports", "--port", str(port)) as w:
        assert w.url.endswith(f":{port}") and w.health.endswith(f":{port + 1}")
