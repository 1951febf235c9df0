"""Aliases: names whose values share objects are pickled together, as one group.

Two names bound to one list, or a dict holding an object that is also bound
to a name, must still share after a restore, and separate pickles would each
make their own copy. So every name is first pickled alone, the objects each
pickle reached are compared (:attr:`~kernel.checkpoint.pickling.Pickled.shared`),
and names that reach a common object are joined (union-find) and pickled
together in one blob, a :class:`Group`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from kernel.checkpoint.pickling import PickleContext, Pickled


@dataclasses.dataclass(eq=False)
class Group:
    """Names pickled together in one blob, and what their pickle reached."""

    names: tuple[str, ...]
    shared: dict[int, Any]
    global_names: frozenset[str]


class UnionFind:
    """Disjoint sets of names; each component is sorted, its smallest name its root."""

    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, i: str) -> str:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> list[tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for i in self.parent:
            out.setdefault(self.find(i), []).append(i)
        return [tuple(sorted(c)) for c in out.values()]


def pickle_units(pickles: dict[str, Pickled], candidates: dict[str, Any], ctx: PickleContext) -> list[tuple[tuple[str, ...], Pickled]]:
    """Group names whose pickles (each pickled alone) share objects; pickle each multi-name group together. whose pickles (each pickled alone) share objects; pickle each multi-name group together.

    Returns the blobs to write: the names each holds, in tuple order, and its pickle.
    """
    alone = pickles
    uf = UnionFind(alone)
    owner: dict[int, str] = {}
    for name in sorted(alone):
        for oid in alone[name].shared:
            first = owner.setdefault(oid, name)
            if first != name:
                uf.union(first, name)
    units: list[tuple[tuple[str, ...], Pickled]] = []
    for names in sorted(uf.components()):
        if len(names) == 1:
            units.append((names, alone[names[0]]))
            continue
        try:
            together = ctx.pickle(tuple(candidates[n] for n in names))
        except Exception:  # noqa: BLE001 - each pickled alone; keep them, sharing is lost
            units.extend(((n,), alone[n]) for n in names)
        else:
            units.append((names, together))
    return units


__all__ = ["Group", "UnionFind", "pickle_units"]
