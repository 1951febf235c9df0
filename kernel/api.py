"""``durable``: the object every cell can use to reach the durable runtime.

    decision = durable.approve("Deploy to production?", details={"rows": 1200})

Prompts made through it are promises of the running execution, like input().
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel.errors import PyRepl3Error
from kernel.prompts import Approval, ApprovalDenied

if TYPE_CHECKING:
    from kernel.kernel import DurableKernel

__all__ = ["Approval", "ApprovalDenied", "DurableAPI"]


class DurableAPI:
    def __init__(self, kernel: DurableKernel) -> None:
        self._kernel = kernel

    def __repr__(self) -> str:
        ds = self._kernel.durable
        return f"<durable session={ds.session!r}>" if ds else "<durable: off>"

    def _broker(self) -> Any:
        broker = self._kernel._prompt_broker()
        if broker is None:
            raise PyRepl3Error("durability is off in this kernel, or no cell is running")
        return broker

    def approve(self, question: str, details: Any = None) -> Approval:
        """Ask a human to approve; returns the approval, raises ApprovalDenied on a denial.

        Answered in the notebook (y/n and an optional reason) or out of band with
        ``pyrepl3 approve|deny <promise-id> --reason ...``.
        """
        return self._broker().approve(question, details, channel=self._kernel._prompt_channel())
