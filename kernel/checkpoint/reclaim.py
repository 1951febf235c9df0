"""Garbage collection: delete the checkpoints retention lets go, then the blobs nothing names.

Mark and sweep over the whole store, because blobs are content-addressed and shared by
every session in it:

1. For every session with checkpoints, read its records. In the sessions being collected
   (one, or all), :class:`~kernel.checkpoint.retention.Retention` picks what stays; the
   records a kept one builds on (its delta chain from ``base``) stay as links, noted as
   reclaimed themselves; the rest are deleted whole (they are sealed, never edited), each
   noted as reclaimed so ``%durable restore N`` can say so. Records of other sessions all stay.
2. The live set is every blob of a kept checkpoint's effective manifest (its chain applied:
   :func:`~kernel.checkpoint.retention.live_digests`), every blob name outside the entries of
   a record that stays (the execution's outcome; the whole value is looked at, so a field a
   later format adds is covered), every blob holding
   a large output (:mod:`kernel.store.large_outputs`; executions are never deleted), plus what
   the caller adds (a kernel: the blobs of the manifest its next capture builds on).
3. Every other blob goes, unless it was written (or found again by a ``put``) within the
   grace period: a checkpoint in progress writes or reuses its blobs before its record
   exists, and that ``put`` makes the blob young (:meth:`kernel.store.base.BlobStore.delete`
   checks the time again as it deletes). The grace is taken from the moment collection
   starts, before any record is read.

Then the embedded WAL is folded into the store file (:meth:`Reclaimer.compact`).
``dry_run`` does all the reading and deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kernel.checkpoint.retention import Retention, closure, digests_in, live_digests, ref_of
from kernel.core.clock import SYSTEM, Clock
from kernel.store.base import BlobStore, Catalog, Reclaimer

log = logging.getLogger(__name__)

#: The default of PYREPL3_GC_GRACE: seconds a new or reused blob is safe from collection.
GRACE_SECONDS = 3600.0


@dataclass
class SessionReport:
    """What collection did (or would do) to one session's checkpoints."""

    session: str
    kept: int = 0
    pinned: int = 0
    deleted: list[str] = field(default_factory=list)  # checkpoint ids
    deleted_counts: list[int] = field(default_factory=list)  # the execution counts no longer restorable
    #: Records kept only as links of a kept checkpoint's delta chain (not restorable themselves).
    chained: int = 0
    #: Until when retention keeps every checkpoint it keeps now (:meth:`Retention.holds_until`).
    holds_until: float = float("inf")


@dataclass
class GcReport:
    dry_run: bool
    policy: str
    sessions: list[SessionReport] = field(default_factory=list)
    live_blobs: int = 0
    live_bytes: int = 0
    young_blobs: int = 0  # unreferenced, but inside the grace period
    young_bytes: int = 0
    freed_blobs: int = 0  # deleted (or, in a dry run, that would be)
    freed_bytes: int = 0
    before: dict[str, int] = field(default_factory=dict)  # the engine's footprint, and "blobs"
    after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def deleted_checkpoints(self) -> int:
        """Checkpoints no longer restorable: records deleted, and chain links whose values went."""
        return sum(len(s.deleted) + s.chained for s in self.sessions)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"gc {verb} {self.deleted_checkpoints} checkpoint(s) and {self.freed_blobs} blob(s) ({self.freed_bytes} bytes); "
            f"live: {self.live_blobs} blob(s), {self.live_bytes} bytes; in {self.seconds:.2f}s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy,
            "sessions": [{**vars(s), "holds_until": s.holds_until if s.holds_until != float("inf") else None} for s in self.sessions],
            "checkpoints_deleted": self.deleted_checkpoints,
            "blobs": {
                "live": self.live_blobs, "live_bytes": self.live_bytes, "young": self.young_blobs,
                "young_bytes": self.young_bytes, "freed": self.freed_blobs, "freed_bytes": self.freed_bytes,
            },
            "before": self.before,
            "after": self.after,
            "seconds": round(self.seconds, 4),
        }


