"""Leader election through a ``coordination.k8s.io`` Lease, as client-go's leaderelection does.

Two operator replicas run; the one holding the Lease runs the jobs, the other waits. The holder
renews the Lease every ``retry_period``; a candidate takes it over when it has not seen the Lease
change for ``lease_duration`` (measured on its own clock, never by comparing the holder's
timestamps with its own), with an optimistic-concurrency update so two candidates never both win.
A leader that cannot renew for ``renew_deadline`` steps down: it stops running jobs at once (the
workers keep their runs for the next leader to adopt). A leader that stops cleanly releases the
Lease, so the standby takes over without waiting out the lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bndl.k8s.kube import Kube, KubeError
from bndl.k8s.retry import transient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Where the Lease is and how long leadership lasts."""

    namespace: str
    name: str = "bndl-operator-leader"
    identity: str = ""
    lease_duration: float = 15.0
    """Seconds a candidate waits without seeing the Lease renewed before it takes over."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it steps down."""
    retry_period: float = 2.0
    """Seconds between renewals (and between a candidate's attempts)."""


class LostLeadership(Exception):
    """The leader could not renew its Lease in time (or another holder took it)."""


def _micro(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, keep and release one Lease."""

    def __init__(self, kube: Kube, settings: LeaseSettings) -> None:
        self.kube = kube
        self.settings = settings
        self.url = (
            f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases/{settings.name}"
        )
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.leading = False
        self.acquired_at: float | None = None
        self.transitions = 0

    async def acquire(self) -> None:
        """Return once this candidate holds the Lease."""
        logged = False
        while True:
            try:
                if await self._try():
                    self.leading = True
                    self.acquired_at = time.monotonic()
                    log.info("leading (Lease %s/%s)", self.settings.namespace, self.settings.name)
                    return
                if not logged:
                    log.info("standing by: the Lease is held by another operator")
                    logged = True
            except KubeError as e:
                log.warning("leader election: %s", e)
            await asyncio.sleep(self.settings.retry_period)

    async def keep(self) -> None:
        """Renew until leadership is lost; then raise :class:`LostLeadership`."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.retry_period)
            try:
                if await self._try():
                    last = time.monotonic()
                    continue
                raise LostLeadership("another operator holds the Lease")
            except KubeError as e:
                log.warning("Lease not renewed: %s", e)
            if time.monotonic() - last > self.settings.renew_deadline:
                self.leading = False
                raise LostLeadership(
                    f"the Lease was not renewed for {self.settings.renew_deadline:g} s"
                )

    async def release(self) -> None:
        """Give the Lease up (best effort) so that the standby takes over at once."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.kube.get(self.url)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.settings.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = _micro(datetime.now(UTC))
            lease["spec"] = spec
            await self.kube.request("PUT", self.url, body=lease)
            log.info("released the Lease")
        except KubeError as e:
            log.warning("Lease not released: %s", e)

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True when this candidate holds the Lease."""
        me = self.settings.identity
        now = datetime.now(UTC)
        try:
            lease = await self.kube.get(self.url)
        except KubeError as e:
            if e.status != 404:
                raise
            return await self._create(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration)
        expired = time.monotonic() - self._observed_at > duration
        if holder and holder != me and not expired:
            return False
        if holder != me:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["acquireTime"] = _micro(now)
            self.transitions = spec["leaseTransitions"]
        spec["holderIdentity"] = me
        spec["leaseDurationSeconds"] = max(1, round(self.settings.lease_duration))
        spec["renewTime"] = _micro(now)
        lease["spec"] = spec
        try:
            updated = await self.kube.request("PUT", self.url, body=lease)
        except KubeError as e:
            if e.status == 409:
                return False  # someone else updated it first
            raise
        s = updated.get("spec") or {}
        self._observed = (
            s.get("holderIdentity"),
            s.get("renewTime"),
            s.get("leaseDurationSeconds"),
        )
        self._observed_at = time.monotonic()
        return True

    async def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
            "spec": {
                "holderIdentity": self.settings.identity,
                "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
                "acquireTime": _micro(now),
                "renewTime": _micro(now),
                "leaseTransitions": 0,
            },
        }
        try:
            await self.kube.request(
                "POST",
                f"/apis/coordination.k8s.io/v1/namespaces/{self.settings.namespace}/leases",
                body=body,
            )
        except KubeError as e:
            if e.status == 409 or transient(e):
                return False
            raise
        return True
