"""A real multi-node Kubernetes cluster made of local processes, in a network namespace of its own.

What runs (all started by PID, all stopped by PID):

* etcd, kube-apiserver (Node+RBAC authorization, NodeRestriction, client-certificate auth,
  service-account issuer and signing key), kube-controller-manager and kube-scheduler;
* per node: a containerd (own root, state, socket, CNI config with a ``ptp`` network and
  host-local IPAM whose state lives in the run directory) and a real kubelet (own root directory,
  client and serving certificates, zone and class labels);
* one kube-proxy (nftables mode; one per namespace serves every node) and CoreDNS as a process;
* one kube-network-policies (kind's NetworkPolicy enforcer; see "NetworkPolicy" below);
* a small TCP forwarder (see below).

How the test process reaches the cluster (the robust choice, and why): everything of the cluster
runs in a network namespace made for the run (``ip netns add``), with addresses from the
benchmarking block 198.18.0.0/15 that exist nowhere else, so no packet of the cluster can leave
it. The *test process itself never changes namespace*: setns(2) affects only the calling thread,
so moving a process that already has threads (pytest plugins, asyncio executors, local worker
servers of other tests on 127.0.0.1) leaves it split across two namespaces, and tests that run
after the cluster tests would find their 127.0.0.1 servers in the wrong one. Instead:

* Every cluster process is started with ``nsenter --net=/run/netns/<name>`` (not ``ip netns exec``,
  which remounts /sys and hides the cgroup mounts from the kubelet).
* The apiserver is reached from the host namespace through a forwarder: the harness opens a
  listening socket on 127.0.0.1 *in the host namespace* and hands its descriptor to a forwarder
  process running *in the cluster's namespace* (sockets keep the namespace they were made in).
  ``Cluster.kubeconfig`` points at that loopback port, so kubectl, helm, the Python kubernetes
  client and kopf work from the test process, from any thread, before and after other tests.
* Images are built with podman on the host network (package registries reachable) and loaded
  into the nodes' containerd over their unix sockets (a unix socket is not tied to a namespace).
* Code that must reach pod or Service IPs directly uses ``Cluster.call_in_netns(fn)`` (runs ``fn``
  on a fresh thread that entered the namespace; the caller's thread is untouched) or
  ``Cluster.exec_in_netns(cmd)`` (a subprocess under nsenter).

NetworkPolicy: pods are wired as kind wires them, with the ``ptp`` plugin (a veth per pod, a /32
route to it, the node's address as the pod's gateway), so that every packet between two pods, on
one node or across nodes, is *routed* in the cluster's namespace and passes its FORWARD hook; a
bridge would switch same-node packets below IP. kube-network-policies decides on the first packet
of each connection in user space (NFQUEUE) from the NetworkPolicies, Pods and Namespaces it
watches; its verdicts do not depend on the node, so one process serves every node (all nodes share
the namespace). Upstream diverts packets with an nftables ``queue`` statement, which this kernel
lacks (``CONFIG_NFT_QUEUE`` is not set, and modules cannot be loaded here); its own table therefore
fails to load (logged, harmless), and the harness diverts instead with the xtables ``NFQUEUE``
target (built in), in the spirit of upstream's rules: every new forwarded connection goes to the
queue, established ones pass, and nothing passes while no enforcer listens (fail closed, upstream's
default). Traffic that the namespace itself originates (kubelet probes, ``exec_in_netns``, an
operator run as a process) is never forwarded and so never filtered, like upstream's
``meta skuid 0 accept``. The enforcer reads the API through in-cluster configuration: it runs in a
mount namespace of its own with a tmpfs on /run holding its ServiceAccount token.

Teardown (``stop``, idempotent; also run for a crashed earlier run by ``reap_stale_runs``):
kubelets, then ``crictl rmp -fa`` per node (stops every pod sandbox, runs CNI DEL), kube-proxy,
CoreDNS, forwarder, KCM, scheduler, containerds, any shim or container process still rooted in
the run directory, apiserver, etcd last; then every mount under the run directory is unmounted,
the namespace deleted and the run directory removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.waiting import wait_for_cluster

from . import config, images
from .config import NodeSpec
from .pki import PKI, Cert, kubeconfig
from .procs import (
    CommandError,
    NetNS,
    ProcRecord,
    descendants,
    kill_pids,
    mounts_under,
    pids_rooted_under,
    pids_with_arg,
    proc_state,
    rss_kib,
    run,
    start_process,
    status_kib,
    stop_processes,
    unmount_all_under,
)

T = TypeVar("T")

ETCD_CLIENT = "http://127.0.0.1:2379"
APISERVER_IN_NETNS = f"https://{config.CONTROL_PLANE_IP}:{config.APISERVER_PORT}"
CLUSTER_DNS_PROBE = f"kubernetes.default.svc.{config.CLUSTER_DOMAIN}"
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
HOST_DIRS = (DEVICE_PLUGINS.parent, DEVICE_PLUGINS)
HOST_DIRS_MARKER = ".host-dirs-created"
NETPOL = "kube-network-policies"
NETPOL_QUEUE = 100
# Upstream's ClusterRole (install.yaml), without the AdminNetworkPolicy API it is not asked for.
NETPOL_RBAC = f"""apiVersion: v1
kind: ServiceAccount
metadata: {{name: {NETPOL}, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {NETPOL}}}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {NETPOL}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {NETPOL}}}
subjects:
- {{kind: ServiceAccount, name: {NETPOL}, namespace: kube-system}}
"""


def shared_host_paths() -> list[Path]:
    """Paths outside the run directory that the cluster's components create when missing."""
    paths = [
        *HOST_DIRS,
        Path("/var/lib/cni"),
        Path("/var/lib/cni/results"),
        Path("/run/containerd"),
        Path("/run/containerd/s"),
    ]
    cgroups = Path("/sys/fs/cgroup")
    if (cgroups / "cgroup.procs").exists():  # unified (v2) hierarchy
        paths.append(cgroups / "k8s.io")
    elif cgroups.is_dir():
        for ctrl in sorted(cgroups.iterdir()):
            if not ctrl.is_symlink() and (ctrl / "cgroup.procs").exists():
                paths.append(ctrl / "k8s.io")
    return paths


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Node:
    index: int
    spec: NodeSpec
    dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ip(self) -> str:
        return config.node_ip(self.index)

    @property
    def pod_cidr(self) -> str:
        return config.node_pod_cidr(self.index)

    @property
    def labels(self) -> dict[str, str]:
        return self.spec.all_labels()

    @property
    def zone(self) -> str:
        return self.spec.zone

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"


