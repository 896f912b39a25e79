"""Task output (issue 14): what a task prints and logs is captured per run on the worker, bounded,
echoed to the worker's stderr prefixed by the run's key, served by ``GET /v1/logs/{key}`` and sent
with a failure as ``task_output``.

The capture's bookkeeping is tested in process; everything else on real worker processes, whose
stderr goes to a file the tests read.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bndl.wire import NotFound, TaskItem, WorkerClient
from bndl.worker import READY_PREFIX, parse_ready_line
from bndl.worker.tasklogs import FAILURE_TAIL, TaskLogs
from tests.helpers.waiting import wait_until
from tests.test_worker_harness import WorkerProcess, client, read_line, run, worker_env

# --- tasks (run on the worker, imported from this module) ---------------------------------------

_both_started = threading.Barrier(2, timeout=30)


def noisy_then_fails(tag: str) -> None:
    print(f"{tag} to stdout")
    print(f"{tag} to stderr", file=sys.stderr)
    logging.getLogger("tasks.noisy").info("%s logged at info", tag)
    logging.getLogger("tasks.noisy").warning("%s logged at warning", tag)
    raise ValueError(f"{tag} failed")


def interleaved(tag: str, lines: int) -> str:
    _both_started.wait()  # both tasks run at once: their writes interleave in time
    for i in range(lines):
        print(f"{tag}-{i}")
        if i == lines // 2:
            logging.getLogger("tasks.interleaved").warning("%s half way", tag)
    return tag


def chatty(lines: int) -> int:
    for i in range(lines):
        print(f"line {i:06d} " + "x" * 90)
    return lines


def quiet_failure() -> None:
    raise KeyError("nothing printed")


# --- a worker whose stderr the test reads ---------------------------------------------------------

Logged = tuple[WorkerProcess, Path]


@pytest.fixture(scope="module")
def worker_and_stderr(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, Path]]:
    stderr = tmp_path_factory.mktemp("tasklogs") / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bndl.worker", "--name", "w-logs", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=worker_env(),
            text=True,
        )
    worker = None
    try:
        line = read_line(proc, 30)
        assert line.startswith(READY_PREFIX), line
        announcement = parse_ready_line(line)
        assert announcement is not None
        worker = WorkerProcess("w-logs", announcement.url, proc)
        yield worker, stderr
    finally:
        if worker is not None:
            worker.stop()
        else:
            proc.kill()
            proc.wait()


async def run_all(c: WorkerClient, *items: TaskItem) -> dict[str, object]:
    return {completion.key: completion async for completion in c.run(items)}


def test_a_failed_task_carries_its_output_and_the_worker_keeps_it(
    worker_and_stderr: Logged,
) -> None:
    worker, stderr = worker_and_stderr

    async def scenario() -> tuple[object, str]:
        async with client(worker) as c:
            (completion,) = (
                await run_all(c, TaskItem("job/noisy.0", noisy_then_fails, ("n1",)))
            ).values()
            return completion, await c.logs("job/noisy.0")

    completion, kept = run(scenario)
    error = completion.error  # type: ignore[attr-defined]
    assert isinstance(error, ValueError) and str(error) == "n1 failed"
    for text in (getattr(error, "task_output", None), kept):
        assert isinstance(text, str)
        assert "n1 to stdout\n" in text
        assert "n1 to stderr\n" in text
        assert "INFO tasks.noisy: n1 logged at info\n" in text
        assert "WARNING tasks.noisy: n1 logged at warning\n" in text
    # the pod's log: every line prefixed by the run's key, the worker's own lines not doubled
    wait_until(lambda: "[job/noisy.0] WARNING tasks.noisy: n1 logged" in stderr.read_text())
    log = stderr.read_text()
    assert "[job/noisy.0] n1 to stdout\n" in log
    assert "[job/noisy.0] n1 to stderr\n" in log
    assert "[job/noisy.0] INFO tasks.noisy: n1 logged at info\n" in log
    assert log.count("n1 logged at warning") == 1


def test_the_output_of_concurrent_tasks_does_not_mix(worker_and_stderr: Logged) -> None:
    worker, stderr = worker_and_stderr

    async def scenario() -> tuple[str, str]:
        async with client(worker) as c:
            items = [TaskItem(f"mix/{tag}.0", interleaved, (tag, 2000)) for tag in ("a", "b")]
            completions = await run_all(c, *items)
            assert all(completion.ok for completion in completions.values())  # type: ignore[attr-defined]
            return await c.logs("mix/a.0"), await c.logs("mix/b.0")

    a, b = run(scenario)
    assert a.splitlines().count("WARNING tasks.interleaved: a half way") == 1
    assert [line for line in a.splitlines() if not line.startswith("WARNING")] == [
        f"a-{i}" for i in range(2000)
    ]
    assert "b-" not in a and "a-" not in b and "b half way" in b
    log = stderr.read_text()
    assert "[mix/a.0] a-1999\n" in log and "[mix/b.0] b-1999\n" in log
    assert "[mix/a.0] b-" not in log and "[mix/b.0] a-" not in log


def test_the_capture_is_bounded_and_keeps_the_end(worker_and_stderr: Logged) -> None:
    worker, _ = worker_and_stderr

    async def scenario() -> str:
        async with client(worker) as c:
            await run_all(c, TaskItem("big/chatty.0", chatty, (2000,)))  # ~200 KB
            return str(await c.logs("big/chatty.0"))

    text = run(scenario)
    assert len(text) <= 64 * 1024 + 100
    assert text.startswith("[... ") and "earlier characters dropped]" in text.splitlines()[0]
    assert "line 001999 " in text and "line 000000 " not in text


def test_unknown_runs_are_404_and_quiet_failures_have_no_output(
    worker_and_stderr: Logged,
) -> None:
    worker, _ = worker_and_stderr

    async def scenario() -> object:
        async with client(worker) as c:
            with pytest.raises(NotFound):
                await c.logs("never/ran.0")
            (completion,) = (await run_all(c, TaskItem("quiet.0", quiet_failure))).values()
            return completion

    error = run(scenario).error  # type: ignore[attr-defined]
    assert isinstance(error, KeyError) and getattr(error, "task_output", None) == ""


# --- the bookkeeping, in process --------------------------------------------------------------


def test_only_the_latest_runs_are_kept() -> None:
    logs = TaskLogs(max_runs=2, echo=io.StringIO())
    for key in ("r1", "r2", "r3"):
        logs.open(key).write(f"{key}\n")
    assert logs.get("r1") is None and len(logs) == 2
    assert logs.get("r3").text() == "r3\n"  # type: ignore[union-attr]


def test_a_capture_echoes_whole_prefixed_lines_and_a_tail_is_bounded() -> None:
    echo = io.StringIO()
    capture = TaskLogs(max_chars=10, echo=echo).open("k.0")
    capture.write("ab")
    capture.write("c\nde")
    assert echo.getvalue() == "[k.0] abc\n"
    capture.flush()
    assert echo.getvalue() == "[k.0] abc\n[k.0] de\n"
    capture.write("0123456789")
    assert capture.text() == "[... 6 earlier characters dropped]\n0123456789"
    assert capture.tail(4).endswith("\n6789")
    assert FAILURE_TAIL == 4096
