"""Length-prefixed frames: how a streaming response carries many small messages.

A ``POST /v1/run`` response is one long HTTP body in which the worker writes a frame per finished
task and heartbeats in between. Each frame is a 4-byte big-endian length followed by that many
bytes of pickle. Frames themselves only ever hold builtins (tuples, str, bool, bytes): task payloads
travel as nested pickled bytes, so a payload the driver cannot unpickle fails one task, not the
stream, and frames can be decoded with an unpickler that refuses every global.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 2**32 - 1

PROTOCOL = pickle.HIGHEST_PROTOCOL


class FrameError(ValueError):
    """A frame is malformed or refers to globals (frames may only contain builtins)."""


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise FrameError(f"frames may not contain globals (found {module}.{name})")


def encode(message: Any) -> bytes:
    """One frame: the length header and the pickled message (builtins only)."""
    data = pickle.dumps(message, PROTOCOL)
    if len(data) > MAX_FRAME:
        raise FrameError(f"frame of {len(data)} bytes exceeds the 4 GiB limit")
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Any:
    """The message of one frame body (without its header)."""
    try:
        return _BuiltinsOnly(io.BytesIO(data)).load()
    except FrameError:
        raise
    except Exception as e:
        raise FrameError(f"undecodable frame: {e}") from e


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get back the complete messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, offset)
            end = offset + HEADER.size + size
            if len(buffer) < end:
                break
            messages.append(decode(bytes(buffer[offset + HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buffer)
