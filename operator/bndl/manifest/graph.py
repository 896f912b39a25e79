"""Ordering the manifest's entries by their dependencies, and finding a cycle when there is one.

The graph here has one node per manifest *entry* (a fan-out is one node), so 10,000 fanned-out
tasks cost one node, and their n x m fan-in edges cost one edge. The syntax gives every task of a
fan-out the same dependencies up to its index, so a cycle among tasks is a cycle among entries and
an order of entries is an order of tasks. Both passes are iterative: no recursion limit.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence


class CycleError(ValueError):
    """The graph has a cycle; ``path`` is one, first node repeated at the end (a -> b -> a)."""

    def __init__(self, path: Sequence[str]) -> None:
        self.path = list(path)
        super().__init__(" -> ".join(self.path))


def topological_order(nodes: Sequence[str], deps: Mapping[str, Iterable[str]]) -> list[str]:
    """``nodes`` ordered so every node comes after the nodes it depends on.

    ``deps[n]`` lists the nodes ``n`` depends on (unknown names are ignored). Among nodes that are
    ready at the same time, the one earlier in ``nodes`` comes first, so the order is stable.
    Raises CycleError with one cycle when there is no such order.
    """
    position = {node: i for i, node in enumerate(nodes)}
    waiting: dict[str, int] = {}
    dependents: dict[str, list[str]] = {node: [] for node in nodes}
    for node in nodes:
        known = {d for d in deps.get(node, ()) if d in position}
        waiting[node] = len(known)
        for dep in known:
            dependents[dep].append(node)
    ready = [position[n] for n in nodes if waiting[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(nodes):
        raise CycleError(_find_cycle(nodes, deps, position, waiting))
    return order


def _find_cycle(
    nodes: Sequence[str],
    deps: Mapping[str, Iterable[str]],
    position: Mapping[str, int],
    waiting: Mapping[str, int],
) -> list[str]:
    # Every node left waiting has a dependency that is also waiting, so following such
    # dependencies from any of them must come back to a node already on the walk.
    stuck = {n for n in nodes if waiting[n] > 0}
    node = min(stuck, key=position.__getitem__)
    walk: dict[str, int] = {}
    while node not in walk:
        walk[node] = len(walk)
        node = min((d for d in deps[node] if d in stuck), key=position.__getitem__)
    path = list(walk)[walk[node] :]
    return [*path, node]
