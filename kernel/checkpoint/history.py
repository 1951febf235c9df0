"""Namespace checkpoints as durable promises: save after every execution,
restore the latest at start, travel back to any execution.

The values live in the blob store (:class:`kernel.store.base.BlobStore`) and are captured
by :class:`kernel.checkpoint.checkpointer.Checkpointer`; this module gives each capture a
durable promise ``ckpt:<session-key>:<seq>`` holding the manifest, signed with
the user's key (:mod:`kernel.checkpoint.signing`) and bound to the session, the
promise id (so the sequence number) and the execution it follows: a checkpoint
copied to a higher sequence number or into another session is refused, and
restoring the latest then falls back to the newest checkpoint that verifies
(saying so). The manifest names every blob by its
SHA-256, and the blob store checks content against that hash before anything
is unpickled, so the manifest's signature authenticates the blobs too. The
promise is created only after every blob is durable: a crash mid-checkpoint
leaves the previous checkpoint as the latest.

The manifest is kept as JSON in the promise value (not msgpack): it holds only
text and numbers -- every byte of data is in a blob -- the engines store
promise values as JSON anyway, and ``%durable checkpoints`` / the catalog read
its fields without decoding anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from kernel.checkpoint.chain import Chain, ChainError, assemble, delta_body, delta_weight, wants_full
from kernel.checkpoint.checkpointer import Checkpointer
from kernel.checkpoint.manifest import CaptureReport, Manifest, RestoreReport
from kernel.checkpoint.signing import Sealer, SignatureError, Signer
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import CheckpointNotFoundError
from kernel.core.ids import KIND_TAG, checkpoint_id, checkpoint_prefix, exec_id, session_key
from kernel.core.models import ResolvedPromise

log = logging.getLogger(__name__)

#: How many of the newest checkpoint records a start reads first (to restore, to find finished
#: executions), besides the records of the newest one's chain.
RECENT = 8
#: How many of the newest checkpoints ``%durable checkpoints`` lists.
LISTED = 100
#: How far an engine's clock may step back between an execution's promise and its checkpoint's.
CLOCK_SLACK_MS = 60_000
#: A checkpoint promise never times out on its own; its deadline is far enough away.
CHECKPOINT_LIFETIME = timedelta(days=10 * 365)


class SessionStateHooks(Protocol):
    """Kernel-level state kept with each checkpoint (the working directory, sys.path,
    environment, extensions, ``%config``, matplotlib: :mod:`kernel.jupyter.session_state`).

    It is small plain JSON data, so it lives in the manifest and is signed with
    it; it is applied before the namespace, so imports in restored values see
    the session's ``sys.path`` and directory."""

    def capture(self) -> dict[str, Any]:
        """The state now (plain JSON data)."""

    def restore(self, state: dict[str, Any]) -> Any:
        """Apply ``state``; reports what fails itself, item by item, and never raises."""


@dataclass
class StoredCheckpoint:
    """One checkpoint as listed by ``%durable checkpoints``."""

    id: str
    execution_count: int | None
    msg_id: str | None
    created_at: float
    size: int
    changed: list[str]
    removed: list[str]
    skipped: dict[str, str]


