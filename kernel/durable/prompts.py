"""Prompts as durable promises: input(), getpass() and approvals.

Every prompt inside an execution is the promise ``exec:<msg_id>:input:<n>``,
created *before* anyone is asked. Whoever answers first settles it: the
frontend's input_reply, or ``pyrepl3 answer`` from any process (human in the
loop). An execution that runs again under the same id finds its answered
prompts already resolved and gets the stored answers without asking.

A getpass secret is never stored: its promise records only that it was
answered, so a replay asks again, and it cannot be answered out of band.
"""

from __future__ import annotations


import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from resonate.types import PromiseRecord

from kernel.core import tracing
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import PromiseTimeoutError, PyRepl3Error
from kernel.core.ids import EXTERNAL_TAG, KIND_TAG, ChildNumbering, input_id
from kernel.durable.runtime import DurableRuntime

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02


class PromptTimeoutError(PromiseTimeoutError):
    """A prompt was not answered in time. Names the promise and the setting."""


class ApprovalDenied(PyRepl3Error):
    """An approval request was denied; ``reason`` says why."""

    def __init__(self, promise_id: str, question: str, reason: str) -> None:
        self.promise_id, self.question, self.reason = promise_id, question, reason
        super().__init__(f"approval denied for {question!r} ({promise_id}): {reason or 'no reason given'}")


class PromptCancelled(PyRepl3Error):
    """A prompt's promise was cancelled or rejected by someone else."""


@dataclass
class Approval:
    approved: bool
    reason: str
    promise_id: str


class StdinChannel(Protocol):
    """How a prompt reaches the frontend (implemented by the kernel)."""

    def send_request(self, prompt: str, password: bool) -> None: ...
    def poll_reply(self, timeout: float) -> str | None: ...


