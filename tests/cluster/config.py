"""Versions, cache paths and the cluster's shape (nodes, zones, labels, address plan).

Versions are pinned once, in ``versions.env`` beside this file; ``build.sh`` sources the same file,
so the binaries the harness looks for are the ones the build produced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def read_versions(path: Path = HERE / "versions.env") -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


VERSIONS = read_versions()


def cache_key(v: dict[str, str] = VERSIONS) -> str:
    return (
        f"k8s-{v['K8S_VERSION']}_etcd-{v['ETCD_VERSION']}_containerd-{v['CONTAINERD_VERSION']}"
        f"_crictl-{v['CRICTL_VERSION']}_coredns-{v['COREDNS_VERSION']}_helm-{v['HELM_VERSION']}"
    )


def cache_root() -> Path:
    explicit = os.environ.get("BNDL_TESTBIN_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bndl-testbin"


CACHE = cache_root() / cache_key()
BIN = CACHE / "bin"
CONTAINERS_CONF = CACHE / "containers.conf"
PAUSE_TAR = CACHE / "images" / "pause.tar"
PAUSE_IMAGE = VERSIONS["PAUSE_IMAGE"]
BASE_IMAGE = f"localhost/bndl-base:py311-{VERSIONS['DEBIAN_SUITE']}-r{VERSIONS['BASE_REVISION']}"
BUILD_SCRIPT = HERE / "build.sh"
IMAGES = HERE / "images"

# Where runs live: one directory per run, holding its state file, PKI, logs and node roots.
RUNS = Path(os.environ.get("BNDL_CLUSTER_RUNS", "/var/tmp/bndl-cluster"))

REQUIRED_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "etcd",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "crictl",
    "coredns",
    "helm",
    "runc-wrapper",
    "kube-network-policies",
)

# Address plan, all inside 198.18.0.0/15 (RFC 2544 benchmarking block), and only ever inside the
# run's own network namespace: control plane 198.18.0.1, node N 198.18.N.1 with pods in
# 198.18.N.0/24, Services 198.19.0.0/24, CoreDNS 198.19.1.10.
CONTROL_PLANE_IP = "198.18.0.1"
POD_SUPERNET = "198.18.0.0/16"
SERVICE_CIDR = "198.19.0.0/24"
KUBERNETES_SERVICE_IP = "198.19.0.1"
DNS_IP = "198.19.1.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
NODE_CLASS_LABEL = "bndl.io/test-node-class"
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name, zone and extra labels. Its index N gives it 198.18.N.0/24."""

    name: str
    zone: str
    labels: dict[str, str] = field(default_factory=dict)

    def all_labels(self) -> dict[str, str]:
        return {ZONE_LABEL: self.zone, **self.labels}


def default_nodes(count: int = 3) -> list[NodeSpec]:
    """N nodes across two zones; node-1 is class "alpha", the others class "beta"."""
    nodes = []
    for i in range(1, count + 1):
        zone = "zone-a" if i % 2 == 1 else "zone-b"
        klass = "alpha" if i == 1 else "beta"
        nodes.append(NodeSpec(f"node-{i}", zone, {NODE_CLASS_LABEL: klass}))
    return nodes


def node_ip(index: int) -> str:
    return f"198.18.{index}.1"


def node_pod_cidr(index: int) -> str:
    return f"198.18.{index}.0/24"
