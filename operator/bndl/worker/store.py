"""The results a worker keeps for the driver and its peers until they are released.

Results stay where they were computed (the driver only learns they exist); dependent tasks read
them from here, locally or over ``GET /v1/results/{key}``. Task threads write, the event loop
reads and releases, hence the lock. The store knows roughly how many bytes it holds (see
:func:`approx_size`), for the worker's metrics.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

SAMPLE = 100
"""Items of a container measured; the rest are assumed to be like them."""


def approx_size(value: Any, depth: int = 3) -> int:
    """Roughly the bytes ``value`` takes: buffers by their length, arrays by ``nbytes``,
    containers by a sample of their items (``depth`` levels deep); cheap for any size."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    size = sys.getsizeof(value, 64)
    if depth <= 0 or isinstance(value, str | bytes | bytearray | memoryview):
        return size
    if isinstance(value, dict):
        items: list[Any] = []
        for i, (k, v) in enumerate(value.items()):
            if i >= SAMPLE:
                break
            items += (k, v)
        n = 2 * len(value)
    elif isinstance(value, list | tuple | set | frozenset):
        items = [v for _, v in zip(range(SAMPLE), value, strict=False)]
        n = len(value)
    else:
        return size
    if not items:
        return size
    sampled = sum(approx_size(v, depth - 1) for v in items)
    return size + sampled * n // len(items)


class ResultStore:
    """Thread-safe map of task key to result value."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.nbytes = 0
        """Roughly the bytes of the values held."""

    def put(self, key: str, value: Any) -> None:
        size = approx_size(value)
        with self._lock:
            self._values[key] = value
            self.nbytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size

    def get(self, key: str) -> Any:
        """The value under ``key``; ``KeyError`` if not held."""
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._values)

    def release(self, keys: Iterable[str] = (), prefix: str | None = None) -> int:
        """Drop results by key and/or key prefix; returns how many were held."""
        released = 0
        with self._lock:
            for key in keys:
                if self._values.pop(key, self) is not self:
                    self.nbytes -= self._sizes.pop(key, 0)
                    released += 1
            if prefix is not None:
                matching = [key for key in self._values if key.startswith(prefix)]
                for key in matching:
                    del self._values[key]
                    self.nbytes -= self._sizes.pop(key, 0)
                released += len(matching)
        return released
