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
  ``.labels``), ``.node_names``,
  ``.call_in_netns(fn, *args)`` / ``.exec_in_netns(cmd)`` to reach pod and Service IPs,
  ``.base_image``, ``.timings``, ``.memory_kib()``; faults: ``.stop_apiserver()`` /
  ``.start_apiserver()``, ``.pod_pids(ns, pod, container=None)``, ``.kill_container(ns, pod,
  container=None, sig=SIGKILL)``, ``.process_memory_kib(pid)``. Waits on it are
  :func:`tests.helpers.waiting.wait_for_cluster` (any exception is "not yet": kubectl fails
  until the object is there; it polls every ``COMMAND_INTERVAL``).
* ``k8s_test_image`` (session): the harness's small HTTP server image, already on every node.
* ``k8s_namespace`` (function): a fresh namespace, deleted afterwards.

Environment: ``BNDL_TEST_NODES`` (default 3) sets the node count. When cluster tests are
selected, ``build.sh`` runs after collection if anything is missing (outside any test's timeout),
and the fixture reaps clusters left by killed earlier sessions before it starts its own.

Where the cluster cannot run, its tests are reported as skipped with the reason and the command
that prepares them, instead of failing:

* not root: always skipped, since only root can run the cluster; except under ``CI`` (set by CI
  services), where a non-root runner is a mistake to report, not to hide;
* root, but build.sh fails (no Go, no podman, no network): skipped only with
  ``BNDL_CLUSTER_OPTIONAL=1``; otherwise the build's failure fails the session.

So `make test` and .ci/run, which run as root and do not set ``BNDL_CLUSTER_OPTIONAL``, still fail
when the cluster cannot be built: a missing prerequisite never turns CI green.
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

from tests.helpers.waiting import wait_for_cluster

from . import config, images
from .cluster import Cluster, missing_binaries, reap_stale_runs

TEST_IMAGE = "localhost/bndl-test-http:1"
TEST_IMAGE_DIR = config.IMAGES / "httpserver"

# Set to 1 to skip, rather than fail, the cluster tests when build.sh cannot build the cluster.
OPTIONAL_ENV = "BNDL_CLUSTER_OPTIONAL"
PREPARE = (
    "prepare with `sudo bash tests/cluster/build.sh` (Go, podman and apt are needed), then run "
    "them as root: `sudo -E python -m pytest -m cluster`"
)
_NOT_CHECKED = "not checked"

_active: list[Cluster] = []
_summary: list[str] = []
# Why the cluster cannot run in this session (None: it can), once checked.
_unavailable: list[str | None] = [_NOT_CHECKED]


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


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _check_available() -> str | None:
    """Why the cluster cannot run here (its tests are then skipped), or None; builds what is
    missing. Raises where the cluster must run: not root under CI, or a failed build unless
    BNDL_CLUSTER_OPTIONAL is set."""
    if os.geteuid() != 0:
        why = "the test cluster needs root (network namespaces, containerd, kubelet)"
        if _flag("CI") and not _flag(OPTIONAL_ENV):
            raise RuntimeError(f"{why}, and CI is set: run the suite as root")
        return f"{why}: {PREPARE}"
    try:
        ensure_built()
    except (OSError, subprocess.CalledProcessError) as e:
        if not _flag(OPTIONAL_ENV):
            raise
        return f"the test cluster could not be built ({e}; {OPTIONAL_ENV} is set): {PREPARE}"
    return None


def cluster_unavailable() -> str | None:
    """``_check_available``, once per session."""
    if _unavailable[0] == _NOT_CHECKED:
        _unavailable[0] = _check_available()
        if _unavailable[0] is not None:
            _summary.append(f"cluster tests not run: {_unavailable[0]}")
    return _unavailable[0]


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    why = cluster_unavailable()
    if why is not None:
        pytest.skip(why)
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
    yield from fresh_namespace(k8s_cluster)


def fresh_namespace(k8s_cluster: Cluster) -> Iterator[str]:
    """A new ``t-*`` namespace, ready for pods; deleted (without waiting) afterwards."""
    name = f"t-{secrets.token_hex(4)}"
    k8s_cluster.kubectl("create", "namespace", name)
    # Pods are admitted only once the namespace's default ServiceAccount exists.
    wait_for_cluster(
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
    if session.config.option.collectonly:
        return
    if any("k8s_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            cluster_unavailable()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            pytest.exit(f"the test cluster cannot run: {e}; {PREPARE}", returncode=1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _summary:
        terminalreporter.write_line(line)
