"""Suite-wide fixtures: the real Kubernetes test cluster (tests/cluster/plugin.py), the tools
the fast tier runs when they are there (helm), and the hypothesis profile (``HYPOTHESIS_PROFILE``:
``ci``, the default, or ``dev``, see tests/helpers/hypothesis_profiles.py).

A tool this machine lacks makes its tests "skipped" with the command that provides it, never
"failed": the fast tier stays usable on a fresh laptop, and `make test` (which runs
tests/cluster/build.sh first) still has every tool.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.cluster import config as cluster_config
from tests.helpers import hypothesis_profiles

hypothesis_profiles.load()  # before any test module is imported: they scale their counts by it

pytest_plugins = ["tests.cluster.plugin"]

PREPARE_TOOLS = "bash tests/cluster/build.sh (or `make cluster-bin`)"


def find_helm() -> str | None:
    """The helm of BNDL_HELM, else the one tests/cluster/build.sh caches, else helm on PATH."""
    explicit = os.environ.get("BNDL_HELM")
    if explicit:
        return explicit
    cached = cluster_config.BIN / "helm"
    if cached.exists():
        return str(cached)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm_binary() -> str:
    """Path of a helm binary; skips the test, naming the command that provides one, if none."""
    found = find_helm()
    if found is None:
        pytest.skip(f"no helm binary: run {PREPARE_TOOLS}, install helm, or set BNDL_HELM")
    return found
