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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kernel.checkpoint.signing import Sealer, SignatureError
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.ids import exec_id, resume_attempt_id
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
            if orphan is None:
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

    def resume_all(self, run: Callable[[Orphan], str]) -> list[str]:
        """``run`` every interrupted execution the limit admits; one report line each."""
        report = []
        for eid, orphan in self._take_all():
            if orphan is None:
                report.append(f"{eid}: the engine did not deliver it; nothing to resume")
            elif not self.genuine(eid, orphan):
                report.append(f"{eid}: not resumed (its stored code is not signed by this key)")
            elif not self.admit(orphan):
                report.append(f"{eid}: not resumed (crashed the kernel too often)")
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
