"""Images: build with podman on the local base image, and load into nodes' containerd.

This is the ``kind load docker-image`` step: ``podman save`` writes an archive, and
``ctr images import`` puts it into each node's containerd (namespace ``k8s.io``, the one the CRI
uses). Pods then use the image with ``imagePullPolicy: Never`` or ``IfNotPresent``: nothing is
ever pulled from a registry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import config
from .procs import run


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(config.CONTAINERS_CONF)
    return env


def podman(*args: str, timeout: float = 1800) -> str:
    return run(["podman", *args], env=podman_env(), timeout=timeout).stdout


def image_exists(ref: str) -> bool:
    return run(["podman", "image", "exists", ref], env=podman_env(), check=False).returncode == 0


def build_image(
    dockerfile: Path | str,
    context: Path | str,
    tag: str,
    build_args: Mapping[str, str] | None = None,
) -> str:
    """Build ``tag`` from ``dockerfile`` with podman on the host network; BASE is the local base.

    The host's CA bundle and pip configuration are mounted into RUN steps, so ``pip install`` and
    ``apt-get`` inside a Dockerfile use the same package registries as the machine.
    """
    args = {"BASE": config.BASE_IMAGE, **(build_args or {})}
    cmd = ["build", "--network", "host", "-f", str(dockerfile), "-t", tag]
    for src in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(src).exists():
            cmd += ["-v", f"{src}:{src}:ro"]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    podman(*cmd, str(context))
    return tag


def archive_name(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ref) + ".tar"


def save_image(ref: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / archive_name(ref)
    if out.exists():
        out.unlink()
    podman("save", "-q", "-o", str(out), ref)
    return out


def import_archive(ctr: Path, socket: Path, archive: Path) -> None:
    run(
        [str(ctr), "-a", str(socket), "-n", "k8s.io", "images", "import",
         "--snapshotter", "overlayfs", str(archive)],
        timeout=600,
    )  # fmt: skip


def import_everywhere(ctr: Path, sockets: Sequence[Path], archive: Path) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(sockets))) as pool:
        for f in [pool.submit(import_archive, ctr, s, archive) for s in sockets]:
            f.result()
