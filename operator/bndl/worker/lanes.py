"""Lanes: a driver's limit on how many of its runs a worker runs at once.

The scheduler dispatches *ahead*: a worker gets a few runs beyond its ``concurrency`` slots, so
it starts the next one as soon as one ends instead of waiting a round trip for it. The runs of
one job (its lane, named by the job's key) carry the lane's number of slots; a run arriving while
they are all taken waits here, in arrival order, and starts when a run of its lane ends. Runs
without a lane (``slots`` 0) start at once.

Runs arrive on the worker's event loop and end on their task threads: a thread that ends a run
takes the next waiting run of its lane from :meth:`Lanes.ended` and runs it itself, with no trip
through the event loop between two tasks. Hence the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class LaneRun(Protocol):
    """What a lane needs of a run: its key, lane name and slots."""

    @property
    def key(self) -> str: ...

    @property
    def lane(self) -> str: ...

    @property
    def slots(self) -> int: ...


class _Lane(Generic[T]):
    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.waiting: dict[str, T] = {}


class Lanes(Generic[T]):
    """The lanes of one worker, holding back the runs (``T``: what starts one) beyond their
    lane's slots. Thread-safe."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane[T]] = {}
        self._lock = threading.Lock()

    def admit(self, run: LaneRun, item: T, start: Callable[[T], None]) -> bool:
        """Start ``run`` now (``start(item)``) or keep ``item`` waiting; True when it started."""
        if run.slots > 0 and run.lane:
            with self._lock:
                lane = self._lanes.get(run.lane)
                if lane is None:
                    lane = self._lanes[run.lane] = _Lane()
                if len(lane.running) >= run.slots:
                    lane.waiting[run.key] = item
                    return False
                lane.running.add(run.key)
        start(item)
        return True

    def ended(self, run: LaneRun) -> T | None:
        """``run`` ended: its slot goes to the first waiting run, whose item is returned for the
        caller to start (None: nothing waits, or ``run`` held no slot)."""
        with self._lock:
            lane = self._lanes.get(run.lane)
            if lane is None:
                return None
            lane.waiting.pop(run.key, None)
            following = None
            if run.key in lane.running:
                lane.running.discard(run.key)
                if len(lane.running) < max(run.slots, 1) and lane.waiting:
                    key = next(iter(lane.waiting))
                    following = lane.waiting.pop(key)
                    lane.running.add(key)
            self._drop_if_empty(run.lane, lane)
            return following

    def withdraw(self, run: LaneRun) -> bool:
        """Take ``run`` out of its lane's queue; True if it was waiting (it never started)."""
        with self._lock:
            lane = self._lanes.get(run.lane)
            if lane is None or lane.waiting.pop(run.key, None) is None:
                return False
            self._drop_if_empty(run.lane, lane)
            return True

    def waiting(self) -> int:
        """How many runs wait for a slot, in all lanes."""
        with self._lock:
            return sum(len(lane.waiting) for lane in self._lanes.values())

    def _drop_if_empty(self, name: str, lane: _Lane[T]) -> None:
        if not lane.running and not lane.waiting:
            del self._lanes[name]
