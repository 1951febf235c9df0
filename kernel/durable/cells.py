"""The seams between the durable session and the protocol side that runs cells.

:class:`~kernel.durable.session.DurableSession` owns the cell protocol (submit
``exec:<msg_id>``, wait for the hand-off, run, settle, checkpoint), but running
code, recording outputs, publishing them and talking to the frontend are the
kernel's business. These Protocols are all the session knows of that side, so
the durable layer never imports the Jupyter one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from resonate.types import PromiseRecord

from kernel.core.models import CellOutcome, ExecutionParams
from kernel.core.notices import INFO, NoticeLevel

R = TypeVar("R")


@dataclass
class RanCell(Generic[R]):
    """A cell the protocol side ran: the reply its frontend gets, and the outcome to store."""

    reply: R
    outcome: CellOutcome


class CellRequest(Protocol[R]):
    """One execute_request, as the session drives it (the kernel implements it per request).

    ``R`` is whatever the frontend gets back (an execute_reply); the session
    only passes it through.
    """

    def show_notices(self) -> None:
        """Show the notices queued so far (before what the cell itself prints)."""

    async def run(self, execution_id: str) -> RanCell[R]:
        """Run the code on this thread as ``execution_id``, recording its outputs."""

    async def run_without_durability(self) -> R:
        """Run the code as a plain kernel would (the engine could not take it)."""

    def interrupted(self) -> R:
        """The reply to a request interrupted outside its code (before it ran, or as
        it ended), as ipykernel answers an interrupted cell: a ``KeyboardInterrupt`` error."""

    def replay(self, record: PromiseRecord) -> R:
        """Show the stored outcome of an execution that ran before, and return its reply."""


class SessionHost(Protocol):
    """What the session needs of the kernel it serves, for as long as it is open."""

    def notice(self, text: str, level: NoticeLevel = INFO) -> None:
        """Tell the user something: ``INFO`` only in the log and ``%durable``, ``BROKEN``
        (a promise does not hold) in the next cell too (:mod:`kernel.core.notices`)."""

    def namespace(self) -> dict[str, Any]:
        """The user namespace cells run in (what namespace checkpoints capture and restore)."""

    def transformed(self, code: str) -> str | None:
        """The cell's source as Python sees it (magics expanded), or None when unknown."""

    def run_nested(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        """Run an interrupted execution's code again inside the current request (resume)."""

    def durability_lost(self, session: Any, why: BaseException | str) -> None:
        """The engine went away under ``session``: stop using it."""
