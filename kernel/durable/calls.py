"""A remote call as it travels: what a cell sends a worker, and what comes back, sealed.

``durable.rpc(fn, *args, group=...)`` stores the call in the param of the
task promise ``exec:<msg_id>:rpc:<n>``; a worker of that group runs it and
settles the promise with the result. Whoever can write the database could put
a call there, so a call is sealed with the session key
(:class:`~kernel.checkpoint.signing.Sealer`: bound to the session and to the
promise id it is stored under) and a worker opens it -- and unpickles nothing
-- only once the seal verifies. The result goes back the same way, sealed for
the same promise, and the kernel checks it before decoding it.

The function travels by reference (``{"ref": "module:qualname"}``) when it
lives in a module the worker can import, else by value (cloudpickle); the
arguments and the result as JSON when they are plain data, else as pickles
(:func:`~kernel.durable.steps.encode_value`). A worker that cannot import a
referenced module says so, naming it.
"""

from __future__ import annotations

import base64
import importlib
import json
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from kernel.checkpoint.signing import Sealer, Signer
from kernel.core.errors import PyRepl3Error
from kernel.core.retries import RetryPolicy, policy_from_json, policy_json
from kernel.durable.steps import decode_value, encode_value

#: The shape of a sealed call; a worker refuses any other.
CALL_FORMAT = 1


class RemoteCallError(PyRepl3Error):
    """A call that cannot be sent, opened or run as given (not a failure *of* the function)."""


class RemoteFailure(Exception):
    """A remote call's function failed on the worker (every attempt): raised in the cell
    with the worker's error type name, message, traceback and attempt count.

    On the worker, its message is the sealed failure as JSON: that is what the
    SDK stores in the rejected promise, and what :func:`open_failure` reads."""

    def __init__(self, message: str, *, ename: str = "", evalue: str = "", attempts: int = 0, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.ename, self.evalue, self.attempts, self.remote_traceback = ename, evalue, attempts, remote_traceback


@dataclass(frozen=True)
class RemoteCall:
    """A verified, decoded call, as a worker runs it."""

    session: str
    promise_id: str
    function: str
    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: RetryPolicy
    timeout: float | None
    trace: dict[str, str] = field(default_factory=dict)
    #: When the cell sent it (wall seconds): the worker's queue time is measured from it.
    sent_at: float | None = None


def function_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or repr(fn)}"


def _reference(fn: Any) -> str | None:
    """``module:qualname`` when importing it gives ``fn`` back (never for ``__main__``,
    a cell's own functions, lambdas or closures): those travel by value."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - anything unresolvable goes by value
        return None
    return f"{module}:{qualname}" if obj is fn else None


def seal_call(
    sealer: Sealer,
    promise_id: str,
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    retries: RetryPolicy,
    timeout: float | None,
    trace: dict[str, str] | None = None,
    sent_at: float | None = None,
) -> dict[str, Any]:
    """The sealed call to store as the task's argument."""
    if not callable(fn):
        raise RemoteCallError(f"durable.rpc needs a function, not {type(fn).__name__}")
    ref = _reference(fn)
    if ref is not None:
        code: dict[str, Any] = {"ref": ref}
    else:
        try:
            code = {"pickle": base64.b64encode(cloudpickle.dumps(fn)).decode()}
        except Exception as exc:  # noqa: BLE001 - pickling raises anything
            raise RemoteCallError(f"durable.rpc({function_name(fn)}): the function cannot be sent ({exc})") from exc
    body = {
        "format": CALL_FORMAT,
        "session": sealer.session,
        "function": function_name(fn),
        "code": code,
        "arguments": encode_value([list(args), kwargs], f"the arguments of durable.rpc({function_name(fn)})"),
        "retries": policy_json(retries),
        "timeout": timeout,
        "trace": dict(trace or {}),
        "sent_at": sent_at,
    }
    return sealer.seal(promise_id, body)


