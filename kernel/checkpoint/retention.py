"""Which namespace checkpoints a session keeps: the retention policy, and what keeping one means.

A session writes a checkpoint after every cell, so its history grows without end unless
something goes. The policy keeps what a user can want back: every checkpoint of the last
``keep_seconds`` (a day by default), the newest ``keep_last`` whatever their age, and every
one pinned with ``%durable keep N``. The newest is always kept (a start restores it).

Keeping checkpoint N keeps what N is built from. A checkpoint record may be a delta over an
earlier full one: its value then carries ``base``, the sequence number of that full
checkpoint (absent, or equal to its own, means it is full itself), and restoring N reads
every record from ``base`` to N. So the retained set is closed under that: keeping N keeps
every stored record ``base..N`` (and, for any of those that is a delta too, its own base).
Nothing here reads or writes a store: :mod:`kernel.checkpoint.reclaim` does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kernel.core.ids import checkpoint_prefix, session_key
from kernel.store.digests import is_digest

#: The defaults of PYREPL3_KEEP_LAST and PYREPL3_KEEP_HOURS.
KEEP_LAST = 20
KEEP_HOURS = 24.0


@dataclass(frozen=True)
class CheckpointRef:
    """What retention needs of one checkpoint record."""

    id: str
    seq: int
    created_at: float  # seconds since the epoch
    execution_count: int | None
    #: The full checkpoint this one builds on (its own ``seq`` when it is full).
    base: int


def ref_of(record: Mapping[str, Any], session: str) -> CheckpointRef:
    """A catalog record of ``session``'s checkpoint ``ckpt:<key>:<seq>`` as a :class:`CheckpointRef`."""
    seq = int(str(record["id"]).removeprefix(checkpoint_prefix(session_key(session))))
    value = record.get("value") if isinstance(record.get("value"), dict) else {}
    base = value.get("base")
    if base is None and isinstance(value.get("manifest"), dict):
        base = value["manifest"].get("base")
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base <= seq:
        base = seq  # no base (every record before delta manifests), or one that cannot be: full
    count = value.get("execution_count")
    return CheckpointRef(
        id=str(record["id"]),
        seq=seq,
        created_at=(record.get("created_at") or 0) / 1000,
        execution_count=count if isinstance(count, int) else None,
        base=base,
    )


@dataclass(frozen=True)
class Retention:
    """The policy: the last ``keep_seconds``, the newest ``keep_last`` (at least 1), the pinned."""

    keep_last: int = KEEP_LAST
    keep_seconds: float = KEEP_HOURS * 3600

    def chosen(self, refs: Iterable[CheckpointRef], pins: Iterable[int], now: float) -> set[int]:
        """The sequence numbers the policy itself keeps (before :func:`closure`)."""
        by_seq = {r.seq: r for r in refs}
        seqs = sorted(by_seq)
        keep = set(seqs[-max(1, self.keep_last):]) if seqs else set()
        keep |= {s for s in seqs if by_seq[s].created_at > now - self.keep_seconds}
        keep |= set(pins) & set(seqs)
        return keep

    def holds_until(self, refs: Iterable[CheckpointRef], pins: Iterable[int], now: float) -> float:
        """The earliest time at which the policy could stop keeping one of ``refs`` (those it keeps
        now): ``now`` when one is kept only as one of the newest ``keep_last`` (the next checkpoint
        may push it out), otherwise the first moment one that is not pinned gets older than
        ``keep_seconds`` (infinity: every one is pinned). Before then a collection frees only blobs
        no record names, so a kernel can skip collections that could free nothing else."""
        by_seq = {r.seq: r for r in refs}
        newest = set(sorted(by_seq)[-max(1, self.keep_last):])
        pinned = set(pins)
        until = float("inf")
        for seq, ref in by_seq.items():
            if seq in pinned:
                continue
            if ref.created_at > now - self.keep_seconds:
                until = min(until, ref.created_at + self.keep_seconds)
            elif seq in newest:
                return now
        return until

    def retained(self, refs: list[CheckpointRef], pins: Iterable[int], now: float) -> set[int]:
        """Every sequence number to keep: :meth:`chosen`, closed over the bases they build on."""
        return closure(refs, self.chosen(refs, pins, now))

    def describe(self) -> str:
        hours = self.keep_seconds / 3600
        return f"the newest {max(1, self.keep_last)}, every one of the last {hours:g}h, and those pinned with %durable keep N"


