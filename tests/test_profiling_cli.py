"""``bndl run`` honours ``spec.profiling`` (issue 14): every worker is profiled while the job runs
and the merged top entries, naming the job's own task functions, go to stderr at the end. Real
worker processes (a LocalCluster started by ``bndl.cli.main``)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from bndl.cli import main
from bndl.execute.profile import FuncStat, format_cpu_top, format_memory_top


def manifest(tmp_path: Path, tasks: str, profiling: str = "", workers: int = 1) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: bndl.io/v1alpha1\nkind: BndlJob\nmetadata: {name: profiled}\n"
        f"spec:\n  workers: {{replicas: {workers}}}\n{profiling}  tasks:\n{tasks}"
    )
    return path


def test_run_prints_the_merged_cpu_and_memory_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(
        tmp_path,
        "    - id: burn\n"
        "      call: tests.test_profiling_tasks:burn_cpu_for_the_profile\n"
        "      forEach: {range: 4}\n"
        "      args: [300000]\n"
        "    - id: hold\n"
        "      call: tests.test_profiling_tasks:hold_memory_for_the_profile\n"
        "      args: [3000000]\n",
        "  profiling: {cpu: true, memory: true, top: 5}\n",
        workers=2,  # the profiles of both are merged
    )
    assert main(["run", str(path), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert '"result": 3000000' in out
    cpu = err[err.index("CPU profile") :]
    assert "over 2 worker(s)" in cpu
    table = cpu.splitlines()[2:7]
    assert any("burn_cpu_for_the_profile  (tests/test_profiling_tasks.py:" in r for r in table)
    assert not any("bndl/worker" in row or "asyncio" in row for row in table)
    memory = err[err.index("Memory profile") :]
    assert "test_profiling_tasks.py:" in memory and "_HELD.append(bytearray(size))" in memory
    assert "2929." in memory  # 3,000,000 bytes in KiB


def test_no_profile_without_spec_profiling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(
        tmp_path,
        "    - id: burn\n"
        "      call: tests.test_profiling_tasks:burn_cpu_for_the_profile\n"
        "      args: [10]\n",
    )
    assert main(["run", str(path), "--no-progress"]) == 0
    assert "profile" not in capsys.readouterr().err


def test_a_failed_task_s_output_is_printed_with_its_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifest(
        tmp_path,
        "    - id: bad\n"
        "      call: tests.test_profiling_tasks:print_then_fail\n"
        "      args: [marker-7]\n",
        "  attempts: 1\n  profiling: {cpu: true}\n",
    )
    assert main(["run", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "task 'bad' raised RuntimeError: marker-7 failed" in err
    assert "--- what task 'bad' printed and logged (its end) ---\nmarker-7: about to fail\n" in err
    assert "CPU profile" in err  # the profile of a failed job too


def test_the_cpu_table_leaves_out_the_worker_and_keeps_the_top() -> None:
    stats = [
        FuncStat("/srv/app/jobs.py", 3, "work", 10, 10, 2.0, 1.5),
        FuncStat("/usr/lib/python3.11/asyncio/base_events.py", 1, "run_forever", 1, 1, 9.0, 0.1),
        FuncStat("/site-packages/bndl/worker/runner.py", 1, "run", 5, 5, 8.0, 0.0),
        FuncStat("/srv/app/jobs.py", 9, "helper", 4, 4, 0.5, 0.5),
        FuncStat("/srv/app/jobs.py", 20, "tiny", 1, 1, 0.1, 0.1),
    ]
    text = format_cpu_top(stats, 2, workers=3)
    lines = text.splitlines()
    assert lines[0].startswith("CPU profile (yappi, CPU time over 3 worker(s)): top 2 of 3")
    assert "2 of the worker's own left out" in lines[0]
    assert "work  (/srv/app/jobs.py:3)" in lines[2] and "helper" in lines[3]
    assert len(lines) == 4


def test_the_memory_table_leaves_out_the_worker_the_import_system_and_unknown_lines() -> None:
    def traced(
        filename: str, lineno: int, size: int
    ) -> tuple[int, int, tuple[tuple[str, int]], int]:
        return (0, size, ((filename, lineno),), 1)  # domain, size, frames, frame count

    one = tracemalloc.Snapshot(
        [
            traced("/srv/app/jobs.py", 3, 4096),
            traced("/srv/app/jobs.py", 3, 1024),
            traced("/srv/venv/bndl/worker/runner.py", 1, 9999),
            traced("/srv/python/asyncio/events.py", 80, 8888),
            traced("<frozen importlib._bootstrap>", 241, 7777),
            traced("<frozen importlib._bootstrap_external>", 729, 7777),
            traced("<unknown>", 0, 6666),
            traced("/srv/app/helper.py", 9, 2048),
        ],
        1,
    )
    other = tracemalloc.Snapshot([traced("/srv/app/jobs.py", 3, 1024)], 1)
    lines = format_memory_top([one, other], 5).splitlines()
    assert lines[0] == (
        "Memory profile (tracemalloc, held at the end over 2 worker(s)): "
        "top 2 of 2 lines, 8.0 KiB in all"
    )
    assert lines[2].split() == ["6.0", "3", "/srv/app/jobs.py:3"]
    assert lines[3].split() == ["2.0", "1", "/srv/app/helper.py:9"]
    assert len(lines) == 4
    # custom machinery: only what it names is left out (and never the import system)
    lines = format_memory_top([one], 5, machinery=["app"]).splitlines()
    assert [line.split()[-1] for line in lines[2:]] == [
        "/srv/venv/bndl/worker/runner.py:1",
        "/srv/python/asyncio/events.py:80",
    ]
