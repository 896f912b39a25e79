"""A job's worker pods as the scheduler's workers.

Every Ready pod (with an IP, not terminating) is one :class:`~bndl.driver.HttpWorker`. A pod that
stops being Ready is a lost worker: deleted or scaled away on purpose, it is lost uncharged; a
container that died (a crash, the OOM killer) is charged to the tasks that ran there, which is how
a poison task ends its job (``maxWorkerLosses``). A pod that is Ready again joins as a new worker.
Each worker knows how to explain its loss from its pod's last termination state.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from bndl.driver import AttachedLoop, HttpWorker
from bndl.execute.exceptions import NotConnected
from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.status import pod_ready, termination_cause
from bndl.wire import ClientSettings, ProtocolError, WorkerClient

log = logging.getLogger(__name__)

REJOIN_PAUSE = 2.0
"""Least seconds between two attempts to let a worker lost on a connection error join again."""
PROBE_TIMEOUT = 2.0
"""Seconds a worker may take to answer the probe before it joins again."""
CLIENT = ClientSettings(heartbeat_timeout=15.0)
"""A worker pod that sends no heartbeat for 15 s counts as lost (uncharged): a busy node can
delay a worker's heartbeats for seconds; a dead container is seen at once (the connection
closes) or through its pod."""


class SchedulerLike(Protocol):
    """What worker tracking needs of the engine's Scheduler."""

    def add_worker(self, worker: Any) -> None: ...

    def lose_worker(self, name: str, charge: bool = True) -> None: ...

    @property
    def workers(self) -> list[Any]: ...


class NodeLabels:
    """Labels of the nodes pods run on (for locality), read once per node."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._labels: dict[str, dict[str, str]] = {}

    async def of(self, node: str | None) -> dict[str, str]:
        if not node:
            return {}
        if node not in self._labels:
            try:
                obj = await self.kube.get(path("Node", name=node))
            except KubeError as e:
                log.warning("labels of node %s unknown: %s", node, e)
                return {}
            self._labels[node] = dict(obj["metadata"].get("labels") or {})
        return self._labels[node]


class WorkerPods:
    """Keeps one HttpWorker per Ready pod of a job and tells the scheduler what changed."""

    def __init__(
        self,
        job: str,
        port: int,
        session: aiohttp.ClientSession,
        loop: AttachedLoop,
        nodes: NodeLabels,
        pod_of: Callable[[str], Mapping[str, Any] | None],
        make: Callable[..., HttpWorker] = HttpWorker,
    ) -> None:
        self.job = job
        self.port = port
        self.session = session
        self.loop = loop
        self.nodes = nodes
        self.pod_of = pod_of
        self.make = make  # HttpWorker(client, loop, labels), or a metered one
        self.tls: ssl.SSLContext | None = None
        """The operator's side of the job's mutual TLS (set before the first sync)."""
        self.workers: dict[str, tuple[str, HttpWorker]] = {}  # pod name -> (pod uid, worker)
        self.ready_at: float | None = None
        self.joined: list[str] = []
        self._rejoined: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def all(self) -> list[HttpWorker]:
        return [w for _, w in self.workers.values()]

    async def sync(
        self, pods: Mapping[str, Mapping[str, Any]], sched: SchedulerLike | None
    ) -> bool:
        """Make the workers match the Ready pods; True when something changed."""
        changed = False
        ready = {name: pod for name, pod in pods.items() if pod_ready(pod)}
        for name, (uid, worker) in list(self.workers.items()):
            pod = ready.get(name)
            if pod is not None and pod["metadata"]["uid"] == uid:
                continue
            changed = True
            del self.workers[name]
            current = pods.get(name)
            deleted = current is None or bool(current["metadata"].get("deletionTimestamp"))
            why = "its pod was deleted" if deleted else "its pod is not Ready"
            if sched is not None:
                # First the scheduler, so that the failed connections below count as stale.
                sched.lose_worker(name, charge=not deleted)
            worker.disconnect(why)
            log.info("%s: worker %s lost (%s)", self.job, name, why)
        for name, pod in ready.items():
            if name in self.workers:
                continue
            labels = await self.nodes.of(pod.get("spec", {}).get("nodeName"))
            if name in self.workers or not pod_ready(pods.get(name) or {}):
                continue  # changed while the node was read
            worker = self._worker(pod, labels)
            self.workers[name] = (pod["metadata"]["uid"], worker)
            self.ready_at = time.monotonic()
            changed = True
            if sched is not None:
                sched.add_worker(worker)
                self.joined.append(name)
                log.info("%s: worker %s joined the running job", self.job, name)
        return changed

    def _worker(self, pod: Mapping[str, Any], labels: Mapping[str, str]) -> HttpWorker:
        name = pod["metadata"]["name"]
        if self.tls is None:
            raise RuntimeError("the job's TLS material is not known yet")
        url = f"https://{pod['status']['podIP']}:{self.port}"
        client = WorkerClient(name, url, self.tls, self.session, CLIENT)
        worker = self.make(client, self.loop, labels)

        def loss_cause() -> str | None:
            current = self.pod_of(name)
            return termination_cause(current) if current is not None else "its pod is gone"

        worker.loss_cause = loss_cause
        return worker

    async def rejoin(self, sched: SchedulerLike) -> None:
        """Workers whose pods are Ready but whom the scheduler lost (a connection failed) join
        again with a fresh client once they answer a probe, at most once per REJOIN_PAUSE. A
        worker that died is not Ready for a moment yet: without the probe, it would be charged
        again for every task sent to it meanwhile."""
        live = {w.name for w in sched.workers}
        now = time.monotonic()
        for name, (uid, old) in list(self.workers.items()):
            if name in live or now - self._rejoined.get(name, 0.0) < REJOIN_PAUSE:
                continue
            pod = self.pod_of(name)
            if pod is None or not pod_ready(pod) or pod["metadata"]["uid"] != uid:
                continue
            self._rejoined[name] = now
            worker = self._worker(pod, old.labels)
            try:
                await asyncio.wait_for(worker.client.health(), PROBE_TIMEOUT)
            except (NotConnected, ProtocolError, TimeoutError) as e:
                log.debug("%s: worker %s does not answer yet: %s", self.job, name, e)
                continue
            if self.workers.get(name, (None,))[0] != uid:
                continue  # its pod changed meanwhile
            self.workers[name] = (uid, worker)
            sched.add_worker(worker)
            log.info("%s: worker %s rejoined after a lost connection", self.job, name)

    def disconnect_all(self, reason: str) -> None:
        for _, worker in self.workers.values():
            worker.disconnect(reason)
        self.workers.clear()
