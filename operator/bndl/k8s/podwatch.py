"""One watch of every job's worker pods, for the whole operator.

A watch per job would hold a connection per job (and more list calls after every break); this one
list-and-watch (per watched namespace, or cluster-wide) selects the worker pods of every BndlJob by
label and files them under their job's UID. Runners read :meth:`PodWatch.pods` and are poked when
their pods change. When the watch breaks (an API-server outage), the last known pods stay as they
are, so the jobs keep their workers, and the watch lists again with backoff.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from typing import Any

from bndl.k8s import builders
from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.retry import Backoff

log = logging.getLogger(__name__)

SELECTOR = (
    f"{builders.LABEL_MANAGED_BY}={builders.MANAGER},{builders.LABEL_COMPONENT}=worker,"
    f"{builders.LABEL_JOB_UID}"
)

Pods = dict[str, dict[str, Any]]


class PodWatch:
    """The worker pods of every job, by job UID and pod name."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...] = ()) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self._by_job: dict[str, Pods] = {}
        self._listeners: dict[str, Callable[[], None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        self.relists = 0

    # ----------------------------------------------------------------------------- routing

    def pods(self, uid: str) -> Pods:
        """The job's pods by name (the dict is live: copy it to keep a snapshot)."""
        return self._by_job.setdefault(uid, {})

    def pod(self, uid: str, name: str) -> dict[str, Any] | None:
        return self._by_job.get(uid, {}).get(name)

    def subscribe(self, uid: str, poke: Callable[[], None]) -> None:
        self._listeners[uid] = poke

    def unsubscribe(self, uid: str) -> None:
        self._listeners.pop(uid, None)
        self._by_job.pop(uid, None)

    def _notify(self, uid: str) -> None:
        poke = self._listeners.get(uid)
        if poke is not None:
            poke()

    # ---------------------------------------------------------------------------- watching

    def start(self) -> None:
        plain = [n for n in self.namespaces if not any(c in n for c in "*?[")]
        if self.namespaces and len(plain) == len(self.namespaces):
            scopes: list[str | None] = list(plain)
        else:
            scopes = [None]  # cluster-wide (also for glob patterns, filtered here)
        self._pending = len(scopes)
        for ns in scopes:
            self._tasks.append(asyncio.create_task(self._watch(ns), name=f"pods-{ns or 'all'}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _wanted(self, pod: dict[str, Any]) -> bool:
        if not self.namespaces:
            return True
        ns = pod["metadata"].get("namespace", "")
        return any(fnmatch.fnmatchcase(ns, pattern) for pattern in self.namespaces)

    async def _watch(self, namespace: str | None) -> None:
        url = path("Pod", namespace)
        params = {"labelSelector": SELECTOR}
        backoff = Backoff(cap=10.0)
        first = True
        while True:
            try:
                listing = await self.kube.get(url, params)
                self._replace(namespace, listing.get("items", []))
                self.relists += 1
                if first:
                    first = False
                    self._pending -= 1
                    if self._pending <= 0:
                        self.synced.set()
                version = listing["metadata"]["resourceVersion"]
                while True:
                    async for kind, obj in self.kube.watch(url, params, version):
                        if kind == "ERROR":
                            raise KubeError(int(obj.get("code", 0)), str(obj.get("message")))
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind != "BOOKMARK":
                            self._apply(kind, obj)
                    backoff.reset()
            except KubeError as e:
                delay = backoff.next()
                log.debug("pod watch (%s) restarts in %.1f s: %s", namespace or "all", delay, e)
                await asyncio.sleep(delay)

    def _replace(self, namespace: str | None, items: list[dict[str, Any]]) -> None:
        fresh: dict[str, Pods] = {}
        for pod in items:
            if self._wanted(pod):
                uid = pod["metadata"]["labels"][builders.LABEL_JOB_UID]
                fresh.setdefault(uid, {})[pod["metadata"]["name"]] = pod
        touched = set(fresh)
        for uid, pods in list(self._by_job.items()):
            stale = [
                name
                for name, pod in pods.items()
                if namespace is None or pod["metadata"].get("namespace") == namespace
            ]
            if stale:
                touched.add(uid)
            for name in stale:
                del pods[name]
        for uid, pods in fresh.items():
            self._by_job.setdefault(uid, {}).update(pods)
        for uid in touched:
            self._notify(uid)

    def _apply(self, kind: str, pod: dict[str, Any]) -> None:
        if not self._wanted(pod):
            return
        uid = pod["metadata"].get("labels", {}).get(builders.LABEL_JOB_UID)
        if not uid:
            return
        pods = self._by_job.setdefault(uid, {})
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = pod
        self._notify(uid)
