"""A gate for tests and demonstrations: a task that holds its worker until someone opens it.

``wait_for_file`` blocks until a file exists on the worker, then returns the worker's host name.
An end-to-end test uses it where it needs a task to be running while it acts on the cluster
(deletes a pod, suspends the job) and releases it when its condition holds, e.g.::

    kubectl exec <worker pod> -c worker -- python -c "open('/tmp/gate', 'w').close()"

In the worker image ``/tmp`` is the pod's writable ``emptyDir`` (the root filesystem is
read-only), so a gate's file belongs to one pod: a pod that replaces it starts closed. The gate
gives up after ``timeout`` seconds (the task fails): it never holds a worker forever.
"""

from __future__ import annotations

import os
import socket
import time


def wait_for_file(path: str, timeout: float = 300.0, interval: float = 0.1) -> str:
    """Wait until ``path`` exists, checking every ``interval`` seconds; the host name then.

    Raises ``TimeoutError`` when it does not exist after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not appear in {timeout:g} s")
        time.sleep(interval)
    return socket.gethostname()
