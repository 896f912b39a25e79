"""pytest plugin for the real Kubernetes test cluster.

Register it once for the whole suite with ``pytest_plugins = ["tests.cluster.plugin"]`` in
tests/conftest.py (tests/cluster/conftest.py registers it too, idempotently, until then).

Fixtures:

* ``k8s_cluster`` (session): a started :class:`tests.cluster.cluster.Cluster`, torn down at the
  end of the session, on failure, on Ctrl-C/SIGTERM/SIGHUP, and at interpreter exit. Its API:
  ``.kubeconfig`` (path; usable from the test process, any thread), ``.kubectl(*args, input=)``,
  ``.kubectl_json(*args)``, ``.helm(*args)``, ``.apply(yaml, namespace=)``,
  ``.build_image(dockerfile, context, tag, build_args=)`` (podman, BASE = the local Python base,
  then loaded into every node), ``.load_image(ref)``, ``.nodes`` (``.name``, ``.ip``, ``.zone``,
  ``.labels``), ``.node_names``, ``.wait_for(predicate, timeout, what)``,
  ``.call_in_netns(fn, *args)`` / ``.exec_in_netns(cmd)`` to reach pod and Service IPs,
  ``.base_image``, ``.timings``, ``.memory_kib()``; faults: ``.stop_apiserver()`` /
  ``.start_apiserver()``, ``.pod_pids(ns, pod, container=None)``, ``.kill_container(ns, pod,
  container=None, sig=SIGKILL)``, ``.process_memory_kib(pid)``.
* ``k8s_test_image`` (session): the harness's small HTTP server image, already on every node.
* ``k8s_namespace`` (function): a fresh namespace, deleted afterwards.

Environment: ``BNDL_TEST_NODES`` (default 3) sets the node count. When cluster tests are
selected, ``build.sh`` runs after collection if anything is missing (outside any test's timeout),
and the fixture reaps clusters left by killed earlier sessions before it starts its own.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from . import config, images
from .cluster import Cluster, missing_binaries, reap_stale_runs

TEST_IMAGE = "localhost/bndl-test-http:1"
TEST_IMAGE_DIR = config.IMAGES / "httpserver"

_active: list[Cluster] = []
_summary: list[str] = []


def _stop_active() -> None:
    while _active:
        _active.pop().stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _install_handlers() -> None:
    atexit.register(_stop_active)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_interrupt)


def ensure_built() -> None:
    """Run build.sh when a binary or an image is missing (a warm build.sh is a no-op anyway)."""
    if (
        missing_binaries()
        or not config.PAUSE_TAR.exists()
        or not images.image_exists(config.BASE_IMAGE)
    ):
        subprocess.run(["bash", str(config.BUILD_SCRIPT)], check=True)


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("the test cluster needs root (network namespaces, containerd, kubelet)")
    ensure_built()
    reap_stale_runs()
    # Images are built on the host network first; the cluster itself is then started in its own
    # network namespace, and the test image is loaded into every node while it starts.
    images.build_image(TEST_IMAGE_DIR / "Dockerfile", TEST_IMAGE_DIR, TEST_IMAGE)
    cluster = Cluster(nodes=config.default_nodes(int(os.environ.get("BNDL_TEST_NODES", "3"))))
    _active.append(cluster)
    _install_handlers()
    try:
        cluster.start(preload=[TEST_IMAGE])
        mem = cluster.memory_kib()
        t = cluster.timings
        _summary.append(
            f"test cluster {cluster.name}: {len(cluster.nodes)} nodes Ready after "
            f"{t['nodes_ready_s']:.1f}s, DNS answering after {t['ready_s']:.1f}s, test image "
            f"loaded after {t['preload_done_s']:.1f}s; cluster memory "
            f"{sum(mem.values()) / 1024:.0f} MiB"
        )
        yield cluster
    finally:
        problems = cluster.stop()
        if cluster in _active:
            _active.remove(cluster)
        if problems:
            raise RuntimeError(f"teardown of {cluster.name} left problems: {problems}")


@pytest.fixture(scope="session")
def k8s_test_image(k8s_cluster: Cluster) -> str:
    return TEST_IMAGE


@pytest.fixture
def k8s_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    k8s_cluster.kubectl("create", "namespace", name)
    # Pods are admitted only once the namespace's default ServiceAccount exists.
    k8s_cluster.wait_for(
        lambda: k8s_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False),
        30,
        f"default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build before the first test when cluster tests were selected, so that a cold build
    (10-20 min) does not count against the first test's timeout."""
    if session.config.option.collectonly or os.geteuid() != 0:
        return
    if any("k8s_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        ensure_built()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _summary:
        terminalreporter.write_line(line)
