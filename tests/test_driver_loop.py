"""The driver's event loop keeps calls in the order they were asked for, from any thread."""

from __future__ import annotations

import threading

from bndl.driver import DriverLoop


def test_a_call_made_on_the_loop_runs_after_the_calls_other_threads_asked_for_before() -> None:
    loop = DriverLoop()
    order: list[str] = []
    asked = threading.Event()
    ended = threading.Event()

    def on_the_loop() -> None:
        # holds the loop until the other thread asked for its calls, then asks for one itself,
        # as a completion that dispatches the next task does
        assert asked.wait(10)
        loop.call(lambda: order.append("from the loop"))
        ended.set()

    try:
        loop.loop.call_soon_threadsafe(on_the_loop)
        for n in range(3):
            loop.call(lambda n=n: order.append(f"from a thread {n}"))  # type: ignore[misc]
        asked.set()
        assert ended.wait(10)
        done = threading.Event()
        loop.call(done.set)
        assert done.wait(10)
        assert order == [*(f"from a thread {n}" for n in range(3)), "from the loop"]
    finally:
        loop.close()


def test_a_failing_call_does_not_hold_back_the_next() -> None:
    loop = DriverLoop()
    done = threading.Event()
    try:
        loop.call(lambda: 1 / 0)  # logged
        loop.call(done.set)
        assert done.wait(10)
    finally:
        loop.close()