class NamespaceCheckpoints:
    """A session's checkpoints as promises: the next one to store, the stored ones to restore.

    ``records(limit)`` lists this session's stored checkpoint records, oldest first, the
    newest ``limit`` of them when not None (the engine's own index: its catalog). A start
    reads the newest record for the sequence number and the newest :data:`RECENT` to restore
    from, all of them only when none of those verifies. Nothing here talks
    to the engine: :meth:`capture` returns the promise, and the caller stores
    it with the execution's outcome."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        signer: Signer,
        session: str,
        records: Callable[[int | None], list[dict[str, Any]]],
        *,
        lookup: Callable[[str], dict[str, Any] | None] | None = None,
        clock: Clock = SYSTEM,
        state: SessionStateHooks | None = None,
    ) -> None:
        self.clock = clock
        self.state = state
        self.checkpointer = checkpointer
        self.signer = signer
        self.sealer = Sealer(signer, session)
        self.session = session
        self._records = records
        self._key = session_key(session)
        self.previous: Manifest | None = None
        self._chain: Chain | None = None  # the chain ``previous`` is the newest record of, if stored
        self._lookup = lookup  # promise id -> its record (the catalog's ``promise``), to bound searches
        existing = records(1)
        #: The sequence number of the newest stored checkpoint (what follows the session's prefix in its id).
        self._seq = int(existing[-1]["id"].removeprefix(checkpoint_prefix(self._key))) if existing else 0

    # -- saving ----------------------------------------------------------------

    def capture(
        self, namespace: dict, *, code: str | None, execution_count: int | None, msg_id: str | None, outcome: str | None = None,
    ) -> tuple[ResolvedPromise, CaptureReport]:
        """Capture the namespace (every blob durable on return) and prepare the
        promise that makes it the latest checkpoint; the caller stores it.

        ``outcome`` names the blob holding the outcome of execution ``msg_id``
        (stored before): with it, the checkpoint says that execution finished,
        even if a crash came before the execution itself was settled
        (:mod:`kernel.durable.settling`)."""
        manifest, report = self.checkpointer.capture(namespace, code=code, previous=self.previous)
        if log.isEnabledFor(logging.INFO):  # PYREPL3_DEBUG: what each cell cost, by name
            log.info(
                "checkpoint after execution %s: pickled %d name(s) %s, changed %s, %d bytes written, %.1f ms%s",
                execution_count, len(report.pickled), _few(report.pickled), _few(report.changed),
                report.written_bytes, report.seconds * 1000, f" (all names: {report.full_reason})" if report.full else "",
            )  # fmt: skip
        manifest.state = self._captured_state()
        self._seq += 1
        seq, previous, chain = self._seq, self.previous, self._chain
        pid = checkpoint_id(self._key, seq)
        if previous is None or wants_full(chain, seq, manifest, report):
            body, chain = manifest.model_dump(mode="json"), Chain(seq, seq)
            record: dict[str, Any] = {"manifest": body, "base": seq}
        else:
            assert chain is not None
            body, chain = delta_body(manifest, report, previous), Chain(chain.base, seq, chain.weight + delta_weight(report))
            record = {"manifest": body, "base": chain.base, "parent": previous.id}
        # written/seconds: what this capture cost, for ``pyrepl3 stats`` (sealed with the rest, only ever shown)
        record.update(execution_count=execution_count, msg_id=msg_id, size=report.stored_size, written=report.written_bytes, seconds=round(report.seconds, 6))
        if outcome is not None:
            record["outcome"] = outcome  # the blob of the execution's outcome, signed with the rest
        value = self.sealer.seal(pid, record)
        promise = ResolvedPromise(
            id=pid,
            timeout_at_ms=self.clock.ms_after(CHECKPOINT_LIFETIME),
            param={"kind": "checkpoint", "execution_count": execution_count, "msg_id": msg_id, "base": chain.base},
            tags={KIND_TAG: "checkpoint"},
            value=value,
        )
        self.previous, self._chain = manifest, chain
        return promise, report

    def not_stored(self, promise_id: str) -> None:
        """The caller could not store ``promise_id`` (:meth:`capture`'s): the next record is
        written full, since no delta may build on a record that may not exist."""
        if self._chain is not None and checkpoint_id(self._key, self._chain.last) == promise_id:
            self._chain = None

    def _captured_state(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        try:
            return self.state.capture()
        except Exception:  # noqa: BLE001 - the namespace checkpoint goes on; the last state is kept
            log.warning("could not capture the session state", exc_info=True)
            return dict(self.previous.state) if self.previous is not None else {}

    # -- reading ---------------------------------------------------------------

    def list(self, limit: int | None = LISTED) -> list[StoredCheckpoint]:
        """The newest ``limit`` checkpoints (every one when None), oldest first, from their records' summaries."""
        return [_summary(rec) for rec in self._records(limit)]

    def _newest_first(self, first: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
        """This session's records, newest first, read in pages that grow fourfold: a search
        that stops early never reads the whole history. ``first``: the newest page, already read."""
        page = first if first is not None else self._records(RECENT)
        limit, done = max(len(page), RECENT), 0
        while True:
            yield from reversed(page[: len(page) - done])
            if len(page) < limit:
                return
            done, limit = len(page), limit * 4
            page = self._records(limit)

    def finished(self, msg_ids: set[str]) -> dict[str, str]:
        """Of the executions ``msg_ids``, those a (signed) checkpoint says finished:
        msg_id -> the blob holding its outcome. The newest checkpoint of each counts.

        An execution's checkpoint is made after its promise, by the same engine's clock:
        the search stops at records made before the oldest of those promises (less
        :data:`CLOCK_SLACK_MS`), when ``lookup`` can tell when that was."""
        found: dict[str, str] = {}
        since = self._oldest_created(msg_ids)
        for rec in self._newest_first():
            if set(found) == msg_ids or (since is not None and int(rec.get("created_at") or 0) < since):
                break
            value = rec.get("value") or {}
            msg_id, outcome = value.get("msg_id"), value.get("outcome")
            if msg_id not in msg_ids or msg_id in found or not isinstance(outcome, str):
                continue
            try:
                self._unsealed(rec)
            except Exception:  # noqa: BLE001 - an unverifiable checkpoint proves nothing
                log.warning("checkpoint %s is not verifiable; execution %s is not taken as finished", rec.get("id"), msg_id)
                continue
            found[msg_id] = outcome
        return found

    def _oldest_created(self, msg_ids: set[str]) -> int | None:
        """When the oldest of these executions' promises was made (ms, less the slack); None if unknown."""
        if self._lookup is None or not msg_ids:
            return None
        times = []
        for msg_id in msg_ids:
            try:
                rec = self._lookup(exec_id(msg_id))
            except Exception:  # noqa: BLE001 - unknown: search everything, as without lookup
                return None
            if rec is None or not isinstance(rec.get("created_at"), int):
                return None
            times.append(rec["created_at"])
        return min(times) - CLOCK_SLACK_MS

    def restore_latest(self, namespace: dict) -> tuple[StoredCheckpoint, RestoreReport] | None:
        """The newest checkpoint that verifies (with every record of its chain), newest first.

        Reads the newest :data:`RECENT` records and those of the newest one's chain
        (its full record and the deltas after it); older ones only when none of those verifies."""
        records = self._records(RECENT)
        if not records:
            return None
        reader = _Reader(self)
        return self._restore_newest_genuine(reader, self._newest_first(records), namespace)

    def restore_execution(self, execution_count: int, namespace: dict, *, clear: bool) -> tuple[StoredCheckpoint, RestoreReport]:
        """Bring back the namespace as it was after execution ``execution_count``
        (records are searched newest first, page by page)."""
        matches = (r for r in self._newest_first() if (r.get("value") or {}).get("execution_count") == execution_count)
        restored = self._restore_newest_genuine(_Reader(self), matches, namespace, clear=clear)
        if restored is None:
            raise CheckpointNotFoundError(
                f"no checkpoint after execution {execution_count} in session {self.session!r}; see %durable checkpoints"
            )
        return restored

    def _restore_newest_genuine(
        self, reader: _Reader, records: Iterator[dict[str, Any]], namespace: dict, *, clear: bool = False
    ) -> tuple[StoredCheckpoint, RestoreReport] | None:
        """Restore the first of ``records`` (newest first) whose chain verifies. A newer one
        that does not (forged, copied from another session or sequence number, a record of
        its chain missing or out of place) is never loaded: it is named in the report's
        ``refused``; when none verifies, the newest one's refusal is raised (None: no records)."""
        refused: dict[str, SignatureError] = {}
        for rec in records:
            try:
                chain = reader.chain_of(rec)
            except SignatureError as exc:
                refused[rec["id"]] = exc
                continue
            summary, report = self._restore(chain, namespace, clear=clear)
            report.refused = {cid: str(exc) for cid, exc in refused.items()}
            return summary, report
        if refused:
            raise next(iter(refused.values()))
        return None

    def _unsealed(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The body of ``rec``, verified against the id and session it was read under."""
        value = rec.get("value") or {}
        if not isinstance(value.get("manifest"), dict):
            raise CheckpointNotFoundError(f"checkpoint {rec['id']} holds no manifest")
        return self.sealer.unseal(rec["id"], value, "checkpoint")

    def seq_of(self, promise_id: str) -> int:
        return int(promise_id.removeprefix(checkpoint_prefix(self._key)))

    def _restore(self, chain: list[tuple[str, dict[str, Any]]], namespace: dict, *, clear: bool = False) -> tuple[StoredCheckpoint, RestoreReport]:
        manifest = assemble(chain)
        if self.state is not None and manifest.state:  # {}: a checkpoint older than session state
            try:
                self.state.restore(manifest.state)
            except Exception:  # noqa: BLE001 - the namespace is restored regardless
                log.warning("could not restore the session state", exc_info=True)
        if clear:
            for name in [n for n in list(namespace) if self._travel_may_delete(n, namespace) and n not in manifest.entries]:
                del namespace[name]
        report = self.checkpointer.restore(manifest, namespace)
        self.previous = manifest
        newest_id, newest = chain[-1]
        base, last = self.seq_of(chain[0][0]), self.seq_of(newest_id)
        weight = sum(len(b["manifest"].get(k) or ()) for _pid, b in chain[1:] for k in ("entries", "skipped", "removed"))
        # Deltas may follow only the newest stored record (a restore of an older one starts a new full).
        self._chain = Chain(base, last, weight) if last == self._seq else None
        summary = _summary({"id": newest_id, "value": newest})
        summary.skipped = dict(manifest.skipped)
        return summary, report

    def _travel_may_delete(self, name: str, namespace: dict) -> bool:
        """Whether time travel may delete ``name``: the user's (not the shell's), not excluded.

        Names with a leading underscore are left alone, as they always were
        (so a user's ``_x`` newer than the checkpoint survives time travel).
        """
        cp = self.checkpointer
        return not name.startswith("_") and name not in cp.exclude and cp.is_user_name(name, namespace.get(name))


class _Reader:
    """One search's records and verified bodies, by sequence number (each verified once)."""

    def __init__(self, history: NamespaceCheckpoints) -> None:
        self.history = history
        self.records: dict[int, dict[str, Any]] = {}
        self.bodies: dict[int, dict[str, Any] | SignatureError] = {}

    def body(self, seq: int, rec: dict[str, Any]) -> dict[str, Any]:
        if seq not in self.bodies:
            try:
                self.bodies[seq] = self.history._unsealed(rec)
            except CheckpointNotFoundError as exc:
                self.bodies[seq] = ChainError(str(exc))
            except SignatureError as exc:
                self.bodies[seq] = exc
        body = self.bodies[seq]
        if isinstance(body, SignatureError):
            raise body
        return body

    def chain_of(self, rec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The verified records base..N of record ``rec`` (N), full one first."""
        history = self.history
        seq = history.seq_of(rec["id"])
        self.records.setdefault(seq, rec)
        body = self.body(seq, rec)
        base = body.get("base", seq)
        if base == seq:
            return [(rec["id"], body)]
        if not isinstance(base, int) or not 0 < base < seq:
            raise ChainError(f"checkpoint {rec['id']} names an impossible base {base!r}; refusing it")
        if min(self.records) > base:  # one read: every record from the base on (the newest ones)
            for r in history._records(max(history._seq, seq) - base + 1):
                self.records.setdefault(history.seq_of(r["id"]), r)
        chain = []
        for s in range(base, seq):
            r = self.records.get(s)
            if r is None:
                raise ChainError(f"checkpoint {rec['id']} builds on checkpoint {s}, which is missing; refusing it")
            b = self.body(s, r)
            if b.get("base", s) != base:
                raise ChainError(f"checkpoint {r['id']} is not in the chain of {rec['id']} (base {base}); refusing it")
            chain.append((r["id"], b))
        chain.append((rec["id"], body))
        return chain


def _summary(rec: dict[str, Any]) -> StoredCheckpoint:
    value = rec.get("value") or {}
    body = value.get("manifest") or {}
    return StoredCheckpoint(
        id=rec["id"],
        execution_count=value.get("execution_count"),
        msg_id=value.get("msg_id"),
        created_at=float(body.get("created", 0.0)),
        size=int(value.get("size", 0)),
        changed=list(body.get("changed", [])),
        removed=list(body.get("removed", [])),
        skipped=dict(body.get("skipped", {})),
    )


def _few(names: list[str], limit: int = 20) -> str:
    """Names for a log line: the first ``limit`` of them, and how many more."""
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... {len(names) - limit} more' if len(names) > limit else ''}]"

