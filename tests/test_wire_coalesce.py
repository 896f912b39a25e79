"""Unit tests of run-request coalescing, with a fake request in place of HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from bndl.execute.exceptions import NotConnected
from bndl.wire import Completion, TaskItem
from bndl.wire.coalesce import Coalescer, Encoded


class FakeWorker:
    """Completes every task with its key, in reverse order; may fail after some frames."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.requests: list[list[str]] = []
        self.fail_after = fail_after

    async def stream(self, batch: Sequence[Encoded]) -> AsyncIterator[Completion]:
        keys = [item.key for item, _ in batch]
        self.requests.append(keys)
        await asyncio.sleep(0)
        for n, key in enumerate(reversed(keys)):
            if self.fail_after is not None and n >= self.fail_after:
                raise NotConnected("fake", "gone")
            yield Completion(key, True, key.upper())


def encoded(*keys: str) -> list[Encoded]:
    return [(TaskItem(key, int), b"") for key in keys]


async def collect(coalescer: Coalescer, *keys: str) -> dict[str, object]:
    return {c.key: c.value async for c in coalescer.run(encoded(*keys))}


def test_concurrent_runs_share_one_request_and_get_their_own_completions() -> None:
    async def check() -> None:
        worker = FakeWorker()
        coalescer = Coalescer(worker.stream)
        results = await asyncio.gather(
            collect(coalescer, "a"), collect(coalescer, "b", "c"), collect(coalescer, "d")
        )
        assert results == [{"a": "A"}, {"b": "B", "c": "C"}, {"d": "D"}]
        assert worker.requests == [["a", "b", "c", "d"]]
        assert await collect(coalescer, "e") == {"e": "E"}  # later calls: a new request
        assert len(worker.requests) == 2

    asyncio.run(check())


def test_batches_are_capped_and_keys_never_repeat_within_a_request() -> None:
    async def check() -> None:
        worker = FakeWorker()
        coalescer = Coalescer(worker.stream, max_batch=3)
        results = await asyncio.gather(
            collect(coalescer, "a", "b"),
            collect(coalescer, "c", "d"),
            collect(coalescer, "a"),  # the same key again: goes into another request
        )
        assert results == [{"a": "A", "b": "B"}, {"c": "C", "d": "D"}, {"a": "A"}]
        assert worker.requests == [["a", "b", "c"], ["d", "a"]]

    asyncio.run(check())


def test_a_failed_request_raises_in_every_call_still_waiting() -> None:
    async def check() -> None:
        worker = FakeWorker(fail_after=1)
        coalescer = Coalescer(worker.stream)
        outcomes = await asyncio.gather(
            collect(coalescer, "a"),
            collect(coalescer, "b"),
            collect(coalescer, "c"),
            return_exceptions=True,
        )
        # "c" completed first (reverse order), the others saw the failure
        assert outcomes[2] == {"c": "C"}
        for outcome in outcomes[:2]:
            assert isinstance(outcome, NotConnected)

    asyncio.run(check())


def test_an_abandoned_call_does_not_disturb_the_others() -> None:
    async def check() -> None:
        worker = FakeWorker()
        coalescer = Coalescer(worker.stream)
        abandoned = coalescer.run(encoded("x", "y"))
        first = asyncio.ensure_future(abandoned.__anext__())
        other = asyncio.ensure_future(collect(coalescer, "z"))
        assert (await first).key == "y"
        await abandoned.aclose()
        assert await other == {"z": "Z"}

    asyncio.run(check())


def test_nothing_is_sent_for_a_run_that_is_never_iterated() -> None:
    async def check() -> None:
        worker = FakeWorker()
        coalescer = Coalescer(worker.stream)
        coalescer.run(encoded("never"))
        await asyncio.sleep(0)
        assert worker.requests == []

    asyncio.run(check())


def test_close_stops_requests_in_flight() -> None:
    async def check() -> None:
        started = asyncio.Event()

        async def endless(batch: Sequence[Encoded]) -> AsyncIterator[Completion]:
            started.set()
            await asyncio.Event().wait()
            yield Completion("never", True, None)

        coalescer = Coalescer(endless)
        waiting = asyncio.ensure_future(collect(coalescer, "a"))
        await started.wait()
        await coalescer.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(check())
