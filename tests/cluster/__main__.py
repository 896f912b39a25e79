"""Command line for people: ``python -m tests.cluster up|down|status|shell|load|kubectl|build``.

    python -m tests.cluster up [--nodes 3] [--name dev]  # start in the background
    python -m tests.cluster shell [--name dev]           # a shell in the cluster's netns
    python -m tests.cluster load IMAGE... [--name dev]    # podman image -> every node
    python -m tests.cluster kubectl [--name dev] -- get pods -A
    python -m tests.cluster down [--name dev | --all]     # stop everything by PID, remove all state
    python -m tests.cluster status
    python -m tests.cluster build                        # tests/cluster/build.sh

Run as root, after ``tests/cluster/build.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from . import config
from .cluster import Cluster, base_env, list_runs


def _cluster(name: str) -> Cluster:
    d = config.RUNS / name
    if not (d / "state.json").exists():
        sys.exit(f"no cluster named {name!r} (under {config.RUNS}); start one with `up`")
    return Cluster.from_state(d)


def cmd_up(args: argparse.Namespace) -> int:
    if args.build:
        subprocess.run(["bash", str(config.BUILD_SCRIPT)], check=True)
    cluster = Cluster(args.name, config.default_nodes(args.nodes), owner="cli")
    cluster.start()
    mem = cluster.memory_kib()
    print(f"cluster {cluster.name!r} up: nodes {', '.join(cluster.node_names)}", file=sys.stderr)
    print(
        f"all nodes Ready after {cluster.timings['nodes_ready_s']:.1f}s, DNS after "
        f"{cluster.timings['ready_s']:.1f}s; memory {sum(mem.values()) / 1024:.0f} MiB",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    return subprocess.call(["bash", str(config.BUILD_SCRIPT)])


def cmd_down(args: argparse.Namespace) -> int:
    names = [r["name"] for r in list_runs()] if args.all else [args.name]
    rc = 0
    for name in names:
        problems = _cluster(name).stop()
        for p in problems:
            print(f"{name}: {p}", file=sys.stderr)
        rc |= 1 if problems else 0
        print(f"cluster {name!r} down", file=sys.stderr)
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    for r in list_runs():
        alive = {k: Path(f"/proc/{v['pid']}").exists() for k, v in r["procs"].items()}
        print(json.dumps({"name": r["name"], "owner": r["owner"], "dir": r["dir"], "alive": alive}))
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    c = _cluster(args.name)
    env = base_env() | {"KUBECONFIG": str(c.kubeconfig_in_netns), "PS1": f"[k8s {c.name}] \\w# "}
    return subprocess.call(c.netns.wrap([os.environ.get("SHELL", "/bin/bash")]), env=env)


def cmd_load(args: argparse.Namespace) -> int:
    c = _cluster(args.name)
    for ref in args.images:
        c.load_image(ref)
        print(f"loaded {ref} into {', '.join(c.node_names)}", file=sys.stderr)
    return 0


def cmd_kubectl(args: argparse.Namespace) -> int:
    c = _cluster(args.name)
    return subprocess.call(
        [str(config.BIN / "kubectl"), "--kubeconfig", str(c.kubeconfig), *args.rest], env=c.env()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster in the background")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--build", action="store_true", help="run build.sh first")
    down = sub.add_parser("down", help="stop a cluster and remove all its state")
    down.add_argument("--all", action="store_true")
    sub.add_parser("status", help="list runs")
    sub.add_parser("build", help="run build.sh (idempotent)")
    sub.add_parser("shell", help="a shell inside the cluster's network namespace")
    load = sub.add_parser("load", help="load podman images into every node")
    load.add_argument("images", nargs="+")
    kubectl = sub.add_parser("kubectl", help="kubectl against the cluster")
    kubectl.add_argument("rest", nargs=argparse.REMAINDER)
    for p in (up, down, load, kubectl, sub.choices["shell"]):
        p.add_argument("--name", default="dev")
    args = parser.parse_args(argv)
    if args.command == "kubectl" and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    handler = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "build": cmd_build,
        "shell": cmd_shell,
        "load": cmd_load,
        "kubectl": cmd_kubectl,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
