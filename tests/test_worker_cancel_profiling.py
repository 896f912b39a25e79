"""Issue 14 on real worker processes: profiling after a cancelled job must not hang.

Cancelling a task that spins in pure Python injects ``TaskCancelled`` into its thread. Withdrawing
that interrupt at the end of the job used to leave CPython's "async exception pending" flag set
(see :mod:`bndl.worker.threads`), so the next job on the reused thread that ran under yappi, here
the ``/v1/call`` that starts CPU profiling, spun forever and the driver timed out after 60 s.
"""

from __future__ import annotations

import threading
from pathlib import Path

from bndl.driver import HttpWorker
from bndl.execute.job import Job, RmiTask
from bndl.local import LocalCluster
from tests.helpers.waiting import wait_until


def spin_forever(started: str) -> None:
    Path(started).touch()
    while True:
        pass


def _nothing_running(workers: list[HttpWorker]) -> bool:
    return all(not w.held()["running"] for w in workers)


def test_cpu_profiling_starts_after_a_job_with_cancelled_tasks(tmp_path: Path) -> None:
    with LocalCluster(workers=3) as ctx:
        tasks = [RmiTask(ctx, "quick", int)]
        tasks += [
            RmiTask(ctx, f"spin-{i}", spin_forever, (str(tmp_path / f"started-{i}"),))
            for i in range(2)
        ]
        gen = ctx.execute(Job(ctx, tasks), order_results=False, concurrency=1)
        assert next(gen).id == "quick"
        wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2, what="both tasks spin")
        gen.close()
        workers = [w for w in ctx.workers if isinstance(w, HttpWorker)]
        assert len(workers) == 3
        wait_until(lambda: _nothing_running(workers), what="the cancelled tasks to end")

        failures: list[BaseException] = []

        def start_profiling() -> None:
            try:
                ctx.cpu_profiling.start()
            except BaseException as e:
                failures.append(e)

        starter = threading.Thread(target=start_profiling, daemon=True)
        starter.start()
        wait_until(lambda: not starter.is_alive(), timeout=20, what="cpu profiling to start")
        assert not failures, failures
        ctx.cpu_profiling.stop()
        (after,) = ctx.execute(Job(ctx, [RmiTask(ctx, "after", abs, (-3,))]))
        assert after.result() == 3
