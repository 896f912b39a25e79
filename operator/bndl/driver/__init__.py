"""The driver's side of remote workers: an I/O loop thread and the HTTP worker adapter.

Used by the embedded local cluster and by the Kubernetes operator alike: both hand the scheduler
:class:`HttpWorker` objects, which speak the protocol of :mod:`bndl.wire` to worker processes.
"""

from bndl.driver.http_worker import HttpWorker
from bndl.driver.loop import AttachedLoop, DriverLoop, IoLoop

__all__ = ["AttachedLoop", "DriverLoop", "HttpWorker", "IoLoop"]
