"""Dying with one's parent: Linux's ``PR_SET_PDEATHSIG``, for the processes of the embedded cluster.

A worker of :class:`~bndl.local.LocalCluster` (started afresh by the driver, or forked by the fork
server) and the fork server's children get SIGKILL when their parent dies, so a driver killed with
SIGKILL leaves no process behind. Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from typing import Any

# prctl(2) option: the signal the kernel sends a process when its parent dies.
PR_SET_PDEATHSIG = 1


@functools.cache
def prctl() -> Any:
    """libc's prctl(2), looked up once (``find_library`` runs ``ldconfig``); None off Linux or if
    absent. Look it up before forking: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int) -> None:
    """In a child just forked from ``parent``: get SIGKILL when it dies, and exit at once if it
    died already (before the request took effect). Async-signal-safe once :func:`prctl` is
    looked up; never raises."""
    call = prctl()
    if call is None:
        return
    call(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
