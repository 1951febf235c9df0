"""``durable``: the object every cell can use to reach the durable runtime.

    rows = durable.run(fetch_page, 3)          # journaled; not called again on resume
    rows = durable.run(fetch_page, 3, retries=5, timeout=120)   # with backoff, at most 2 minutes in all
    durable.sleep(60)                          # a durable timer
    durable.checkpoint("progress", i)          # newest value per name
    i = durable.get_checkpoint("progress", 0)
    decision = durable.approve("Deploy to production?", details={"rows": 1200})
    h = durable.rpc(train, cfg, group="gpu")   # on a `pyrepl3 worker --group gpu`; h.result() or await h
    scores = durable.map(score, rows, group="cpu")

Prompts made through it are promises of the running execution, like input().
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kernel.core.errors import PyRepl3Error
from kernel.durable.calls import RemoteFailure
from kernel.durable.prompts import Approval, ApprovalDenied, StdinChannel
from kernel.durable.remote import RemoteHandle
from kernel.durable.session import DurableSession
from kernel.durable.steps import NO_DEFAULT

__all__ = ["Approval", "ApprovalDenied", "DurableAPI", "RemoteFailure", "RemoteHandle"]


class DurableAPI:
    """``session`` returns the kernel's current durable session (None while
    durability is off); ``channel`` the frontend's stdin for a prompt, if any."""

    #: What a failed remote call raises: ``except durable.RemoteFailure as exc: exc.ename, exc.attempts``.
    RemoteFailure = RemoteFailure

    def __init__(self, session: Callable[[], DurableSession | None], channel: Callable[[], StdinChannel | None]) -> None:
        self._session = session
        self._channel = channel

    def __repr__(self) -> str:
        ds = self._session()
        return f"<durable session={ds.session!r}>" if ds else "<durable: off>"

    def _executing(self) -> DurableSession:
        ds = self._session()
        if ds is None or not ds.executing:
            raise PyRepl3Error("durability is off in this kernel, or no cell is running")
        return ds

    def run(self, fn: Callable[..., Any], /, *args: Any, retries: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` as a durable step of this cell: if the cell is
        resumed after a crash, a step that finished returns its stored result
        without calling ``fn`` again. The result must be serializable (JSON or
        cloudpickle); if it is not, the error is raised here.

        ``retries``: a number of retries (exponential backoff from 1 s) or one of
        ``resonate.retry``'s policies (``Exponential``, ``Linear``, ``Constant``,
        ``Never``); every failed attempt is journaled, and a resumed cell goes on
        with the next attempt. ``timeout``: seconds for the whole call, attempts
        and delays included. The last attempt's error is raised, with a note
        naming the count. Both names are taken by ``durable.run``: pass a
        function's own ``retries``/``timeout`` with ``functools.partial``."""
        return self._executing().run_step(fn, *args, retries=retries, timeout=timeout, **kwargs)

    def sleep(self, seconds: float) -> None:
        """A durable sleep: after a resume, only the time that is left is slept."""
        self._executing().sleep(seconds)

    def checkpoint(self, name: str, value: Any) -> None:
        """Store ``value`` under ``name`` for this execution (newest wins)."""
        self._executing().save_value(name, value)

    def get_checkpoint(self, name: str, default: Any = NO_DEFAULT) -> Any:
        """The newest value stored under ``name`` in this execution, else ``default``
        (or CheckpointNotFoundError without a default)."""
        return self._executing().latest_value(name, default)

    def approve(self, question: str, details: Any = None) -> Approval:
        """Ask a human to approve; returns the approval, raises ApprovalDenied on a denial.

        Answered in the notebook (y/n and an optional reason) or out of band with
        ``pyrepl3 approve|deny <promise-id> --reason ...``.
        """
        return self._executing().approve(question, details, channel=self._channel())

    def rpc(self, fn: Callable[..., Any], /, *args: Any, group: str, retries: Any = None, timeout: float | None = None, **kwargs: Any) -> RemoteHandle:
        """Send ``fn(*args, **kwargs)`` to a worker of ``group`` (``pyrepl3 worker --group ...``);
        returns a handle at once: ``h.result()``, ``h.done()``, ``await h``.

        The call is a child promise of this cell's execution: a resumed execution finds it
        (its result, or waits for it again) instead of sending it twice. ``fn`` goes by
        reference when the worker can import it, else by value; the call and its result are
        signed with the session key. ``retries``: a number or a ``resonate.retry`` policy
        (run on the worker); ``timeout``: seconds for the whole call, then ``TimeoutError``.
        A failure raises :class:`RemoteFailure` from ``result()``."""
        return self._executing().services.remote.rpc(fn, args, kwargs, group=group, retries=retries, timeout=timeout)

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        /,
        *,
        group: str,
        retries: Any = None,
        timeout: float | None = None,
        progress: bool = True,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``[fn(item) for item in items]`` on the workers of ``group``, in order, with a
        progress bar. Every call is sent at once; a failure is raised once all have settled
        (the first failed item's error; ``return_exceptions=True`` returns errors in place)."""
        return self._executing().services.remote.map(
            fn, items, group=group, retries=retries, timeout=timeout, progress=progress, return_exceptions=return_exceptions
        )
