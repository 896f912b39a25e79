"""One status writer per job: the only code that patches a BndlJob's ``.status``.

Writes are serialised on one task and each body is built when it is sent, so a late write can
never carry an older phase over a newer one; finished phases are terminal in :class:`JobStatus`
itself. Changes are coalesced (at most one patch per ``interval``), transient API errors are
retried with backoff until the write lands (an API-server outage delays the ending, it never loses
it), and :meth:`StatusWriter.flush` waits until everything marked so far is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bndl.k8s.kube import Kube, KubeError, path
from bndl.k8s.retry import Backoff, transient

log = logging.getLogger(__name__)


class StatusWriter:
    """Patches ``build()`` onto the job's status whenever :meth:`mark` says it changed."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        build: Callable[[], dict[str, Any]],
        interval: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.kube = kube
        self.url = path("BndlJob", namespace, name, "status")
        self.name = name
        self.build = build
        self.interval = interval
        self.writes = 0
        self.gone = False
        self._marked = 0  # versions: marked, and written
        self._written = 0
        self._changed = asyncio.Event()
        self._landed = asyncio.Event()
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = backoff or Backoff()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"status-{self.name}")

    async def stop(self) -> None:
        """Stop writing (what is not written yet is not written)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def mark(self) -> None:
        """The status changed: write it soon."""
        self._marked += 1
        self._changed.set()

    async def flush(self) -> None:
        """Write now (not waiting out the interval) and return once it landed (or the job is
        gone). Retries through API outages for as long as it takes."""
        self.mark()
        self._urgent = True
        self.start()
        target = self._marked
        while self._written < target and not self.gone:
            self._landed.clear()
            await self._landed.wait()

    async def _run(self) -> None:
        backoff = self._backoff
        while True:
            await self._changed.wait()
            self._changed.clear()
            version = self._marked
            try:
                await self.kube.patch(self.url, {"status": self.build()})
            except KubeError as e:
                if e.status == 404:
                    self.gone = True
                    self._landed.set()
                    return
                if transient(e):
                    delay = backoff.next()
                    log.info("%s: status not written (retrying in %.1f s): %s", self.name, delay, e)
                else:
                    delay = backoff.next()
                    log.error("%s: status refused (retrying in %.1f s): %s", self.name, delay, e)
                self._changed.set()
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.writes += 1
            self._written = version
            self._landed.set()
            if self._urgent:
                self._urgent = False
                continue
            await asyncio.sleep(self.interval)  # the rate limit, not a wait for anything
