"""``DurableKernel``: ipykernel's IPython kernel, with every cell a durable execution.

This module only glues the Jupyter protocol to the durable session
(:class:`kernel.durable.session.DurableSession`, which owns the cell protocol):
an execute_request becomes :meth:`DurableSession.execute` with a
:class:`JupyterCell` that runs the code through ipykernel, records its outputs
and publishes stored ones again. Everything else (completion, inspection,
history, display, magics, comms, interrupts) is ipykernel's, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from ipykernel.ipkernel import IPythonKernel
from ipykernel.thread import CONTROL_THREAD_NAME
from resonate.types import PromiseRecord
from traitlets import Enum, Float, Unicode

from kernel import __version__
from kernel.core.clock import SYSTEM
from kernel.core.errors import EngineConnectionError
from kernel.core.ids import msg_id_of
from kernel.core.settings import Settings
from kernel.core.models import CellOutcome, ExecutionParams
from kernel.core.notices import BROKEN, INFO, SILENCE_HINT, NoticeBook, NoticeLevel
from kernel.durable.cells import RanCell
from kernel.durable.interrupts import MAIN as INTERRUPTS
from kernel.durable.keeper import SessionKeeper, reconnect_interval
from kernel.durable.session import DurableSession, SkippedNames
from kernel.jupyter.durable_object import DurableAPI
from kernel.jupyter.magics import DurableMagics
from kernel.jupyter.outputs import OutputRecorder, flush_std, publish
from kernel.jupyter.session_state import SessionState
from kernel.jupyter.replies import outcome_of_reply, outcome_of_run, stored_reply, timings
from kernel.jupyter.restoring import RestoreAtStart
from kernel.jupyter.stdin import FrontendStdin

if TYPE_CHECKING:
    from kernel.checkpoint.history import StoredCheckpoint

log = logging.getLogger(__name__)
#: The user-facing notices: a broken promise at WARNING (in the server's log by default),
#: informational ones at INFO (with PYREPL3_DEBUG=1): a kernel whose promises hold is
#: as quiet on its stderr as ipykernel (nbclient's tests check that).
notices_log = logging.getLogger("kernel.notices")


def _process_stderr() -> TextIO | None:
    """The kernel process's own stderr, as the Jupyter server (or terminal) sees it.

    ipykernel's ``OutStream(watchfd=True)`` points file descriptor 2 at a pipe
    whose every byte it forwards into the running cell's output (and to the
    original stderr); it keeps a dup of the original in
    ``_original_stdstream_copy``. Writing there reaches the server's log and
    never a cell. Our own dup of it, so ipykernel closing its copy at shutdown
    does not close ours. ``sys.__stderr__`` when fd 2 is not redirected."""
    original = getattr(sys.stderr, "_original_stdstream_copy", None)
    if isinstance(original, int):
        try:
            return os.fdopen(os.dup(original), "w", buffering=1, encoding="utf-8", errors="replace")
        except OSError:
            pass
    return sys.__stderr__


def _route_logs(debug: bool) -> None:
    """Send PyREPL3's (and resonate's) log records to the kernel process's real
    stderr, never into a cell: not to ``sys.stderr`` (ipykernel's OutStream, the
    running cell) nor to fd 2 (forwarded into the running cell as well)."""
    for name in ("kernel", "resonate"):
        package = logging.getLogger(name)
        if not package.handlers:
            handler = logging.StreamHandler(_process_stderr())
            handler.setFormatter(logging.Formatter("[PyREPL3] %(levelname)s | %(name)s | %(message)s"))
            package.addHandler(handler)
            package.propagate = False
        package.setLevel(logging.INFO if debug else logging.WARNING)


class DurableKernel(IPythonKernel):
    # implementation / implementation_version stay IPythonKernel's ("ipython" and
    # IPython's version): frontends and ipykernel's message-spec tests key on them.
    # PyREPL3 says who it is in kernel_info's added "pyrepl3" field and the banner.

    @property
    def banner(self) -> str:  # type: ignore[override]
        return f"{super().banner.rstrip()}\nPyREPL3 {__version__} -- every cell a durable execution (%durable)\n"

    @property
    def kernel_info(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().kernel_info, "pyrepl3": {"version": __version__}}

    home = Unicode(
        "",
        config=True,
        help="Root directory of the durable store (PYREPL3_HOME overrides it; "
        "default <jupyter data dir>/pyrepl3).",
    )

    input_timeout = Float(
        86400.0,
        config=True,
        help="Seconds an input()/getpass()/approval prompt waits for an answer before "
        "failing with a timeout (PYREPL3_INPUT_TIMEOUT overrides it).",
    )
    headless_input = Enum(
        ["wait", "raise"],
        "raise",
        config=True,
        help="When the frontend does not allow stdin: 'raise' StdinNotImplementedError as "
        "ipykernel does, or 'wait' for an out-of-band answer (pyrepl3 answer; what "
        "`pyrepl3 run` uses). PYREPL3_HEADLESS_INPUT overrides it.",
    )

    store = Unicode(
        "",
        config=True,
        help="The durable engine: empty or a directory = the embedded store; postgresql://... = "
        "Postgres with the resonate-pg schema; http(s)://... = a Resonate server "
        "(PYREPL3_STORE overrides it).",
    )

    notices_to = Enum(
        ["cell", "log"],
        "cell",
        config=True,
        help="Where PyREPL3's messages about a broken promise (durability off, a failed restore) "
        "go: the kernel's log and the next cell's stderr ('cell'), or only the kernel's log ('log'; "
        "what `pyrepl3 run` uses). Informational ones (what was restored or skipped) only ever go "
        "to the log and %durable. PYREPL3_NOTICES overrides it.",
    )

    #: The traitlets that are also settings (see :mod:`kernel.core.settings`).
    SETTING_TRAITS = ("home", "store", "input_timeout", "headless_input", "notices_to")

    def __init__(self, **kwargs: Any) -> None:
        _route_logs(debug=False)
        super().__init__(**kwargs)
        self.settings = Settings.load(traits=self._configured_settings())
        _route_logs(debug=self.settings.debug)
        self.clock = SYSTEM
        self.notices: list[str] = []
        self.notice_book = NoticeBook()
        for name in ("notices_to", "headless_input"):  # the kernel's own: a wrong one falls back, named
            setattr(self, name, getattr(self.settings, name))
            if problem := self.settings.problems.get(name):
                self.notice(f"{problem}; using {getattr(self.settings, name)!r}", BROKEN)
        self.recorder = OutputRecorder(self.session)
        self.durable: DurableSession | None = None
        skipped = SkippedNames()  # outlives a reconnect: a name is reported once, not once per session
        connection_file = getattr(self.parent, "connection_file", "") or ""
        # cwd, sys.path, env, extensions, %config, matplotlib: kept with every checkpoint, back before the namespace
        self.session_state = SessionState(self.shell, self.notice) if self.shell is not None else None
        self.keeper = SessionKeeper(
            lambda: DurableSession.open(
                self, self.settings, connection_file=connection_file, skipped=skipped, clock=self.clock,
                namespace_hidden=self.shell.user_ns_hidden if self.shell is not None else None,
                session_state=self.session_state,
            ),
            self.notice,
            interval=reconnect_interval(self.settings),
        )
        self.durable = self.keeper.open()
        #: The session's namespace comes back in the background once kernel_info is answered (kernel.jupyter.restoring).
        self.restoring: RestoreAtStart[StoredCheckpoint] = RestoreAtStart(self._restored_checkpoint, self._continue_numbering)
        if self.shell is not None:
            self.shell.register_magics(
                DurableMagics(self.shell, session=lambda: self.durable, show=self._show_stored, notices=self.notice_book.lines)
            )
            self.shell.user_ns["durable"] = DurableAPI(lambda: self.durable, self._prompt_channel)
            self.shell.user_ns_hidden["durable"] = self.shell.user_ns["durable"]
            self.session_state.watch()

    def _configured_settings(self) -> dict[str, Any]:
        """The setting traitlets the user configured (those not at their defaults)."""
        traits = self.traits()
        return {name: getattr(self, name) for name in self.SETTING_TRAITS if getattr(self, name) != traits[name].default()}

    def _restore_namespace(self) -> None:
        """A kernel (re)connecting to a session with checkpoints gets its namespace back."""
        self._continue_numbering(self._restored_checkpoint())

    def _restored_checkpoint(self) -> StoredCheckpoint | None:
        """Restore the session's latest checkpoint (on the restoring thread at start)."""
        return self.durable.restore_latest() if self.durable is not None and self.shell is not None else None

    def _continue_numbering(self, restored: StoredCheckpoint | None) -> None:
        """Continue the session's numbering, so "after execution N" stays unambiguous."""
        if restored is not None and restored.execution_count is not None:
            self.shell.execution_count = restored.execution_count + 1

    # -- user-facing notices -------------------------------------------------

    def notice(self, text: str, level: NoticeLevel = INFO) -> None:
        """Tell the user something (:mod:`kernel.core.notices`): always ``%durable``
        and the kernel log (INFO ones only with PYREPL3_DEBUG=1); a ``BROKEN``
        promise also the next cell's stderr, unless ``notices_to == "log"``.
        Informational notices never reach a notebook's outputs, so a notebook
        looks as it does under ipykernel."""
        self.notice_book.add(text, level)
        notices_log.log(logging.WARNING if level is BROKEN else logging.INFO, "%s", text)
        if level is BROKEN and self.notices_to == "cell":
            self.notices.append(f"PyREPL3: {text}\n")

    def _flush_notices(self, parent: dict[str, Any]) -> None:
        if not self.notices:
            return
        text, self.notices = "".join(self.notices) + f"PyREPL3: {SILENCE_HINT}\n", []
        self.session.send(self.iopub_socket, "stream", {"name": "stderr", "text": text}, parent, ident=self._topic("stream"))

    def _show_stored(self, outputs: list[dict[str, Any]]) -> None:
        """``%durable outputs``: publish stored outputs in the running cell (its
        results as displays, so the cell gets no second ``Out[N]``)."""
        flush_std()
        shown = [{**o, "output_type": "display_data"} if o.get("output_type") == "execute_result" else o for o in outputs]
        publish(self.session, self.iopub_socket, self.get_parent(), shown, self._topic)

    # -- execution -----------------------------------------------------------

    #: Closed once the execute_reply is sent: holds the interrupts of a cell that is done.
    _until_replied: contextlib.ExitStack | None = None

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """ipykernel's, with an interrupt that lands once the cell's code has finished held
        until the reply is sent (logged, not delivered): ipykernel would otherwise lose the
        reply, or send it cut short. The cell itself stays interruptible."""
        if threading.current_thread() is not threading.main_thread():
            return await super().execute_request(stream, ident, parent)  # type: ignore[no-any-return]
        self._until_replied = until_replied = contextlib.ExitStack()
        try:
            await super().execute_request(stream, ident, parent)
        finally:
            self._until_replied = None
            until_replied.close()

    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        await self.restoring.wait()
        run_code = functools.partial(
            super().do_execute, code, silent, store_history, user_expressions, allow_stdin, cell_meta=cell_meta, cell_id=cell_id
        )
        # The request being handled on this thread: get_parent("shell") on the
        # control thread is the last *shell* request, which would be replayed.
        parent = self.get_parent() or {}
        msg_id = (parent.get("header") or {}).get("msg_id")
        if threading.current_thread().name == CONTROL_THREAD_NAME:
            # Out of band (it may run while a shell cell runs): as ipykernel runs it, not
            # a durable execution, since the session runs one cell at a time.
            return await run_code()
        ds = self._durable_session()
        if ds is None or silent or not msg_id:
            if not silent:
                self._flush_notices(parent)
            return await run_code()
        count = self.shell.execution_count if store_history else self.shell.execution_count - 1
        return await ds.execute(msg_id, code, count, cell_id, JupyterCell(self, run_code, parent))

    def _durable_session(self) -> DurableSession | None:
        """The durable session for the next cell: a lost engine is noticed here,
        and a session the keeper re-opened in the background is taken up."""
        ds = self.durable
        if ds is not None and not ds.healthy():
            self.durability_lost(ds, EngineConnectionError(f"the connection to the {ds.store_path} was lost"))
        if self.durable is None and (fresh := self.keeper.poll()) is not None:
            self.durable = fresh
            if self.shell.execution_count <= 1:
                self._restore_namespace()
            else:
                self.notice(
                    "the namespace was not restored, since cells ran while durability was off; "
                    "`%durable checkpoints` and `%durable restore N` bring back a saved one"
                )
        return self.durable

    # -- what the durable session asks of the kernel (kernel.durable.cells.SessionHost)

    def namespace(self) -> dict[str, Any]:
        return self.shell.user_ns

    def transformed(self, code: str) -> str | None:
        return self.shell.transform_cell(code)

    def durability_lost(self, session: Any, why: BaseException | str) -> None:
        if self.durable is session:
            self.durable = None
            self.keeper.lost(session, why)

    def run_nested(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        """Run a resumed execution's code inside the current request, its outputs
        recorded apart from the request's own."""
        started = self.clock.wall()
        self.recorder.push()
        try:
            result = self.shell.run_cell(params.code, store_history=False, silent=False)
        finally:
            flush_std()
            outputs = self.recorder.pop()
        error = result.error_before_exec or result.error_in_exec
        return outcome_of_run(execution_id, params.execution_count, error, outputs, timings(started, self.clock.wall()))

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:  # type: ignore[override]
        await self.restoring.wait()  # completes the restored names, not a namespace being filled
        return super().do_complete(code, cursor_pos)  # type: ignore[no-any-return]

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()) -> dict[str, Any]:  # type: ignore[override]
        await self.restoring.wait()
        return super().do_inspect(code, cursor_pos, detail_level, omit_sections)  # type: ignore[no-any-return]

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        await super().kernel_info_request(stream, ident, parent)
        # The frontend knows the kernel is up: now the namespace comes back (an
        # execute that comes first starts the restore itself, and waits for it).
        self.restoring.start()

    def start(self) -> None:
        super().start()
        ds = self.durable
        if ds is not None and ds.resumes_at_start:
            self.io_loop.add_callback(self._auto_resume)

    async def _auto_resume(self) -> None:
        """PYREPL3_AUTO_RESUME: resume interrupted executions as soon as the kernel runs
        (in the restored namespace)."""
        await self.restoring.wait()
        ds = self.durable
        if ds is None:
            return
        request = self.session.msg("execute_request", {"code": "%durable resume", "silent": False})
        self.set_parent([], request, "shell")
        self.recorder.begin(request["header"]["msg_id"])
        try:
            for line in ds.resume_interrupted():
                self.notice(f"auto-resume: {line}")
        except Exception:
            log.exception("auto-resume failed")
        finally:
            self.recorder.end()

    # -- prompts -------------------------------------------------------------

    def _prompting_session(self) -> DurableSession | None:
        """The session, when prompts become promises of a running execution."""
        ds = self.durable
        if ds is None or not ds.executing or (not self._allow_stdin and self.headless_input == "raise"):
            return None
        return ds

    def _prompt_channel(self) -> FrontendStdin | None:
        return FrontendStdin(self) if self._allow_stdin else None

    def raw_input(self, prompt: str = "") -> str:
        ds = self._prompting_session()
        if ds is None:
            return super().raw_input(prompt)
        return ds.ask(str(prompt), channel=self._prompt_channel())

    def getpass(self, prompt: str = "", stream: Any = None, **kwargs: Any) -> str:
        ds = self._prompting_session()
        if ds is None:
            return super().getpass(prompt, stream, **kwargs)
        return ds.ask(str(prompt), password=True, channel=self._prompt_channel())

    def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        self.restoring.join(timeout=30.0)
        self.keeper.close()
        if self.durable is not None:
            self.durable.close()
            self.durable = None
        return super().do_shutdown(restart)