class Collector:
    """One store's garbage collection: its catalog (records), reclaimer (deletes) and blobs."""

    def __init__(
        self, catalog: Catalog, reclaimer: Reclaimer, blobs: BlobStore, policy: Retention, *, grace: float = GRACE_SECONDS, clock: Clock = SYSTEM,
    ) -> None:
        self.catalog = catalog
        self.reclaimer = reclaimer
        self.blobs = blobs
        self.policy = policy
        self.grace = grace
        self.clock = clock

    def run(self, session: str | None = None, *, dry_run: bool = False, also_live: Iterable[str] = ()) -> GcReport:
        """Collect ``session`` (None: every session); see the module docstring."""
        started = self.clock.monotonic()
        now = self.clock.wall()
        young_since = now - self.grace  # fixed before any record is read
        report = GcReport(dry_run=dry_run, policy=self.policy.describe())
        stored = list(self.blobs.stored())
        report.before = {**self.reclaimer.footprint(), "blobs": sum(b.size for b in stored)}
        live = set(also_live) | self.reclaimer.output_blobs()  # large outputs live as long as their executions
        sessions = self.reclaimer.checkpoint_sessions()
        if session is not None and session not in sessions:
            sessions.append(session)
        for name in sessions:
            records = self.catalog.checkpoints(name)
            if session is not None and name != session:
                for rec in records:
                    live.update(digests_in(rec.get("value")))
                continue
            report.sessions.append(self._session(name, records, now, live, dry_run))
        size_of = {b.digest: b for b in stored}
        doomed = []
        for blob in stored:
            if blob.digest in live:
                report.live_blobs += 1
                report.live_bytes += blob.size
            elif blob.written_at >= young_since:
                report.young_blobs += 1
                report.young_bytes += blob.size
            else:
                doomed.append(blob.digest)
        if dry_run:
            report.freed_blobs, report.freed_bytes = len(doomed), sum(size_of[d].size for d in doomed)
            report.after = dict(report.before)
        else:
            freed = self.blobs.delete(doomed, written_before=young_since)
            report.freed_blobs, report.freed_bytes = len(freed), sum(b.size for b in freed)
            self.reclaimer.compact()
            report.after = {**self.reclaimer.footprint(), "blobs": report.before["blobs"] - report.freed_bytes}
        report.seconds = self.clock.monotonic() - started
        log.info("%s", report.summary())
        return report

    def _session(self, session: str, records: list[dict[str, Any]], now: float, live: set[str], dry_run: bool) -> SessionReport:
        """Retention over one session's records: what stays adds to ``live``, the rest is deleted."""
        out = SessionReport(session)
        refs = {}
        for rec in records:
            try:
                refs[rec["id"]] = ref_of(rec, session)
            except ValueError:  # not one of ours (a foreign id under the prefix): left alone, and live
                live.update(digests_in(rec.get("value")))
        pins = self.reclaimer.pins(session)
        chosen = self.policy.chosen(refs.values(), pins, now)
        keep = closure(list(refs.values()), chosen)
        gone: list[tuple[str, int | None]] = []
        links: list[tuple[str, int | None]] = []
        values: dict[int, Any] = {}
        for rec in records:
            ref = refs.get(rec["id"])
            if ref is None:
                continue
            if ref.seq in keep:
                values[ref.seq] = rec.get("value") or {}
                if ref.seq in chosen:
                    out.kept += 1
                    out.pinned += ref.seq in pins
                else:  # a link of a kept chain: its record stays, the values later records replaced may go
                    links.append((ref.id, ref.execution_count))
            else:
                gone.append((ref.id, ref.execution_count))
        live.update(live_digests(values, refs.values(), chosen, keep))
        out.chained = len(links)
        out.holds_until = self.policy.holds_until([r for r in refs.values() if r.seq in chosen], pins, now)
        out.deleted = [pid for pid, _ in gone]
        out.deleted_counts = [c for _, c in gone + links if c is not None]
        if not dry_run:
            if gone:
                self.reclaimer.delete_checkpoints(session, gone, now)
            if links:
                self.reclaimer.note_reclaimed(session, links, now)  # no longer restorable: say so, as for the deleted
        return out


__all__ = ["GRACE_SECONDS", "Collector", "GcReport", "SessionReport"]
