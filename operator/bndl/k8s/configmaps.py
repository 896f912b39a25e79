"""The ConfigMaps a job owns for its reports (``<job>-profile``, ``<job>-results``): written
through the operator's :class:`~bndl.k8s.kube.Kube`, created or, when they exist (an operator
that adopted the job writes again), their data replaced."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bndl.k8s.builders import JobRef, labels, owner_reference
from bndl.k8s.kube import MERGE_PATCH, Kube, KubeError


def owned(ref: JobRef, name: str, component: str, data: dict[str, str]) -> dict[str, Any]:
    """The ConfigMap ``name`` holding ``data``: owned by the job (deleted with it) and labelled
    like its other children, as ``component``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": labels(ref, component),
            "ownerReferences": [owner_reference(ref)],
        },
        "data": data,
    }


def path(namespace: str, name: str | None = None) -> str:
    """The API path of the namespace's ConfigMaps, or of one of them."""
    out = f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps"
    return out if name is None else f"{out}/{quote(name, safe='')}"


async def put(kube: Kube, body: dict[str, Any]) -> str:
    """Create the ConfigMap ``body``, or merge its ``data`` into the existing one of that name;
    returns the name. Raises :class:`~bndl.k8s.kube.KubeError` like every write of the
    operator."""
    meta = body["metadata"]
    try:
        await kube.request("POST", path(meta["namespace"]), body=body)
    except KubeError as e:
        if e.status != 409:
            raise
        await kube.request(
            "PATCH",
            path(meta["namespace"], meta["name"]),
            body={"data": body["data"]},
            content_type=MERGE_PATCH,
        )
    return str(meta["name"])
