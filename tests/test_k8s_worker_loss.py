"""What the operator relies on when a pod goes away: ``Scheduler.lose_worker`` with runs still in
flight on that worker re-runs them elsewhere at once, without waiting for the lost runs to end."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from bndl.execute.job import RmiTask
from bndl.execute.scheduler import Scheduler
from bndl.execute.workers import ThreadWorker


class HangingWorker(ThreadWorker):
    """A worker whose runs never complete (a pod that vanished without closing its streams)."""

    queues_ahead = False  # its run() takes no lane

    def run(self, key: str, fn: Any, args: Any, kwargs: Any, keep: bool) -> Future[Any]:
        self.runs += 1
        return Future()


def test_lose_worker_reruns_its_in_flight_tasks_elsewhere() -> None:
    gone = HangingWorker("gone")
    tasks = [RmiTask(None, i, pow, (i, 2)) for i in range(4)]
    results: list[Any] = []
    finished = threading.Event()

    def done(item: Any) -> None:
        results.append(item)
        if item is None:
            finished.set()

    scheduler = Scheduler(tasks, done, [gone], concurrency=4, wait_for_workers=True)
    scheduler.start()
    assert gone.runs == 4 and scheduler.counts().running == 4
    scheduler.lose_worker("gone")
    scheduler.add_worker(ThreadWorker("new"))
    assert finished.wait(10)
    assert results[-1] is None and not any(isinstance(r, BaseException) for r in results)
    assert sorted(t.result() for t in tasks) == [0, 1, 4, 9]
    assert scheduler.counts().lost_runs == 4
