"""The cluster subcommands as a user types them: ``kubectl bndl`` (the ``kubectl-bndl`` console
script, ``bndl.k8s.cli:main``) lists them, and without a reachable cluster fails with a message
and exit code 1 instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bndl.k8s.cli import main

ROOT = Path(__file__).resolve().parent.parent


def kubectl_bndl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bndl.k8s.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_help_lists_the_cluster_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    done = kubectl_bndl("--help")
    assert done.returncode == 0
    for command in ("submit", "get", "results", "logs", "profile", "delete"):
        assert command in done.stdout
    with pytest.raises(SystemExit) as exited:  # the subcommand's help, in this process
        main(["submit", "--help"])
    assert exited.value.code == 0
    submit = capsys.readouterr().out
    for flag in ("--watch", "--timeout", "--namespace", "--kubeconfig", "--context"):
        assert flag in submit


def test_an_unreachable_cluster_is_a_message_and_exit_1(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    config = tmp_path / "config"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: ns}}]\n"
    )
    done = kubectl_bndl("get", "--kubeconfig", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("bndl get: bndljobs in ns: ")
    assert "Traceback" not in done.stderr
    missing = kubectl_bndl("get", KUBECONFIG=str(tmp_path / "none"), HOME=str(tmp_path))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
