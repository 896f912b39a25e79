"""The results a worker keeps for the driver and its peers until they are released.

Results stay where they were computed (the driver only learns they exist); dependent tasks read
them from here, locally or over ``GET /v1/results/{key}``. Task threads write, the event loop
reads and releases, hence the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


class ResultStore:
    """Thread-safe map of task key to result value."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._values[key] = value

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
                    released += 1
            if prefix is not None:
                matching = [key for key in self._values if key.startswith(prefix)]
                for key in matching:
                    del self._values[key]
                released += len(matching)
        return released
