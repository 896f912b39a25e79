"""The one exception of the manifest boundary.

A user who wrote a bad manifest needs to know *where* (a JSON path into the document, such as
``spec.tasks[3].dependsOn[0]``) and *what to do*. Validation collects every problem it finds, so a
``ManifestError`` may carry several: ``errors`` lists them all (the exception itself is the first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MAX_SHOWN = 20
"""Problems ``str(ManifestError)`` lists: it becomes a status condition, which must stay small."""


class ManifestError(ValueError):
    """A BndlJob manifest is invalid: ``field`` says where, ``message`` says what to do."""

    def __init__(self, field: str, message: str, *, others: Sequence[ManifestError] = ()) -> None:
        self.field = field
        self.message = message
        self.errors: tuple[ManifestError, ...] = (self, *others)
        super().__init__(field, message)

    @classmethod
    def collect(cls, errors: Iterable[ManifestError]) -> ManifestError:
        """One exception standing for all ``errors`` (at least one), the first in front."""
        first, *rest = errors
        return cls(first.field, first.message, others=rest)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.field, self.message, self.errors[1:]))

    def __str__(self) -> str:
        shown = self.errors[:MAX_SHOWN]
        lines = [f"{e.field or '<manifest>'}: {e.message}" for e in shown]
        if len(self.errors) == 1:
            return lines[0]
        if len(self.errors) > len(shown):
            lines.append(f"... and {len(self.errors) - len(shown):,} more")
        return f"{len(self.errors):,} problems in the manifest:\n" + "\n".join(
            f"  {x}" for x in lines
        )


def _rebuild(field: str, message: str, others: Sequence[ManifestError]) -> ManifestError:
    return ManifestError(field, message, others=others)


def join_path(base: str, key: str | int) -> str:
    """Append a mapping key or a list index to a JSON path: ``spec`` + 3 -> ``spec[3]``."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key
