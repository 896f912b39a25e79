"""Kubernetes Events on a BndlJob: best effort, never in the way of the job."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from bndl.k8s import builders
from bndl.k8s.builders import JobRef
from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.status import timestamp

log = logging.getLogger(__name__)


async def post_event(
    kube: Kube, ref: JobRef, reason: str, message: str, *, warning: bool = False
) -> None:
    """Post one Event about the job; failures are logged, not raised."""
    now = timestamp(datetime.now(UTC))
    obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{ref.base}.", "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": "bndl.io/v1alpha1",
            "kind": "BndlJob",
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
        },
        "reason": reason,
        "message": message[:1000],
        "type": "Warning" if warning else "Normal",
        "source": {"component": builders.MANAGER},
        "reportingComponent": builders.MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.request("POST", path("Event", ref.namespace), body=obj)
    except KubeError as e:
        log.warning("%s: event %s not posted: %s", ref.name, reason, e)
