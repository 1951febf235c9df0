"""``DurableKernel``: ipykernel's IPython kernel, with every cell a durable execution.

This module only glues the Jupyter protocol to the durable runtime: it turns an
execute_request into ``exec:<msg_id>``, runs the cell when the runtime hands it
back, and replays stored outputs for a msg_id that already ran. Everything else
(completion, inspection, history, display, magics, comms, interrupts) is
ipykernel's, unchanged.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import time
import uuid
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from resonate.types import PromiseRecord
import zmq
from traitlets import Enum, Float, TraitError, Unicode

from kernel import __version__
from kernel.core.errors import EngineConnectionError, PyRepl3Error
from kernel.core.ids import exec_id
from kernel.core.models import CellError, CellResult, ExecutionParams, Timings
from kernel.jupyter.outputs import OutputRecorder, flush_std, publish
from kernel.jupyter.resume import ResumeMixin
from kernel.durable.runtime import ResolvedPromise
from kernel.durable.session import DurableSession, SessionKeeper, reconnect_interval
from kernel.store.records import error_of

log = logging.getLogger(__name__)


def _route_logs() -> None:
    """Send PyREPL3's log records to the kernel process's real stderr (the
    terminal or the Jupyter server log). Without a handler, Python would print
    them on ``sys.stderr``, which ipykernel redirects into the running cell."""
    package = logging.getLogger("kernel")
    if not package.handlers:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logging.Formatter("[PyREPL3] %(levelname)s | %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO if os.environ.get("PYREPL3_DEBUG") else logging.WARNING)
        package.propagate = False

#: Seconds a re-sent msg_id waits for its earlier execution to be settled before replaying.
REPLAY_WAIT = 10.0


class DurableKernel(ResumeMixin, IPythonKernel):
    implementation = "pyrepl3"
    implementation_version = __version__
    banner = "PyREPL3 — Python with durable execution (IPython kernel)"

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
        "wait",
        config=True,
        help="When the frontend does not allow stdin: 'wait' for an out-of-band answer "
        "(pyrepl3 answer), or 'raise' StdinNotImplementedError as ipykernel does "
        "(PYREPL3_HEADLESS_INPUT overrides it).",
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
        help="Where PyREPL3's own messages go: the next cell's stderr ('cell'), or only the "
        "kernel's log ('log'; what `pyrepl3 run` uses so output notebooks hold only the cells' "
        "own outputs). PYREPL3_NOTICES overrides it.",
    )

    def __init__(self, **kwargs: Any) -> None:
        _route_logs()
        super().__init__(**kwargs)
        self.notices: list[str] = []
        self._setting_from_env("PYREPL3_NOTICES", "notices_to")
        self._setting_from_env("PYREPL3_HEADLESS_INPUT", "headless_input")
        self._skipped_reported: dict[str, str] = {}
        self.recorder = OutputRecorder(self.session)
        self.durable: DurableSession | None = None
        connection_file = getattr(self.parent, "connection_file", "") or ""
        self.keeper = SessionKeeper(
            lambda: DurableSession.open(
                home=self.home, store=self.store, connection_file=connection_file, input_timeout=self.input_timeout,
                namespace_hidden=self.shell.user_ns_hidden if self.shell is not None else None,
            ),
            self._notice,
            interval=reconnect_interval(os.environ),
        )
        self.durable = self.keeper.open()
        from kernel.jupyter.durable_object import DurableAPI
        from kernel.jupyter.magics import DurableMagics

        if self.shell is not None:
            self.shell.register_magics(DurableMagics(self.shell, kernel=self))
            self.shell.user_ns["durable"] = DurableAPI(self)
            self.shell.user_ns_hidden["durable"] = self.shell.user_ns["durable"]
            self._restore_namespace()

    def _setting_from_env(self, variable: str, trait: str) -> None:
        """An environment variable overrides a traitlet; a wrong value is named, not fatal."""
        value = os.environ.get(variable)
        if not value:
            return
        try:
            setattr(self, trait, value)
        except TraitError:
            allowed = ", ".join(self.traits()[trait].values)
            self._notice(f"{variable}={value!r} is not one of {allowed}; using {getattr(self, trait)!r}")

    def _restore_namespace(self) -> None:
        """A kernel starting for a session with checkpoints gets its namespace back."""
        ds = self.durable
        if ds is None:
            return
        try:
            restored = ds.checkpoints.restore_latest(self.shell.user_ns)
        except PyRepl3Error as exc:
            self._notice(f"the namespace was not restored: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - never fail the kernel start over it
            log.exception("restoring the namespace failed")
            self._notice(f"the namespace was not restored: {type(exc).__name__}: {exc}")
            return
        if restored is not None:
            checkpoint, report = restored
            self._notice(f"namespace of execution {checkpoint.execution_count} is back: {report.summary()}")
            self._skipped_reported = dict(report.skipped)
            if checkpoint.execution_count is not None:
                # Continue the session's numbering, so "after execution N" stays unambiguous.
                self.shell.execution_count = checkpoint.execution_count + 1

    def _capture(self, ds: DurableSession, code: str, execution_count: int | None, msg_id: str | None) -> list[ResolvedPromise]:
        """Checkpoint the namespace after an execution (the promise that makes it
        the latest is returned for the caller to store); report newly skipped names once."""
        try:
            transformed = self.shell.transform_cell(code)
        except Exception:  # noqa: BLE001 - unknown source means "everything may have changed"
            transformed = None
        try:
            promise, report = ds.checkpoints.capture(
                self.shell.user_ns, code=transformed, execution_count=execution_count, msg_id=msg_id
            )
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint must not fail the cell
            log.exception("checkpoint failed")
            self._notice(f"the namespace after execution {execution_count} was not checkpointed: {type(exc).__name__}: {exc}")
            return []
        # Report a name when it starts being skipped, not again every cell (its
        # reason may be worded differently from one capture to the next).
        fresh = {n: why for n, why in report.skipped.items() if n not in self._skipped_reported}
        self._skipped_reported = dict(report.skipped)
        if fresh:
            listed = "; ".join(f"{n} ({why})" for n, why in sorted(fresh.items()))
            self._notice(f"not saved in the checkpoint: {listed}")
        return [promise]

    # -- user-facing notices -------------------------------------------------

    def _notice(self, text: str) -> None:
        """Queue a one-line message for the user; shown on the next cell's stderr
        (or only logged, to the kernel's stderr, with ``notices = "log"``).

        Logged at INFO when it goes to the cell: ipykernel forwards the process's
        own stderr into the running cell too, so a WARNING would show it twice."""
        if self.notices_to == "cell":
            log.info("PyREPL3: %s", text)
            self.notices.append(f"PyREPL3: {text}\n")
        else:
            log.warning("PyREPL3: %s", text)

    def _flush_notices(self, parent: dict[str, Any]) -> None:
        if not self.notices:
            return
        text, self.notices = "".join(self.notices), []
        self.session.send(self.iopub_socket, "stream", {"name": "stderr", "text": text}, parent, ident=self._topic("stream"))

    # -- execution -----------------------------------------------------------

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
        args = (code, silent, store_history, user_expressions, allow_stdin)
        kw = {"cell_meta": cell_meta, "cell_id": cell_id}
        parent = self.get_parent("shell") or {}
        msg_id = (parent.get("header") or {}).get("msg_id")
        ds = self._durable_session()
        if ds is None or silent or not msg_id:
            if not silent:
                self._flush_notices(parent)
            return await super().do_execute(*args, **kw)

        eid = exec_id(msg_id)
        orphan = self._take_interrupted(ds, eid)
        if orphan is not None:
            # The frontend re-sent a request that a dead kernel was running: resume it.
            self._flush_notices(parent)
            if not self._admit_resume(ds, orphan):
                return self._replay(ds.runtime.wait_settled(eid), parent)
            return await self._run_durably(ds, eid, msg_id, orphan.outcome, orphan.params.execution_count, args, kw)

        count = self.shell.execution_count if store_history else self.shell.execution_count - 1
        params = ExecutionParams(
            session=ds.session,
            msg_id=msg_id,
            code=code,
            execution_count=count,
            cell_id=cell_id,
            kernel_pid=os.getpid(),
            nonce=uuid.uuid4().hex,
            submitted_at=time.time(),
        )
        ticket = ds.dispatcher.expect(eid)
        try:
            try:
                record = ds.runtime.submit(params)
            except PyRepl3Error as exc:
                ds.dispatcher.forget(eid)
                self._notice(f"this cell ran without durability: {exc}")
                if isinstance(exc, EngineConnectionError):
                    self._lose_durability(ds, exc)
                self._flush_notices(parent)
                return await super().do_execute(*args, **kw)

            if record.state != "pending" or _params_of(record).get("nonce") != params.nonce:
                # This msg_id was submitted before: never run it twice.
                ds.dispatcher.forget(eid)
                self._flush_notices(parent)
                return self._replay(self._settled(ds, record), parent)

            if not code.lstrip().startswith("%durable resume"):
                self._reject_interrupted(ds)
            self._flush_notices(parent)
            try:
                handoff = ticket.result(timeout=ds.start_timeout)
            except cf.TimeoutError:
                ds.dispatcher.abandon(ticket, CellError(
                    execution_id=eid, execution_count=count, ename="EngineTimeout",
                    evalue=f"the engine did not start {eid} in time; the cell ran without durability",
                ))
                self._notice(
                    f"the durable engine did not start {eid} within {ds.start_timeout:g}s "
                    "(PYREPL3_START_TIMEOUT); the cell ran without durability"
                )
                self._flush_notices(parent)
                return await super().do_execute(*args, **kw)
        except KeyboardInterrupt:
            # Interrupted before the cell started: the execution is settled as
            # interrupted whenever the engine delivers it, never left pending.
            ds.dispatcher.abandon(ticket, CellError(
                execution_id=eid, execution_count=count, ename="KeyboardInterrupt",
                evalue="interrupted before the cell started",
            ))
            raise
        return await self._run_durably(ds, eid, msg_id, handoff.outcome, count, args, kw)

    def _durable_session(self) -> DurableSession | None:
        """The durable session for the next cell: a lost engine is noticed here,
        and a session the keeper re-opened in the background is taken up."""
        ds = self.durable
        if ds is not None and not ds.healthy():
            self._lose_durability(ds, EngineConnectionError(f"the connection to the {ds.store_path} was lost"))
        if self.durable is None and (fresh := self.keeper.poll()) is not None:
            self.durable = fresh
            if self.shell.execution_count <= 1:
                self._restore_namespace()
            else:
                self._notice(
                    "the namespace was not restored, since cells ran while durability was off; "
                    "`%durable checkpoints` and `%durable restore N` bring back a saved one"
                )
        return self.durable

    def _lose_durability(self, ds: DurableSession, why: BaseException | str) -> None:
        if self.durable is ds:
            self.durable = None
            self.keeper.lost(ds, why)

    def _settled(self, ds: DurableSession, record: PromiseRecord) -> PromiseRecord:
        """The settled record of an execution submitted before (waiting briefly if
        it is still being settled, e.g. abandoned after an interrupt)."""
        if record.state != "pending":
            return record
        try:
            return ds.runtime.wait_settled(record.id, timeout=REPLAY_WAIT)
        except PyRepl3Error:
            return record

    async def _run_durably(
        self,
        ds: DurableSession,
        eid: str,
        msg_id: str,
        outcome: cf.Future[Any],
        execution_count: int,
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> dict[str, Any]:
        """Run the cell on this thread and hand its outcome to ``durable_execute``.

        Whatever happens here (an interrupt landing between two statements
        included), ``outcome`` is completed, so the execution never stays pending.
        """
        try:
            started = time.time()
            self.recorder.begin(msg_id)
            try:
                with ds.prompts.executing(eid), ds.steps.executing(eid):
                    reply = await super().do_execute(*args, **kw)
            finally:
                flush_std()
            outputs = self.recorder.end()
            finished = time.time()
            timings = Timings(started=started, finished=finished, duration_ms=(finished - started) * 1000)
            result = _outcome(eid, reply, outputs, timings)
        except BaseException as exc:
            self.recorder.end()
            if not outcome.done():
                outcome.set_result(
                    CellError(execution_id=eid, ename=type(exc).__name__, evalue=str(exc), execution_count=execution_count)
                )
            raise
        outcome.set_result(result)
        # The runtime thread settles exec:<msg_id> while this thread captures the
        # namespace; then one trip stores the checkpoint once the execution is stored.
        checkpoint = self._capture(ds, args[0], execution_count, msg_id)
        try:
            try:
                ds.runtime.store_resolved(checkpoint, after=eid)
            except KeyboardInterrupt:  # the cell is done; an interrupt now only costs a re-wait
                ds.runtime.store_resolved([], after=eid)
        except PyRepl3Error as exc:
            self._notice(f"could not confirm that {eid} and its checkpoint were stored: {exc}")
        self._flush_notices(self.get_parent("shell") or {})
        return reply

    def start(self) -> None:
        super().start()
        ds = self.durable
        if ds is not None and ds.interrupted and ds.auto_resume:
            self.io_loop.add_callback(self._auto_resume)

    def _replay(self, record: PromiseRecord, parent: dict[str, Any]) -> dict[str, Any]:
        """Publish the stored outputs of an execution and return its stored reply."""
        data = record.value.data
        if record.state == "resolved" and isinstance(data, dict):
            result = CellResult.model_validate(data)
            publish(self.session, self.iopub_socket, parent, result.outputs, self._topic)
            return {
                "status": "ok",
                "execution_count": result.execution_count,
                "user_expressions": result.user_expressions,
                "payload": result.payload,
            }
        error = error_of(data) or CellError(
            execution_id=record.id,
            ename="ExecutionStillPending" if record.state == "pending" else "ExecutionRejected",
            evalue=(
                f"{record.id} was submitted before and has not finished; it is not run twice"
                if record.state == "pending"
                else f"{record.id} ended as {record.state}"
            ),
        )
        publish(self.session, self.iopub_socket, parent, error.outputs, self._topic)
        if not any(o.get("output_type") == "error" for o in error.outputs):
            publish(
                self.session,
                self.iopub_socket,
                parent,
                [{"output_type": "error", "ename": error.ename, "evalue": error.evalue, "traceback": error.traceback}],
                self._topic,
            )
        return {
            "status": "error",
            "execution_count": error.execution_count,
            "ename": error.ename,
            "evalue": error.evalue,
            "traceback": error.traceback,
        }

    # -- prompts -------------------------------------------------------------

    def _prompt_broker(self) -> Any:
        ds = self.durable
        return ds.prompts if ds is not None and ds.prompts.execution_id is not None else None

    def _prompt_channel(self) -> FrontendStdin | None:
        return FrontendStdin(self) if self._allow_stdin else None

    def raw_input(self, prompt: str = "") -> str:
        broker = self._prompt_broker()
        if broker is None or (not self._allow_stdin and self.headless_input == "raise"):
            return super().raw_input(prompt)
        return broker.ask(str(prompt), channel=self._prompt_channel())

    def getpass(self, prompt: str = "", stream: Any = None, **kwargs: Any) -> str:
        broker = self._prompt_broker()
        if broker is None or (not self._allow_stdin and self.headless_input == "raise"):
            return super().getpass(prompt, stream, **kwargs)
        secret = broker.ask(str(prompt), password=True, channel=self._prompt_channel())
        return self.durable.checkpoints.checkpointer.keep_out(secret)

    def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        self.keeper.close()
        if self.durable is not None:
            self.durable.close()
            self.durable = None
        return super().do_shutdown(restart)


def _params_of(record: PromiseRecord) -> dict[str, Any]:
    data = record.param.data
    if isinstance(data, dict) and data.get("args"):
        first = data["args"][0]
        if isinstance(first, dict):
            return first
    return {}


def _outcome(eid: str, reply: dict[str, Any], outputs: list[dict[str, Any]], timings: Timings) -> CellResult | CellError:
    count = reply.get("execution_count")
    if reply.get("status") == "ok":
        return CellResult(
            execution_id=eid,
            execution_count=count,
            outputs=outputs,
            user_expressions=reply.get("user_expressions") or {},
            payload=[p for p in reply.get("payload") or [] if _jsonable(p)],
            timings=timings,
        )
    return CellError(
        execution_id=eid,
        execution_count=count,
        ename=reply.get("ename", "Error"),
        evalue=reply.get("evalue", ""),
        traceback=reply.get("traceback", [])[-20:],
        outputs=outputs,
        timings=timings,
    )


def _jsonable(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class FrontendStdin:
    """The stdin channel of the current request, as :mod:`kernel.durable.prompts` uses it.

    ipykernel's own ``_input_request`` blocks until the frontend replies; a
    durable prompt must also notice an out-of-band answer or its timeout, so
    this polls in short slices instead (same purge/send/recv steps).
    """

    def __init__(self, kernel: DurableKernel) -> None:
        self.kernel = kernel
        self.ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
        self.parent = kernel.get_parent("shell")

    def send_request(self, prompt: str, password: bool) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        sock = self.kernel.stdin_socket
        while True:  # purge stale replies (e.g. a late answer to an earlier prompt)
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno == zmq.EAGAIN:
                    break
                raise
        self.kernel.session.send(sock, "input_request", {"prompt": prompt, "password": password}, self.parent, ident=self.ident)

    def poll_reply(self, timeout: float) -> str | None:
        sock = self.kernel.stdin_socket
        rlist, _, xlist = zmq.select([sock], [], [sock], timeout)
        if not (rlist or xlist):
            return None
        _ident, reply = self.kernel.session.recv(sock)
        if reply is None:
            return None
        try:
            return str(reply["content"]["value"])
        except (KeyError, TypeError):
            log.error("bad input_reply: %s", reply)
            return ""
