"""Executions a dead kernel left unfinished: resume them or reject them.

A kernel that starts for a session with pending ``exec:`` promises gets them
back from the engine as orphans (:class:`kernel.durable.runtime.Orphan`). They are
resumed by ``%durable resume``, by ``PYREPL3_AUTO_RESUME=1``, or by the frontend
re-sending the same msg_id (what ``pyrepl3 run`` does), and rejected as
``KernelExitInterruption`` as soon as the user runs any other new cell.
Resume attempts are counted durably, so a cell that kills its kernel every
time is rejected after ``PYREPL3_RESUME_LIMIT`` attempts.

This is a mixin of :class:`kernel.jupyter.kernel.DurableKernel`: resuming runs cell
code on the kernel's shell, inside the current request.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from kernel.core.ids import resume_attempt_id
from kernel.core.models import CellError, CellResult, Timings
from kernel.jupyter.outputs import flush_std
from kernel.durable.runtime import Orphan, interrupted_by_exit

if TYPE_CHECKING:
    from kernel.durable.session import DurableSession

log = logging.getLogger(__name__)

#: Seconds to wait for the engine to re-deliver an execution a dead kernel left pending.
ORPHAN_WAIT = 10.0


class ResumeMixin:
    durable: Any
    shell: Any
    recorder: Any

    def _take_interrupted(self, ds: DurableSession, eid: str) -> Orphan | None:
        """A re-sent request for an execution a dead kernel left pending resumes it."""
        if eid not in ds.interrupted:
            return None
        ds.interrupted.remove(eid)
        return ds.dispatcher.take_orphan(eid, ORPHAN_WAIT)

    def _reject_interrupted(self, ds: DurableSession) -> None:
        """A new cell means the user moved on: interrupted executions that were
        not resumed are rejected as interrupted by kernel exit. (Replayed
        requests and ``%durable resume`` do not count as moving on.)"""
        for other in list(ds.interrupted):
            ds.interrupted.remove(other)
            orphan = ds.dispatcher.take_orphan(other, ORPHAN_WAIT)
            if orphan is None:
                continue
            orphan.outcome.set_result(interrupted_by_exit(orphan.params))
            self._notice(
                f"execution {orphan.params.execution_count} ({other}) was interrupted by kernel exit and is "
                "marked failed; the namespace is the one after the last completed execution. "
                "(Run `%durable resume` as the first cell after a restart, or set PYREPL3_AUTO_RESUME=1, to re-run it instead.)"
            )

    def _admit_resume(self, ds: DurableSession, orphan: Orphan) -> bool:
        """Count a resume attempt durably; past the limit, reject instead of resuming."""
        eid = orphan.execution_id
        attempt = 1
        while ds.runtime.find(resume_attempt_id(eid, attempt)) is not None:
            attempt += 1
        if attempt > ds.resume_limit:
            orphan.outcome.set_result(
                interrupted_by_exit(
                    orphan.params,
                    f", and it crashed the kernel {attempt - 1} times when resumed; "
                    f"it is not resumed again (PYREPL3_RESUME_LIMIT={ds.resume_limit})",
                )
            )
            self._notice(f"{eid} was not resumed: it crashed the kernel {attempt - 1} times (PYREPL3_RESUME_LIMIT)")
            return False
        far = int((time.time() + 365 * 86400) * 1000)
        ds.runtime.create(resume_attempt_id(eid, attempt), far, {"attempt": attempt, "kernel_pid": os.getpid()}, {})
        ds.runtime.settle(resume_attempt_id(eid, attempt), "resolved", {"started_at": time.time()})
        return True

    def resume_interrupted(self) -> list[str]:
        """Re-run interrupted executions under their own ids, inside the current cell.

        Used by ``%durable resume`` and by ``PYREPL3_AUTO_RESUME``. Completed
        durable steps and answered prompts are replayed, not repeated.
        """
        ds = self.durable
        if ds is None:
            return []
        report = []
        for eid in list(ds.interrupted):
            ds.interrupted.remove(eid)
            orphan = ds.dispatcher.take_orphan(eid, ORPHAN_WAIT)
            if orphan is None:
                report.append(f"{eid}: the engine did not deliver it; nothing to resume")
                continue
            if not self._admit_resume(ds, orphan):
                report.append(f"{eid}: not resumed (crashed the kernel too often)")
                continue
            report.append(self._run_nested(ds, orphan))
        return report

    def _run_nested(self, ds: DurableSession, orphan: Orphan) -> str:
        eid, params = orphan.execution_id, orphan.params
        started = time.time()
        self.recorder.push()
        try:
            with ds.prompts.executing(eid), ds.steps.executing(eid):
                result = self.shell.run_cell(params.code, store_history=False, silent=False)
        finally:
            flush_std()
            outputs = self.recorder.pop()
        finished = time.time()
        timings = Timings(started=started, finished=finished, duration_ms=(finished - started) * 1000)
        err = result.error_before_exec or result.error_in_exec
        if err is None:
            orphan.outcome.set_result(
                CellResult(execution_id=eid, execution_count=params.execution_count, outputs=outputs, timings=timings)
            )
        else:
            orphan.outcome.set_result(
                CellError(
                    execution_id=eid,
                    execution_count=params.execution_count,
                    ename=type(err).__name__,
                    evalue=str(err),
                    outputs=outputs,
                    timings=timings,
                )
            )
        ds.runtime.store_resolved(self._capture(ds, params.code, params.execution_count, params.msg_id), after=eid)
        state = "completed" if err is None else f"failed ({type(err).__name__})"
        return f"{eid} (execution {params.execution_count}): resumed and {state}"

    def _auto_resume(self) -> None:
        """PYREPL3_AUTO_RESUME: resume interrupted executions as soon as the kernel runs."""
        request = self.session.msg("execute_request", {"code": "%durable resume", "silent": False})
        self.set_parent([], request, "shell")
        self.recorder.begin(request["header"]["msg_id"])
        try:
            for line in self.resume_interrupted():
                log.warning("PyREPL3 auto-resume: %s", line)
                self._notice(f"auto-resume: {line}")
        except Exception:
            log.exception("auto-resume failed")
        finally:
            self.recorder.end()

