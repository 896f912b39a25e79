"""Unit tests of frames, task envelopes and outcome encoding."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest

from bndl.execute.exceptions import DependenciesFailed, TaskCancelled
from bndl.wire import (
    Completion,
    ExceptionNotPicklable,
    RemoteTraceback,
    ResultNotPicklable,
    TaskAborted,
    TaskItem,
    TaskNotDecodable,
    frames,
)
from bndl.wire.tasks import (
    decode_outcome,
    decode_run,
    encode_error,
    encode_result,
    encode_run,
    encode_task,
)


def test_frame_round_trip_and_incremental_decoding() -> None:
    messages = [("done", "k", True, b"\x00" * 1000), ("heartbeat",), ("done", "é", False, b"")]
    data = b"".join(frames.encode(m) for m in messages)
    assert frames.HEADER.unpack(data[:4])[0] == len(pickle.dumps(messages[0], frames.PROTOCOL))
    decoder = frames.FrameDecoder()
    received = []
    for i in range(len(data)):  # one byte at a time
        received += decoder.feed(data[i : i + 1])
    assert received == messages
    assert decoder.pending == 0
    assert frames.FrameDecoder().feed(data) == messages


def test_frames_refuse_globals() -> None:
    data = pickle.dumps(("done", TaskCancelled()))
    with pytest.raises(frames.FrameError, match="may not contain globals"):
        frames.decode(data)
    with pytest.raises(frames.FrameError, match="undecodable"):
        frames.decode(b"\x80\x05garbage")


def test_run_request_round_trip() -> None:
    items = [
        TaskItem("a", divmod, (7, 2)),
        TaskItem("b", sorted, ([2, 1],), keep=True, reply=False),
    ]
    tasks = decode_run(encode_run([(item, encode_task(item)) for item in items]))
    assert [(t.key, t.keep, t.reply) for t in tasks] == [("a", False, True), ("b", True, False)]
    fn, args, kwargs = tasks[0].decode()
    assert fn(*args, **kwargs) == (3, 1)


def test_run_request_refuses_globals_and_garbage() -> None:
    with pytest.raises(ValueError, match="malformed run request"):
        decode_run(pickle.dumps([("a", False, True, TaskCancelled())]))
    with pytest.raises(ValueError, match="malformed run request"):
        decode_run(b"nonsense")


def test_undecodable_task_names_the_task_and_the_module() -> None:
    task = decode_run(encode_run([(TaskItem("t", int), b"\x80\x05cmissing_mod\nf\n.")]))[0]
    with pytest.raises(TaskNotDecodable, match=r"task t could not be unpickled.*missing_mod"):
        task.decode()


def test_outcomes_round_trip() -> None:
    assert decode_outcome("k", True, encode_result("k", [1, 2])) == Completion("k", True, [1, 2])
    assert decode_outcome("k", True, b"") == Completion("k", True, None)
    failures = DependenciesFailed({"w1": ["t1", "t2"]})
    error = decode_outcome("k", False, encode_error("k", failures)).error
    assert isinstance(error, DependenciesFailed) and error.failures == {"w1": ["t1", "t2"]}
    assert isinstance(error.__cause__, RemoteTraceback)


def test_unpicklable_result_names_task_and_type() -> None:
    with pytest.raises(ResultNotPicklable, match="result of task k is not picklable: lock"):
        encode_result("k", threading.Lock())


def test_bad_exceptions_become_clear_picklable_errors() -> None:
    class Local(Exception):
        def __init__(self) -> None:
            super().__init__("x")
            self.lock = threading.Lock()

    error, text = pickle.loads(encode_error("k", Local()))
    assert "Local" in text
    assert isinstance(error, ExceptionNotPicklable) and "exception of task k" in str(error)
    error, _ = pickle.loads(encode_error("k", SystemExit(3)))
    assert isinstance(error, TaskAborted) and "task k raised SystemExit" in str(error)


def test_undecodable_outcome_fails_only_that_task() -> None:
    completion = decode_outcome("k", True, b"\x80\x05cmissing_mod\nf\n.")
    assert isinstance(completion.error, TaskNotDecodable)
    assert "result of task k could not be unpickled" in str(completion.error)


def test_results_round_trip_large_ones_raw_and_unpicklable_values() -> None:
    from bndl.wire.tasks import RAW_RESULT, RawBytes, encode_results, load_result, read_results

    def read(chunks: list[bytes | memoryview]) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            reader = asyncio.StreamReader()
            reader.feed_data(b"".join(chunks))
            reader.feed_eof()
            return await read_results(reader.readexactly)

        return asyncio.run(go())

    big, blob = list(range(RAW_RESULT // 4)), b"x" * RAW_RESULT
    chunks = encode_results({"a": [1], "big": big, "blob": blob, "b": "x"})
    assert any(isinstance(c, memoryview) and c.obj is blob for c in chunks)  # bytes as they are
    fetched = read(chunks)
    assert isinstance(fetched["blob"], RawBytes) and fetched["blob"].value == blob
    values = {k: load_result(v) for k, v in fetched.items()}
    assert values == {"a": [1], "big": big, "blob": blob, "b": "x"}
    assert read([]) == {}
    with pytest.raises(ResultNotPicklable, match="result of task lock"):
        read(encode_results({"ok": 1, "lock": threading.Lock()}))
    body = b"".join(chunks)
    for cut in (1, 10, RAW_RESULT // 2):
        with pytest.raises(frames.FrameError, match="truncated"):
            read([body[:-cut]])
    with pytest.raises(frames.FrameError, match="unexpected results frame"):
        read([frames.encode(("run", "k", b""))])
    with pytest.raises(frames.FrameError, match="a raw result of -1 bytes"):
        read([frames.encode(("bytes", "k", -1))])
