"""Retry policies for durable steps and remote calls: the SDK's own, carried as JSON.

``durable.run(..., retries=...)`` and ``durable.rpc(..., retries=...)`` take
resonate-sdk's policies (:mod:`resonate.retry`: ``Exponential``, ``Linear``,
``Constant``, ``Never``) or a plain number of retries. A remote call's policy
travels to the worker inside the (signed) call, and a retrying step's policy is
journaled with its attempts, so both are spelled as JSON here and read back
strictly: a value that is not one of the four policies with whole,
non-negative fields is refused with the value named, never guessed at.
"""

from __future__ import annotations

from typing import Any

import msgspec
from resonate.retry import Constant, Exponential, Linear, Never, RetryPolicy

from kernel.core.errors import ConfigurationError

#: The policies a call may name, by the ``kind`` their JSON carries.
POLICIES: dict[str, type] = {"exponential": Exponential, "linear": Linear, "constant": Constant, "never": Never}
#: ``retries=N``: N retries as ``Exponential(delay=1, factor=2, max_delay=60)``: the SDK waits
#: ``delay * factor**k`` before retry k, so 2 s before the first, doubling, never more than a minute apart.
DEFAULT_DELAY, DEFAULT_FACTOR, DEFAULT_MAX_DELAY = 1, 2, 60

_HELP = "give a number of retries or one of resonate.retry's policies (Exponential, Linear, Constant, Never)"


def retry_policy(retries: Any) -> RetryPolicy:
    """The policy ``retries=`` asks for: ``None`` (no retry), a whole number of retries
    with exponential backoff, or an SDK policy as it is."""
    if retries is None:
        return Never()
    if isinstance(retries, bool):
        raise ConfigurationError(f"retries={retries!r}: {_HELP}")
    if isinstance(retries, int):
        if retries < 0:
            raise ConfigurationError(f"retries={retries!r}: the number of retries cannot be negative")
        if retries == 0:
            return Never()
        return Exponential(delay=DEFAULT_DELAY, factor=DEFAULT_FACTOR, max_retries=retries, max_delay=DEFAULT_MAX_DELAY)
    if isinstance(retries, tuple(POLICIES.values())):
        policy_from_json(policy_json(retries))  # the same checks a journaled one gets
        return retries
    raise ConfigurationError(f"retries={retries!r}: {_HELP}")


def policy_json(policy: RetryPolicy) -> dict[str, Any]:
    """``{"kind": "exponential", "delay": 1, ...}``."""
    for kind, cls in POLICIES.items():
        if type(policy) is cls:
            return {"kind": kind, **msgspec.structs.asdict(policy)}  # type: ignore[arg-type]
    raise ConfigurationError(f"retries={policy!r}: {_HELP}")


def policy_from_json(data: Any) -> RetryPolicy:
    """The policy ``data`` spells; :class:`ConfigurationError` for anything else."""
    if not isinstance(data, dict) or data.get("kind") not in POLICIES:
        raise ConfigurationError(f"retry policy {data!r}: its kind must be one of {', '.join(POLICIES)}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in fields.values()):
        raise ConfigurationError(f"retry policy {data!r}: every field must be a whole number >= 0")
    try:
        return msgspec.convert(fields, POLICIES[data["kind"]], strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"retry policy {data!r}: {exc}") from None


def max_attempts(policy: RetryPolicy) -> int | None:
    """How many times a call runs at most (1 + retries), ``None`` when unbounded."""
    retries = getattr(policy, "max_retries", 0)
    return 1 + retries if isinstance(retries, int) else None


def describe(policy: RetryPolicy) -> str:
    """``Exponential(delay=1, factor=2, max_retries=3, max_delay=60)`` for people."""
    fields = ", ".join(f"{k}={v}" for k, v in msgspec.structs.asdict(policy).items())  # type: ignore[arg-type]
    return f"{type(policy).__name__}({fields})"


__all__ = ["POLICIES", "RetryPolicy", "describe", "max_attempts", "policy_from_json", "policy_json", "retry_policy"]
