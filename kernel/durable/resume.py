"""Executions a dead kernel left unfinished: resume them or reject them.

A kernel that starts for a session with pending ``exec:`` promises gets them
back from the engine as orphans (:class:`kernel.durable.dispatcher.Orphan`).
They are resumed by ``%durable resume``, by ``PYREPL3_AUTO_RESUME=1``, or by the
frontend re-sending the same msg_id (what ``pyrepl3 run`` does), and rejected
as ``KernelExitInterruption`` as soon as the user runs any other new cell.
Resume attempts are counted durably (``exec:<msg_id>:resume:<k>``), so a cell
that kills its kernel every time is rejected after ``PYREPL3_RESUME_LIMIT``
attempts.

An orphan is resumed only if its params (the code) verify against the session
key (:mod:`kernel.durable.sealing`): a tampered one is rejected as
``TamperedExecution`` with a BROKEN notice and never run.

:class:`ResumePolicy` decides; running the code again is the session's
(:meth:`kernel.durable.session.DurableSession.resume_interrupted`).

Only an execution that *started* is resumed: one whose kernel took the
hand-off (``exec:<msg_id>:started``, stored then) or that a resume began
(``exec:<msg_id>:resume:<k>``). Any other pending execution is settled as
``EngineTimeout``, never run. That is what keeps a stalled engine exactly-once:
a kernel whose engine stalls past PYREPL3_START_TIMEOUT runs the cell without
durability, and its ``exec:`` create may land later -- while it lives (its
dispatcher then settles it) or after it died (a relay or a server holding the
request). The one thing that separates "ran without durability" from "was
taken and then interrupted" is the hand-off, which happens in the kernel alone;
so the kernel records it, and the absence of the record means "never resume".

Why not a deadline in the params, compared with the create's time or made a
condition of the create in SQL: a create that lands in time can still have its
hand-off stall (the freeze comes between the create and the delivery, or the
acquire's answer), and the kernel gives up all the same; and the engine's clock
(``created_on``) is not the kernel's. Any commit point *before* the hand-off
leaves that ambiguity; the record written *after* it does not, on every engine
(embedded, Postgres, HTTP), because it uses only the promise API. Its cost: a
kernel killed in the millisecond between the hand-off and that write leaves an
execution that is not resumed (at most once, never twice), and one promise
write per cell, off the cell's path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kernel.checkpoint.signing import Sealer, SignatureError
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.ids import exec_id, resume_attempt_id, started_id
from kernel.core.models import CellError, CellOutcome, ExecutionParams
from kernel.core.notices import BROKEN, Notify
from kernel.durable.dispatcher import CellDispatcher, Orphan
from kernel.durable.runtime import DurableRuntime
from kernel.durable.sealing import TAMPERED, check_params, seal_params

#: Seconds to wait for the engine to re-deliver an execution a dead kernel left pending.
ORPHAN_WAIT = 10.0


def interrupted_by_exit(params: ExecutionParams, detail: str = "") -> CellError:
    """The structured error an execution gets when its kernel died during it."""
    return CellError(
        execution_id=exec_id(params.msg_id),
        execution_count=params.execution_count,
        ename="KernelExitInterruption",
        evalue=(
            f"execution {params.execution_count} ({exec_id(params.msg_id)}) was interrupted "
            f"by kernel exit before it finished{detail}"
        ),
    )


def never_started(params: ExecutionParams) -> CellError:
    """The error of an execution its kernel never ran durably (it gave up waiting, or died first)."""
    eid = exec_id(params.msg_id)
    return CellError(
        execution_id=eid,
        execution_count=params.execution_count,
        ename="EngineTimeout",
        evalue=(
            f"execution {params.execution_count} ({eid}) was abandoned: the engine did not start it while its "
            "kernel waited (PYREPL3_START_TIMEOUT), so it ran without durability or not at all; it is never resumed"
        ),
    )


@dataclass
class ResumePolicy:
    """The fate of the ``interrupted`` executions (``exec:`` ids, oldest first)."""

    runtime: DurableRuntime
    dispatcher: CellDispatcher
    interrupted: list[str]
    notice: Notify
    limit: int
    #: PYREPL3_AUTO_RESUME: resume them as soon as the kernel runs.
    auto: bool = False
    clock: Clock = SYSTEM
    orphan_wait: float = ORPHAN_WAIT
    kernel_pid: int = field(default_factory=os.getpid)
    #: Checks an orphan's params before it is resumed.
    sealer: Sealer = field(kw_only=True)

    @property
    def resumes_at_start(self) -> bool:
        return self.auto and bool(self.interrupted)

    def claim(self, execution_id: str) -> Orphan | None:
        """A re-sent request for an execution a dead kernel left pending resumes it."""
        if execution_id not in self.interrupted:
            return None
        self.interrupted.remove(execution_id)
        orphan = self.dispatcher.take_orphan(execution_id, self.orphan_wait)
        return orphan if orphan is not None and self.genuine(execution_id, orphan) else None

    def seal(self, params: ExecutionParams) -> ExecutionParams:
        """Sign a new execution's params as it is submitted, so it can be resumed later."""
        return seal_params(self.sealer, params)

    def genuine(self, execution_id: str, orphan: Orphan) -> bool:
        """Whether the orphan's params verify; if not, reject it as tampered (never run it)."""
        try:
            check_params(self.sealer, execution_id, orphan.params)
        except SignatureError as exc:
            orphan.outcome.set_result(
                CellError(execution_id=execution_id, ename=TAMPERED, evalue=f"{exc}; it was not resumed", code=exc.code)
            )
            self.notice(f"{execution_id} was not resumed and is marked failed: {exc}", BROKEN)
            return False
        return True

    def reject_interrupted(self) -> None:
        """A new cell means the user moved on: interrupted executions that were
        not resumed are rejected as interrupted by kernel exit. (Replayed
        requests and ``%durable resume`` do not count as moving on.)"""
        for other, orphan in self._take_all():
            if orphan is None or self._abandon_unstarted(orphan):
                continue
            orphan.outcome.set_result(interrupted_by_exit(orphan.params))
            self.notice(
                f"execution {orphan.params.execution_count} ({other}) was interrupted by kernel exit and is "
                "marked failed; the namespace is the one after the last completed execution. "
                "(Run `%durable resume` as the first cell after a restart, or set PYREPL3_AUTO_RESUME=1, to re-run it instead.)"
            )

    def admit(self, orphan: Orphan) -> bool:
        """Count a resume attempt durably; past the limit, reject instead of resuming."""
        eid = orphan.execution_id
        attempt = 1
        while self.runtime.find(resume_attempt_id(eid, attempt)) is not None:
            attempt += 1
        if attempt == 1 and self._abandon_unstarted(orphan):
            return False
        if attempt > self.limit:
            orphan.outcome.set_result(
                interrupted_by_exit(
                    orphan.params,
                    f", and it crashed the kernel {attempt - 1} times when resumed; "
                    f"it is not resumed again (PYREPL3_RESUME_LIMIT={self.limit})",
                )
            )
            self.notice(f"{eid} was not resumed: it crashed the kernel {attempt - 1} times (PYREPL3_RESUME_LIMIT)", BROKEN)
            return False
        attempt_id = resume_attempt_id(eid, attempt)
        self.runtime.create(attempt_id, self.clock.ms_after(FAR_FUTURE), {"attempt": attempt, "kernel_pid": self.kernel_pid}, {})
        self.runtime.settle(attempt_id, "resolved", {"started_at": self.clock.wall()})
        return True

    def _abandon_unstarted(self, orphan: Orphan) -> bool:
        """Settle ``orphan`` as abandoned if no kernel ever took it (see the module docstring)."""
        if self.runtime.find(started_id(orphan.execution_id)) is not None:
            return False
        orphan.outcome.set_result(never_started(orphan.params))
        self.notice(f"{orphan.execution_id} was never started durably (its kernel gave up waiting for the engine "
                    "or died first); it is settled as abandoned (EngineTimeout), not run")
        return True

    def resume_all(self, run: Callable[[Orphan], str]) -> list[str]:
        """``run`` every interrupted execution the limit admits; one report line each."""
        report = []
        for eid, orphan in self._take_all():
            if orphan is None:
                report.append(f"{eid}: the engine did not deliver it; nothing to resume")
            elif not self.genuine(eid, orphan):
                report.append(f"{eid}: not resumed (its stored code is not signed by this key)")
            elif not self.admit(orphan):
                settled = orphan.outcome.result()
                abandoned = isinstance(settled, CellError) and settled.ename == "EngineTimeout"
                why = "never started durably" if abandoned else "crashed the kernel too often"
                report.append(f"{eid}: not resumed ({why})")
            else:
                report.append(run(orphan))
        return report

    def carry_over(self, outcome_of: Callable[[str], CellOutcome | None], wait: float) -> Iterator[str]:
        """Settle interrupted executions whose outcome ``outcome_of`` still knows
        (a lost session's cells that finished while the engine was away); yields
        each execution id once the engine has it stored."""
        for eid in list(self.interrupted):
            outcome = outcome_of(eid)
            if outcome is None:
                continue
            orphan = self.dispatcher.take_orphan(eid, wait)
            if orphan is None:
                continue
            self.interrupted.remove(eid)
            orphan.outcome.set_result(outcome)
            yield eid

    def _take_all(self) -> Iterator[tuple[str, Orphan | None]]:
        for eid in list(self.interrupted):
            self.interrupted.remove(eid)
            yield eid, self.dispatcher.take_orphan(eid, self.orphan_wait)
