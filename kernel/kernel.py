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
from traitlets import Enum, Float, Unicode

from kernel import __version__
from kernel.errors import PyRepl3Error
from kernel.ids import exec_id
from kernel.models import CellError, CellResult, ExecutionParams, Timings
from kernel.outputs import OutputRecorder, publish
from kernel.session import DurableSession
from kernel.store.catalog import error_of

log = logging.getLogger(__name__)


class DurableKernel(IPythonKernel):
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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.notices: list[str] = []
        self.recorder = OutputRecorder(self.session)
        self.durable: DurableSession | None = None
        connection_file = getattr(self.parent, "connection_file", "") or ""
        try:
            if os.environ.get("PYREPL3_HEADLESS_INPUT"):
                self.headless_input = os.environ["PYREPL3_HEADLESS_INPUT"]
            self.durable = DurableSession.open(
                home=self.home, connection_file=connection_file, input_timeout=self.input_timeout
            )
        except PyRepl3Error as exc:
            self._notice(f"durability is off: {exc}")
        except Exception as exc:  # noqa: BLE001 - the kernel must start regardless
            log.exception("could not open the durable store")
            self._notice(f"durability is off: the durable store could not be opened ({exc})")
        from kernel.api import DurableAPI
        from kernel.magics import DurableMagics

        if self.shell is not None:
            self.shell.register_magics(DurableMagics(self.shell, kernel=self))
            self.shell.user_ns["durable"] = DurableAPI(self)
            self.shell.user_ns_hidden["durable"] = self.shell.user_ns["durable"]

    # -- user-facing notices -------------------------------------------------

    def _notice(self, text: str) -> None:
        """Queue a one-line message for the user; shown on the next cell's stderr."""
        log.warning("PyREPL3: %s", text)
        self.notices.append(f"PyREPL3: {text}\n")

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
        if not silent:
            self._flush_notices(parent)
        ds = self.durable
        if ds is None or silent or not msg_id:
            return await super().do_execute(*args, **kw)

        eid = exec_id(msg_id)
        params = ExecutionParams(
            session=ds.session,
            msg_id=msg_id,
            code=code,
            execution_count=self.shell.execution_count,
            cell_id=cell_id,
            kernel_pid=os.getpid(),
            nonce=uuid.uuid4().hex,
            submitted_at=time.time(),
        )
        ticket = ds.dispatcher.expect(eid)
        try:
            record = ds.runtime.submit(params)
        except PyRepl3Error as exc:
            ds.dispatcher.forget(eid)
            self._notice(f"this cell ran without durability: {exc}")
            self._flush_notices(parent)
            return await super().do_execute(*args, **kw)

        if record.state != "pending" or _params_of(record).get("nonce") != params.nonce:
            # This msg_id was submitted before: never run it twice.
            ds.dispatcher.forget(eid)
            if record.state == "pending":
                record = ds.runtime.wait_settled(eid, timeout=3600)
            return self._replay(record, parent)

        try:
            handoff = ticket.result(timeout=ds.start_timeout)
        except cf.TimeoutError:
            ds.dispatcher.forget(eid)
            self._notice(
                f"the durable engine did not start {eid} within {ds.start_timeout:g}s "
                "(PYREPL3_START_TIMEOUT); the cell ran without durability"
            )
            self._flush_notices(parent)
            return await super().do_execute(*args, **kw)

        started = time.time()
        self.recorder.begin(msg_id)
        ds.prompts.begin(eid)
        try:
            reply = await super().do_execute(*args, **kw)
        except BaseException as exc:
            self.recorder.end()
            handoff.outcome.set_result(
                CellError(execution_id=eid, ename=type(exc).__name__, evalue=str(exc), execution_count=params.execution_count)
            )
            raise
        finally:
            ds.prompts.end()
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
        outputs = self.recorder.end()
        finished = time.time()
        timings = Timings(started=started, finished=finished, duration_ms=(finished - started) * 1000)
        handoff.outcome.set_result(_outcome(eid, reply, outputs, timings))
        try:
            ds.runtime.wait_settled(eid)
        except PyRepl3Error as exc:
            self._notice(f"could not confirm that {eid} was stored: {exc}")
        return reply

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
            ename="ExecutionRejected",
            evalue=f"{record.id} ended as {record.state}",
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
        return broker.ask(str(prompt), password=True, channel=self._prompt_channel())

    def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
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
    """The stdin channel of the current request, as :mod:`kernel.prompts` uses it.

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
