"""The end of a cell: its effects and its outcome stored as one unit.

A reply, or a settled ``exec:<msg_id>``, must mean the cell's effects are
stored. Where the engine stores a batch of requests as one transaction (embedded,
Postgres: :attr:`~kernel.durable.runtime.DurableRuntime.atomic`), the unit is
that transaction: ``ckpt:<key>:<seq>`` is created and resolved and
``exec:<msg_id>`` settled, with the value ``durable_execute`` would settle it
with, in one write after the namespace is captured (every blob durable); the
SDK's later fulfill of the task is answered as done
(:mod:`kernel.durable.inline`). A crash leaves both or neither. The reply
follows that write, nothing else.

An engine that cannot (a Resonate server over HTTP: the execution is settled
by the SDK, through its task; the checkpoint is a promise of its own) gets the
unit by order and by what a restart reads:

1. the cell's outcome goes into a blob (content-addressed, durable on return);
2. the namespace is captured (every blob durable) and ``ckpt:<key>:<seq>`` is
   stored, naming the execution it follows and the outcome's blob;
3. only then is the outcome handed to ``durable_execute``, which settles the
   execution; the reply waits for that.

A crash before 2 leaves the execution pending and the previous checkpoint the
latest: the cell was interrupted (resumable, or rejected as interrupted). A
crash between 2 and 3 leaves it pending *with* its checkpoint: the next kernel
of the session (:meth:`CellSettler.finished_at_start`) knows it finished and
settles it with the stored outcome when the engine delivers it -- it is
neither resumed nor rejected, and the restored namespace is the one after it.
So a settled execution always has its checkpoint, and no restored namespace
is newer or older than the executions marked done.

Why not settle first and treat "settled, no checkpoint" as interrupted: a
settled promise cannot be unsettled, and every replay (``pyrepl3 run``, a
re-sent msg_id) would keep answering "done". Why the outcome in a blob: it
holds the cell's outputs (images, say), which would make every checkpoint
listing heavy; the checkpoint only names it.

SIGINT is held for the whole unit (:mod:`kernel.core.interrupts`): the cell
is done, and an interrupt then must neither cancel storing nor lose the reply;
the capture runs on the main thread after the cell, so what it stores is a
namespace that existed.

The outcome is settled whatever happened to the execution's lease
(:meth:`~kernel.durable.runtime.DurableRuntime.confirm_settled`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel.checkpoint.history import NamespaceCheckpoints
from kernel.core import tracing
from kernel.core.errors import PyRepl3Error
from kernel.core.ids import exec_id, msg_id_of
from kernel.core.models import CellError, CellOutcome, CellResult, ExecutionParams, ResolvedPromise
from kernel.core.notices import BROKEN
from kernel.durable.cells import SessionHost
from kernel.core.interrupts import MAIN, Interrupts
from kernel.durable.runtime import DurableRuntime
from kernel.durable.skipped import SkippedNames
from kernel.store.large_outputs import externalize

log = logging.getLogger(__name__)

#: Seconds (at least) to wait for the engine to settle an execution through its task
#: before settling the promise directly; the lease, when longer.
MIN_SETTLE_GRACE = 2.0


def encode_outcome(outcome: CellOutcome) -> bytes:
    return outcome.model_dump_json().encode()


def decode_outcome(data: bytes | bytearray) -> CellOutcome:
    raw = json.loads(bytes(data))
    return (CellError if raw.get("status") == "error" else CellResult).model_validate(raw)


@dataclass
class CellSettler:
    """Stores the end of every cell of a session as one unit (see the module docstring)."""

    runtime: DurableRuntime
    history: NamespaceCheckpoints
    host: SessionHost
    skipped: SkippedNames = field(default_factory=SkippedNames)
    interrupts: Interrupts = MAIN
    #: Code ran since the last capture without being captured (a cell that raised out of
    #: the run, ran without durability, or whose capture failed): the next capture
    #: re-pickles every name, since an incremental one sees only its own cell's code
    #: and would store those changes stale -- a namespace that never existed.
    uncaptured: bool = False
    #: Called after each checkpoint is stored (the session's garbage collection counts them).
    after_store: Callable[[], None] | None = None
    #: Output texts larger than this go into blobs, stored once (PYREPL3_OUTPUT_BLOB_BYTES; 0 = never).
    output_limit: int = 0
    #: Notes the blobs of an execution's large outputs before anything names them (see ``_kept_once``).
    note_outputs: Callable[[str, list[str]], None] | None = None

    def ran_uncaptured(self) -> None:
        self.uncaptured = True

    def settle(self, params: ExecutionParams, code: str, handed: cf.Future[CellOutcome], outcome: CellOutcome) -> None:
        """Checkpoint the namespace after execution ``params`` (whose request's
        code is ``code``), then hand ``outcome`` over and wait until it is stored."""
        eid = exec_id(params.msg_id)
        with self.interrupts.deferred(redeliver=False, what=f"the end of {eid}"):
            outcome = self._kept_once(eid, outcome)
            if self.runtime.atomic:
                self._settle_as_one(eid, self._checkpoint(code, params, outcome, blob=False), handed, outcome)
                return
            checkpoint = self._checkpoint(code, params, outcome)
            if checkpoint is not None:
                try:
                    self.runtime.store_resolved([checkpoint])
                except PyRepl3Error as exc:
                    self.history.not_stored(checkpoint.id)  # the next one is written full
                    self.host.notice(f"the checkpoint after {eid} was not stored: {exc}", BROKEN)
                else:
                    if self.after_store is not None:
                        self.after_store()  # garbage collection, now and then, on its own thread
            if not handed.done():
                handed.set_result(outcome)
            try:
                self.runtime.confirm_settled(eid, outcome, max(MIN_SETTLE_GRACE, self.runtime.lease_seconds))
            except PyRepl3Error as exc:
                self.host.notice(f"could not confirm that {eid} was stored: {exc}", BROKEN)

    def _kept_once(self, eid: str, outcome: CellOutcome) -> CellOutcome:
        """``outcome`` with its large output texts in blobs (:mod:`kernel.store.large_outputs`),
        noted as the execution's before the outcome blob, the checkpoint or the settle names
        them; if that fails the outcome is stored whole, as before."""
        if not self.output_limit or not outcome.outputs:
            return outcome
        try:
            outputs, digests = externalize(outcome.outputs, self.history.checkpointer.blobs, self.output_limit)
            if not digests:
                return outcome
            if self.note_outputs is not None:
                self.note_outputs(eid, digests)
        except Exception:  # noqa: BLE001 - storing the outputs whole is still correct, only bigger
            log.warning("the large outputs of %s are stored whole", eid, exc_info=True)
            return outcome
        kept = outcome.model_copy()
        kept.outputs = outputs
        return kept

    def _settle_as_one(self, eid: str, checkpoint: ResolvedPromise | None, handed: cf.Future[CellOutcome], outcome: CellOutcome) -> None:
        """The checkpoint and the settle of the execution in one transaction; ``durable_execute``
        gets the outcome after it, for the SDK to finish the task with (nothing waits for that,
        so it gets it a moment later, once the reply is on its way: :meth:`DurableRuntime.hand_later`)."""
        try:
            self.runtime.settle_cell(checkpoint, eid, outcome)
        except BaseException as exc:
            if not handed.done():
                handed.set_result(outcome)  # now: a session that reconnects stores it (outcome_of)
            if checkpoint is not None:
                self.history.not_stored(checkpoint.id)  # the next one is written full
            if not isinstance(exc, PyRepl3Error):
                raise
            self.host.notice(f"{eid} and the checkpoint after it were not stored: {exc}", BROKEN)
            return
        self.runtime.hand_later(handed, outcome)
        if checkpoint is not None and self.after_store is not None:
            self.after_store()  # garbage collection, now and then, on its own thread

    def _checkpoint(self, code: str, params: ExecutionParams, outcome: CellOutcome, *, blob: bool = True) -> ResolvedPromise | None:
        """:meth:`_capture` in the ``pyrepl3.checkpoint`` span, a child of the execution's."""
        with tracing.span(tracing.CHECKPOINT, execution_id=exec_id(params.msg_id), execution_count=params.execution_count):
            return self._capture(code, params, outcome, blob=blob)

    def _capture(self, code: str, params: ExecutionParams, outcome: CellOutcome, *, blob: bool) -> ResolvedPromise | None:
        """Capture the namespace (the outcome's blob first, with ``blob``: for an engine that
        cannot store the checkpoint and the settle as one unit); the promise that makes it
        the latest checkpoint, for the caller to store. Newly skipped names are reported once."""
        try:
            transformed = None if self.uncaptured else self.host.transformed(code)
        except Exception:  # noqa: BLE001 - unknown source means "everything may have changed"
            transformed = None
        count = params.execution_count
        try:
            digest = self.history.checkpointer.blobs.put(encode_outcome(outcome)) if blob else None
            promise, report = self.history.capture(
                self.host.namespace(), code=transformed, execution_count=count, msg_id=params.msg_id, outcome=digest
            )
            self.uncaptured = False
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not fail the cell
            self.uncaptured = True
            log.exception("checkpoint failed")
            self.host.notice(f"the namespace after execution {count} was not checkpointed: {type(exc).__name__}: {exc}", BROKEN)
            return None
        tracing.CHECKPOINT_BYTES.record(report.written_bytes)
        tracing.CHECKPOINT_TIME.record(report.seconds)
        tracing.annotate(
            promise_id=promise.id, written_bytes=report.written_bytes, seconds=report.seconds, full_scan=report.full,
            delta=isinstance(promise.value, dict) and "parent" in promise.value,
        )  # fmt: skip
        self.skipped.tell(report, self.host.notice)
        return promise

    def finished_at_start(self, interrupted: list[str]) -> dict[str, CellOutcome]:
        """Of the executions a dead kernel left pending, those that had finished: their
        checkpoint (and outcome) was stored, only the settle was lost. execution id -> outcome."""
        pending = {msg_id_of(eid): eid for eid in interrupted}
        finished: dict[str, CellOutcome] = {}
        if not pending:
            return finished
        for msg_id, digest in self.history.finished(set(pending)).items():
            eid = pending[msg_id]
            try:
                outcome = decode_outcome(self.history.checkpointer.blobs.get(digest))
            except Exception:  # noqa: BLE001 - without its outcome it counts as interrupted
                log.warning("the stored outcome of %s is unreadable; it counts as interrupted", eid, exc_info=True)
                continue
            if outcome.execution_id == eid:
                finished[eid] = outcome
        return finished


__all__ = ["CellSettler", "decode_outcome", "encode_outcome"]