def base_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TZ", "USER", "TERM")
    }
    env["PATH"] = f"{config.BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def missing_binaries() -> list[str]:
    return [b for b in config.REQUIRED_BINARIES if not (config.BIN / b).exists()]


def dns_query_a(server: str, name: str, timeout: float = 1.0) -> list[str]:
    """Ask ``server`` for the A records of ``name`` over UDP; return the addresses."""
    qid = secrets.randbelow(65536)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        data = s.recv(4096)
    rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    if rid != qid or flags & 0x000F:
        return []
    pos = 12

    def skip_name(p: int) -> int:
        while True:
            n = data[p]
            if n & 0xC0 == 0xC0:
                return p + 2
            if n == 0:
                return p + 1
            p += n + 1

    for _ in range(qd):
        pos = skip_name(pos) + 4
    out = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return out


class Cluster:
    """One run of the test cluster. ``start()`` brings it up; ``stop()`` leaves nothing behind."""

    def __init__(
        self,
        name: str | None = None,
        nodes: Sequence[NodeSpec] | None = None,
        runs: Path | None = None,
        owner: str = "pytest",
    ) -> None:
        self.name = name or f"run-{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = (runs or config.RUNS) / self.name
        self.netns = NetNS(f"bndl-{self.name}")
        specs = list(nodes) if nodes is not None else config.default_nodes()
        self.nodes = [Node(i + 1, s, self.dir / s.name) for i, s in enumerate(specs)]
        self.owner = owner
        self.owner_pid = os.getpid()
        self.procs: dict[str, ProcRecord] = {}
        self.timings: dict[str, float] = {}
        self.forward_port = 0
        self.pki = PKI(self.dir / "pki")
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.kubeconfig_in_netns = self.dir / "admin-netns.kubeconfig"
        self.images_dir = self.dir / "images"
        self.logs = self.dir / "logs"
        self._stopped = False
        self._started = False
        self._lock = threading.Lock()
        self._loaded: set[str] = set()

    # ------------------------------------------------------------------ public helpers

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def base_image(self) -> str:
        return config.BASE_IMAGE

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm subprocesses of this cluster (from the host namespace)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{config.BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        helm = self.dir / "helm"
        env["HELM_CACHE_HOME"] = str(helm / "cache")
        env["HELM_CONFIG_HOME"] = str(helm / "config")
        env["HELM_DATA_HOME"] = str(helm / "data")
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        """Run kubectl against this cluster; return stdout, raise CommandError (with stderr)."""
        cmd = [str(config.BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        return run(cmd, input=input, check=check, timeout=timeout, env=self.env()).stdout

    def kubectl_json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout))

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300
    ) -> str:
        cmd = [str(config.BIN / "helm"), "--kubeconfig", str(self.kubeconfig), *args]
        return run(cmd, input=input, check=check, timeout=timeout, env=self.env()).stdout

    def apply(self, manifest: str, namespace: str | None = None) -> str:
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def exec_in_netns(self, cmd: Sequence[str], check: bool = True, timeout: float = 60) -> Any:
        return run(self.netns.wrap(cmd), check=check, timeout=timeout, env=base_env())

    def crictl(self, node: str, *args: str, timeout: float = 60) -> str:
        """crictl against one node's containerd (unix socket: works from the host namespace)."""
        sock = self.node(node).socket
        cmd = [str(config.BIN / "crictl"), "-r", f"unix://{sock}", *args]
        return run(cmd, timeout=timeout, env=base_env()).stdout

    def call_in_netns(self, fn: Callable[..., T], *args: Any) -> T:
        return self.netns.call(fn, *args)

    def build_image(
        self,
        dockerfile: Path | str,
        context: Path | str,
        tag: str,
        build_args: Mapping[str, str] | None = None,
        load: bool = True,
    ) -> str:
        """Build ``tag`` with podman on the local base (BASE build arg), load it into every node."""
        images.build_image(dockerfile, context, tag, build_args)
        if load:
            self.load_image(tag)
        return tag

    def load_image(self, ref: str) -> None:
        """``kind load docker-image``: podman save, then ctr import into every node's containerd."""
        archive = images.save_image(ref, self.images_dir)
        try:
            images.import_everywhere(config.BIN / "ctr", [n.socket for n in self.nodes], archive)
        finally:
            archive.unlink(missing_ok=True)
        self._loaded.add(ref)

    def memory_kib(self) -> dict[str, int]:
        """Resident memory of each process of the cluster, shims included (not pods)."""
        out = {name: rss_kib(rec.pid) for name, rec in self.procs.items() if rec.alive()}
        for n in self.nodes:
            shims = [
                p
                for p in pids_with_arg(str(n.socket))
                if "containerd-shim" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            ]
            out[f"{n.name}-shims"] = sum(rss_kib(p) for p in shims)
        return out

    # ------------------------------------------------------------------ faults

    def apiserver_running(self) -> bool:
        rec = self.procs.get("kube-apiserver")
        return rec is not None and rec.alive()

    def stop_apiserver(self, timeout: float = 10) -> None:
        """Stop kube-apiserver (SIGTERM, SIGKILL after ``timeout``) and return once it is gone.

        Its graceful shutdown did not end within 20 s of SIGTERM when measured (probably held up
        by the open watches of kubelets and controllers), so in practice SIGKILL ends it.

        Everything else keeps running: etcd, the forwarder (which then closes each connection it
        accepts), the kubelets and their pods, KCM, scheduler, kube-proxy and CoreDNS, which all
        retry on their own. ``start_apiserver`` brings it back.
        """
        rec = self.procs["kube-apiserver"]
        stop_processes([rec], timeout)
        if rec.alive():
            raise ClusterError(f"kube-apiserver (pid {rec.pid}) survived SIGKILL")

    def start_apiserver(self, timeout: float = 90) -> None:
        """Start kube-apiserver again (same command line, same log file); wait for /readyz."""
        with self._lock:
            if self._stopped:
                raise ClusterError("the cluster is stopped")
            if self.apiserver_running():
                raise ClusterError("kube-apiserver is running already")
            # _start records the new PID in the state file, so stop() and a later session's
            # reap_stale_runs stop this process, not the old one.
            self._start("kube-apiserver", self._apiserver_cmd())
        self._wait(self._apiserver_ready, timeout, "kube-apiserver /readyz", "kube-apiserver")

    def pod_pids(self, namespace: str, pod: str, container: str | None = None) -> list[int]:
        """Host PIDs of a running container's processes, its main process first.

        The cluster shares this host's PID namespace view: every container process is a process
        here, so ``crictl inspect`` on the pod's node gives the main PID, and its descendants are
        the processes it started (``kubectl exec`` sessions are children of the shim: not listed).
        ``container`` defaults to the pod's first container.
        """
        obj = self.kubectl_json("get", "pod", pod, "-n", namespace)
        name = container or obj["spec"]["containers"][0]["name"]
        statuses = {s["name"]: s for s in obj["status"].get("containerStatuses", [])}
        st = statuses.get(name)
        if st is None or "running" not in st.get("state", {}) or not st.get("containerID"):
            raise ClusterError(f"container {name} of pod {namespace}/{pod} is not running: {st}")
        cid = st["containerID"].split("://", 1)[1]
        info = json.loads(self.crictl(obj["spec"]["nodeName"], "inspect", cid))
        main = int(info["info"]["pid"])
        if not main or proc_state(main) in (None, "Z"):
            raise ClusterError(f"container {name} of pod {namespace}/{pod}: no live process")
        return [main, *descendants(main)]

    def kill_container(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        sig: signal.Signals = signal.SIGKILL,
        timeout: float = 10,
    ) -> int:
        """Send ``sig`` to the container's main process, as the OOM killer or a crash would;
        return its PID. With SIGKILL, return only once the process is gone.

        The main process is PID 1 of the container's PID namespace: the kernel delivers another
        signal only when the process handles it (SIGTERM to a Python without a handler is lost).
        """
        pid = self.pod_pids(namespace, pod, container)[0]
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            wait_for_cluster(
                lambda: proc_state(pid) in (None, "Z"),
                timeout,
                f"PID {pid} to exit",
            )
        return pid

    @staticmethod
    def process_memory_kib(pid: int) -> dict[str, int]:
        """``{"VmRSS": ..., "VmHWM": ...}`` of a process in KiB (resident now and at its peak)."""
        mem = status_kib(pid, "VmRSS", "VmHWM")
        if len(mem) != 2:
            raise ClusterError(f"no memory figures for PID {pid} (gone, or a kernel thread)")
        return mem

    # ------------------------------------------------------------------ state file

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def _save_state(self) -> None:
        state = {
            "name": self.name,
            "owner": self.owner,
            "owner_pid": self.owner_pid,
            "netns": self.netns.name,
            "nodes": [
                {"name": n.spec.name, "zone": n.spec.zone, "labels": n.spec.labels}
                for n in self.nodes
            ],
            "procs": {k: v.to_json() for k, v in self.procs.items()},
            "forward_port": self.forward_port,
            "timings": self.timings,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    @classmethod
    def from_state(cls, directory: Path) -> Cluster:
        state = json.loads((directory / "state.json").read_text())
        specs = [NodeSpec(n["name"], n["zone"], n["labels"]) for n in state["nodes"]]
        c = cls(state["name"], specs, directory.parent, state["owner"])
        c.owner_pid = state["owner_pid"]
        c.procs = {k: ProcRecord(**v) for k, v in state["procs"].items()}
        c.forward_port = state.get("forward_port", 0)
        c.timings = state.get("timings", {})
        c._started = True
        return c

    # ------------------------------------------------------------------ start

    def _start(
        self, name: str, cmd: Sequence[str], extra_env: Mapping[str, str] | None = None, **kw: Any
    ) -> ProcRecord:
        env = base_env() | dict(extra_env or {})
        rec = start_process(name, cmd, self.logs / f"{name}.log", netns=self.netns, env=env, **kw)
        self.procs[name] = rec
        self._save_state()
        return rec

    def _check_alive(self, *names: str) -> None:
        for name in names:
            rec = self.procs[name]
            if not rec.alive():
                tail = Path(rec.log).read_text(errors="replace")[-3000:]
                raise ClusterError(f"{name} exited during start-up; log tail:\n{tail}")

    def _wait(self, pred: Callable[[], Any], timeout: float, what: str, *watch: str) -> Any:
        def check() -> Any:
            self._check_alive(*watch)
            return pred()

        return wait_for_cluster(check, timeout, what)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return Path(self.procs[name].log).read_text(errors="replace")[-chars:]

    def start(self, preload: Sequence[str] = (), timeout: float = 180) -> Cluster:
        """Bring the cluster up; on any failure tear down what was started and re-raise."""
        missing = missing_binaries()
        if missing:
            raise ClusterError(
                f"missing {', '.join(missing)} in {config.BIN}: run tests/cluster/build.sh first"
            )
        if self._started:
            raise ClusterError("already started")
        if self.dir.exists():
            raise ClusterError(f"{self.dir} exists: another run with this name? (down it first)")
        if self.netns.exists():
            raise ClusterError(f"network namespace {self.netns.name} exists already")
        self._started = True
        try:
            self._start_all(preload, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self, preload: Sequence[str], timeout: float) -> None:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True)
        self.logs.mkdir()
        self._save_state()
        # The run directory becomes a shared mount: each kubelet runs in a mount namespace of its
        # own (below), and its volume mounts under the run directory must reach containerd.
        run(["mount", "--bind", str(self.dir), str(self.dir)])
        run(["mount", "--make-shared", str(self.dir)])
        self._ensure_host_dirs()

        # Network namespace and the addresses that live on its loopback.
        self.netns.create()
        self._save_state()
        for ip in [config.CONTROL_PLANE_IP, config.DNS_IP, *[n.ip for n in self.nodes]]:
            self.netns.add_local_address(f"{ip}/32")
        self.exec_in_netns(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

        self._make_pki()
        self._write_configs()
        self.timings["prepare_s"] = time.monotonic() - t0

        # The forwarder first: it needs nothing but the namespace.
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(128)
        self.forward_port = lsock.getsockname()[1]
        try:
            fwd = [sys.executable, str(config.HERE / "_forward.py")]
            fwd += ["--listen-fd", str(lsock.fileno()), "--target", APISERVER_IN_NETNS[8:]]
            self._start("forwarder", fwd, pass_fds=[lsock.fileno()])
        finally:
            lsock.close()
        self._write_kubeconfigs()

        # etcd and every node's containerd start together.
        self._start("etcd", self._etcd_cmd())
        for n in self.nodes:
            self._start(f"containerd-{n.name}", self._containerd_cmd(n))
        self._wait(self._etcd_healthy, 60, "etcd health", "etcd")
        self._start("kube-apiserver", self._apiserver_cmd())

        pool = ThreadPoolExecutor(max_workers=2 + len(preload))
        try:
            pause = pool.submit(self._load_pause)
            preloads: list[Future[None]] = [pool.submit(self.load_image, ref) for ref in preload]
            self._wait(self._apiserver_ready, 90, "kube-apiserver /readyz", "kube-apiserver")
            self.timings["apiserver_ready_s"] = time.monotonic() - t0
            self._bootstrap_rbac()
            self._start("kube-controller-manager", self._kcm_cmd())
            self._start("kube-scheduler", self._scheduler_cmd())
            self._start("coredns", self._coredns_cmd())
            self._start("kube-proxy", self._kube_proxy_cmd())
            self._start_netpol()
            self.timings["netpol_s"] = time.monotonic() - t0
            pause.result()
            for n in self.nodes:
                self._start(f"kubelet-{n.name}", self._kubelet_cmd(n))
            kubelets = [f"kubelet-{n.name}" for n in self.nodes]
            watch = ["kube-controller-manager", "kube-scheduler", "coredns", "kube-proxy"]
            self._wait(self._nodes_ready, timeout, "all nodes Ready", *kubelets, *watch)
            self.timings["nodes_ready_s"] = time.monotonic() - t0
            self._wait(self._dns_answers, 60, "cluster DNS to answer", "coredns")
            self.timings["dns_s"] = time.monotonic() - t0
            self._wait(self._default_sa, 60, "default ServiceAccount", "kube-controller-manager")
            self.timings["ready_s"] = time.monotonic() - t0
            for f in preloads:
                f.result()
            self.timings["preload_done_s"] = time.monotonic() - t0
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._save_state()

    # ------------------------------------------------------------------ pki and configs

    def _make_pki(self) -> None:
        p = self.pki
        p.init()
        sans_dns = (
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{config.CLUSTER_DOMAIN}",
            "localhost",
        )
        ips = ("127.0.0.1", config.CONTROL_PLANE_IP, config.KUBERNETES_SERVICE_IP)
        jobs: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (("apiserver", "kube-apiserver"), {"server": True, "ips": ips, "dns": sans_dns}),
            (("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
             {"client": True}),
            (("admin", "bndl-admin", ("system:masters",)), {"client": True}),
            (("kcm", "system:kube-controller-manager"), {"client": True}),
            (("scheduler", "system:kube-scheduler"), {"client": True}),
            (("kube-proxy", "system:kube-proxy"), {"client": True}),
            (("coredns", "system:coredns"), {"client": True}),
        ]  # fmt: skip
        for n in self.nodes:
            jobs.append(
                (
                    (f"kubelet-{n.name}", f"system:node:{n.name}", ("system:nodes",)),
                    {"client": True},
                )
            )
            jobs.append(
                (
                    (f"kubelet-{n.name}-serving", n.name),
                    {"server": True, "ips": (n.ip,), "dns": (n.name,)},
                )
            )
        with ThreadPoolExecutor(max_workers=4) as pool:
            for f in [pool.submit(p.issue, *a, **kw) for a, kw in jobs]:
                f.result()

    def _cert(self, name: str) -> Cert:
        return Cert(self.pki.dir / f"{name}.crt", self.pki.dir / f"{name}.key")

    def _kc(self, name: str, user: str) -> Path:
        return kubeconfig(
            self.dir / f"{name}.kubeconfig", APISERVER_IN_NETNS, self.pki.ca.crt, user,
            self._cert(name),
        )  # fmt: skip

    def _write_kubeconfigs(self) -> None:
        admin = self._cert("admin")
        kubeconfig(
            self.kubeconfig,
            f"https://127.0.0.1:{self.forward_port}",
            self.pki.ca.crt,
            "admin",
            admin,
        )
        kubeconfig(self.kubeconfig_in_netns, APISERVER_IN_NETNS, self.pki.ca.crt, "admin", admin)

    def _write_configs(self) -> None:
        for name in ("kcm", "scheduler", "kube-proxy", "coredns"):
            self._kc(name, name)
        for n in self.nodes:
            self._write_node_configs(n)
        (self.dir / "Corefile").write_text(
            f""".:53 {{
    bind {config.DNS_IP}
    errors
    kubernetes {config.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.dir / "coredns.kubeconfig"} bndl-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        )
        proxy_cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
            "hostnameOverride": self.nodes[0].name,
            "bindAddress": self.nodes[0].ip,
            "clusterCIDR": config.POD_SUPERNET,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "oomScoreAdj": 0,
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "nftables": {"masqueradeAll": True, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        (self.dir / "kube-proxy.yaml").write_text(json.dumps(proxy_cfg, indent=1))

    def _write_node_configs(self, n: Node) -> None:
        d = n.dir
        for sub in ("cni", "ipam", "root", "pod-logs", "containerd", "runc"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self._kc(f"kubelet-{n.name}", f"system:node:{n.name}")
        # ptp, as kind's kindnetd writes it: pod traffic is routed (see the module docstring).
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"bndl-{n.name}",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": n.pod_cidr, "gateway": n.ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(d / "ipam"),
                    },
                }
            ],
        }
        (d / "cni" / "10-ptp.conflist").write_text(json.dumps(conflist, indent=1))
        c = d / "containerd"
        (d / "containerd.toml").write_text(
            f"""version = 3
root = "{c / "root"}"
state = "{c / "state"}"
temp = "{c / "tmp"}"

[grpc]
  address = "{n.socket}"

[ttrpc]
  address = "{n.socket}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{c / "opt"}"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
  socket_path = "{d / "nri.sock"}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{config.PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d / "cni"}"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{config.BIN / "runc-wrapper"}"
        SystemdCgroup = false
        Root = "{d / "runc"}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        )
        kubelet_cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": n.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": n.ip,
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca.crt)},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(self.pki.dir / f"kubelet-{n.name}-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki.dir / f"kubelet-{n.name}-serving.key"),
            "clusterDNS": [config.DNS_IP],
            "clusterDomain": config.CLUSTER_DOMAIN,
            "resolvConf": "",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{n.socket}",
            "imageServiceEndpoint": f"unix://{n.socket}",
            "podLogsDir": str(d / "pod-logs"),
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "oomScoreAdj": 0,
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "10s",
            "syncFrequency": "10s",
            "hairpinMode": "none",
            "localStorageCapacityIsolation": False,
            "shutdownGracePeriod": "0s",
            "maxPods": 110,
        }
        (d / "kubelet.yaml").write_text(json.dumps(kubelet_cfg, indent=1))

    # ------------------------------------------------------------------ command lines

    def _bin(self, name: str) -> str:
        return str(config.BIN / name)

    def _etcd_cmd(self) -> list[str]:
        peer = "http://127.0.0.1:2380"
        return [
            self._bin("etcd"), "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={ETCD_CLIENT}", f"--advertise-client-urls={ETCD_CLIENT}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}", "--unsafe-no-fsync", "--log-level=warn",
        ]  # fmt: skip

    def _containerd_cmd(self, n: Node) -> list[str]:
        return [self._bin("containerd"), "--config", str(n.dir / "containerd.toml")]

    def _apiserver_cmd(self) -> list[str]:
        p = self.pki.dir
        return [
            self._bin("kube-apiserver"),
            f"--etcd-servers={ETCD_CLIENT}", "--etcd-prefix=/registry",
            "--bind-address=0.0.0.0", f"--secure-port={config.APISERVER_PORT}",
            f"--advertise-address={config.CONTROL_PLANE_IP}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={self.pki.ca.crt}",
            f"--service-account-issuer=https://kubernetes.default.svc.{config.CLUSTER_DOMAIN}",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-cluster-ip-range={config.SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.pki.ca.crt}",
            "--kubelet-preferred-address-types=InternalIP",
            "--shutdown-delay-duration=0s", "--profiling=false",
        ]  # fmt: skip

    def _kcm_cmd(self) -> list[str]:
        kc = str(self.dir / "kcm.kubeconfig")
        return [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", "--secure-port=10257",
            "--leader-elect=false", "--use-service-account-credentials",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca.crt}",
            f"--service-cluster-ip-range={config.SERVICE_CIDR}",
            f"--cluster-signing-cert-file={self.pki.ca.crt}",
            f"--cluster-signing-key-file={self.pki.ca.key}",
            "--controllers=*", "--profiling=false",
        ]  # fmt: skip

    def _scheduler_cmd(self) -> list[str]:
        kc = str(self.dir / "scheduler.kubeconfig")
        return [
            self._bin("kube-scheduler"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", "--secure-port=10259",
            "--leader-elect=false", "--profiling=false",
        ]  # fmt: skip

    def _coredns_cmd(self) -> list[str]:
        return [self._bin("coredns"), "-conf", str(self.dir / "Corefile"), "-dns.port", "53"]

    def _kube_proxy_cmd(self) -> list[str]:
        return [self._bin("kube-proxy"), f"--config={self.dir / 'kube-proxy.yaml'}"]

    def _netpol_cmd(self) -> list[str]:
        # In-cluster configuration only (no kubeconfig flag): the token and CA are served from a
        # tmpfs on /run in a private mount namespace, so the host's /run is not touched.
        sa = "/run/secrets/kubernetes.io/serviceaccount"
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c",
            f'mount -t tmpfs -o size=1m,mode=0755 tmpfs /run && mkdir -p {sa} '
            f'&& cp "$0/token" "$0/ca.crt" {sa}/ && exec "$@"',
            str(self.dir / NETPOL),
            self._bin(NETPOL), f"--nfqueue-id={NETPOL_QUEUE}", "--disable-nri",
            f"--hostname-override={self.nodes[0].name}", "--metrics-bind-address=127.0.0.1:9080",
            # The conntrack race this works around is fixed in the kernels this runs on (6.12+).
            "--netfilter-bug-1766-fix=false",
        ]  # fmt: skip

    def _start_netpol(self) -> None:
        """Start the enforcer, wait until it listens on its queue, then divert pod traffic to it."""
        self._wait(
            lambda: self.apply(NETPOL_RBAC) if self._has_namespace("kube-system") else None,
            60,
            "kube-system namespace for the enforcer's ServiceAccount",
        )
        d = self.dir / NETPOL
        d.mkdir()
        token = self.kubectl("create", "token", NETPOL, "-n", "kube-system", "--duration=48h")
        (d / "token").write_text(token.strip())
        shutil.copy(self.pki.ca.crt, d / "ca.crt")
        # In-cluster configuration reads the apiserver's address from the environment: the
        # apiserver itself, not the `kubernetes` Service (which needs kube-proxy's rules first).
        api = {
            "KUBERNETES_SERVICE_HOST": config.CONTROL_PLANE_IP,
            "KUBERNETES_SERVICE_PORT": str(config.APISERVER_PORT),
        }
        self._start(NETPOL, self._netpol_cmd(), extra_env=api)
        self._wait(self._netpol_listening, 60, f"{NETPOL} on queue {NETPOL_QUEUE}", NETPOL)
        rule = ["-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"]
        rule += ["-j", "NFQUEUE", "--queue-num", str(NETPOL_QUEUE)]
        self.exec_in_netns(["iptables-nft", "-w", "5", "-A", "FORWARD", *rule])

    def _has_namespace(self, name: str) -> bool:
        return bool(self.kubectl("get", "namespace", name, "-o", "name", check=False))

    def _netpol_listening(self) -> bool:
        """Whether a process in the namespace is bound to the queue (nfnetlink_queue's own list)."""
        table = self.exec_in_netns(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
        return any(line.split()[:1] == [str(NETPOL_QUEUE)] for line in table.splitlines())

    def _ensure_host_dirs(self) -> None:
        """Note the shared host paths that do not exist yet, so the last run removes them.

        The kubelet's device-plugin socket path is fixed (not under --root-dir): every kubelet
        gets its own directory bind-mounted there, in a mount namespace of its own, so only the
        empty mount point is created here. libcni's cache directory, the containerd shims' socket
        directory and the containers' parent cgroups are made by those components.
        """
        marker = self.dir.parent / HOST_DIRS_MARKER
        known = set(marker.read_text().split()) if marker.exists() else set()
        missing = [str(p) for p in shared_host_paths() if not p.exists() and str(p) not in known]
        if missing:
            with marker.open("a") as f:
                f.write("".join(f"{p}\n" for p in missing))
        for d in HOST_DIRS:
            d.mkdir(exist_ok=True)

    def _remove_host_dirs(self) -> list[str]:
        """When no other run is left: remove the shared host paths that runs created."""
        marker = self.dir.parent / HOST_DIRS_MARKER
        if not marker.exists() or any(d.is_dir() for d in self.dir.parent.iterdir()):
            return []  # another run still uses them (it removes them when it ends)
        left = []
        for p in sorted(marker.read_text().split(), key=lambda x: x.count("/"), reverse=True):
            try:
                Path(p).rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"{p}: {exc.strerror}")
        marker.unlink()
        return left

    def _kubelet_cmd(self, n: Node) -> list[str]:
        labels = ",".join(f"{k}={v}" for k, v in n.labels.items())
        (n.dir / "device-plugins").mkdir(exist_ok=True)
        return [
            "unshare", "--mount", "--propagation", "unchanged", "--",
            "sh", "-c", 'mount --bind "$0" "$1" && shift && exec "$@"',
            str(n.dir / "device-plugins"), str(DEVICE_PLUGINS),
            self._bin("kubelet"), f"--config={n.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.dir / f'kubelet-{n.name}.kubeconfig'}",
            f"--root-dir={n.dir / 'root'}", f"--hostname-override={n.name}",
            f"--node-ip={n.ip}", f"--node-labels={labels}",
        ]  # fmt: skip

    # ------------------------------------------------------------------ readiness checks

    def _etcd_healthy(self) -> bool:
        def get() -> bool:
            with urllib.request.urlopen(f"{ETCD_CLIENT}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        return self.netns.call(get)

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.crt))
        admin = self._cert("admin")
        ctx.load_cert_chain(str(admin.crt), str(admin.key))
        return ctx

    def _apiserver_ready(self) -> bool:
        url = f"https://127.0.0.1:{self.forward_port}/readyz"
        with urllib.request.urlopen(url, context=self._ssl(), timeout=3) as r:
            return bool(r.status == 200)

    def _bootstrap_rbac(self) -> None:
        self.apply(
            """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
"""
        )

    def _containerd_up(self, n: Node) -> bool:
        cmd = [self._bin("ctr"), "-a", str(n.socket), "version"]
        return run(cmd, check=False, timeout=10).returncode == 0

    def _load_pause(self) -> None:
        for n in self.nodes:
            self._wait(
                partial(self._containerd_up, n),
                60,
                f"containerd of {n.name}",
                f"containerd-{n.name}",
            )
        images.import_everywhere(
            config.BIN / "ctr", [n.socket for n in self.nodes], config.PAUSE_TAR
        )

    def _nodes_ready(self) -> bool:
        items = self.kubectl_json("get", "nodes")["items"]
        ready = {
            i["metadata"]["name"]
            for i in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in i.get("status", {}).get("conditions", [])
            )
        }
        return ready >= set(self.node_names)

    def _dns_answers(self) -> bool:
        addrs = self.netns.call(dns_query_a, config.DNS_IP, CLUSTER_DNS_PROBE)
        return config.KUBERNETES_SERVICE_IP in addrs

    def _default_sa(self) -> bool:
        return bool(self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False))

    # ------------------------------------------------------------------ stop

    def stop(self) -> list[str]:
        """Stop everything of this run by PID and remove all its state. Returns problems met."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
            return self._stop()

    def _stop(self) -> list[str]:
        problems: list[str] = []

        def step(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:
                problems.append(f"{what}: {exc!r}")

        def procs(prefix: str) -> list[ProcRecord]:
            return [r for k, r in self.procs.items() if k.startswith(prefix)]

        step("stop kubelets", lambda: stop_processes(procs("kubelet-"), 20))
        for n in self.nodes:
            rec = self.procs.get(f"containerd-{n.name}")
            if rec is not None and rec.alive():
                crictl = [self._bin("crictl"), "-r", f"unix://{n.socket}", "-t", "30s"]
                step(f"remove pods of {n.name}", partial(run, [*crictl, "rmp", "-fa"], timeout=90))
        others = [
            NETPOL,
            "kube-proxy",
            "coredns",
            "forwarder",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        step(
            "stop services",
            lambda: stop_processes([self.procs[k] for k in others if k in self.procs]),
        )
        step("stop containerd", lambda: stop_processes(procs("containerd-"), 15))
        # Shims (and their containers) of this run that outlived containerd.
        for n in self.nodes:
            step(f"kill shims of {n.name}", partial(_kill_with_arg, str(n.socket)))
        if self.dir.exists():
            step("kill processes rooted in the run", lambda: kill_pids(pids_rooted_under(self.dir)))
        step("stop apiserver", lambda: stop_processes(procs("kube-apiserver"), 20))
        step("stop etcd", lambda: stop_processes(procs("etcd"), 10))
        leftover = [r for r in self.procs.values() if r.alive()]
        if leftover:
            problems.append(f"still alive: {[(r.name, r.pid) for r in leftover]}")
        if self.dir.exists():
            step("unmount", lambda: unmount_all_under(self.dir))
            left = mounts_under(self.dir)
            if left:
                problems.append(f"mounts left: {left}")
        step("delete netns", self.netns.delete)
        if self.dir.exists() and not mounts_under(self.dir):
            step("remove run dir", lambda: shutil.rmtree(self.dir))
        step("remove host dirs", lambda: problems.extend(self._remove_host_dirs()))
        return problems


def _kill_with_arg(fragment: str) -> None:
    kill_pids(pids_with_arg(fragment))


def reap_stale_runs(runs: Path | None = None, owner: str = "pytest") -> list[str]:
    """Tear down runs of ``owner`` whose owning process is gone (a killed earlier test session)."""
    root = runs or config.RUNS
    reaped: list[str] = []
    if not root.exists():
        return reaped
    for d in sorted(root.iterdir()):
        state = d / "state.json"
        if not state.exists():
            continue
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if data.get("owner") != owner or proc_state(int(data.get("owner_pid", 0))) not in (
            None,
            "Z",
        ):
            continue
        Cluster.from_state(d).stop()
        reaped.append(d.name)
    return reaped


def list_runs(runs: Path | None = None) -> list[dict[str, Any]]:
    root = runs or config.RUNS
    out = []
    if root.exists():
        for d in sorted(root.iterdir()):
            try:
                out.append(json.loads((d / "state.json").read_text()) | {"dir": str(d)})
            except (OSError, ValueError):
                continue
    return out


__all__ = ["Cluster", "ClusterError", "CommandError", "Node", "dns_query_a", "reap_stale_runs"]
