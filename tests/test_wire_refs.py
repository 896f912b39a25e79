"""Unit tests of finding and replacing remote refs in task arguments."""

from __future__ import annotations

import pickle
from collections import OrderedDict, namedtuple

from bndl.wire import RemoteRef
from bndl.wire.refs import find_refs, replace_refs

A = RemoteRef("ka", "task-a", "w1", "http://w1")
B = RemoteRef("kb", ("task", 2), "w2", "http://w2")
Pair = namedtuple("Pair", "left right")


def test_refs_are_found_in_nested_containers() -> None:
    args = (1, [A, {"x": (B,)}], {frozenset([A])}, "text", b"bytes")
    assert find_refs(args) == [A, B, A]
    assert find_refs((1, [2], {"a": 3})) == []


def test_refs_are_replaced_keeping_container_types() -> None:
    args = (1, [A, {"x": (B,)}], Pair(A, 2), OrderedDict(k=B), {A})
    values = {"ka": "va", "kb": "vb"}
    replaced = replace_refs(args, lambda ref: values[ref.key])
    assert replaced == (1, ["va", {"x": ("vb",)}], Pair("va", 2), OrderedDict(k="vb"), {"va"})
    assert type(replaced[2]) is Pair and type(replaced[3]) is OrderedDict


def test_containers_without_refs_are_not_copied() -> None:
    inner = [1, 2, 3]
    args = (inner, {"a": inner})
    assert replace_refs(args, lambda ref: None) is args


def test_refs_pickle() -> None:
    assert pickle.loads(pickle.dumps(B)) == B