class PromptBroker(ChildNumbering):
    """Turns prompts of the current execution into promises and waits for answers.

    ``timeout`` (seconds) and ``timeout_setting`` (the name users change) come
    from the kernel's configuration; ``notify`` writes to the cell's stderr.
    """

    def __init__(
        self,
        runtime: DurableRuntime,
        *,
        timeout: float,
        timeout_setting: str = "PYREPL3_INPUT_TIMEOUT",
        answer_command: str = "pyrepl3",
        clock: Clock = SYSTEM,
    ) -> None:
        self.runtime = runtime
        self.timeout = timeout
        self.timeout_setting = timeout_setting
        self.answer_command = answer_command
        self._clock = clock
        super().__init__()

    # -- public asks ----------------------------------------------------------

    def ask(self, prompt: str, *, password: bool = False, channel: StdinChannel | None) -> str:
        """input()/getpass(): the answer as a string."""
        record, pid = self._open({"kind": "password" if password else "input", "prompt": prompt, "password": password})
        if record.state == "resolved":
            if not password:
                return str((record.value.data or {}).get("value", ""))
            if channel is None:
                raise PromptCancelled(f"{pid}: a getpass prompt was answered before, but secrets are not stored and this frontend cannot ask again")
            channel.send_request(prompt, True)
            return self._wait(pid, channel, prompt, password=True, store=False)
        self._raise_if_settled(record, pid)
        if password and channel is None:
            self.runtime.settle(pid, "rejected_canceled", {"reason": "no stdin"})
            raise PromptCancelled(
                f"getpass() needs a frontend that allows stdin; secrets are never stored, so {pid} cannot be answered out of band"
            )
        if channel is not None:
            channel.send_request(prompt, password)
        else:
            self._announce(pid, prompt)
        return self._wait(pid, channel, prompt, password=password)

    def approve(self, question: str, details: Any = None, *, channel: StdinChannel | None) -> Approval:
        """Ask for an approval; returns it, or raises :class:`ApprovalDenied`."""
        record, pid = self._open({"kind": "approval", "prompt": question, "details": details, "password": False})
        if record.state == "pending":
            if channel is not None:
                text = question if details is None else f"{question}\n{details}"
                channel.send_request(f"{text}\nApprove? [y/N] (optionally followed by a reason): ", False)
            else:
                self._announce(pid, question, approval=True)
            self._wait(pid, channel, question, password=False, parse=_parse_approval)
            record = self.runtime.get(pid)
        self._raise_if_settled(record, pid)
        data = record.value.data or {}
        approval = Approval(bool(data.get("approved")), str(data.get("reason", "")), pid)
        if not approval.approved:
            raise ApprovalDenied(pid, question, approval.reason)
        return approval

    # -- machinery ------------------------------------------------------------

    def _open(self, param: dict[str, Any]) -> tuple[PromiseRecord, str]:
        pid = self.next_child(input_id, "durable prompts")
        param = {**param, "execution_id": self.execution_id, "n": self._count, "timeout": self.timeout}
        record = self.runtime.create(pid, self._clock.ms_after(self.timeout), param, {EXTERNAL_TAG: "true", KIND_TAG: "input"})
        return record, pid

    def _announce(self, pid: str, prompt: str, *, approval: bool = False) -> None:
        cmd = self.answer_command
        if approval:
            how = f"{cmd} approve {pid} --reason '...'   or   {cmd} deny {pid} --reason '...'"
        else:
            how = f"{cmd} answer {pid} VALUE"
        print(
            f"PyREPL3: {'approval' if approval else 'input()'} is waiting for an answer"
            f"{f' to {prompt!r}' if prompt else ''} (this frontend has no stdin). Answer it with:\n  {how}",
            file=sys.stderr,
            flush=True,
        )

    def _wait(self, pid: str, channel: StdinChannel | None, prompt: str, **how: Any) -> str:
        """:meth:`_answer` in the ``pyrepl3.prompt`` span; the time waited goes into the prompt-wait histogram."""
        kind = "approval" if how.get("parse") else "password" if how.get("password") else "input"
        started = self._clock.monotonic()
        try:
            with tracing.span(tracing.PROMPT, promise_id=pid, kind=kind, stdin=channel is not None):
                return self._answer(pid, channel, prompt, **how)
        finally:
            tracing.PROMPT_WAIT.record(self._clock.monotonic() - started, {"pyrepl3.kind": kind})

    def _answer(
        self,
        pid: str,
        channel: StdinChannel | None,
        prompt: str,
        *,
        password: bool,
        store: bool = True,
        parse: Callable[[str], dict[str, Any]] | None = None,
    ) -> str:
        """Wait for the stdin reply or an out-of-band settle, whichever comes first."""
        deadline = self._clock.wall() + self.timeout
        watcher = self.runtime.watch(pid) if store else None
        try:
            while True:
                if watcher is not None and watcher.done():
                    record = watcher.result()
                    self._raise_if_settled(record, pid)
                    return str((record.value.data or {}).get("value", ""))
                if channel is not None:
                    reply = channel.poll_reply(POLL_SECONDS)
                    if reply is not None:
                        if reply == "\x04":
                            self.runtime.settle(pid, "rejected_canceled", {"reason": "EOF"})
                            raise EOFError
                        if not store:
                            return reply
                        data = parse(reply) if parse else ({"answered": True} if password else {"value": reply})
                        record = self.runtime.settle(pid, "resolved", {**data, "via": "stdin"})
                        self._raise_if_settled(record, pid)
                        if password:
                            return reply
                        return str((record.value.data or {}).get("value", reply))
                elif watcher is not None:
                    try:
                        self.runtime.result(watcher, POLL_SECONDS * 5)
                    except TimeoutError:
                        pass
                if self._clock.wall() >= deadline:
                    record = self.runtime.get(pid)  # the engine times it out on read
                    if record.state == "pending":
                        record = self.runtime.settle(pid, "rejected", {"reason": "timed out"})
                    if record.state == "resolved" and not password:
                        return str((record.value.data or {}).get("value", ""))
                    raise PromptTimeoutError(
                        f"no answer to prompt {pid} within {self.timeout:g}s; "
                        f"set {self.timeout_setting} (or DurableKernel.input_timeout) to wait longer"
                    )
        except KeyboardInterrupt:
            try:
                self.runtime.settle(pid, "rejected_canceled", {"reason": "interrupted"})
            except PyRepl3Error:
                log.warning("could not cancel %s after an interrupt", pid)
            raise KeyboardInterrupt(f"Interrupted by user while waiting for {pid}") from None
        finally:
            if watcher is not None:
                watcher.cancel()

    @staticmethod
    def _raise_if_settled(record: PromiseRecord, pid: str) -> None:
        if record.state in ("pending", "resolved"):
            return
        if record.state == "rejected_timedout":
            raise PromptTimeoutError(f"prompt {pid} timed out before it was answered")
        reason = (record.value.data or {}).get("reason", record.state) if isinstance(record.value.data, dict) else record.state
        if reason == "timed out":
            raise PromptTimeoutError(f"prompt {pid} timed out before it was answered")
        raise PromptCancelled(f"prompt {pid} was {record.state.replace('_', ' ')}: {reason}")


def _parse_approval(reply: str) -> dict[str, Any]:
    word, _, reason = reply.strip().partition(" ")
    return {"approved": word.lower() in ("y", "yes", "approve", "approved", "ok"), "reason": reason.strip()}


def answer_command(env_home: str | None) -> str:
    """The CLI invocation a user can paste (with the store home when it is not the default)."""
    return f"pyrepl3 --home {shlex.quote(env_home)}" if env_home else "pyrepl3"
