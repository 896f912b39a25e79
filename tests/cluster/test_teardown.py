"""Teardown leaves nothing of a run behind: processes, mounts, network namespaces, IPAM state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.waiting import wait_for_cluster

from .cluster import Cluster
from .config import NodeSpec
from .procs import mounts_under, pids_with_arg
from .testlib import SLEEP, pod_yaml, wait_running

pytestmark = pytest.mark.cluster


def netns_names() -> set[str]:
    d = Path("/run/netns")
    return {p.name for p in d.iterdir()} if d.exists() else set()


def all_mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_teardown_leaves_nothing_behind(k8s_cluster: Cluster, k8s_test_image: str) -> None:
    """A second, one-node cluster (own namespace) runs a pod, then is torn down and checked.

    It needs the session cluster only for the image being built; the two run side by side.
    """
    netns_before = netns_names()
    mounts_before = all_mount_points()
    small = Cluster(nodes=[NodeSpec("solo", "zone-a", {"bndl.io/test-node-class": "alpha"})])
    try:
        small.start(preload=[k8s_test_image])
        ns = "teardown"
        small.kubectl("create", "namespace", ns)
        wait_for_cluster(
            lambda: small.kubectl("get", "sa", "default", "-n", ns, check=False),
            30,
            "default SA",
        )
        small.apply(pod_yaml("p", k8s_test_image, command=SLEEP), ns)
        wait_running(small, ns, "p")
        pids = [r.pid for r in small.procs.values()]
        ids = [
            x["id"]
            for x in json.loads(small.crictl("solo", "ps", "-a", "-o", "json"))["containers"]
        ]
        ids += [x["id"] for x in json.loads(small.crictl("solo", "pods", "-o", "json"))["items"]]
        assert len(ids) == 2  # the pod sandbox and its container
        ipam = small.nodes[0].dir / "ipam"
        assert any(ipam.rglob("198.18.1.*")), "host-local IPAM state lives in the run directory"
        shims = pids_with_arg(str(small.nodes[0].socket))
        assert shims, "a running pod has a containerd shim"
        run_mounts = mounts_under(small.dir)
        assert run_mounts, "a running pod has mounts (rootfs, netns, volumes) in the run dir"
        assert small.netns.name in netns_names()
    finally:
        problems = small.stop()
    assert problems == []

    # Processes: every recorded PID, every shim and everything rooted in the run directory.
    assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in pids + shims)
    assert pids_with_arg(str(small.dir)) == []
    # Mounts: none under the run directory, none of its namespace, no new pod namespace.
    # (Other clusters may run at the same time, from other sessions: only this run's are checked.)
    assert mounts_under(small.dir) == []
    new_mounts = all_mount_points() - mounts_before
    assert [m for m in new_mounts if small.name in m] == []
    # Network namespaces: its own is gone, and no pod namespace was left in /run/netns.
    assert small.netns.name not in netns_names()
    assert [n for n in netns_names() - netns_before if n.startswith("cni-")] == []
    # Cgroups and CNI result caches of its containers and sandboxes.
    for cid in ids:
        assert not list(Path("/sys/fs/cgroup").glob(f"*/k8s.io/{cid}")), cid
        assert not list(Path("/var/lib/cni/results").glob(f"*{cid}*")), cid
    # Files: the run directory (PKI, etcd data, IPAM state, containerd roots) is removed.
    assert not small.dir.exists()
    # The session cluster is untouched.
    assert k8s_cluster.kubectl("get", "nodes", "-o", "name").count("node/") == len(
        k8s_cluster.nodes
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
