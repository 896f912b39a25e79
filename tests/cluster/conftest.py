"""Registers the cluster plugin for tests/cluster (a no-op once tests/conftest.py registers it)."""

from typing import Any


def pytest_configure(config: Any) -> None:
    if not config.pluginmanager.has_plugin("tests.cluster.plugin"):
        config.pluginmanager.import_plugin("tests.cluster.plugin")
