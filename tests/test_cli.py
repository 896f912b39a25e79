"""``bndl run`` / ``bndl validate`` as a user types them: real processes, real exit codes.

A run starts one worker unless the test is about several (the wordcount example runs on two).
``bndl.cli.main`` in this process stands in for ``bndl`` where the process around it proves
nothing more (a subcommand's ``--help``, the examples' validation): each process costs an
interpreter and bndl's imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bndl.cli import main, sink_ids
from bndl.manifest import load_plan

ROOT = Path(__file__).resolve().parent.parent


def bndl(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bndl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def manifest(tmp_path: Path, tasks: str, extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: bndl.io/v1alpha1\nkind: BndlJob\nmetadata: {name: t}\n"
        f"spec:\n{extra}  tasks:\n{tasks}"
    )
    return path


def results(stdout: str) -> dict[str, object]:
    return {line["task"]: line["result"] for line in map(json.loads, stdout.splitlines())}


def test_run_prints_the_sink_tasks_results_as_json_lines() -> None:
    done = bndl("run", "examples/diamond.yaml", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert results(done.stdout) == {"d": 16}
    assert "4/4 done" in done.stderr


def test_all_results_prints_every_task() -> None:
    done = bndl("run", "examples/diamond.yaml", "--workers", "1", "--all-results")
    assert done.returncode == 0, done.stderr
    assert results(done.stdout) == {"a": 3, "b": 9, "c": 7, "d": 16}


def test_wordcount_example() -> None:
    done = bndl("run", "examples/wordcount.yaml", "--workers", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    found = results(done.stdout)
    assert set(found) == {"top", "total"}  # not the 17 intermediate results
    assert found["top"] == [["the", 3768], ["of", 1888], ["and", 1245], ["to", 932], ["in", 807]]
    assert found["total"] == 16000


def test_max_tasks_refuses_a_big_job_before_expanding_it(tmp_path: Path) -> None:
    path = manifest(tmp_path, "    - {id: a, call: 'builtins:abs', forEach: {range: 5}}\n")
    done = bndl("validate", str(path), "--max-tasks", "4")
    assert done.returncode == 2
    assert "spec.tasks: the job expands to 5 tasks, over the limit of 4 tasks" in done.stderr
    assert "--max-tasks" in done.stderr and "Traceback" not in done.stderr
    assert bndl("validate", str(path), "--max-tasks", "5").returncode == 0


def test_a_cycle_is_reported_with_its_field_before_any_worker_starts(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "    - {id: a, call: 'builtins:abs', args: [{fromTask: b}]}\n"
        "    - {id: b, call: 'builtins:abs', args: [{fromTask: a}]}\n",
    )
    done = bndl("run", str(path))
    assert done.returncode == 2
    assert "spec.tasks[0]" in done.stderr and "a -> b -> a" in done.stderr
    assert "nothing was started" in done.stderr


def test_unknown_keys_and_unimportable_functions_name_the_field(tmp_path: Path) -> None:
    path = manifest(tmp_path, "    - {id: a, call: 'no_such_module:fn', dependz: []}\n")
    done = bndl("validate", str(path))
    assert done.returncode == 2
    assert "spec.tasks[0]" in done.stderr and "dependz" in done.stderr
    path = manifest(tmp_path, "    - {id: a, call: 'no_such_module:fn'}\n")
    done = bndl("run", str(path))
    assert done.returncode == 2
    assert "spec.tasks[0].call" in done.stderr and "no_such_module" in done.stderr


def test_a_failing_task_exits_non_zero_naming_the_task(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        "    - {id: fine, call: 'builtins:abs', args: [-1]}\n"
        "    - {id: broken, call: 'builtins:int', args: ['not a number']}\n",
        extra="  attempts: 2\n",
    )
    done = bndl("run", str(path), "--workers", "1")
    assert done.returncode == 1
    assert "task 'broken' raised ValueError" in done.stderr
    assert "1 retried" in done.stderr


def test_validate_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for example in ("diamond", "wordcount", "squares"):
        assert main(["validate", str(ROOT / "examples" / f"{example}.yaml")]) == 0, example
        assert "valid BndlJob" in capsys.readouterr().out


def test_sink_ids_are_the_tasks_nothing_depends_on() -> None:
    assert sink_ids(load_plan(ROOT / "examples" / "diamond.yaml")) == {"d"}
    assert sink_ids(load_plan(ROOT / "examples" / "wordcount.yaml")) == {"top", "total"}


def test_max_tasks_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "examples" / "diamond.yaml"), "--max-tasks", "0"]) == 2
    assert "--max-tasks must be at least 1, not 0" in capsys.readouterr().err
    assert main(["validate", str(ROOT / "examples" / "diamond.yaml"), "--max-tasks", "3"]) == 2
    assert "the job expands to 4 tasks, over the limit of 3 tasks" in capsys.readouterr().err


def test_many_problems_are_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deps = ", ".join(f"n{i}" for i in range(60))
    path = manifest(tmp_path, f"    - {{id: a, call: 'builtins:abs', dependsOn: [{deps}]}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "(60 problem(s))" in err and err.rstrip().endswith("... and 10 more")
    assert len(err.splitlines()) == 1 + 50 + 1


def test_bndl_has_the_cluster_commands_of_kubectl_bndl(capsys: pytest.CaptureFixture[str]) -> None:
    done = bndl("--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "validate", "submit", "get", "results", "logs", "profile", "delete"):
        assert command in done.stdout
    for command, flags in (
        ("submit", ("--watch", "--timeout", "--no-progress")),
        ("logs", ("--task",)),
        ("get", ("--all-namespaces",)),
    ):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0, command
        usage = capsys.readouterr().out
        for flag in (*flags, "--namespace", "--kubeconfig", "--context"):
            assert flag in usage, (command, flag)


def test_run_and_validate_need_no_operator_extra_and_the_cluster_commands_say_so(
    tmp_path: Path,
) -> None:
    for name in ("kubernetes", "kopf"):  # importable names that fail, as when not installed
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = bndl("run", "examples/diamond.yaml", "--workers", "1", "--no-progress", env=env)
    assert (done.returncode, done.stdout) == (0, '{"task": "d", "result": 16}\n'), done.stderr
    assert bndl("validate", "examples/diamond.yaml", env=env).returncode == 0
    for command in (["get"], ["results", "diamond"], ["submit", "examples/diamond.yaml"]):
        done = bndl(*command, env=env)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr
        assert done.stderr == (
            f"bndl {command[0]}: talking to a cluster needs the kubernetes package: "
            "pip install 'bndl-kubernetes[operator]'\n"
        )
