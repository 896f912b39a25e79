"""``bndl_examples.gates.wait_for_file``, the end-to-end tests' gate task: it holds until its file
exists, then names its host; it gives up after its timeout."""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("bndl_examples.gates")
    assert Path(str(module.__file__)).is_relative_to(EXAMPLES)
    yield module
    for name in [m for m in sys.modules if m.startswith("bndl_examples")]:
        del sys.modules[name]


def test_the_gate_holds_until_its_file_exists_then_names_its_host(
    gates: Any, tmp_path: Path
) -> None:
    path = tmp_path / "gate"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(gates.wait_for_file, str(path), 30.0, 0.01)
        assert not waiting.done()
        path.touch()
        assert waiting.result(timeout=10) == socket.gethostname()


def test_the_gate_gives_up_after_its_timeout(gates: Any, tmp_path: Path) -> None:
    path = tmp_path / "never"
    with pytest.raises(TimeoutError, match=f"{path} did not appear in 0.2 s"):
        gates.wait_for_file(str(path), 0.2, 0.01)
