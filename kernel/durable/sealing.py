"""The code of an execution is run again only if this key signed it.

A kernel that dies mid-cell leaves ``exec:<msg_id>`` pending, and the next
kernel may re-run its code (``%durable resume``, ``PYREPL3_AUTO_RESUME=1``)
straight from the store's copy of the params. Whoever can write the store
could otherwise put their code there. The params are therefore sealed when the
cell is submitted -- signed with the session key, bound to the session and the
execution id (:class:`kernel.checkpoint.signing.Sealer`) -- and checked before
an interrupted execution is resumed; one that does not verify is rejected as
:data:`TAMPERED` and never run.
"""

from __future__ import annotations

from kernel.checkpoint.signing import Sealer
from kernel.core.ids import exec_id
from kernel.core.models import ExecutionParams

#: The ename an execution gets when its stored params do not verify.
TAMPERED = "TamperedExecution"
_SEAL_FIELDS = ("signature", "sealed")


def _body(params: ExecutionParams) -> dict:
    return {k: v for k, v in params.model_dump(mode="json").items() if k not in _SEAL_FIELDS}


def seal_params(sealer: Sealer, params: ExecutionParams) -> ExecutionParams:
    """``params`` with their bound signature (what :meth:`DurableRuntime.submit` stores)."""
    return ExecutionParams.model_validate(sealer.seal(exec_id(params.msg_id), _body(params)))


def check_params(sealer: Sealer, execution_id: str, params: ExecutionParams) -> None:
    """Raise :class:`~kernel.checkpoint.signing.SignatureError` unless this key sealed
    ``params`` for this session and ``execution_id``, the promise they were read from
    (so genuine params copied into another execution are refused too)."""
    sealed = {**_body(params), "signature": params.signature, "sealed": params.sealed}
    sealer.unseal(execution_id, sealed, "the code of the interrupted execution")


__all__ = ["TAMPERED", "check_params", "seal_params"]
