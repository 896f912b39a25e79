"""The READY line: how a worker started with ``--port 0`` tells its parent where it listens.

Once the worker accepts requests it prints exactly one line to stdout, flushed:
``BNDL_WORKER_READY {"name": ..., "url": ..., "pid": ...}``. A parent process (the local cluster,
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


def ready_line(announcement: Announcement) -> str:
    payload = {"name": announcement.name, "url": announcement.url, "pid": announcement.pid}
    return f"{READY_PREFIX} {json.dumps(payload)}"


def parse_ready_line(line: str) -> Announcement | None:
    """The announcement on a line of worker output, or None for any other line."""
    prefix, _, payload = line.strip().partition(" ")
    if prefix != READY_PREFIX:
        return None
    try:
        data = json.loads(payload)
        return Announcement(str(data["name"]), str(data["url"]), int(data["pid"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"malformed {READY_PREFIX} line: {line!r}") from e