class JupyterCell:
    """One execute_request, as :meth:`DurableSession.execute` drives it
    (:class:`kernel.durable.cells.CellRequest`)."""

    def __init__(self, kernel: DurableKernel, run_code: Callable[[], Awaitable[dict[str, Any]]], parent: dict[str, Any]) -> None:
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
            reply = await self.run_code()
            if kernel._until_replied is not None:
                kernel._until_replied.enter_context(INTERRUPTS.deferred(redeliver=False, what="the end of a cell and its reply"))
        finally:
            flush_std()
            outputs = kernel.recorder.end()
        return RanCell(reply, outcome_of_reply(execution_id, reply, outputs, timings(started, kernel.clock.wall())))

    async def run_without_durability(self) -> dict[str, Any]:
        return await self.run_code()

    def interrupted(self) -> dict[str, Any]:
        kernel = self.kernel
        why = "interrupted while the kernel was starting or ending the cell"
        error = {"ename": "KeyboardInterrupt", "evalue": why, "traceback": [f"KeyboardInterrupt: {why}"]}
        kernel.session.send(kernel.iopub_socket, "error", error, self.parent, ident=kernel._topic("error"))
        return {"status": "error", "execution_count": kernel.shell.execution_count, "user_expressions": {}, "payload": [], **error}

    def replay(self, record: PromiseRecord) -> dict[str, Any]:
        """Publish the stored outputs of an execution and return its stored reply."""
        outputs, reply = stored_reply(record)
        publish(self.kernel.session, self.kernel.iopub_socket, self.parent, outputs, self.kernel._topic)
        return reply
