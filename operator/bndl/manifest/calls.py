"""Turning ``package.module:function`` strings into callables.

Task functions are named, not pickled, in a manifest: the same name must resolve on the driver (to
check a manifest before starting workers) and on every worker (to run it).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from .errors import ManifestError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
CALL_PATTERN = re.compile(rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$")
"""The syntax of ``call``: a dotted module path, a colon, a dotted attribute path."""


def split_call(call: str, field: str = "call") -> tuple[str, str]:
    """Split ``package.module:function`` into module and attribute path, or raise ManifestError."""
    if not CALL_PATTERN.match(call):
        raise ManifestError(
            field,
            f"{call!r} is not a function name: write it as 'package.module:function' "
            "(a module path, a colon, then the function, e.g. 'bndl_examples.diamond:add')",
        )
    module, _, attr = call.partition(":")
    return module, attr


def resolve_call(call: str, field: str = "call") -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable it names.

    Raises ManifestError (at ``field``) when the syntax is wrong, the module cannot be imported,
    the attribute is missing or it is not callable.
    """
    module_name, attr = split_call(call, field)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ManifestError(
            field,
            f"cannot import module {module_name!r} ({e}): install it on the workers or add its "
            "directory to spec.code.pythonPath",
        ) from e
    except Exception as e:  # a module that fails while importing is the user's bug, say which
        raise ManifestError(
            field, f"importing module {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ManifestError(
                field, f"module {module_name!r} has no attribute {attr!r}: check the spelling"
            ) from e
    if not callable(obj):
        raise ManifestError(field, f"{call!r} names a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


class NamedCall:
    """A picklable stand-in for the function ``call`` names, resolved where it is called.

    The driver (or the operator, which has no task code) ships the name; each worker imports the
    function on first use. A name that does not resolve there fails the task with a
    :class:`ManifestError` naming the module and what to do.
    """

    __slots__ = ("_fn", "call")

    def __init__(self, call: str) -> None:
        split_call(call)
        self.call = call
        self._fn: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fn is None:
            self._fn = resolve_call(self.call)
        return self._fn(*args, **kwargs)

    def __reduce__(self) -> tuple[type[NamedCall], tuple[str]]:
        return (NamedCall, (self.call,))

    def __repr__(self) -> str:
        return f"NamedCall({self.call!r})"

    @property
    def __name__(self) -> str:
        return self.call.rpartition(":")[2].rpartition(".")[2]
