"""``python -m bndl.k8s``: run the BndlJob operator (see ``--help``).

The process serves its health endpoint (and its metrics, with ``--metrics-port``) at once; with
``--leader-election`` it then stands by until it holds the Lease, and only the leader runs kopf (and
so the jobs). A leader that loses the Lease stops at once, without cancelling anything: the workers
keep their runs for the new leader, which adopts them. On SIGTERM (an upgrade, a deleted pod) kopf
stops the job runners (they detach), then the Lease is released so that the standby takes over
without waiting out the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Sequence

import kopf

from bndl.k8s.handlers import Operator
from bndl.k8s.health import serve_health, serve_metrics
from bndl.k8s.leader import LeaderElector, LostLeadership
from bndl.k8s.settings import OperatorSettings, parse

log = logging.getLogger("bndl.k8s")


async def run_operator(settings: OperatorSettings) -> int:
    """Serve health, win the Lease (when configured), run kopf; the process's exit code."""
    operator = Operator(settings)
    health = await serve_health(settings.liveness, operator.health) if settings.liveness else None
    metrics = operator.metrics.exposition
    scrape = await serve_metrics(settings.metrics_port, metrics) if settings.metrics_port else None
    await operator.start()
    assert operator.kube is not None
    elector: LeaderElector | None = None
    if settings.lease is not None:
        elector = LeaderElector(operator.kube, settings.lease)
        await elector.acquire()
    stop = asyncio.Event()
    # kopf would ask getpass for the user name, which fails for a numeric user without a
    # passwd entry (the restricted Pod Security Standard's runAsUser): name the process here.
    identity = f"bndl-operator@{socket.gethostname()}/{os.getpid()}"
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=operator.registry(),
            identity=identity,  # type: ignore[arg-type]  # kopf's NewType is not public
            standalone=settings.standalone,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=None,  # ours serves leader and standby alike
            stop_flag=stop,
        ),
        name="kopf",
    )
    keeper = asyncio.create_task(elector.keep(), name="lease") if elector else None
    code = 0
    try:
        waiting = {kopf_task} | ({keeper} if keeper else set())
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if keeper is not None and keeper in done:
            error = keeper.exception()
            log.error("stepping down: %s", error or "the Lease keeper ended")
            code = 1
            stop.set()  # the runners detach; nothing is cancelled on the workers
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(kopf_task), 20)
    finally:
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, LostLeadership):
                await keeper
        if not kopf_task.done():
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(kopf_task, 40)
        if elector is not None and code == 0:
            await elector.release()
        await operator.stop()
        for site in (health, scrape):
            if site is not None:
                await site.cleanup()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # kopf logs every handler call on every object event at INFO: keep its warnings only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return asyncio.run(run_operator(settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
