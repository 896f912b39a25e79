"""The diamond DAG (``examples/diamond.yaml``): one source, two branches, one join."""

from __future__ import annotations


def number(value: int) -> int:
    """The source: just its argument."""
    return value


def square(x: int) -> int:
    """One branch."""
    return x * x


def add(value: int, increment: int) -> int:
    """The other branch, and the join."""
    return value + increment
