"""The kopf handlers, kept thin: each hands its work to a :class:`~bndl.k8s.runner.JobRunner`.

One daemon per BndlJob runs the job (level-triggered: it looks at the whole state on every
wake-up); a low-level event handler wakes it when the object changes (``suspend``, scaling,
deletion); one shared pod watch (:mod:`bndl.k8s.podwatch`) feeds every job its worker pods.
Handlers are registered on a registry of their own, so tests can build one per operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import kopf

from bndl.k8s.kube import Kube
from bndl.k8s.metrics import OperatorMetrics
from bndl.k8s.podwatch import PodWatch
from bndl.k8s.runner import BEAT, JobRunner, Shared
from bndl.k8s.settings import OperatorSettings
from bndl.k8s.workerpods import NodeLabels
from bndl.manifest import GROUP, PLURAL, VERSION
from bndl.wire import ClientSettings, create_session

log = logging.getLogger(__name__)

FINALIZER = "bndl.io/operator"
STALL_SECONDS = 12 * BEAT
"""A runner whose loop has not turned for this long fails the liveness probe."""
MAX_LAG = 30.0
"""Event-loop lag (seconds) that fails the liveness probe."""


class Operator:
    """The state shared by the handlers of one operator process."""

    def __init__(self, settings: OperatorSettings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.runners: dict[str, JobRunner] = {}
        self.kube = kube
        self.session: aiohttp.ClientSession | None = None
        self.shared: Shared | None = None
        self.lag = 0.0
        self.role = "standby"
        self.metrics = OperatorMetrics(lag=lambda: self.lag)
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.kube is None:
            self.kube = await Kube.connect()
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._measure_lag(), name="bndl-loop-lag")

    async def start_jobs(self) -> Shared:
        """Everything the job runners need (called once leading)."""
        await self.start()
        assert self.kube is not None
        if self.shared is None:
            self.session = create_session(ClientSettings())
            pods = PodWatch(self.kube, self.settings.namespaces)
            pods.start()
            self.shared = Shared(
                self.kube, self.session, self.settings, pods, NodeLabels(self.kube), self.metrics
            )
        self.role = "leader"
        return self.shared

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self.shared is not None:
            await self.shared.pods.stop()
        if self.session is not None:
            await self.session.close()
        if self.kube is not None:
            await self.kube.close()

    async def _measure_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(1.0)
            self.lag = max(0.0, time.monotonic() - before - 1.0)

    def health(self) -> dict[str, Any]:
        """For the liveness probe; raises when the event loop or a job's loop is stalled."""
        now = time.monotonic()
        stalled = [r.ref.name for r in self.runners.values() if now - r.beat > STALL_SECONDS]
        if stalled or self.lag > MAX_LAG:
            raise RuntimeError(f"stalled: jobs {stalled}, event loop lag {self.lag:.1f} s")
        return {"role": self.role, "jobs": len(self.runners), "loopLagSeconds": round(self.lag, 3)}

    def registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        resource = (GROUP, VERSION, PLURAL)

        @kopf.on.startup(registry=registry)
        async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.persistence.finalizer = FINALIZER
            settings.posting.level = logging.WARNING  # the runner posts its own events
            settings.networking.request_timeout = 30
            settings.networking.connect_timeout = 10
            await self.start_jobs()

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_via_client(**kwargs)  # in-cluster, else the kubeconfig

        @kopf.daemon(
            *resource,
            id="run",
            registry=registry,
            errors=kopf.ErrorsMode.PERMANENT,
            # Deleted or exiting: first the stop flag (the runner cancels its tasks and reports
            # Cancelled, or detaches), only after cancellation_backoff seconds a cancellation.
            cancellation_backoff=30,
            cancellation_timeout=30,
        )
        async def run(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
            shared = await self.start_jobs()
            runner = JobRunner(
                body,
                shared,
                is_stopped=lambda: bool(stopped),
                deleted=lambda: bool(body.metadata.get("deletionTimestamp")),
            )
            uid = runner.ref.uid
            self.runners[uid] = runner

            async def wake_on_stop() -> None:
                await stopped.wait()
                runner.poke()

            waker = asyncio.create_task(wake_on_stop(), name=f"stop-{runner.ref.name}")
            try:
                await runner.run()
            finally:
                waker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waker
                self.runners.pop(uid, None)

        @kopf.on.event(*resource, registry=registry)
        def changed(body: kopf.Body, type: str | None, **_: Any) -> None:
            if type == "DELETED":
                self.metrics.forget(body.metadata.uid or "")
            runner = self.runners.get(body.metadata.uid or "")
            if runner is not None:
                runner.poke()

        return registry
