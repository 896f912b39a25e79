"""The suite's hypothesis profiles: ``ci`` tries every property test's full count of examples (the
default, and what ``make test`` and CI run); ``dev`` tries a fifth of them, for the development
loop (``make unit`` and ``make fast`` set ``HYPOTHESIS_PROFILE=dev``).

A property test states its full count once, as ``max_examples=examples(500)``: the loaded
profile scales it. The examples a test pins with ``@example`` and those hypothesis's database
remembers failing run under either profile.
"""

from __future__ import annotations

import os

from hypothesis import settings

CI = "ci"
DEV = "dev"
ENV = "HYPOTHESIS_PROFILE"
"""The environment variable naming the profile to load (hypothesis's own convention)."""

FULL = 100
"""``max_examples`` of the ``ci`` profile: hypothesis's default, the scale's unit."""
DEV_SHARE = 5
"""The ``dev`` profile tries one example in this many."""

settings.register_profile(CI, max_examples=FULL, deadline=None, print_blob=True)
settings.register_profile(DEV, max_examples=FULL // DEV_SHARE, deadline=None)
# deadline=None: on 2 cores shared by a parallel run a slow example is the machine's load, not
# the code's; a test that bounds its time asserts the bound itself, with a message.


def load() -> str:
    """Load the profile ``HYPOTHESIS_PROFILE`` names (``ci`` when unset) and return its name."""
    name = os.environ.get(ENV) or CI
    if name not in (CI, DEV):
        raise ValueError(f"{ENV}={name!r}: the suite's hypothesis profiles are {CI!r} and {DEV!r}")
    settings.load_profile(name)
    return name


def examples(full: int) -> int:
    """``full`` under the ``ci`` profile; the same share of it that the loaded profile tries of
    hypothesis's default (a fifth under ``dev``), at least 10."""
    return max(10, full * settings().max_examples // FULL)
