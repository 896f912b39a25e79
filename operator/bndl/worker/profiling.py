"""The worker's half of cluster-wide profiling: yappi for CPU, tracemalloc for memory.

The driver starts and stops profiling on every worker, collects what each measured and merges it
(``bndl.wire.client.merge_cpu_stats``). CPU stats travel in yappi's own ``ystat`` format, written
by its public ``save`` so that its public ``add`` can merge them on the driver.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import tracemalloc

import yappi


def cpu_start() -> None:
    """Profile every thread (running and future) of this worker."""
    yappi.start(builtins=False, profile_threads=True)


def cpu_stop() -> None:
    yappi.stop()


def cpu_clear() -> None:
    yappi.clear_stats()


def cpu_stats() -> bytes:
    """The function stats gathered so far, as the bytes of a yappi ``ystat`` file."""
    stats = yappi.get_func_stats()
    with tempfile.TemporaryDirectory(prefix="bndl-yappi-") as directory:
        path = os.path.join(directory, "stats.ystat")
        stats.save(path, type="ystat")
        with open(path, "rb") as file:
            return file.read()


def memory_start() -> None:
    tracemalloc.start(1)


def memory_stop() -> None:
    """Stop tracing; the traces gathered so far are discarded."""
    tracemalloc.stop()


def memory_snapshot() -> bytes:
    """A pickled ``tracemalloc.Snapshot``; ``RuntimeError`` when not tracing."""
    if not tracemalloc.is_tracing():
        raise RuntimeError("memory profiling is not started on this worker")
    return pickle.dumps(tracemalloc.take_snapshot(), pickle.HIGHEST_PROTOCOL)
