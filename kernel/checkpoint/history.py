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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from kernel.checkpoint.checkpointer import Checkpointer
from kernel.checkpoint.manifest import CaptureReport, Manifest, RestoreReport
from kernel.checkpoint.signing import Sealer, SignatureError, Signer
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import CheckpointNotFoundError
from kernel.core.ids import KIND_TAG, checkpoint_id, checkpoint_prefix, session_key
from kernel.core.models import ResolvedPromise

log = logging.getLogger(__name__)

#: How many of the newest checkpoint records a start reads (to restore, to find finished executions).
RECENT = 8
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
        body = manifest.model_dump(mode="json")
        self._seq += 1
        pid = checkpoint_id(self._key, self._seq)
        body_of_value = {"manifest": body, "execution_count": execution_count, "msg_id": msg_id, "size": manifest.total_size}
        if outcome is not None:
            body_of_value["outcome"] = outcome  # the blob of the execution's outcome, signed with the rest
        value = self.sealer.seal(pid, body_of_value)
        promise = ResolvedPromise(
            id=pid,
            timeout_at_ms=self.clock.ms_after(CHECKPOINT_LIFETIME),
            param={"kind": "checkpoint", "execution_count": execution_count, "msg_id": msg_id},
            tags={KIND_TAG: "checkpoint"},
            value=value,
        )
        self.previous = manifest
        return promise, report

    def _captured_state(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        try:
            return self.state.capture()
        except Exception:  # noqa: BLE001 - the namespace checkpoint goes on; the last state is kept
            log.warning("could not capture the session state", exc_info=True)
            return dict(self.previous.state) if self.previous is not None else {}

    # -- reading ---------------------------------------------------------------

    def list(self) -> list[StoredCheckpoint]:
        return [_summary(rec) for rec in self._records(None)]

    def _verified(self, rec: dict[str, Any]) -> Manifest:
        """The manifest of ``rec``, verified against the id and session it was read under."""
        value = rec.get("value") or {}
        if not isinstance(value.get("manifest"), dict):
            raise CheckpointNotFoundError(f"checkpoint {rec['id']} holds no manifest")
        body = self.sealer.unseal(rec["id"], value, "checkpoint")
        return Manifest.model_validate(body["manifest"])

    def finished(self, msg_ids: set[str]) -> dict[str, str]:
        """Of the executions ``msg_ids``, those a (signed) checkpoint says finished:
        msg_id -> the blob holding its outcome. The newest checkpoint of each counts."""
        found: dict[str, str] = {}
        recent = self._records(RECENT)
        self._finished_in(recent, msg_ids, found)
        if len(recent) == RECENT and set(found) != msg_ids:  # older ones may answer for the rest
            self._finished_in(self._records(None)[: -len(recent)], msg_ids, found)
        return found

    def _finished_in(self, records: list[dict[str, Any]], msg_ids: set[str], found: dict[str, str]) -> None:
        """:meth:`finished` over ``records``, newest first, adding to ``found``."""
        for rec in reversed(records):
            value = rec.get("value") or {}
            msg_id, outcome = value.get("msg_id"), value.get("outcome")
            if msg_id not in msg_ids or msg_id in found or not isinstance(outcome, str):
                continue
            try:
                self._verified(rec)
            except Exception:  # noqa: BLE001 - an unverifiable checkpoint proves nothing
                log.warning("checkpoint %s is not verifiable; execution %s is not taken as finished", rec.get("id"), msg_id)
                continue
            found[msg_id] = outcome

    def restore_latest(self, namespace: dict) -> tuple[StoredCheckpoint, RestoreReport] | None:
        """The newest checkpoint that verifies, looked for among the :data:`RECENT` newest first."""
        records = self._records(RECENT)
        if not records:
            return None
        try:
            return self._restore_newest_genuine(records, namespace)
        except SignatureError:
            if len(records) < RECENT:
                raise
        # Every recent one was refused (nothing was restored): an older one may verify.
        return self._restore_newest_genuine(self._records(None), namespace)

    def restore_execution(self, execution_count: int, namespace: dict, *, clear: bool) -> tuple[StoredCheckpoint, RestoreReport]:
        """Bring back the namespace as it was after execution ``execution_count``."""
        matches = [r for r in self._records(None) if (r.get("value") or {}).get("execution_count") == execution_count]
        if not matches:
            raise CheckpointNotFoundError(
                f"no checkpoint after execution {execution_count} in session {self.session!r}; see %durable checkpoints"
            )
        return self._restore_newest_genuine(matches, namespace, clear=clear)

    def _restore_newest_genuine(self, records: list[dict[str, Any]], namespace: dict, *, clear: bool = False) -> tuple[StoredCheckpoint, RestoreReport]:
        """Restore the newest of ``records`` whose signature verifies. A newer one that
        does not (forged, copied from another session or sequence number) is never
        loaded: it is named in the report's ``refused``; when none verifies, the
        newest one's refusal is raised."""
        refused: dict[str, SignatureError] = {}
        for rec in reversed(records):
            try:
                self._verified(rec)
            except SignatureError as exc:
                refused[rec["id"]] = exc
                continue
            summary, report = self._restore(rec, namespace, clear=clear)
            report.refused = {cid: str(exc) for cid, exc in refused.items()}
            return summary, report
        raise next(iter(refused.values()))

    def _restore(self, rec: dict[str, Any], namespace: dict, *, clear: bool = False) -> tuple[StoredCheckpoint, RestoreReport]:
        manifest = self._verified(rec)
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
        return _summary(rec), report

    def _travel_may_delete(self, name: str, namespace: dict) -> bool:
        """Whether time travel may delete ``name``: the user's (not the shell's), not excluded.

        Names with a leading underscore are left alone, as they always were
        (so a user's ``_x`` newer than the checkpoint survives time travel).
        """
        cp = self.checkpointer
        return not name.startswith("_") and name not in cp.exclude and cp.is_user_name(name, namespace.get(name))


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

