"""What the driver (or operator) and the workers share: TLS material (:mod:`bndl.wire.tls`),
frames, task envelopes, refs, the error hierarchy of the boundary and the HTTP client.

Nothing here knows about the scheduler or Kubernetes; the worker server lives in ``bndl.worker``.
"""

from bndl.wire.client import ClientSettings, Held, WorkerClient, create_session, merge_cpu_stats
from bndl.wire.errors import (
    AuthenticationFailed,
    BadRequest,
    Conflict,
    ExceptionNotPicklable,
    NotFound,
    OriginForbidden,
    PayloadTooLarge,
    ProtocolError,
    RemoteTraceback,
    ResultNotPicklable,
    RunNotFound,
    TaskAborted,
    TaskNotDecodable,
)
from bndl.wire.refs import RemoteRef
from bndl.wire.tasks import Completion, TaskItem

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "ClientSettings",
    "Completion",
    "Conflict",
    "ExceptionNotPicklable",
    "Held",
    "NotFound",
    "OriginForbidden",
    "PayloadTooLarge",
    "ProtocolError",
    "RemoteRef",
    "RemoteTraceback",
    "ResultNotPicklable",
    "RunNotFound",
    "TaskAborted",
    "TaskItem",
    "TaskNotDecodable",
    "WorkerClient",
    "create_session",
    "merge_cpu_stats",
]
