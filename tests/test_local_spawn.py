"""How LocalCluster starts workers: forked from one fork server per driver, or executed afresh."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bndl.execute.job import Job, RmiTask
from bndl.local import LocalCluster
from bndl.local.spawn import ForkedProcess, shared_fork_server
from tests.cluster.procs import proc_state
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux only"
)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for a reaper counts as gone)."""
    return proc_state(pid) in (None, "Z", "X")


def test_workers_are_forked_by_one_server_and_their_exits_are_reported() -> None:
    with LocalCluster(workers=2) as ctx:
        cluster = ctx._source
        assert isinstance(cluster, LocalCluster)
        first, second = (p.process for p in cluster.processes)
        assert isinstance(first, ForkedProcess) and isinstance(second, ForkedProcess)
        server = shared_fork_server(os.environ).process.pid
        assert parent_of(first.pid) == parent_of(second.pid) == server
        assert (first.poll(), first.returncode) == (None, None)
        with pytest.raises(subprocess.TimeoutExpired):
            first.wait(0.05)
        first.kill()
        assert first.wait(10) == -signal.SIGKILL
        assert cluster.processes[0].loss_cause() == "killed by signal 9 (SIGKILL)"
        second.send_signal(signal.SIGTERM)  # a worker stops cleanly on SIGTERM
        assert second.wait(10) == 0
    with LocalCluster(workers=1) as ctx:  # the next cluster forks from the same server
        (worker,) = ctx._source.processes  # type: ignore[attr-defined]
        assert parent_of(worker.pid) == server


def environment_and_directory(name: str) -> tuple[str | None, str]:
    return os.environ.get(name), os.getcwd()


def answer_of(module: str) -> object:
    return importlib.import_module(module).answer()


def test_a_forked_worker_has_its_cluster_s_environment_path_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_here.py").write_text("def answer():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    cluster = LocalCluster(workers=1, env={"BNDL_TEST_MARK": "marked"}, python_path=[str(tmp_path)])
    with cluster as ctx:
        probe = RmiTask(ctx, "probe", environment_and_directory, ("BNDL_TEST_MARK",))
        (done,) = ctx.execute(Job(ctx, [probe]))
        assert done.result() == ("marked", str(tmp_path))
        # A module only the cluster's python_path has: the task imports it on the worker.
        import_it = RmiTask(ctx, "import", answer_of, ("only_here",))
        (imported,) = ctx.execute(Job(ctx, [import_it]))
        assert imported.result() == 42
    with LocalCluster(workers=1) as ctx:  # the mark was that cluster's, not the server's
        probe = RmiTask(ctx, "probe", environment_and_directory, ("BNDL_TEST_MARK",))
        (done,) = ctx.execute(Job(ctx, [probe]))
        assert done.result()[0] is None


def test_workers_die_with_their_fork_server_and_the_next_cluster_starts_a_new_one() -> None:
    with LocalCluster(workers=2) as ctx:
        cluster = ctx._source
        assert isinstance(cluster, LocalCluster)
        server = shared_fork_server(os.environ).process
        pids = [p.pid for p in cluster.processes]
        server.kill()
        server.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), timeout=10, what="the workers died")
        for process in cluster.processes:
            assert process.loss_cause() == "killed by signal 9 (SIGKILL)"
    with LocalCluster(workers=1) as ctx:
        assert shared_fork_server(os.environ).process.pid != server.pid
        (done,) = ctx.execute(Job(ctx, [RmiTask(ctx, "after", abs, (-3,))]))
        assert done.result() == 3


def test_bndl_fork_server_0_executes_each_worker_afresh() -> None:
    with LocalCluster(workers=1, env={"BNDL_FORK_SERVER": "0"}) as ctx:
        (worker,) = ctx._source.processes  # type: ignore[attr-defined]
        assert isinstance(worker.process, subprocess.Popen)
        assert parent_of(worker.pid) == os.getpid()
        command = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        assert command[1:3] == [b"-m", b"bndl.worker"]


