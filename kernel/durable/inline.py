"""Protocol requests the kernel's own thread writes as one unit, without a trip to the loop.

The SDK sends every request from the runtime's loop thread; a cell on the main
thread that must wait for a write pays a hop there and back (two thread
wake-ups, under the GIL both threads want). The engines that can apply a list
of the SDK's own flat requests as one transaction say so (:class:`AppliesBatch`,
the loop's side, and :class:`AppliesInline`, any thread: the embedded store).
The requests are the ones the SDK would send, encoded by the SDK's codec, so
what is stored is byte for byte what the SDK would have stored.

:class:`Batch` builds them. ``fulfilled_later`` names executions a batch settles
whose *task* the SDK still holds: the SDK fulfills that task when
``durable_execute`` returns, and the engine answers that fulfill as done (the
batch settled the promise, which completes its task) instead of 409.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec
from resonate.codec import Codec
from resonate.connections.local import wrap_response_envelope
from resonate.error import ServerError
from resonate.send import parse_promise
from resonate.types import PromiseCreateReq, PromiseRecord, PromiseSettleReq


@runtime_checkable
class AppliesInline(Protocol):
    """An engine that applies flat protocol requests from any thread, as one unit."""

    def apply_batch(self, flats: list[Any], *, fulfilled_later: Sequence[str] = ()) -> list[dict[str, Any]]: ...


@runtime_checkable
class AppliesBatch(Protocol):
    """An engine that applies flat protocol requests as one unit, on the runtime's loop."""

    async def send_batch(self, flats: list[Any], *, fulfilled_later: Sequence[str] = ()) -> list[dict[str, Any]]: ...


class Batch:
    """Flat protocol requests for one unit of writes, encoded with the SDK's codec."""

    def __init__(self, codec: Codec, session_tags: dict[str, str]) -> None:
        self._codec = codec
        self._tags = session_tags
        self.flats: list[dict[str, Any]] = []
        #: Executions settled here whose task the SDK fulfills later.
        self.fulfilled_later: list[str] = []

    def create(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str]) -> Batch:
        req = PromiseCreateReq(id=promise_id, timeout_at=timeout_at_ms, param=self._codec.encode(param), tags={**tags, **self._tags})
        self.flats.append({**msgspec.to_builtins(req), "kind": "promise.create", "corrId": promise_id})
        return self

    def settle(self, promise_id: str, state: str, value: Any, *, task: bool = False) -> Batch:
        """``value`` as the SDK encodes it (an exception: a rejection's error shape);
        ``task``: the promise is an execution whose task the SDK still holds."""
        req = PromiseSettleReq(id=promise_id, state=state, value=self._codec.encode(value))  # type: ignore[arg-type]
        self.flats.append({**msgspec.to_builtins(req), "kind": "promise.settle", "corrId": promise_id})
        if task:
            self.fulfilled_later.append(promise_id)
        return self


def checked(responses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The responses, as the SDK's sender would take them: a status >= 400 raises ``ServerError``."""
    for response in responses:
        status = int(response.get("status", 200))
        if status >= 400:
            raise ServerError(status, str(response.get("data") or response.get("error") or f"server error (status {status})"))
    return responses


def record_of(codec: Codec, response: dict[str, Any]) -> PromiseRecord:
    """The decoded promise record of a flat response, as ``resonate.promises`` returns it."""
    return codec.decode_promise(parse_promise(wrap_response_envelope(response)["data"]))


__all__ = ["AppliesBatch", "AppliesInline", "Batch", "checked", "record_of"]