def open_call(signer: Signer, promise_id: str, data: Any) -> RemoteCall:
    """Verify ``data`` (read from ``promise_id``), then decode it: a call this key did
    not seal for that promise raises :class:`~kernel.checkpoint.signing.SignatureError`
    before anything is unpickled or imported."""
    session = data.get("session") if isinstance(data, dict) else None
    sealer = Sealer(signer, session if isinstance(session, str) else "")
    body = sealer.unseal(promise_id, data, "a remote call")
    if body.get("format") != CALL_FORMAT:
        raise RemoteCallError(f"{promise_id}: a remote call of format {body.get('format')!r}; this worker reads {CALL_FORMAT}")
    code = body["code"]
    if "ref" in code:
        module, _, qualname = str(code["ref"]).partition(":")
        try:
            fn: Any = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
        except ImportError as exc:
            raise RemoteCallError(f"{body['function']}: module {module!r} cannot be imported on this worker ({exc})") from None
        except AttributeError:
            raise RemoteCallError(f"{body['function']}: module {module!r} on this worker has no {qualname!r}") from None
    else:
        fn = cloudpickle.loads(base64.b64decode(code["pickle"]))
    args, kwargs = decode_value(body["arguments"])
    return RemoteCall(
        session=sealer.session,
        promise_id=promise_id,
        function=str(body["function"]),
        fn=fn,
        args=tuple(args),
        kwargs=dict(kwargs),
        retries=policy_from_json(body["retries"]),
        timeout=body.get("timeout"),
        trace=dict(body.get("trace") or {}),
        sent_at=body["sent_at"] if isinstance(body.get("sent_at"), (int, float)) else None,
    )


def seal_result(sealer: Sealer, promise_id: str, value: Any, *, started_at: float, attempts: int, worker: str) -> dict[str, Any]:
    """The sealed value a worker resolves the call's promise with.

    ``started_at`` (wall seconds, the first attempt's start on that worker) and the
    attempt count are kept for ``pyrepl3 stats`` (queue time = started_at - created)."""
    body = {
        "result": encode_value(value, "the result of a remote call"),
        "started_at": started_at,
        "attempts": attempts,
        "worker": worker,
    }
    return sealer.seal(promise_id, body)


def open_result(sealer: Sealer, promise_id: str, data: Any) -> Any:
    """The result in a resolved call's promise, verified before it is decoded."""
    return decode_value(sealer.unseal(promise_id, data, "the result of a remote call")["result"])


def seal_failure(sealer: Sealer, promise_id: str, error: dict[str, Any], *, started_at: float, attempts: int, worker: str) -> RemoteFailure:
    """The exception a worker raises to reject the call's promise: its message is the
    sealed failure (``error`` as :func:`kernel.durable.attempts.error_of` makes it)."""
    body = {"error": error, "started_at": started_at, "attempts": attempts, "worker": worker}
    return RemoteFailure(json.dumps(sealer.seal(promise_id, body)))


def open_failure(sealer: Sealer, promise_id: str, data: Any) -> RemoteFailure:
    """The failure in a rejected call's promise (the SDK's ``{"__type": "error",
    "message": ...}``), verified; an unsigned or malformed one says so."""
    message = data.get("message") if isinstance(data, dict) else None
    try:
        sealed = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        sealed = None
    if not isinstance(sealed, dict):
        # Not a sealed failure: a timeout or cancel by the engine, or a refusal by a worker.
        return RemoteFailure(f"{promise_id} was rejected: {message or data!r}")
    body = sealer.unseal(promise_id, sealed, "the failure of a remote call")
    error = body.get("error") or {}
    attempts = int(body.get("attempts") or 1)
    text = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}"
    if attempts > 1:
        text += f" (after {attempts} attempts)"
    return RemoteFailure(
        f"{text} [on worker {body.get('worker', '?')}]",
        ename=str(error.get("ename", "")),
        evalue=str(error.get("evalue", "")),
        attempts=attempts,
        remote_traceback="".join(error.get("traceback") or []),
    )


__all__ = [
    "CALL_FORMAT",
    "RemoteCall",
    "RemoteCallError",
    "RemoteFailure",
    "function_name",
    "open_call",
    "open_failure",
    "open_result",
    "seal_call",
    "seal_failure",
    "seal_result",
]
