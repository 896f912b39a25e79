"""Lanes: a driver's limit on how many of its runs a worker runs at once.

The scheduler dispatches *ahead*: a worker gets a few runs beyond its ``concurrency`` slots, so
it starts the next one as soon as one ends instead of waiting a round trip for it. The runs of
one job (its lane, named by the job's key) carry the lane's number of slots; a run arriving while
they are all taken waits here, in arrival order, and starts when a run of its lane ends. Runs
without a lane (``slots`` 0) start at once. Everything here runs on the worker's event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class LaneRun(Protocol):
    """What a lane needs of a run: its key, lane name and slots."""

    @property
    def key(self) -> str: ...

    @property
    def lane(self) -> str: ...

    @property
    def slots(self) -> int: ...


class _Lane:
    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.waiting: dict[str, Callable[[], None]] = {}


class Lanes:
    """The lanes of one worker, holding back the runs beyond their lane's slots."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}

    def admit(self, run: LaneRun, start: Callable[[], None]) -> bool:
        """Start ``run`` now (calls ``start``) or keep it waiting; True when it started."""
        if run.slots <= 0 or not run.lane:
            start()
            return True
        lane = self._lanes.setdefault(run.lane, _Lane())
        if len(lane.running) >= run.slots:
            lane.waiting[run.key] = start
            return False
        lane.running.add(run.key)
        start()
        return True

    def ended(self, run: LaneRun) -> None:
        """``run`` ended (or was withdrawn): its slot goes to the first waiting run."""
        lane = self._lanes.get(run.lane)
        if lane is None:
            return
        lane.waiting.pop(run.key, None)
        if run.key not in lane.running:
            self._drop_if_empty(run.lane, lane)
            return
        lane.running.discard(run.key)
        if len(lane.running) < max(run.slots, 1) and lane.waiting:
            key = next(iter(lane.waiting))
            start = lane.waiting.pop(key)
            lane.running.add(key)
            start()
        self._drop_if_empty(run.lane, lane)

    def withdraw(self, run: LaneRun) -> bool:
        """Take ``run`` out of its lane's queue; True if it was waiting (it never started)."""
        lane = self._lanes.get(run.lane)
        if lane is None or lane.waiting.pop(run.key, None) is None:
            return False
        self._drop_if_empty(run.lane, lane)
        return True

    def waiting(self) -> int:
        """How many runs wait for a slot, in all lanes."""
        return sum(len(lane.waiting) for lane in self._lanes.values())

    def _drop_if_empty(self, name: str, lane: _Lane) -> None:
        if not lane.running and not lane.waiting:
            del self._lanes[name]
