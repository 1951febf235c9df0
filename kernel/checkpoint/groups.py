"""Aliases: names whose values share objects are pickled together, as one group.

Two names bound to one list, or a dict holding an object that is also bound
to a name, must still share after a restore, and separate pickles would each
make their own copy. So every name is first pickled alone, the objects each
pickle reached are compared (:attr:`~kernel.checkpoint.pickling.Pickled.shared`),
and names that reach a common object are joined (union-find) and pickled
together in one blob, a :class:`Group`.

Some objects join names only through a name that reaches them directly
(:attr:`~kernel.checkpoint.pickling.Pickled.weak`): the read-only data behind
a pandas ``Index``, which pandas shares between distinct Index objects (a
frame and its copy-on-write view ``df[:]``). Two names reaching it only that
way are not aliases anyone can observe; a third that holds the array itself
(``keys = [a]`` with ``pd.DataFrame(..., index=a)``) joins both.
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
    weak: frozenset[int] = frozenset()  # ids in ``shared`` every member reaches only as Index data


class SharedIndex:
    """Shared object id -> the groups whose pickles reached it (one, unless reached weakly)."""

    def __init__(self) -> None:
        self._groups: dict[int, list[Group]] = {}

    def add(self, group: Group) -> None:
        for oid in group.shared:
            self._groups.setdefault(oid, []).append(group)

    def remove(self, group: Group) -> None:
        for oid in group.shared:
            holders = self._groups.get(oid)
            if holders is not None:
                holders[:] = [g for g in holders if g is not group]
                if not holders:
                    del self._groups[oid]

    def joined(self, pickled: Pickled) -> Iterable[Group]:
        """The groups a new pickle of a name must be pickled with (they share an object with it)."""
        weak = pickled.weak
        for oid in pickled.shared:
            for group in self._groups.get(oid, ()):
                if oid not in weak or oid not in group.weak:
                    yield group


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
    owner: dict[int, str] = {}  # the first name reaching the object directly
    weak_owners: dict[int, list[str]] = {}  # the names reaching it only weakly, until one reaches it directly
    for name in sorted(alone):
        pickled = alone[name]
        for oid in pickled.shared:
            if oid in pickled.weak:
                if oid in owner:
                    uf.union(owner[oid], name)
                else:
                    weak_owners.setdefault(oid, []).append(name)
                continue
            first = owner.setdefault(oid, name)
            if first != name:
                uf.union(first, name)
            for other in weak_owners.pop(oid, ()):
                uf.union(other, name)
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
            direct = {oid for n in names for oid in alone[n].shared if oid not in alone[n].weak}
            units.append((names, dataclasses.replace(together, weak=together.weak - direct)))
    return units


__all__ = ["Group", "SharedIndex", "UnionFind", "pickle_units"]
