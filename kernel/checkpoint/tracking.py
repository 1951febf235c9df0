"""What the last capture knows, kept up to date so that a capture costs what the cell changed.

A cell that touches nothing must cost the same with 10 or 10,000 variables, and
after 10 or 10,000 cells (IPython adds ``_iN`` / ``_N`` names to the namespace
every cell). So the checkpointer does not classify every name, rebuild every
entry nor re-add every blob size per capture; it keeps:

* :class:`Bindings` -- the namespace as it was at the last capture (a shallow
  copy: the objects are held, so "same object" is a sound test). One pass of
  ``is`` comparisons, at C speed, over every name but IPython's numbered
  history (``_i12``, ``_12``: two more per cell, bound once and never again by
  the shell) finds the names rebound or gone; the names bound since are the
  ones after the newest of the last capture's last names that is still bound as
  it was and that the cell does not mention (a dict keeps insertion order), and
  a count of the namespace's size proves nothing else came or went -- else
  every name is compared. Only those names are classified again (the user's, the
  shell's, excluded, a secret): a history name is seen once, when bound, and
  found to be the shell's; a cell's source naming one compares it again.
* :class:`View` -- the full manifest's contents (entries, skipped names, the
  bytes of blobs they refer to, each blob counted once) updated name by name.

A capture that cannot trust the analysis (no source, ``exec``, a changed
exclusion list or size limit, the first after a restore) walks every name as
before and rebuilds both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable
from itertools import compress, islice, repeat
from operator import is_not
from typing import Any

from kernel.checkpoint.groups import Group, SharedIndex
from kernel.checkpoint.manifest import Entry

_MISSING = object()
_GONE = object()
_ANCHORS = 4  # the last capture's newest names, any of which can mark where new names begin


@dataclasses.dataclass(eq=False)
class Slot:
    """What the last checkpoint knows about one name."""

    value: Any  # held so that "same object" (``is``) is a sound test; freed at the next capture
    entry: Entry | None = None
    reason: str | None = None  # why skipped, if entry is None
    group: Group | None = None
    too_large: int | None = None  # pickled size, when skipped for the size limit
    broken: bool = False  # skipped for a broken promise (no room in the store), not by choice


_HISTORY_NAME = re.compile(r"_i?[0-9]+")  # IPython's numbered input / output: _i12, _12


def is_history_name(name: object) -> bool:
    return isinstance(name, str) and _HISTORY_NAME.fullmatch(name) is not None


def _history_names(namespace: dict) -> list[str]:
    try:
        return list(filter(_HISTORY_NAME.fullmatch, namespace))  # no Python frame per name
    except TypeError:  # a name that is not a string (``globals()[1] = ...``)
        return [name for name in namespace if is_history_name(name)]


class Bindings:
    """The namespace at the last capture: which names were bound since, and which are gone."""

    def __init__(self, namespace: dict) -> None:
        self._then = dict(namespace)
        #: The names compared at every capture: all but IPython's numbered history.
        self._walked = walked = dict(namespace)
        for name in _history_names(walked):
            del walked[name]
        self._anchors = list(islice(reversed(namespace), _ANCHORS))

    def since(self, namespace: dict, mentioned: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """(names new or bound to another object, names deleted) since this snapshot.

        ``mentioned``: the names the cell's source mentions. They are compared even where
        they are history names (``_i3 = ...`` rebinds one), and none of them is trusted to
        mark where the new names begin (a cell that names it may delete and bind it again)."""
        then, walked = self._then, self._walked
        appended = self._appended(namespace, mentioned)
        if appended is not None:
            get = namespace.get
            rebound = list(compress(walked, map(is_not, map(get, walked, repeat(_MISSING)), walked.values())))
            gone = [name for name in rebound if name not in namespace]
            new = [name for name in appended if name not in then]
            if len(namespace) == len(then) + len(new) - len(gone):  # nothing unwalked went, no new name was missed
                moved = [name for name in rebound if name in namespace]
                moved += (name for name in appended if then.get(name, _MISSING) is not namespace[name])
                moved += (name for name in mentioned if name in then and name not in walked and then[name] is not get(name, _MISSING))
                return list(dict.fromkeys(moved)), gone
        return self._compared(namespace)

    def _appended(self, namespace: dict, mentioned: Collection[str]) -> list[str] | None:
        """The names after the newest of the last capture's last names that the cell does not
        mention and that is bound as it was, in order (new names are added at a dict's end);
        None when there is no such name."""
        then = self._then
        if not then:
            return list(namespace)
        anchor = next((a for a in self._anchors if a not in mentioned and namespace.get(a, _MISSING) is then.get(a, _GONE)), _MISSING)
        if anchor is _MISSING:
            return None
        appended = []
        for name in reversed(namespace):
            if name == anchor:
                appended.reverse()
                return appended
            appended.append(name)
        return None

    def _compared(self, namespace: dict) -> tuple[list[str], list[str]]:
        """Every name compared: the sure way, when the short one cannot vouch for its answer."""
        then = self._then
        names = namespace.keys()
        # One pass at C speed (no Python frame per name): ``then.get(name) is not value``, name by name.
        moved = list(compress(names, map(is_not, map(then.get, names, repeat(_MISSING)), namespace.values())))
        new = sum(1 for name in moved if name not in then)
        gone = [] if len(namespace) - new == len(then) else [name for name in then if name not in namespace]
        return moved, gone

    def move_on(self, namespace: dict, moved: list[str], gone: list[str]) -> Bindings:
        """This snapshot, made the namespace's now (``moved``, ``gone``: :meth:`since`'s answer)."""
        then, walked = self._then, self._walked
        for name in gone:
            then.pop(name, None)
            walked.pop(name, None)
        for name in moved:
            value = then[name] = namespace[name]
            if name in walked or not is_history_name(name):
                walked[name] = value
        self._anchors = list(islice(reversed(namespace), _ANCHORS))
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
        """The view of a whole manifest (after a walk, or a restore: thousands of entries at once)."""
        view = cls(entries=dict(entries), skipped=dict(skipped))
        for name in entries.keys() & view.skipped.keys():
            del view.skipped[name]  # saved, so not skipped (as :meth:`set` leaves it)
        for entry in entries.values():
            view._refer(entry)
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
                self._refer(entry)
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

    def _refer(self, entry: Entry) -> None:
        """Count ``entry``'s blobs as referred to once more (a blob's bytes once in all)."""
        for digest, size in _blobs(entry):
            ref = self.refs.get(digest)
            if ref is None:
                self.refs[digest] = [size, 1]
                self.total += size
            else:
                ref[1] += 1


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
