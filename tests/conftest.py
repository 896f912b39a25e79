"""Suite-wide fixtures: the real Kubernetes test cluster (tests/cluster/plugin.py)."""

pytest_plugins = ["tests.cluster.plugin"]