def test_the_server_refuses_a_malformed_request_and_keeps_serving(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
        server = subprocess.Popen(
            [sys.executable, "-m", "bndl.worker.forkserver", "--socket", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    try:
        ours.settimeout(30)
        streams = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
        socket.send_fds(ours, [b"{not json"], streams)
        assert "bad request" in json.loads(ours.recv(65536))["error"]
        socket.send_fds(ours, [b'{"argv": [], "env": {}, "cwd": null}'], streams)
        assert "id must be an integer" in json.loads(ours.recv(65536))["error"]
        socket.send_fds(ours, [b'{"id": 1}'], streams[:1])
        assert "1 streams passed, not 3" in json.loads(ours.recv(65536))["error"]
        socket.send_fds(ours, [b'{"id": 1, "argv": "--help", "env": {}, "cwd": "/"}'], streams)
        refused = json.loads(ours.recv(65536))  # answered with its id: the driver stops waiting
        assert refused["id"] == 1 and "argv must be a list of strings" in refused["error"]
        read_end, write_end = os.pipe()
        request = {"id": 2, "argv": ["--help"], "env": dict(os.environ), "cwd": str(tmp_path)}
        socket.send_fds(ours, [json.dumps(request).encode()], [streams[0], write_end, streams[2]])
        os.close(write_end)
        started = json.loads(ours.recv(65536))
        assert started["id"] == 2 and started["pid"] > 0
        with open(read_end) as stdout:
            assert "usage:" in stdout.read()  # the worker's own --help, then its exit
        assert json.loads(ours.recv(65536)) == {"id": 2, "exit": 0}
        for fd in streams:
            os.close(fd)
    finally:
        ours.close()  # the server's end sees EOF: it stops
        assert server.wait(10) == 0


DRIVER = textwrap.dedent(
    """
    import os, sys, time
    from bndl.local import LocalCluster
    from bndl.local.spawn import shared_fork_server

    with LocalCluster(workers=2) as ctx:
        cluster = ctx._source
        server = shared_fork_server(os.environ).process.pid
        print(server, " ".join(str(p.pid) for p in cluster.processes), flush=True)
        time.sleep(120)
    """
)


def test_a_driver_killed_by_sigkill_takes_its_fork_server_and_workers_along() -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        assert driver.stdout is not None
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 3 and not any(gone(p) for p in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), timeout=10, what="server and workers exited")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_ctrl_c_reaching_the_fork_server_does_not_take_the_workers_along() -> None:
    """Ctrl-C signals the whole process group; the server ignores it (each worker stops on it)."""
    with LocalCluster(workers=1) as ctx:
        server = shared_fork_server(os.environ).process.pid
        (worker,) = ctx._source.processes  # type: ignore[attr-defined]
        os.kill(server, signal.SIGINT)
        with LocalCluster(workers=1):  # answered after the signal: by the same server
            assert shared_fork_server(os.environ).process.pid == server
        assert worker.loss_cause() is None
        (done,) = ctx.execute(Job(ctx, [RmiTask(ctx, "after", abs, (-3,))]))
        assert done.result() == 3


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = int(stat.parent.name)
            children.setdefault(parent_of(child), []).append(child)
        except (OSError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def default_sigint() -> None:
    """In the child before exec: SIGINT as a shell gives its foreground job (a test started in
    the background, as ``cmd &`` from a script, would otherwise pass on an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_bndl_run_cancels_the_job_and_leaves_no_process(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    started, gate = tmp_path / "started", tmp_path / "gate"
    job = tmp_path / "job.yaml"
    job.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: bndl.io/v1alpha1
            kind: BndlJob
            metadata: {{name: held}}
            spec:
              code: {{pythonPath: ["{examples}"]}}
              tasks:
                - {{id: started, call: "os:mkdir", args: ["{started}"]}}
                - {{id: held, call: "bndl_examples.gates:wait_for_file", args: ["{gate}"]}}
            """
        )
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "bndl.cli", "run", str(job), "--workers", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job,
        preexec_fn=default_sigint,  # which Ctrl-C interrupts even if this test ignores SIGINT
    )
    try:
        wait_until(started.exists, timeout=60, what="the job's first task ran")
        spawned = descendants(run.pid)
        assert len(spawned) == 3, spawned  # the fork server and two workers
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
        assert "interrupted: the running tasks were cancelled" in err
        wait_until(lambda: all(gone(p) for p in spawned), timeout=10, what="no process left")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_a_cluster_starts_from_a_directory_that_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone_dir = tmp_path / "gone"
    gone_dir.mkdir()
    monkeypatch.chdir(gone_dir)
    gone_dir.rmdir()
    with LocalCluster(workers=1) as ctx:
        (done,) = ctx.execute(Job(ctx, [RmiTask(ctx, "anywhere", abs, (-3,))]))
        assert done.result() == 3
