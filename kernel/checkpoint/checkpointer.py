"""The checkpointer: save the user's variables after every cell, cheaply, and bring them back.

The whole layer and how values are saved: :mod:`kernel.checkpoint`.

Why incremental, and how
    A checkpoint runs after every cell, and the namespace may hold gigabytes.
    So a capture only re-pickles the names the cell *could* have changed and
    reuses the previous entries for the rest, by object identity. The rules
    (see :mod:`kernel.checkpoint.scan`):

    1. New names and names bound to a different object than at the last
       checkpoint (rebinding, however it happened); deleted names are removed.
    2. Every name the cell's code mentions (load, store, del, import, def,
       global, ...), including inside functions and lambdas it defines.
    3. The globals used by notebook functions reachable from those names
       (``__code__.co_names``, transitively, including methods of notebook
       classes of touched instances and functions held in touched containers
       at the last checkpoint), and named numpy arrays that are views of the
       same memory as a touched one.
    4. Names pickled together with a touched name (shared objects) and names
       whose objects turn out to be shared with a re-pickled one.
    5. When the cell's code defeats this analysis (``exec``, ``eval``,
       ``globals()``, star imports, ``get_ipython()`` -- which is what magics
       become -- frame or ``sys.modules`` access), every name is touched; blobs
       whose hash did not change are still not rewritten.

    Blind spots are listed in :func:`kernel.checkpoint.scan.expand_touched`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from collections.abc import Mapping
from typing import Any

from kernel.checkpoint.groups import Group, SharedIndex, pickle_units
from kernel.checkpoint.loading import load_values
from kernel.checkpoint.manifest import FORMAT, CaptureReport, Entry, Manifest, RestoreReport
from kernel.checkpoint.names import is_user_name
from kernel.checkpoint.pickling import PickleContext, Pickled, type_name, unpicklable_reason
from kernel.checkpoint.poison import LoadGuard, NoGuard
from kernel.checkpoint.scan import CellScan, expand_touched, scan_cell
from kernel.checkpoint.secrets import IS_SECRET, Secrets
from kernel.checkpoint.tracking import Bindings, View, apply_changes, same_entry
from kernel.checkpoint.tracking import Slot as _Slot
from kernel.checkpoint.tracking import State as _State
from kernel.checkpoint.writing import write_units
from kernel.core.errors import StoreError
from kernel.core.text import human_size
from kernel.store.base import BlobStore
from kernel.store.digests import HASH_NAME


@dataclasses.dataclass
class _Module:
    entry: Entry


@dataclasses.dataclass
class _Skip:
    reason: str
    too_large: int | None = None


class Checkpointer:
    """Captures namespaces into manifests + blobs and restores them.

    ``exclude`` and ``size_limit`` (bytes after pickling, per value; ``None``
    for no limit) may be changed between captures; excluded names are reported
    as skipped. ``hidden`` is the shell's record of the names it put in the
    namespace itself (IPython's ``shell.user_ns_hidden``, read live; see
    :mod:`kernel.checkpoint.names`): those are neither saved nor mentioned.
    ``guard`` remembers which value a restore was loading, should it kill the
    process (:mod:`kernel.checkpoint.poison`). Not thread-safe: one thread at a time.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        exclude: set[str] | None = None,
        size_limit: int | None = None,
        hidden: Mapping[str, object] | None = None,
        guard: LoadGuard | None = None,
    ) -> None:
        self.blobs = blobs
        self.exclude: set[str] = set(exclude or ())
        #: The shell's own names -> the object it bound to each: never saved, never reported.
        self.hidden: Mapping[str, object] = hidden if hidden is not None else {}
        self.secrets = Secrets()
        self.guard: LoadGuard = guard if guard is not None else NoGuard()
        self.size_limit: int | None = size_limit
        self._state = _State()

    def keep_out(self, secret: str) -> str:
        """Never save this getpass() answer: not under any name, nor inside any value."""
        return self.secrets.keep_out(secret)

    def is_user_name(self, name: object, value: Any) -> bool:
        """Whether ``name`` belongs in a checkpoint (see :mod:`kernel.checkpoint.names`).

        A name this checkpointer last saved or restored stays the user's even
        if the shell has since registered it as hidden: IPython's
        ``hide_initial_ns`` adds everything in ``user_ns`` at app start to
        ``user_ns_hidden`` -- including the names the kernel just restored.
        """
        return name in self._state.slots or is_user_name(name, value, self.hidden)

    # -- capture ---------------------------------------------------------------

    def capture(self, namespace: dict, *, code: str | None, previous: Manifest | None) -> tuple[Manifest, CaptureReport]:
        """Checkpoint ``namespace`` after a cell whose transformed source is ``code``.

        ``previous`` is the last manifest this process captured or restored;
        unless it is the one the incremental state belongs to (or ``code`` is
        None), every name is re-pickled -- still without rewriting blobs whose
        content is unchanged. The returned manifest's blobs are all durable.
        """
        started = time.perf_counter()
        state = self._state
        scan = scan_cell(code) if code is not None else None
        full_reason = self._full_reason(scan, previous)
        walk = full_reason is not None or self._must_walk(state)
        moved: list[str] | None = None
        gone: list[str] = []
        if walk:  # classify every name afresh
            candidates, outside = self._candidates(namespace)
            deleted = [n for n in state.slots if n not in candidates]
        else:  # only the names bound or deleted since the last capture
            moved, gone = state.bindings.since(namespace, scan.names if scan is not None else ())  # type: ignore[union-attr]
            candidates, outside = state.candidates, state.outside
            self._reclassify(moved, gone, namespace, candidates, outside)
            deleted = [n for n in (*moved, *gone) if n in state.slots and n not in candidates]
        try:
            touched, full_reason = self._touched(candidates, namespace, scan, full_reason, moved)
            ctx = PickleContext(namespace, candidates.values()) if touched or deleted else None
            outcomes, replaced = self._pickle_touched(touched, candidates, scan, ctx, deleted)  # type: ignore[arg-type]
            alone = {n: o for n, o in outcomes.items() if isinstance(o, Pickled)}
            units, refused, written = (
                write_units(self.blobs, pickle_units(alone, candidates, ctx), alone, self.secrets) if alone else ([], {}, 0)  # type: ignore[arg-type]
            )
        except BaseException:
            state.manifest_id = None  # the classification may have moved on: the next capture walks and re-pickles all
            raise

        now = time.time()
        fresh: dict[str, _Slot] = {}
        new_groups: list[Group] = []
        for unit in units:
            names, pickled = unit.names, unit.pickled
            group = Group(names, pickled.shared, pickled.global_names, pickled.weak)
            new_groups.append(group)
            for name in names:
                value = candidates[name]
                entry = _pickle_entry(value, alone[name].size, unit.blob, unit.buffers, pickled, names, now)
                fresh[name] = _Slot(value, entry=entry, group=group)
        for name, refusal in refused.items():  # pickled, but not written (no room; a secret inside)
            fresh[name] = _Slot(candidates[name], reason=refusal.reason, broken=refusal.broken)
        for name, outcome in outcomes.items():
            if isinstance(outcome, _Module):
                fresh[name] = _Slot(candidates[name], entry=outcome.entry)
            elif isinstance(outcome, _Skip):
                fresh[name] = _Slot(candidates[name], reason=outcome.reason, too_large=outcome.too_large)

        # Everything is durable: only now does the incremental state move on.
        if walk:
            view, changed, removed, reskipped = self._rebuilt(state, candidates, outside, fresh, previous)
            slots = {n: fresh.get(n) or state.slots[n] for n in candidates}
        else:
            view, slots = state.view, state.slots
            changed, removed, reskipped = apply_changes(view, slots, fresh, outside, candidates, (*fresh, *moved, *gone))  # type: ignore[misc]
        index = state.index
        for group in replaced:
            index.remove(group)
        for group in new_groups:
            index.add(group)
        manifest = Manifest.model_construct(entries=dict(view.entries), skipped=dict(view.skipped), changed=changed, removed=removed)
        self._state = _State(
            manifest.id, slots, index, Bindings(namespace) if walk else state.bindings.move_on(namespace, moved, gone),  # type: ignore[union-attr,arg-type]
            candidates, outside, view,
            frozenset(self.exclude), len(self.secrets.ids), self.size_limit,
        )  # fmt: skip
        report = CaptureReport(
            skipped=dict(manifest.skipped),
            changed=changed,
            removed=removed,
            written_bytes=written,
            seconds=time.perf_counter() - started,
            pickled=sorted(n for n, o in outcomes.items() if isinstance(o, Pickled)),
            full=full_reason is not None,
            full_reason=full_reason,
            broken=sorted(n for n in manifest.skipped if n in slots and slots[n].broken),
            reskipped=reskipped,
            stored_size=view.total,
        )
        return manifest, report

    def _must_walk(self, state: _State) -> bool:
        """Whether the last capture's classification of names cannot be carried over."""
        return (
            state.bindings is None
            or state.exclude != self.exclude
            or state.secrets != len(self.secrets.ids)
            or state.limit != self.size_limit
        )

    def _reclassify(self, moved: list[str], gone: list[str], namespace: dict, candidates: dict[str, Any], outside: dict[str, str]) -> None:
        """Classify the names bound since the last capture (IPython's own among them: each once)."""
        for name in gone:
            candidates.pop(name, None)
            outside.pop(name, None)
        for name in moved:
            candidates.pop(name, None)
            outside.pop(name, None)
            value = namespace[name]
            if not self.is_user_name(name, value):
                continue
            if name in self.exclude:
                outside[name] = "excluded"
            elif id(value) in self.secrets.ids:
                outside[name] = IS_SECRET
            else:
                candidates[name] = value

    @staticmethod
    def _rebuilt(
        state: _State, candidates: dict[str, Any], outside: dict[str, str], fresh: dict[str, _Slot], previous: Manifest | None
    ) -> tuple[View, list[str], list[str], list[str]]:
        """The full view after a capture that walked every name, and what differs from ``previous``."""
        entries: dict[str, Entry] = {}
        skipped = dict(outside)
        for name in candidates:
            slot = fresh.get(name) or state.slots[name]  # untouched: the previous entry stands
            if slot.entry is not None:
                entries[name] = slot.entry
            else:
                skipped[name] = slot.reason or "skipped"
        view = View.of(dict(sorted(entries.items())), dict(sorted(skipped.items())))
        prev_entries = previous.entries if previous is not None else {}
        prev_skipped = previous.skipped if previous is not None else {}
        changed = sorted(n for n, e in view.entries.items() if not same_entry(prev_entries.get(n), e))
        reskipped = sorted(n for n, why in view.skipped.items() if prev_skipped.get(n) != why)
        removed: list[str] = []
        if previous is not None:
            removed = sorted((prev_entries.keys() | prev_skipped.keys()) - (view.entries.keys() | view.skipped.keys()))
        return view, changed, removed, reskipped

    def _candidates(self, namespace: dict) -> tuple[dict[str, Any], dict[str, str]]:
        """The user's names to checkpoint, and the excluded ones (reported as skipped)."""
        candidates: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for name, value in list(namespace.items()):
            if not self.is_user_name(name, value):
                continue
            if name in self.exclude:
                skipped[name] = "excluded"
            elif id(value) in self.secrets.ids:
                skipped[name] = IS_SECRET
            else:
                candidates[name] = value
        return candidates, skipped

    def _full_reason(self, scan: CellScan | None, previous: Manifest | None) -> str | None:
        """Why every name must be re-pickled (rule 5, or no incremental state to build on), or None."""
        if scan is None:
            return "no cell source given"
        if previous is None:
            return "no previous checkpoint"
        if self._state.manifest_id != previous.id:
            return "the previous checkpoint was not taken or restored by this checkpointer"
        return scan.doubt

    def _touched(
        self, candidates: dict[str, Any], namespace: dict, scan: CellScan | None, full_reason: str | None, moved: list[str] | None
    ) -> tuple[set[str], str | None]:
        """The names this cell could have changed (rules 1-3), or all of them and why.

        ``moved``: the names bound since the last capture, when known (else every
        candidate is compared with its slot)."""
        state, limit = self._state, self.size_limit
        if full_reason is not None:
            return set(candidates), full_reason
        touched = {n for n in scan.names if n in candidates}  # type: ignore[union-attr]
        if moved is not None:
            touched.update(n for n in moved if n in candidates)
        else:
            for name, value in candidates.items():
                slot = state.slots.get(name)
                if (
                    slot is None
                    or slot.value is not value
                    or (slot.too_large is not None and (limit is None or slot.too_large <= limit))
                    or (slot.entry is not None and limit is not None and slot.entry.size > limit)
                ):
                    touched.add(name)
        if not touched:
            return touched, None
        full_reason = expand_touched(touched, candidates, namespace, lambda name: _pickled_globals(state, name))
        return (set(candidates) if full_reason else touched), full_reason

    def _pickle_touched(
        self, touched: set[str], candidates: dict[str, Any], scan: CellScan | None, ctx: PickleContext, deleted: list[str]
    ) -> tuple[dict[str, Pickled | _Module | _Skip], list[Group]]:
        """Pickle each touched name alone, pulling in the names it shares objects with (rule 4).

        Returns each name's outcome and the previous groups that are replaced.
        """
        state = self._state
        outcomes: dict[str, Pickled | _Module | _Skip] = {}
        seen: set[int] = set()
        replaced: list[Group] = []
        pending = set(touched)
        for name in deleted:  # a deleted member re-forms its group
            self._close_over_group(state.slots[name].group, candidates, touched, pending, seen, replaced)
        while pending:
            batch, pending = sorted(pending), set()
            for name in batch:
                slot = state.slots.get(name)
                if slot is not None:
                    self._close_over_group(slot.group, candidates, touched, pending, seen, replaced)
                outcome = outcomes[name] = self._capture_one(name, candidates[name], scan, slot, ctx)
                if isinstance(outcome, Pickled):
                    for group in state.index.joined(outcome):
                        self._close_over_group(group, candidates, touched, pending, seen, replaced)
            pending -= outcomes.keys()
        return outcomes, replaced

    @staticmethod
    def _close_over_group(
        group: Group | None,
        candidates: dict[str, Any],
        touched: set[str],
        pending: set[str],
        seen: set[int],
        replaced: list[Group],
    ) -> None:
        """A group is re-pickled as a whole: touching one member touches all."""
        if group is None or id(group) in seen:
            return
        seen.add(id(group))
        replaced.append(group)
        for member in group.names:
            if member in candidates and member not in touched:
                touched.add(member)
                pending.add(member)

    def _capture_one(self, name: str, value: Any, scan: CellScan | None, slot: _Slot | None, ctx: PickleContext) -> Pickled | _Module | _Skip:
        if value is ctx.namespace:
            return _Skip("the notebook namespace itself (globals())")
        if isinstance(value, types.ModuleType):
            modname = value.__name__
            if modname == "__main__":
                return _Skip("the notebook's own module (__main__)")
            if sys.modules.get(modname) is value:
                subs = set(scan.imports.get(name, ())) if scan is not None else set()
                if slot is not None and slot.value is value and slot.entry is not None:
                    subs |= set(slot.entry.submodules)
                return _Module(Entry.module_import(modname, sorted(s for s in subs if s in sys.modules), time.time()))
        try:
            pickled = ctx.pickle(value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means "skip this name"
            return _Skip(unpicklable_reason(value, exc))
        limit = self.size_limit
        if limit is not None and pickled.size > limit:
            return _Skip(f"too large ({human_size(pickled.size)} pickled; limit {human_size(limit)})", too_large=pickled.size)
        return pickled

    # -- restore ---------------------------------------------------------------

    def restore(self, manifest: Manifest, namespace: dict) -> RestoreReport:
        """Put the manifest's values into ``namespace``; report what came back and what did not.

        Names not in the manifest are left alone (the caller clears the
        namespace first if it wants an exact copy). Afterwards the incremental
        state describes this manifest, so the next capture is incremental.
        """
        started = time.perf_counter()
        if manifest.format > FORMAT or manifest.hash != HASH_NAME:
            raise StoreError(
                f"checkpoint {manifest.id} has format {manifest.format} / hash {manifest.hash}; "
                f"this PyREPL3 reads format {FORMAT} / {HASH_NAME}"
            )
        loaded = load_values(manifest, namespace, self.blobs, exclude=self.exclude, guard=self.guard)
        restored = loaded.restored
        slots = {n: _Slot(v, entry=manifest.entries[n]) for n, v in restored.items() if manifest.entries[n].kind == "module"}

        # Rebuild the incremental state (what each blob shares) without writing anything.
        ctx = PickleContext(namespace, restored.values())
        index = SharedIndex()
        for members in loaded.units:
            values = tuple(restored[n] for n in members)
            if len(values) == 1 and type(values[0]) in _LEAVES:  # shares nothing, uses no global: no pickle needed
                index.add(group := Group(tuple(members), {}, frozenset()))
                slots[members[0]] = _Slot(values[0], entry=manifest.entries[members[0]], group=group)
                continue
            try:
                pickled = ctx.pickle(values[0] if len(values) == 1 else values, keep_buffers=False)
                # Pickled together, members may reach weak objects directly too: count all as direct.
                group = Group(tuple(members), pickled.shared, pickled.global_names, pickled.weak if len(members) == 1 else frozenset())
            except Exception:  # noqa: BLE001 - unexpected; the next capture re-pickles these names
                for name in members:
                    slots.pop(name, None)
                continue
            index.add(group)
            for name in members:
                slots[name] = _Slot(restored[name], entry=manifest.entries[name], group=group)
        self._state = _State(manifest.id, slots, index)
        return RestoreReport(sorted(restored), loaded.skipped, time.perf_counter() - started, loaded.excluded)


#: Types whose objects reach no other object (their pickle shares nothing, names no global).
_LEAVES = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _pickle_entry(
    value: Any, size: int, blob: str, buffers: list[str], pickled: Pickled, names: tuple[str, ...], now: float
) -> Entry:
    return Entry.model_construct(  # built from trusted parts: skip validation, it is the hot path
        kind="pickle",
        type=type_name(type(value)),
        size=size,
        blob=blob,
        blob_size=len(pickled.stream),
        buffers=buffers,
        buffer_sizes=[b.nbytes for b in pickled.buffers],
        group=list(names) if len(names) > 1 else [],
        module=None,
        submodules=[],
        pickled_at=now,
    )


def _pickled_globals(state: _State, name: str) -> frozenset[str]:
    """Names the notebook functions inside ``name``'s last pickle may use."""
    slot = state.slots.get(name)
    return slot.group.global_names if slot is not None and slot.group is not None else frozenset()


__all__ = ["Checkpointer"]
