"""The durable side of one kernel, and the cell protocol it runs.

Built once at kernel start (and again by the keeper after a lost engine).
Opening can fail for reasons the user must hear about (a corrupt or locked
store, a wrong setting); the kernel then runs without durability and says why,
instead of refusing to start.

Every cell is ``exec:<msg_id>``: :meth:`DurableSession.execute` submits it,
waits for the engine to hand it back to this thread, runs it through the
kernel's :class:`~kernel.durable.cells.CellRequest`, and stores its checkpoint
and outcome as one unit (:mod:`kernel.durable.settling`). A msg_id that has a
promise already is replayed from the store, never run twice. The kernel only
translates between this and the Jupyter protocol.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from resonate.types import PromiseRecord

from kernel.checkpoint.checkpointer import Checkpointer, RestoreReport
from kernel.checkpoint.history import NamespaceCheckpoints, SessionStateHooks, StoredCheckpoint
from kernel.checkpoint.poison import RestoreGuard
from kernel.checkpoint.signing import Signer, load_key
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import CheckpointNotFoundError, EngineConnectionError, PyRepl3Error
from kernel.core.ids import exec_id, session_key
from kernel.core.models import CellError, CellOutcome, ExecutionParams
from kernel.core.locations import default_home, resolve_home, resolve_session
from kernel.core.notices import BROKEN, INFO
from kernel.core.settings import SESSION_SETTINGS, Settings
from kernel.durable import observed
from kernel.durable.cells import CellRequest, SessionHost
from kernel.durable.dispatcher import CellDispatcher, Handoff, Orphan
from kernel.durable.reclaiming import SessionReclaim, policy_of
from kernel.durable.prompts import Approval, PromptBroker, StdinChannel
from kernel.durable.resume import ResumePolicy
from kernel.durable.runtime import DurableRuntime
from kernel.durable.services import CellServices
from kernel.durable.settling import CellSettler
from kernel.durable.skipped import SkippedNames
from kernel.durable.steps import NO_DEFAULT, StepJournal
from kernel.store.base import Engine, SessionLock
from kernel.store.records import task_args
from kernel.store.registry import open_engine

log = logging.getLogger(__name__)
R = TypeVar("R")

#: Seconds a re-sent msg_id waits for its earlier execution to be settled before replaying.
REPLAY_WAIT = 10.0
#: Seconds a reconnected session waits for the engine to hand back an execution
#: whose outcome the lost session could not store.
CARRY_OVER_WAIT = 10.0
#: A cell whose code starts with this resumes interrupted executions: it is not "moving on".
RESUME_MAGIC = "%durable resume"


@dataclass
class DurableSession:
    session: str
    #: Where the state lives, for messages and ``%durable`` (a path, or the engine with credentials redacted).
    store_path: Path | str
    engine: Engine
    lock: SessionLock
    runtime: DurableRuntime
    dispatcher: CellDispatcher
    #: Seconds the kernel waits for the engine to hand a submitted cell back.
    start_timeout: float
    #: Prompts, steps and remote calls of the running execution (its child promises).
    services: CellServices
    resume: ResumePolicy
    history: NamespaceCheckpoints
    host: SessionHost
    #: Stores the end of every cell: checkpoint and outcome as one unit.
    settler: CellSettler
    clock: Clock = SYSTEM
    #: Garbage collection (every PYREPL3_GC_EVERY checkpoints, in the background) and %durable keep.
    reclaim: SessionReclaim | None = None

    @classmethod
    def open(
        cls,
        host: SessionHost,
        settings: Settings,
        *,
        connection_file: str = "",
        namespace_hidden: Mapping[str, object] | None = None,
        skipped: SkippedNames | None = None,
        session_state: SessionStateHooks | None = None,
        clock: Clock = SYSTEM,
    ) -> DurableSession:
        """Open the session ``settings`` and the connection file name, on the engine they select.

        A setting the session cannot use raises :class:`ConfigurationError`
        (the kernel then runs without durability and says why).
        """
        settings.check(*SESSION_SETTINGS)
        session = resolve_session(settings, connection_file)
        ttl = timedelta(seconds=settings.lease_seconds or 1.0)
        signer = Signer(load_key(settings.key, default_home() / "key"))
        engine = open_engine(settings)
        runtime: DurableRuntime | None = None
        lock: SessionLock | None = None
        try:
            lock = engine.lock(session, wait=settings.lock_wait)
            pid = uuid.uuid4().hex
            network, sources = engine.network(session, pid)
            dispatcher = CellDispatcher()
            runtime = DurableRuntime(
                network, sources=sources, session=session, dispatcher=dispatcher, pid=pid, ttl=ttl,
                group=engine.group(session), clock=clock,
            ).start()
            interrupted = engine.interrupted_executions(session, pid)
            catalog = engine.catalog()
            checkpointer = Checkpointer(
                engine.blobs(), exclude=set(settings.checkpoint_exclude),
                size_limit=settings.checkpoint_max_bytes or None, hidden=namespace_hidden,
                guard=RestoreGuard(resolve_home(settings) / "restoring", session_key(session)),
            )
            history = NamespaceCheckpoints(
                checkpointer, signer, session, lambda limit=None: catalog.checkpoints(session, limit),
                lookup=catalog.promise, clock=clock, state=session_state,
            )  # fmt: skip
        except BaseException:
            if runtime is not None:
                runtime.stop()
            engine.close()
            if lock is not None:
                lock.release()
            raise
        settler = CellSettler(runtime, history, host, skipped or SkippedNames())
        reclaim = SessionReclaim(engine, history, session, policy=policy_of(settings), every=settings.gc_every, grace=settings.gc_grace, clock=clock)
        settler.after_store, settler.note_outputs = reclaim.checkpoint_stored, reclaim.note_outputs
        settler.output_limit = settings.output_blob_bytes
        for eid, outcome in settler.finished_at_start(interrupted).items():
            # Its checkpoint was stored, only the settle was lost: settled with its outcome, not interrupted.
            dispatcher.finished(eid, outcome)
            interrupted.remove(eid)
            host.notice(f"{eid} (execution {outcome.execution_count}) had finished before its kernel died; stored its outcome")
        resume = ResumePolicy(runtime, dispatcher, interrupted, host.notice, settings.resume_limit, settings.auto_resume, clock, sealer=history.sealer)
        log.info("durable session %r on %s (lease %gs)", session, engine.where, ttl.total_seconds())
        return cls(
            session, engine.where, engine, lock, runtime, dispatcher, settings.start_timeout,
            CellServices.build(runtime, history.sealer, engine, settings, clock=clock), resume, history, host, settler, clock, reclaim,
        )

    # -- the cell protocol -------------------------------------------------------

    async def execute(self, msg_id: str, code: str, execution_count: int, cell_id: str | None, cell: CellRequest[R]) -> R:
        """Run one execute_request as ``exec:<msg_id>`` and return the frontend's reply.

        A msg_id a dead kernel was running is resumed; one submitted before is
        replayed; when the engine cannot take the cell it runs without
        durability (and says so). Whatever happens, ``exec:<msg_id>`` is never
        left pending by this kernel.
        """
        eid = exec_id(msg_id)
        if (orphan := self.resume.claim(eid)) is not None:
            # The frontend re-sent a request that a dead kernel was running: resume it.
            cell.show_notices()
            if not self.resume.admit(orphan):
                return cell.replay(self.runtime.wait_settled(eid))
            return await self._run(orphan, code, cell)
        params = self._params(msg_id, code, execution_count, cell_id)
        ticket = self.dispatcher.expect(eid)
        try:
            started = self._start(params, ticket, cell)
            if isinstance(started, Handoff):
                return await self._run(started, code, cell)
        except BaseException as exc:
            # Interrupted before the cell ran (or between hand-off and run): settled as interrupted
            # whenever the engine delivers it, never left pending; a no-op once the run set its outcome.
            self.dispatcher.abandon(ticket, self._error(params, type(exc).__name__, "interrupted before the cell started"))
            if isinstance(exc, KeyboardInterrupt):
                return cell.interrupted()  # every request gets its reply
            raise
        cell.show_notices()
        if started is None:
            self.settler.ran_uncaptured()
            return await cell.run_without_durability()
        return cell.replay(started)

    def _params(self, msg_id: str, code: str, execution_count: int, cell_id: str | None) -> ExecutionParams:
        return self.resume.seal(ExecutionParams(
            session=self.session,
            msg_id=msg_id,
            code=code,
            execution_count=execution_count,
            cell_id=cell_id,
            kernel_pid=os.getpid(),
            nonce=uuid.uuid4().hex,
            submitted_at=self.clock.wall(),
        ))

    def _start(self, params: ExecutionParams, ticket: cf.Future[Handoff], cell: CellRequest[Any]) -> Handoff | PromiseRecord | None:
        """Submit ``exec:<msg_id>`` and wait for the engine to hand it to this thread.

        Returns the hand-off; or the settled record of an earlier submission of
        this msg_id (to replay); or None when the cell must run without durability.
        """
        eid = exec_id(params.msg_id)
        deadline = self.clock.monotonic() + self.start_timeout
        gave_up = self._error(params, "EngineTimeout", f"the engine did not start {eid} in time; the cell ran without durability")
        try:
            record = self.runtime.submit(params, timeout=self.start_timeout or None)
        except PyRepl3Error as exc:
            self.dispatcher.abandon(ticket, gave_up)  # a create that lands later is settled, never run
            self.host.notice(f"this cell ran without durability: {exc}", BROKEN)
            if isinstance(exc, EngineConnectionError):
                self.host.durability_lost(self, exc)
            return None
        if record.state != "pending" or task_args(record.param.data).get("nonce") != params.nonce:
            # This msg_id was submitted before: never run it twice.
            self.dispatcher.forget(eid)
            return self._settled(record)
        if not params.code.lstrip().startswith(RESUME_MAGIC):
            self.resume.reject_interrupted()
        cell.show_notices()
        if (handoff := self.dispatcher.take(ticket, max(0.0, deadline - self.clock.monotonic()), gave_up)) is not None:
            self.runtime.record_start(eid)  # (a no-op where the loop recorded it before the hand-off was done)
            return handoff
        self.host.notice(f"the durable engine did not start {eid} within {self.start_timeout:g}s "
                         "(PYREPL3_START_TIMEOUT); the cell ran without durability", BROKEN)
        return None

    def _settled(self, record: PromiseRecord) -> PromiseRecord:
        """The settled record of an earlier submission (waiting briefly while it is settled, e.g. abandoned)."""
        if record.state != "pending":
            return record
        try:
            return self.runtime.wait_settled(record.id, timeout=REPLAY_WAIT)
        except PyRepl3Error:
            return record

    async def _run(self, started: Handoff | Orphan, code: str, cell: CellRequest[R]) -> R:
        """Run the cell (``code``: the request's), then store its checkpoint and
        outcome as one unit (:class:`~kernel.durable.settling.CellSettler`).

        Whatever happens here (an interrupt landing between two statements
        included), the outcome is completed, so the execution never stays pending.
        """
        eid, params, outcome = started.execution_id, started.params, started.outcome
        try:
            # A hand-off is a new execution: no step of it can be journaled yet.
            with self.services.executing(eid, fresh=isinstance(started, Handoff)):
                ran = await cell.run(eid)
        except BaseException as exc:
            self.settler.ran_uncaptured()
            if not outcome.done():
                outcome.set_result(self._error(params, type(exc).__name__, str(exc)))
            if isinstance(exc, KeyboardInterrupt):
                # Landed outside the cell's code (just before or after it): every request gets its reply.
                return cell.interrupted()
            raise
        try:
            self.settler.settle(params, code, outcome, ran.outcome)
        except KeyboardInterrupt:
            # A host that does not hold interrupts around the request: it landed in the instant
            # before the end of the cell holds them. The cell is done all the same, and the
            # settle is idempotent (a second checkpoint at worst).
            log.info("an interrupt at the end of %s was held: the cell had finished", eid)
            self.settler.settle(params, code, outcome, ran.outcome)
        if not self.engine.healthy():  # the store broke under this cell: durability off, reconnect
            self.host.durability_lost(self, EngineConnectionError(f"the {self.store_path} failed while storing {eid}"))
        cell.show_notices()
        return ran.reply

    @staticmethod
    def _error(params: ExecutionParams, ename: str, evalue: str) -> CellError:
        return CellError(execution_id=exec_id(params.msg_id), execution_count=params.execution_count, ename=ename, evalue=evalue)

    # -- resume ------------------------------------------------------------------

    @property
    def resumes_at_start(self) -> bool:
        """PYREPL3_AUTO_RESUME is set and a dead kernel left executions unfinished."""
        return self.resume.resumes_at_start

    def resume_interrupted(self) -> list[str]:
        """Re-run interrupted executions under their own ids, inside the current cell.

        Used by ``%durable resume`` and by ``PYREPL3_AUTO_RESUME``. Completed
        durable steps and answered prompts are replayed, not repeated.
        """
        return self.resume.resume_all(self._resume_one)

    def _resume_one(self, orphan: Orphan) -> str:
        eid, params = orphan.execution_id, orphan.params
        with observed.resumed(params) as trace:  # its span: the parent of its steps, prompts and checkpoint
            with self.services.executing(eid):
                outcome = trace.ended(self.host.run_nested(eid, params))
            self.settler.settle(params, params.code, orphan.outcome, outcome)
        state = f"failed ({outcome.ename})" if isinstance(outcome, CellError) else "completed"
        return f"{eid} (execution {params.execution_count}): resumed and {state}"

    def carry_over(self, old: DurableSession) -> list[str]:
        """Store what the lost session ``old`` could not: a cell that finished while
        the engine was away left its execution pending; its outcome is still known
        there, so this session settles it with that outcome (it is not reported as
        interrupted). Returns the execution ids stored."""
        stored = []
        for eid in self.resume.carry_over(old.outcome_of, CARRY_OVER_WAIT):
            try:
                self.runtime.wait_settled(eid, timeout=CARRY_OVER_WAIT)
            except PyRepl3Error as exc:
                log.warning("could not confirm that %s was stored after reconnecting: %s", eid, exc)
                continue
            stored.append(eid)
        return stored

    def outcome_of(self, execution_id: str) -> CellOutcome | None:
        """The outcome this session handed the engine for one of its last executions."""
        return self.dispatcher.outcome_of(execution_id)

    # -- inside a running cell: prompts, steps and remote calls ---------------------

    @property
    def prompts(self) -> PromptBroker:
        return self.services.prompts

    @property
    def steps(self) -> StepJournal:
        return self.services.steps

    @property
    def current_execution(self) -> str | None:
        """The ``exec:<msg_id>`` running now, if any: prompts and steps become its child promises."""
        return self.prompts.execution_id

    @property
    def executing(self) -> bool:
        return self.current_execution is not None

    def ask(self, prompt: str, *, password: bool = False, channel: StdinChannel | None) -> str:
        """input()/getpass() as the prompt promise ``exec:<msg_id>:input:<n>``; a
        getpass answer is kept out of namespace checkpoints."""
        answer = self.prompts.ask(prompt, password=password, channel=channel)
        return self.history.checkpointer.keep_out(answer) if password else answer

    def approve(self, question: str, details: Any = None, *, channel: StdinChannel | None) -> Approval:
        return self.prompts.approve(question, details, channel=channel)

    def run_step(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.steps.run(fn, *args, **kwargs)

    def sleep(self, seconds: float) -> None:
        self.steps.sleep(seconds)

    def save_value(self, name: str, value: Any) -> None:
        self.steps.save_value(name, value)

    def latest_value(self, name: str, default: Any = NO_DEFAULT) -> Any:
        return self.steps.latest_value(name, default)

    # -- namespace checkpoints -------------------------------------------------------

    def restore_latest(self) -> StoredCheckpoint | None:
        """Bring back the newest namespace checkpoint (at kernel start); a failure is
        a notice, never an error."""
        try:
            restored = self.history.restore_latest(self.host.namespace())
        except PyRepl3Error as exc:
            self.host.notice(f"the namespace was not restored: {exc}", BROKEN)
            return None
        except Exception as exc:  # noqa: BLE001 - never fail the kernel start over it
            log.exception("restoring the namespace failed")
            self.host.notice(f"the namespace was not restored: {type(exc).__name__}: {exc}", BROKEN)
            return None
        if restored is None:
            return None
        checkpoint, report = restored
        lost = set(report.skipped) - set(checkpoint.skipped) - set(report.excluded)  # saved, yet not back: failed
        self.host.notice(f"namespace of execution {checkpoint.execution_count} is back: {report.summary()}", BROKEN if lost or report.refused else INFO)
        self.settler.skipped.restored(report)
        return checkpoint

    def checkpoints(self) -> list[StoredCheckpoint]:
        """The restorable checkpoints (a delta chain's links whose values were reclaimed are not)."""
        listed = self.history.list()
        if self.reclaim is None:
            return listed
        gone = self.reclaim.reclaimed_among({c.execution_count for c in listed if c.execution_count is not None})
        return [c for c in listed if c.execution_count not in gone]

    def restore(self, execution_count: int) -> tuple[StoredCheckpoint, RestoreReport]:
        """The namespace as it was after execution ``execution_count`` (names made since are removed)."""
        if self.reclaim is not None and self.reclaim.reclaimed_at(execution_count) is not None:
            raise CheckpointNotFoundError(self.reclaim.missing(execution_count))  # a chain link only, its values gone
        try:
            return self.history.restore_execution(execution_count, self.host.namespace(), clear=True)
        except CheckpointNotFoundError:
            if self.reclaim is None:
                raise
            raise CheckpointNotFoundError(self.reclaim.missing(execution_count)) from None

    def exclude(self, names: Iterable[str]) -> list[str]:
        """Keep ``names`` out of checkpoints from now on; returns every name kept out."""
        excluded = self.history.checkpointer.exclude
        excluded.update(names)
        return sorted(excluded - {"durable"})

    @property
    def value_size_limit(self) -> int | None:
        """Bytes (pickled) above which a value is left out of checkpoints; None = no limit."""
        return self.history.checkpointer.size_limit

    @value_size_limit.setter
    def value_size_limit(self, limit: int | None) -> None:
        self.history.checkpointer.size_limit = limit

    # -- the store ---------------------------------------------------------------

    def catalog(self) -> Any:
        return self.engine.catalog()

    def healthy(self) -> bool:
        return self.engine.healthy()

    def close(self) -> None:
        if self.reclaim is not None:
            self.reclaim.wait()
        self.runtime.stop()
        self.engine.close()
        self.lock.release()


