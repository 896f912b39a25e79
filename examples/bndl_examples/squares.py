"""A wide fan-out (``examples/squares.yaml``): many tiny tasks and one fan-in."""

from __future__ import annotations

from collections.abc import Iterable


def square(x: int) -> int:
    """x squared."""
    return x * x


def total(values: Iterable[int]) -> int:
    """The sum of the values."""
    return sum(values)
