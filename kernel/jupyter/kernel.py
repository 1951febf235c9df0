"""``DurableKernel``: ipykernel's IPython kernel, with every cell a durable execution.

This module only glues the Jupyter protocol to the durable session
(:class:`kernel.durable.session.DurableSession`, which owns the cell protocol):
an execute_request becomes :meth:`DurableSession.execute` with a
:class:`kernel.jupyter.durable_side.JupyterCell` that runs the code through
ipykernel, records its outputs and publishes stored ones again. Everything
else (completion, inspection, history, display, magics, comms, interrupts) is
ipykernel's, unchanged. Nothing of the durable layer is imported here: the
durable side (:mod:`kernel.jupyter.durable_side`) is imported, and the session
opened, in the background once kernel_info is answered, so the kernel starts
as fast as ipykernel does.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from ipykernel.ipkernel import IPythonKernel
from ipykernel.thread import CONTROL_THREAD_NAME
from traitlets import Enum, Float, Unicode

from kernel import __version__
from kernel.core.clock import SYSTEM
from kernel.core.errors import EngineConnectionError
from kernel.core.interrupts import MAIN as INTERRUPTS
from kernel.core.interrupts import Deferral
from kernel.core.settings import Settings
from kernel.core.notices import BROKEN, INFO, SILENCE_HINT, NoticeBook, NoticeLevel
from kernel.jupyter.outputs import OutputRecorder, flush_std, publish
from kernel.jupyter.session_state import SessionState
from kernel.jupyter.startup import BackgroundStart
from kernel.jupyter.stdin import FrontendStdin

if TYPE_CHECKING:
    from kernel.checkpoint.history import StoredCheckpoint
    from kernel.core.models import CellOutcome, ExecutionParams
    from kernel.durable.keeper import SessionKeeper
    from kernel.durable.session import DurableSession

#: A kernel whose frontend never asks for kernel_info still opens its session after this many seconds.
START_WITHOUT_KERNEL_INFO = 1.0

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


#: The loggers of PyREPL3 and of the libraries under its engines. A record of one
#: without a handler would reach logging's last resort, ``sys.stderr``: the running cell.
ROUTED_LOGGERS = ("kernel", "resonate", "resonate_base", "resonate_pg", "psycopg", "psycopg_pool")


def _route_logs(debug: bool) -> None:
    """Send PyREPL3's (and its engines' libraries') log records to the kernel
    process's real stderr, never into a cell: not to ``sys.stderr`` (ipykernel's
    OutStream, the running cell) nor to fd 2 (forwarded into the running cell as well)."""
    for name in ROUTED_LOGGERS:
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
        self._expressions: list[str] = []  # the running request's user_expressions
        self.durable: DurableSession | None = None
        self.keeper: SessionKeeper | None = None
        # cwd, sys.path, env, extensions, %config, matplotlib: kept with every checkpoint, back before the namespace
        self.session_state = SessionState(self.shell, self.notice) if self.shell is not None else None
        #: The session opens and its namespace comes back in the background once kernel_info is answered
        #: (kernel.jupyter.startup); every request that needs them waits.
        self.startup: BackgroundStart[StoredCheckpoint] = BackgroundStart(self._open_and_restore, self._finish_start)
        if self.session_state is not None:
            self.session_state.watch()

    def _configured_settings(self) -> dict[str, Any]:
        """The setting traitlets the user configured (those not at their defaults)."""
        traits = self.traits()
        return {name: getattr(self, name) for name in self.SETTING_TRAITS if getattr(self, name) != traits[name].default()}

    def _restore_namespace(self) -> None:
        """A kernel (re)connecting to a session with checkpoints gets its namespace back."""
        self._continue_numbering(self._restored_checkpoint())

    def _open_and_restore(self) -> StoredCheckpoint | None:
        """On the start thread: attach the durable side, open the session and
        restore its latest checkpoint; then resume at start if asked to."""
        from kernel.jupyter.durable_side import attach  # noqa: PLC0415 - not before kernel_info: see kernel.jupyter.startup

        self.keeper = attach(self)
        self.durable = self.keeper.open()
        restored = self._restored_checkpoint()
        if self.durable is not None and self.durable.resumes_at_start:
            self.io_loop.add_callback(self.startup.wait)  # thread-safe: so it resumes with no request waiting
        return restored

    def _restored_checkpoint(self) -> StoredCheckpoint | None:
        """Restore the session's latest checkpoint."""
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

    #: The interrupts held while an execute_request is handled on the main thread
    #: (:mod:`kernel.core.interrupts`): from ipykernel's pre_handler_hook to its post_handler_hook.
    _request_span: Deferral | None = None

    def _handling_execute(self) -> bool:
        parent = self.get_parent() or {}
        return threading.current_thread() is threading.main_thread() and (parent.get("header") or {}).get("msg_type") == "execute_request"

    def pre_handler_hook(self) -> None:
        """ipykernel delivers interrupts for the whole of a request; an execute_request
        here holds them, and only its cell's code takes them (:meth:`Interrupts.delivered`):
        one landing anywhere else would lose the execute_reply."""
        if not self._handling_execute():
            return super().pre_handler_hook()  # type: ignore[no-any-return]
        self.saved_sigint_handler = signal.getsignal(signal.SIGINT)
        self._request_span = INTERRUPTS.hold(redeliver=True, what="an execute_request outside its cell's code")
        return None

    def post_handler_hook(self) -> None:
        span, self._request_span = self._request_span, None
        if span is None:
            return super().post_handler_hook()  # type: ignore[no-any-return]
        # Straight from holding to the handler ipykernel keeps between requests: no instant delivers.
        if INTERRUPTS.release(span, into=self.saved_sigint_handler):
            log.info("an interrupt outside the cell's code was held until its reply was sent")
        return None

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """ipykernel's; an interrupt that escapes it (it lands as the cell's code ends,
        outside the code) is answered as an interrupted cell, never left without a reply."""
        self._replied = False
        try:
            await super().execute_request(stream, ident, parent)
        except KeyboardInterrupt:
            if self._request_span is None or self._replied:
                raise
            reply = self.interrupted_reply(parent)
            self.session.send(stream, "execute_reply", reply, parent, metadata=self.finish_metadata(parent, self.init_metadata(parent), reply), ident=ident)
            if not parent["content"].get("silent", False) and parent["content"].get("stop_on_error", True):
                self._abort_queues(parent["header"].get("subshell_id"))

    def finish_metadata(self, parent: Any, metadata: Any, reply_content: Any) -> Any:
        self._replied = True  # called just before the reply is sent: it is no longer owed
        return super().finish_metadata(parent, metadata, reply_content)

    def interrupted_reply(self, parent: dict[str, Any], why: str = "interrupted outside the cell's code") -> dict[str, Any]:
        """The reply (and the error output) of a request whose cell was interrupted
        before or after its code ran, as ipykernel answers an interrupted cell."""
        error = {"ename": "KeyboardInterrupt", "evalue": why, "traceback": [f"KeyboardInterrupt: {why}"]}
        self.session.send(self.iopub_socket, "error", error, parent, ident=self._topic("error"))
        assert self.shell is not None
        return {"status": "error", "execution_count": self.shell.execution_count, "user_expressions": {}, "payload": [], **error}

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
        await self.startup.wait()
        self._settle_restored(code, user_expressions)
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
            with INTERRUPTS.delivered():
                return await run_code()
        from kernel.jupyter.durable_side import JupyterCell, execute_traced  # noqa: PLC0415 - imported by the start thread already

        count = self.shell.execution_count if store_history else self.shell.execution_count - 1
        self._expressions = [str(e) for e in (user_expressions or {}).values()]
        return await execute_traced(ds, msg_id, code, count, cell_id, JupyterCell(self, run_code, parent))

    def _durable_session(self) -> DurableSession | None:
        """The durable session for the next cell: a lost engine is noticed here,
        and a session the keeper re-opened in the background is taken up."""
        ds = self.durable
        if ds is not None and not ds.healthy():
            self.durability_lost(ds, EngineConnectionError(f"the connection to the {ds.store_path} was lost"))
        if self.durable is None and self.keeper is not None and (fresh := self.keeper.poll()) is not None:
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
        """What the request ran, for the checkpoint's scan: the transformed cell, then the
        request's user_expressions (ipykernel evaluates them in the namespace after the
        cell, and an expression may mutate what it names: ``acc.append(7) or len(acc)``)."""
        history = self.shell.history_manager
        if history is not None and history.input_hist_raw and history.input_hist_raw[-1] == code:
            cell = history.input_hist_parsed[-1]  # IPython stored this cell's transform as it ran it
        else:
            cell = self.shell.transform_cell(code)
        return "\n".join([cell, *(f"(\n{e}\n)" for e in self._expressions)]) if self._expressions else cell

    def durability_lost(self, session: Any, why: BaseException | str) -> None:
        if self.durable is session:
            self.durable = None
            self.keeper.lost(session, why)

    def run_nested(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        from kernel.jupyter.durable_side import run_nested  # noqa: PLC0415 - imported by the start thread already

        return run_nested(self, execution_id, params)

    def _settle_restored(self, code: str | None, expressions: dict[str, Any] | None = None) -> None:
        """Restored arrays still arriving (kernel.checkpoint.lazy): wait for those this request may reach (None: all)."""
        from kernel.jupyter.durable_side import settle_restored  # noqa: PLC0415 - imported by the start thread already

        settle_restored(self, code, expressions)

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:  # type: ignore[override]
        await self.startup.wait()  # completes the restored names, not a namespace being filled
        self._settle_restored(None)
        return super().do_complete(code, cursor_pos)  # type: ignore[no-any-return]

    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()) -> dict[str, Any]:  # type: ignore[override]
        await self.startup.wait()
        self._settle_restored(None)
        return super().do_inspect(code, cursor_pos, detail_level, omit_sections)  # type: ignore[no-any-return]

    async def kernel_info_request(self, stream: Any, ident: Any, parent: Any) -> None:
        await super().kernel_info_request(stream, ident, parent)
        # The frontend knows the kernel is up: now the session opens and the namespace
        # comes back (an execute that comes first starts this itself, and waits for it).
        self.startup.start()

    def start(self) -> None:
        super().start()
        # A frontend asks for kernel_info at once; a kernel nobody asks still opens its session.
        self.io_loop.call_later(START_WITHOUT_KERNEL_INFO, self.startup.start)

    def _finish_start(self, restored: StoredCheckpoint | None) -> None:
        """On the kernel's thread, before the first request that needs the session:
        continue the numbering, and resume interrupted executions if
        PYREPL3_AUTO_RESUME asks (before any new cell could reject them)."""
        self._continue_numbering(restored)
        ds = self.durable
        if ds is not None and ds.resumes_at_start:
            self._auto_resume(ds)

    def _auto_resume(self, ds: DurableSession) -> None:
        """PYREPL3_AUTO_RESUME: resume interrupted executions in the restored
        namespace, under a request of their own (the waiting request's parent
        is set back afterwards, so its outputs stay its own)."""
        ident, parent = self._shell_parent_ident.get([]), self._shell_parent.get({})
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
            self.set_parent(ident, parent, "shell")

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
        self.startup.join(timeout=30.0)
        if self.keeper is not None:
            self.keeper.close()
        if self.durable is not None:
            self.durable.close()
            self.durable = None
        return super().do_shutdown(restart)
