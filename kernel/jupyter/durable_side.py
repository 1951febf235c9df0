"""The kernel's durable side: everything of it that needs the durable layer.

:mod:`kernel.jupyter.kernel` imports this module only on its start thread
(:mod:`kernel.jupyter.startup`), after the first kernel_info is answered:
importing the durable layer (the Resonate SDK, the engine, cloudpickle) costs
about half of ipykernel's own start, and a frontend waiting for kernel_info
should not pay for it. Here: opening the session (through a
:class:`SessionKeeper`), the ``%durable`` magics and the ``durable`` object,
and :class:`JupyterCell`, one execute_request as the session drives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from kernel.checkpoint.lazy import PENDING
from kernel.core.ids import msg_id_of
from kernel.core.models import CellOutcome, ExecutionParams
from kernel.core.notices import BROKEN, NoticeBook, Notify
from kernel.durable.cells import RanCell
from kernel.core.interrupts import MAIN as INTERRUPTS
from kernel.core.telemetry import install_telemetry
from kernel.durable.keeper import SessionKeeper, reconnect_interval
from kernel.durable.observed import execute_traced
from kernel.durable.session import DurableSession
from kernel.durable.skipped import SkippedNames
from kernel.jupyter.durable_object import DurableAPI
from kernel.jupyter.magics import DurableMagics
from kernel.jupyter.outputs import OutputRecorder, flush_std, publish
from kernel.store.large_outputs import resolve
from kernel.jupyter.replies import outcome_of_reply, outcome_of_run, stored_reply, timings

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from resonate.types import PromiseRecord

    from kernel.core.clock import Clock
    from kernel.core.settings import Settings
    from kernel.jupyter.session_state import SessionState
    from kernel.jupyter.stdin import FrontendStdin


__all__ = ["JupyterCell", "attach", "execute_traced", "run_nested", "settle_restored"]


class KernelSide(Protocol):
    """What of :class:`kernel.jupyter.kernel.DurableKernel` this module uses."""

    settings: Settings
    clock: Clock
    shell: InteractiveShell | None
    recorder: OutputRecorder
    session_state: SessionState | None
    session: Any
    iopub_socket: Any
    parent: Any
    durable: DurableSession | None
    notice: Notify
    notice_book: NoticeBook

    def _topic(self, topic: str) -> bytes: ...
    def _flush_notices(self, parent: dict[str, Any]) -> None: ...
    def _show_stored(self, outputs: list[dict[str, Any]]) -> None: ...
    def _prompt_channel(self) -> FrontendStdin | None: ...
    def interrupted_reply(self, parent: dict[str, Any], why: str = ...) -> dict[str, Any]: ...


def attach(kernel: KernelSide) -> SessionKeeper:
    """Give ``kernel`` its ``%durable`` magics and ``durable`` object, and the
    keeper that opens its session (call :meth:`SessionKeeper.open`). OpenTelemetry's
    providers are installed first (PYREPL3_OTEL_SETUP), before any cell's span."""
    install_telemetry(kernel.settings)
    shell = kernel.shell
    skipped = SkippedNames()  # outlives a reconnect: a name is reported once, not once per session
    connection_file = getattr(kernel.parent, "connection_file", "") or ""
    keeper = SessionKeeper(
        lambda: DurableSession.open(
            kernel, kernel.settings, connection_file=connection_file, skipped=skipped, clock=kernel.clock,
            namespace_hidden=shell.user_ns_hidden if shell is not None else None,
            session_state=kernel.session_state,
        ),
        kernel.notice,
        interval=reconnect_interval(kernel.settings),
    )
    if shell is not None:
        shell.register_magics(
            DurableMagics(shell, session=lambda: kernel.durable, show=kernel._show_stored, notices=kernel.notice_book.lines)
        )
        shell.user_ns["durable"] = DurableAPI(lambda: kernel.durable, kernel._prompt_channel)
        shell.user_ns_hidden["durable"] = shell.user_ns["durable"]
    return keeper


def run_nested(kernel: KernelSide, execution_id: str, params: ExecutionParams) -> CellOutcome:
    """Run a resumed execution's code inside the current request, its outputs
    recorded apart from the request's own."""
    assert kernel.shell is not None
    started = kernel.clock.wall()
    kernel.recorder.push()
    try:
        result = kernel.shell.run_cell(params.code, store_history=False, silent=False)
    finally:
        flush_std()
        outputs = kernel.recorder.pop()
    error = result.error_before_exec or result.error_in_exec
    return outcome_of_run(execution_id, params.execution_count, error, outputs, timings(started, kernel.clock.wall()))


class JupyterCell:
    """One execute_request, as :meth:`DurableSession.execute` drives it
    (:class:`kernel.durable.cells.CellRequest`)."""

    def __init__(self, kernel: KernelSide, run_code: Callable[[], Awaitable[dict[str, Any]]], parent: dict[str, Any]) -> None:
        self.kernel = kernel
        self.run_code = run_code
        self.parent = parent

    def show_notices(self) -> None:
        self.kernel._flush_notices(self.parent)

    async def run(self, execution_id: str) -> RanCell[dict[str, Any]]:
        kernel = self.kernel
        started = kernel.clock.wall()
        kernel.recorder.begin(msg_id_of(execution_id))
        try:
            with INTERRUPTS.delivered():  # only the cell's code takes interrupts (kernel.core.interrupts)
                reply = await self.run_code()
        finally:
            flush_std()
            outputs = kernel.recorder.end()
        return RanCell(reply, outcome_of_reply(execution_id, reply, outputs, timings(started, kernel.clock.wall())))

    async def run_without_durability(self) -> dict[str, Any]:
        with INTERRUPTS.delivered():
            return await self.run_code()

    def interrupted(self) -> dict[str, Any]:
        return self.kernel.interrupted_reply(self.parent, "interrupted while the kernel was starting or ending the cell")

    def replay(self, record: PromiseRecord) -> dict[str, Any]:
        """Publish the stored outputs of an execution and return its stored reply."""
        outputs, reply = stored_reply(record)
        ds = self.kernel.durable
        outputs = resolve(outputs, ds.history.checkpointer.blobs if ds is not None else None)
        publish(self.kernel.session, self.kernel.iopub_socket, self.parent, outputs, self.kernel._topic)
        return reply


def settle_restored(kernel: Any, code: str | None, expressions: dict[str, Any] | None) -> None:
    """Restored arrays still arriving (:mod:`kernel.checkpoint.lazy`): wait for those a request running
    ``code`` may reach (None: all); name those whose data failed its check (taken out of the namespace)."""
    if not PENDING:
        return
    try:
        cell = None if code is None else kernel.shell.transform_cell(code)
    except Exception:  # noqa: BLE001 - then anything may be reached
        cell = None
    source = None if cell is None else "\n".join([cell, *(f"(\n{e}\n)" for e in (expressions or {}).values())])
    for names, why in PENDING.settle(source, kernel.shell.user_ns):
        kernel.notice(f"skipped {', '.join(names)}: {why}", BROKEN)
