"""What the last capture knows, kept up to date so that a capture costs what the cell changed.

A cell that touches nothing must cost the same with 10 or 10,000 variables, and
after 10 or 10,000 cells (IPython adds ``_iN`` / ``_N`` names to the namespace
every cell). So the checkpointer does not classify every name, rebuild every
entry nor re-add every blob size per capture; it keeps:

* :class:`Bindings` -- the namespace as it was at the last capture (a shallow
  copy: the objects are held, so "same object" is a sound test). One pass of
  ``is`` comparisons, at C speed, finds the names bound since (new or to another
  object) and the names gone; only those are classified again (the user's, the
  shell's, excluded, a secret). IPython's history names are never walked: each
  is seen once, when bound, and found to be the shell's.
* :class:`View` -- the full manifest's contents (entries, skipped names, the
  bytes of blobs they refer to, each blob counted once) updated name by name.

A capture that cannot trust the analysis (no source, ``exec``, a changed
exclusion list or size limit, the first after a restore) walks every name as
before and rebuilds both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from itertools import compress, repeat
from operator import is_not
from typing import Any

from kernel.checkpoint.groups import Group, SharedIndex
from kernel.checkpoint.manifest import Entry

_MISSING = object()


@dataclasses.dataclass(eq=False)
class Slot:
    """What the last checkpoint knows about one name."""

    value: Any  # held so that "same object" (``is``) is a sound test; freed at the next capture
    entry: Entry | None = None
    reason: str | None = None  # why skipped, if entry is None
    group: Group | None = None
    too_large: int | None = None  # pickled size, when skipped for the size limit
    broken: bool = False  # skipped for a broken promise (no room in the store), not by choice


class Bindings:
    """The namespace at the last capture: which names were bound since, and which are gone."""

    def __init__(self, namespace: dict) -> None:
        self._then = dict(namespace)

    def since(self, namespace: dict) -> tuple[list[str], list[str]]:
        """(names new or bound to another object, names deleted) since this snapshot."""
        then = self._then
        names = namespace.keys()
        # One pass at C speed (no Python frame per name): ``then.get(name) is not value``, name by name.
        moved = list(compress(names, map(is_not, map(then.get, names, repeat(_MISSING)), namespace.values())))
        new = sum(1 for name in moved if name not in then)
        gone = [] if len(namespace) - new == len(then) else [name for name in then if name not in namespace]
        return moved, gone

    def move_on(self, namespace: dict, moved: list[str], gone: list[str]) -> Bindings:
        """This snapshot, made the namespace's now (``moved``, ``gone``: :meth:`since`'s answer)."""
        then = self._then
        for name in gone:
            then.pop(name, None)
        for name in moved:
            then[name] = namespace[name]
        return self


@dataclasses.dataclass
class View:
    """The current full manifest's entries and skipped names, and the blob bytes they refer to."""

    entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    refs: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # blob -> [size, names referring to it]
    total: int = 0

    @classmethod
    def of(cls, entries: dict[str, Entry], skipped: dict[str, str]) -> View:
        view = cls(skipped=dict(skipped))
        for name, entry in entries.items():
            view.set(name, entry, None)
        return view

    def set(self, name: str, entry: Entry | None, reason: str | None) -> tuple[bool, bool]:
        """Make ``name`` saved as ``entry``, or skipped for ``reason``, or absent (both None).
        Returns whether its entry changed and whether its skip reason changed."""
        old = self.entries.get(name)
        entry_changed = entry is not None and not same_entry(old, entry)
        if old is not entry:
            if old is not None:
                for digest, _size in _blobs(old):
                    ref = self.refs[digest]
                    ref[1] -= 1
                    if ref[1] == 0:
                        del self.refs[digest]
                        self.total -= ref[0]
            if entry is not None:
                for digest, size in _blobs(entry):
                    ref = self.refs.get(digest)
                    if ref is None:
                        self.refs[digest] = [size, 1]
                        self.total += size
                    else:
                        ref[1] += 1
        if entry is None:
            self.entries.pop(name, None)
        else:
            self.entries[name] = entry
        old_reason = self.skipped.get(name)
        if reason is None:
            self.skipped.pop(name, None)
        else:
            self.skipped[name] = reason
        return entry_changed, reason is not None and reason != old_reason


def _blobs(entry: Entry) -> Iterable[tuple[str, int]]:
    if entry.blob is not None:
        yield entry.blob, entry.blob_size
    yield from zip(entry.buffers, entry.buffer_sizes, strict=False)


def same_entry(old: Entry | None, new: Entry) -> bool:
    if old is None:
        return False
    return (old.kind, old.blob, old.buffers, old.module, old.group) == (new.kind, new.blob, new.buffers, new.module, new.group)


def apply_changes(
    view: View, slots: dict[str, Slot], fresh: dict[str, Slot], outside: dict[str, str], candidates: dict[str, Any], names: Iterable[str]
) -> tuple[list[str], list[str], list[str]]:
    """Move ``view`` and ``slots`` on for ``names`` (the only ones that may differ): each gets
    its ``fresh`` slot, or is kept out (``outside``), or is gone. Returns the names whose
    entry changed, the names gone from the manifest, and those newly skipped or for another reason."""
    changed: list[str] = []
    removed: list[str] = []
    reskipped: list[str] = []
    for name in dict.fromkeys(names):
        slot = fresh.get(name)
        if slot is not None:
            slots[name] = slot
            entry, reason = slot.entry, (None if slot.entry is not None else slot.reason or "skipped")
        elif name in candidates:  # not re-pickled: its slot stands
            continue
        else:
            slots.pop(name, None)
            entry, reason = None, outside.get(name)
        present = name in view.entries or name in view.skipped
        entry_changed, reason_changed = view.set(name, entry, reason)
        if entry_changed:
            changed.append(name)
        if reason_changed:
            reskipped.append(name)
        if present and entry is None and reason is None:
            removed.append(name)
    return sorted(changed), sorted(removed), sorted(reskipped)


@dataclasses.dataclass
class State:
    """The incremental state: what the last capture (or restore) of ``manifest_id`` saw."""

    manifest_id: str | None = None
    slots: dict[str, Slot] = dataclasses.field(default_factory=dict)
    index: SharedIndex = dataclasses.field(default_factory=SharedIndex)  # shared object id -> its groups
    #: None until a capture has walked the namespace once (e.g. right after a restore).
    bindings: Bindings | None = None
    candidates: dict[str, Any] = dataclasses.field(default_factory=dict)  # the user's names to checkpoint
    outside: dict[str, str] = dataclasses.field(default_factory=dict)  # the user's names kept out (excluded, a secret)
    view: View = dataclasses.field(default_factory=View)
    #: What the classification above depended on: a change means walking every name again.
    exclude: frozenset[str] = frozenset()
    secrets: int = 0
    limit: int | None = None


__all__ = ["Bindings", "Slot", "State", "View", "apply_changes", "same_entry"]
