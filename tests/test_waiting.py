"""The tests' one way to wait (tests/helpers/waiting.py): the value, the deadline, the message,
and which exceptions of the condition mean "not yet"."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.helpers.waiting import WaitTimeout, wait_until, wait_until_async


def test_the_first_truthy_value_is_returned() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "ready", 5, interval=0) == "ready"


def test_the_deadline_fails_naming_what_and_is_a_timeout_error() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0\.05 s waiting for the moon") as e:
        wait_until(lambda: False, 0.05, "the moon")
    assert isinstance(e.value, AssertionError) and isinstance(e.value, TimeoutError)


def test_only_ignored_exceptions_mean_not_yet_and_the_last_is_named() -> None:
    def missing() -> None:
        raise KeyError("pod")

    with pytest.raises(WaitTimeout, match=r"waiting for a pod \(last error: KeyError\('pod'\)\)"):
        wait_until(missing, 0.05, "a pod", ignoring=KeyError)
    with pytest.raises(KeyError):  # not ignored: the wait ends at once
        wait_until(missing, 30, "a pod", ignoring=ValueError)


def test_the_async_twin_awaits_a_coroutine_condition_and_takes_a_plain_one() -> None:
    async def check() -> tuple[object, object]:
        seen: list[int] = []

        async def grows() -> bool:
            seen.append(1)
            return len(seen) >= 3

        return await wait_until_async(grows, 5), await wait_until_async(lambda: 7, 5)

    assert asyncio.run(check()) == (True, 7)
    with pytest.raises(WaitTimeout, match="waiting for never"):
        asyncio.run(wait_until_async(lambda: False, 0.05, "never"))
