"""What a running cell reaches through ``input()`` and ``durable``: its prompts, steps and remote calls.

Each is a numbering of the running execution's child promises
(:class:`~kernel.core.ids.ChildNumbering`): ``exec:<msg_id>:input:<n>``,
``:step:<n>``, ``:rpc:<n>``. :meth:`CellServices.executing` starts all three
from 1 for one run of an execution (and restores the outer ones after, for an
execution resumed inside ``%durable resume``), which is what lets a resumed
execution find the children its first run made. Built once per session by
:meth:`CellServices.build`.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from kernel.checkpoint.signing import Sealer
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import ConfigurationError
from kernel.core.redaction import redact
from kernel.core.settings import Settings
from kernel.durable.prompts import PromptBroker, answer_command
from kernel.durable.remote import RemoteCalls
from kernel.durable.runtime import DurableRuntime
from kernel.durable.steps import StepJournal
from kernel.store.base import Engine
from kernel.store.embedded.engine import EmbeddedEngine


@dataclass
class CellServices:
    prompts: PromptBroker
    steps: StepJournal
    remote: RemoteCalls

    @classmethod
    def build(cls, runtime: DurableRuntime, sealer: Sealer, engine: Engine, settings: Settings, *, clock: Clock = SYSTEM) -> CellServices:
        prompts = PromptBroker(
            runtime,
            timeout=settings.input_timeout,
            answer_command=_answer_command(engine, settings.home or None),
            clock=clock,
        )
        remote = RemoteCalls(runtime, sealer, refusal=workers_refused(engine), clock=clock).serve_restored()
        return cls(prompts, StepJournal(runtime, sealer, clock=clock), remote)

    @property
    def execution_id(self) -> str | None:
        """The ``exec:<msg_id>`` running now, if any."""
        return self.prompts.execution_id

    @contextlib.contextmanager
    def executing(self, execution_id: str, *, fresh: bool = False) -> Iterator[None]:
        """Number ``execution_id``'s prompts, steps and remote calls from 1 while it runs
        (``fresh``: created for this run, so none of its steps can be journaled yet)."""
        with self.prompts.executing(execution_id), self.steps.executing(execution_id, fresh=fresh), self.remote.executing(execution_id):
            yield


def workers_refused(engine: Engine) -> str | None:
    """Why ``engine`` cannot have remote workers (the embedded store: one kernel's file), in the
    engine's own words (they name PYREPL3_STORE); None where workers can share it."""
    if not isinstance(engine, EmbeddedEngine):
        return None
    try:
        engine.worker_network("check", "check")  # the embedded engine refuses without any I/O
    except ConfigurationError as exc:
        return str(exc)
    return None


def _answer_command(engine: Engine, home: str | None) -> str:
    """The ``pyrepl3`` invocation a user can paste to answer a prompt of this kernel
    (a DSN's password shows as ``***``: it is never printed)."""
    if isinstance(engine, EmbeddedEngine):
        if engine.spec.target:
            return f"pyrepl3 --store {shlex.quote(str(engine.home))}"
        return answer_command(home)
    return f"pyrepl3 --store {shlex.quote(redact(engine.spec.target))}"


__all__ = ["CellServices", "workers_refused"]
