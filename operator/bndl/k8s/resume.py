"""What a restarted operator finds on the workers of a job it adopts.

Run keys name the job, the operator incarnation that started the run, the task and the attempt:
``<uid8>.<incarnation>/<task id>.<attempt>`` (see ``bndl.execute.job``). Every incarnation has a
fresh random part, so keys never collide across operator restarts, while the ``<uid8>.`` prefix
finds every result of the job whichever incarnation made it. A new incarnation asks each Ready
worker what it holds (results kept for dependents), runs (also runs orphaned by the previous
operator) and finished without delivering; held results are adopted as done, runs are re-attached.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bndl.driver import HttpWorker
from bndl.execute.exceptions import NotConnected
from bndl.execute.scheduler import parse_run_key
from bndl.wire import ProtocolError

log = logging.getLogger(__name__)


def job_prefix(uid: str) -> str:
    """The prefix of every run key of the job with this UID, in any incarnation."""
    return f"{uid[:8]}."


@dataclass(frozen=True, slots=True)
class Found:
    """A result held, or a run going on, on a worker."""

    worker: str
    key: str
    running: bool


async def survey(
    workers: Iterable[HttpWorker], prefix: str, tasks: Iterable[str]
) -> dict[str, Found]:
    """Ask every worker what it holds and runs of this job: task id -> what was found.

    A held result wins over a run of the same task; a worker that does not answer is skipped (its
    tasks simply run again).
    """
    known = set(tasks)

    async def ask(worker: HttpWorker) -> tuple[HttpWorker, Mapping[str, list[str]] | None]:
        try:
            return worker, dict(await worker.client.held())  # type: ignore[arg-type]
        except (NotConnected, ProtocolError, OSError) as e:
            log.warning("worker %s did not say what it holds: %s", worker.name, e)
            return worker, None

    found: dict[str, Found] = {}
    for worker, answer in await asyncio.gather(*(ask(w) for w in workers)):
        if answer is None:
            continue
        for key in answer.get("held", []):
            task = parse_run_key(prefix, key)
            if task in known:
                found[task] = Found(worker.name, key, running=False)
        for key in [*answer.get("running", []), *answer.get("finished", [])]:
            task = parse_run_key(prefix, key)
            if task in known and task not in found:
                found[task] = Found(worker.name, key, running=True)
    return found
