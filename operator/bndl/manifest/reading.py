"""Reading YAML text into a manifest document, in time and memory bounded by the text's size.

YAML can say much more than the JSON a Kubernetes object is. Three of its features turn a small
file into an unbounded amount of work, so they are bounded *before* a document is built:

- nesting: libyaml recurses (and crashes the interpreter past ~100,000 levels) and its scanner is
  quadratic in the depth of flow collections; a manifest deeper than ``MAX_DEPTH`` is refused;
- aliases (``*name``): each one stands for a copy of its anchored node, so nine levels of ten
  aliases ("billion laughs") are 10^9 values in under 1 KB. Aliases are *allowed*, because people
  share a ``locality`` or a pod template with them and kubectl accepts them, but the values they
  add, counted as if expanded, are limited to ``MAX_ALIAS_VALUES`` per document;
- an alias inside its own anchor (``&r [1, *r]``) is a value that contains itself, which JSON cannot
  hold: refused.

The check walks the parser's events (flat, no recursion) and stops at the first limit passed, so
it costs little more than the parse itself. Only a document that passes is built.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError
from .jsonvalues import MAX_DEPTH
from .model import KIND

PathLike = str | os.PathLike[str]

MAX_ALIAS_VALUES = 100_000
"""Values that aliases may add to one document, counting each alias as a copy of its anchor."""

# libyaml's parser is ~20x faster on large manifests; the pure-Python one is the fallback.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _KubectlLikeLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader, plus kubectl's YAML 1.1 reading of unquoted y/Y/n/N as booleans.

    Without this, ``kwargs: {y: 4}`` passes a keyword ``y`` under ``bndl run`` and a key ``true``
    once kubectl has applied it: the same manifest must mean the same thing in both modes.
    """

    bool_values = {**yaml.constructor.SafeConstructor.bool_values, "y": True, "n": False}


_KubectlLikeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)


@dataclass(slots=True)
class _Open:
    """A collection whose end event has not come yet."""

    anchor: str | None
    values: int = 1
    """The values it holds so far (itself included), aliases counted as copies."""


def check_yaml(text: str, source: str = "<string>") -> None:
    """Raise ManifestError if a document of ``text`` nests too deep or its aliases expand too far.

    Syntax errors are left to the parse that follows (it reports them with a line and column).
    """
    anchors: dict[str, int] = {}
    open_: list[_Open] = []
    added = 0
    for event in yaml.parse(text, Loader=_KubectlLikeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            anchors.clear()
            added = 0
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_) >= MAX_DEPTH:
                raise ManifestError(
                    "",
                    f"{_where(source, event)} is nested more than {MAX_DEPTH} "
                    "levels deep: a manifest is never that deep, flatten the data",
                )
            open_.append(_Open(event.anchor))
        elif isinstance(event, yaml.CollectionEndEvent):
            done = open_.pop()
            _close(done.anchor, done.values, anchors, open_)
        elif isinstance(event, yaml.ScalarEvent):
            _close(event.anchor, 1, anchors, open_)
        elif isinstance(event, yaml.AliasEvent) and event.anchor is not None:
            size = anchors.get(event.anchor)
            if size is None:
                if any(o.anchor == event.anchor for o in open_):
                    raise ManifestError(
                        "",
                        f"{_where(source, event)}: alias *{event.anchor} is "
                        f"inside its own anchor &{event.anchor}, so the value would contain "
                        "itself: JSON cannot hold that, write the value out",
                    )
                continue  # an undefined alias: the parse reports it
            added += size
            if added > MAX_ALIAS_VALUES:
                raise ManifestError(
                    "",
                    f"{_where(source, event)}: the aliases (*name) of this "
                    f"document expand to more than {MAX_ALIAS_VALUES:,} values: write the "
                    "shared values out, or generate the manifest without aliases",
                )
            if open_:
                open_[-1].values += size


def _where(source: str, event: yaml.Event) -> str:
    mark = event.start_mark
    return source if mark is None else f"{source}: line {mark.line + 1}"


def _close(anchor: str | None, values: int, anchors: dict[str, int], open_: list[_Open]) -> None:
    if anchor is not None:
        anchors[anchor] = values
    if open_:
        open_[-1].values += values


def parse_manifest(text: str, source: str = "<string>") -> dict[str, Any]:
    """The BndlJob in YAML ``text``: the only document, or the first with ``kind: BndlJob``.

    Unquoted ``y``/``n`` (like ``yes``/``no``/``on``/``off``) are read as booleans, as kubectl
    reads them. Raises ManifestError for text that is not YAML, nests deeper than ``MAX_DEPTH``
    or whose aliases expand past ``MAX_ALIAS_VALUES`` (see the module's docstring).
    """
    try:
        check_yaml(text, source)
        docs = [d for d in yaml.load_all(text, Loader=_KubectlLikeLoader) if d is not None]
    except ManifestError:
        raise
    except yaml.YAMLError as e:
        raise ManifestError("", f"{source} is not valid YAML: {e}") from e
    except (ValueError, OverflowError) as e:  # a scalar its constructor refuses (a 5,000-digit int)
        reason = str(e).partition(";")[0]  # not the advice to change a Python setting
        raise ManifestError("", f"{source} holds a value that cannot be read: {reason}") from e
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            return doc
    if len(docs) == 1 and isinstance(docs[0], dict):
        return docs[0]  # let validation say what is wrong with its kind
    raise ManifestError("kind", f"{source} holds no BndlJob: add a document with 'kind: {KIND}'")


def read_manifest(path: PathLike) -> dict[str, Any]:
    """``parse_manifest`` of a UTF-8 file."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ManifestError("", f"cannot read the manifest {name!r}: {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ManifestError(
            "",
            f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line} cannot be "
            "decoded): save the manifest as UTF-8",
        ) from e
    return parse_manifest(text, name)