def closure(refs: list[CheckpointRef], keep: set[int]) -> set[int]:
    """``keep`` plus every stored record ``base..N`` of each kept N, transitively."""
    by_seq = {r.seq: r for r in refs}
    seqs = sorted(by_seq)
    need = set(keep) & set(seqs)
    todo = list(need)
    while todo:
        ref = by_seq[todo.pop()]
        if ref.base >= ref.seq:
            continue
        for seq in seqs[bisect.bisect_left(seqs, ref.base) : bisect.bisect_left(seqs, ref.seq)]:
            if seq not in need:
                need.add(seq)
                todo.append(seq)
    return need


def live_digests(records: Mapping[int, Mapping[str, Any]], refs: Iterable[CheckpointRef], chosen: set[int], kept: set[int]) -> set[str]:
    """The blobs the kept records need, by sequence number (``records``: seq -> record value).

    A chosen checkpoint needs the blobs of its effective manifest: its chain from ``base``,
    a later record's entry for a name replacing an earlier one's, removed and skipped names
    dropped. A record kept only as a link of a chain (in ``kept``, not ``chosen``) keeps
    what lies outside its entries (the outcome, say), not the values a later record of the
    chain replaced: rewriting one array 50 times leaves one array live, not fifty."""
    by_seq = {r.seq: r for r in refs if r.seq in records}
    live: set[str] = set()
    for seq in kept & set(by_seq):
        value = records[seq]
        manifest = value.get("manifest") if isinstance(value, Mapping) else None
        if isinstance(manifest, Mapping):
            live.update(digests_in({k: v for k, v in value.items() if k != "manifest"}))
            live.update(digests_in({k: v for k, v in manifest.items() if k != "entries"}))
        else:  # not a manifest record we know: everything in it stays
            live.update(digests_in(value))
    chains: dict[int, list[int]] = {}
    for seq in chosen & set(by_seq):
        chains.setdefault(by_seq[seq].base, []).append(seq)
    seqs = sorted(by_seq)
    for base, wanted in chains.items():
        entries: dict[str, Any] = {}
        # Names set since the last wanted checkpoint of this chain: only those can add blobs
        # there (the rest were live at the previous one already), so a chain costs what its
        # records hold, not (checkpoints x names) -- a day of cells keeps every checkpoint.
        changed: set[str] = set()
        last = max(wanted)
        for seq in seqs[bisect.bisect_left(seqs, base) : bisect.bisect_right(seqs, last)]:
            manifest = (records[seq] or {}).get("manifest") or {}
            for name in [*(manifest.get("removed") or ()), *(manifest.get("skipped") or {})]:
                entries.pop(name, None)
                changed.discard(name)
            new = manifest.get("entries") or {}
            entries.update(new)
            changed.update(new)
            if seq in wanted:
                live.update(digests_in([entries[name] for name in changed]))
                changed.clear()
    return live


def digests_in(value: Any) -> Iterator[str]:
    """Every blob name a record's value holds, wherever it is (manifest entries, out-of-band
    buffers, the outcome, whatever a later format adds): garbage collection keeps them all.
    Something else shaped like a digest (a signature) only keeps a blob that does not exist."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if is_digest(item):
                yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


__all__ = ["KEEP_HOURS", "KEEP_LAST", "CheckpointRef", "Retention", "closure", "digests_in", "live_digests", "ref_of"]
