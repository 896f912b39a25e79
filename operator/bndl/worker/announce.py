"""The READY line: how a worker started with ``--port 0`` tells its parent where it listens.

Once the worker accepts requests it prints exactly one line to stdout, flushed:
``BNDL_WORKER_READY {"name": ..., "url": ..., "pid": ..., "health": ...}`` (``health``: the URL
of its plain-HTTP probes). A parent process (the local cluster,
tests) reads stdout until it sees the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

READY_PREFIX = "BNDL_WORKER_READY"


@dataclass(frozen=True, slots=True)
class Announcement:
    """Where a freshly started worker can be reached."""

    name: str
    url: str
    pid: int
    health: str | None = None
    """Base URL of the plain-HTTP probes (``/healthz``, ``/readyz``)."""


def ready_line(announcement: Announcement) -> str:
    payload = {
        "name": announcement.name,
        "url": announcement.url,
        "pid": announcement.pid,
        "health": announcement.health,
    }
    return f"{READY_PREFIX} {json.dumps(payload)}"


def parse_ready_line(line: str) -> Announcement | None:
    """The announcement on a line of worker output, or None for any other line."""
    prefix, _, payload = line.strip().partition(" ")
    if prefix != READY_PREFIX:
        return None
    try:
        data = json.loads(payload)
        health = data.get("health")
        return Announcement(
            str(data["name"]),
            str(data["url"]),
            int(data["pid"]),
            None if health is None else str(health),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed {READY_PREFIX} line: {line!r}") from e
