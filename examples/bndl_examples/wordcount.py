"""Word count over a generated corpus (``examples/wordcount.yaml``).

The corpus is generated from a seed with integer arithmetic only, so every machine and every
Python version produces the same text, and the expected counts in the manifest stay true.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

_WORDS = """
the of and to in is it that was for on are as with his they at be this from
have or by one had not but what all were when we there can an your which their
"""
VOCABULARY = tuple(_WORDS.split())

# Zipf-like weights: the n-th word is about 1/n as frequent as the first.
_WEIGHTS = [1000 // (rank + 1) for rank in range(len(VOCABULARY))]
_TOTAL = sum(_WEIGHTS)


def generate_shard(shard: int, words: int = 1000, seed: int = 1) -> str:
    """Shard ``shard`` of the corpus: ``words`` words separated by spaces and newlines."""
    state = (seed * 1_000_003 + shard * 7_919) % 2**32
    out = []
    for i in range(words):
        state = (1_664_525 * state + 1_013_904_223) % 2**32  # Numerical Recipes LCG
        pick = (state >> 8) % _TOTAL
        for word, weight in zip(VOCABULARY, _WEIGHTS, strict=True):
            if pick < weight:
                out.append(word)
                break
            pick -= weight
        out.append("\n" if i % 12 == 11 else " ")
    return "".join(out)


def count_words(text: str) -> dict[str, int]:
    """How often each word occurs in ``text``."""
    return dict(Counter(text.split()))


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The sum of several word counts."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def top_k(counts: Mapping[str, int], k: int = 10) -> list[list[str | int]]:
    """The ``k`` most frequent words as ``[word, count]`` pairs (ties broken alphabetically)."""
    ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    return [[word, n] for word, n in ranked[:k]]


def total_words(counts: Mapping[str, int]) -> int:
    """Number of words counted."""
    return sum(counts.values())
