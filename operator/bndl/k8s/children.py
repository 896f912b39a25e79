"""The job's children, reconciled to the spec on every pass (level-triggered).

Each pass reads every child (Secret, Service, NetworkPolicy, StatefulSet): a missing one is
created, one owned by this job (owner reference with the job's UID) is adopted and brought to the
spec (the StatefulSet's replicas), and one owned by something else is never touched: that is a
:class:`ChildConflict`, which fails the job with a message naming the object. API errors are
raised as they are; the caller retries the transient ones (:mod:`bndl.k8s.retry`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from bndl.k8s import builders
from bndl.k8s.builders import BuildSettings, JobRef
from bndl.k8s.kube import Kube, KubeError, path
from bndl.manifest import JobPlan
from bndl.wire.tls import ClusterTls, TlsError

log = logging.getLogger(__name__)


class ChildConflict(Exception):
    """A child's name is taken by an object this job does not own."""


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


class Children:
    """Creates, adopts and scales one job's children; remembers the job's TLS material.

    The material is made once, when the job's Secret is created; an existing Secret (a restarted
    or upgraded operator resuming the job) is read, never replaced: the running workers trust
    only the authority in it."""

    def __init__(self, kube: Kube, ref: JobRef, settings: BuildSettings) -> None:
        self.kube = kube
        self.ref = ref
        self.settings = settings
        self.tls: ClusterTls | None = None
        self.client_tls: ssl.SSLContext | None = None
        """The operator's side of the job's mutual TLS, from the job's Secret."""
        self.created: list[str] = []

    async def reconcile(self, plan: JobPlan, replicas: int) -> list[str]:
        """One pass; returns what it changed (for the log and events)."""
        changes: list[str] = []
        # Fresh material only until the Secret is known (it is used only if none exists).
        material = self.tls or builders.new_tls(self.ref)
        for desired in builders.children(self.ref, plan, self.settings, material):
            if desired["kind"] == "StatefulSet":
                desired["spec"]["replicas"] = replicas
            existing = await self._get(desired)
            if existing is None:
                existing = await self._create(desired)
                changes.append(f"created {desired['kind']} {desired['metadata']['name']}")
            elif not owned_by(existing, self.ref.uid):
                owners = [
                    f"{r.get('kind')}/{r.get('name')}"
                    for r in existing["metadata"].get("ownerReferences") or []
                ]
                raise ChildConflict(
                    f"{desired['kind']} {self.ref.namespace}/{desired['metadata']['name']} exists "
                    f"and is not owned by this BndlJob (owners: {owners or 'none'}): delete or "
                    "rename it"
                )
            if desired["kind"] == "Secret":
                self._read_tls(existing)
            elif desired["kind"] == "StatefulSet":
                current = existing.get("spec", {}).get("replicas")
                if current != replicas:
                    await self.scale(replicas)
                    changes.append(f"scaled the workers from {current} to {replicas}")
        return changes

    def _read_tls(self, secret: Mapping[str, Any]) -> None:
        try:
            tls = builders.tls_of(secret)
            if tls != self.tls:
                self.client_tls = tls.client.client_context()
                self.tls = tls
        except (builders.SecretUnusable, TlsError) as e:
            raise ChildConflict(
                f"Secret {self.ref.namespace}/{self.ref.secret} holds no usable TLS material "
                f"({e}): delete it (the job's workers restart with new material)"
            ) from e

    async def _get(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        try:
            found: dict[str, Any] = await self.kube.get(
                path(obj["kind"], meta["namespace"], meta["name"])
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return found

    async def _create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        try:
            created: dict[str, Any] = await self.kube.request(
                "POST", path(obj["kind"], meta["namespace"]), body=obj
            )
        except KubeError as e:
            if e.status != 409:
                raise
            found = await self._get(obj)  # created meanwhile (by an earlier incarnation?)
            if found is None:
                raise
            if not owned_by(found, self.ref.uid):
                raise ChildConflict(
                    f"{obj['kind']} {meta['namespace']}/{meta['name']} exists and is not owned "
                    "by this BndlJob: delete or rename it"
                ) from e
            return found
        return created

    async def scale(self, replicas: int) -> None:
        url = path("StatefulSet", self.ref.namespace, self.ref.workers)
        await self.kube.patch(url, {"spec": {"replicas": replicas}})

    async def delete(self) -> None:
        """Delete every child (best effort: garbage collection removes them with the job)."""
        ns = self.ref.namespace
        for kind, name in (
            ("StatefulSet", self.ref.workers),
            ("NetworkPolicy", self.ref.workers),
            ("Service", self.ref.workers),
            ("Secret", self.ref.secret),
        ):
            try:
                await self.kube.delete(path(kind, ns, name))
            except KubeError as e:
                log.warning("%s: %s %s not deleted: %s", self.ref.name, kind, name, e)
