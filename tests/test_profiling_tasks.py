"""Task functions of the profiling tests, in a module of their own that imports nothing heavy (no
pytest): the workers import it, and its import would otherwise dominate the profiles. No tests."""

from __future__ import annotations

_HELD: list[bytearray] = []


def burn_cpu_for_the_profile(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def hold_memory_for_the_profile(size: int) -> int:
    _HELD.append(bytearray(size))  # held by the worker until it exits: seen by the snapshot
    return size


def print_then_fail(tag: str) -> None:
    print(f"{tag}: about to fail")
    raise RuntimeError(f"{tag} failed")
