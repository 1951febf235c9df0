"""Durable steps inside a cell: ``durable.run``, ``durable.sleep``, and step values.

Each step is a child promise of the running ``exec:<msg_id>``, numbered in the
order the cell makes them (``exec:<msg_id>:step:<n>``). When the same execution
runs again (``%durable resume`` after a crash), a step that already finished
returns its journaled result without calling the function again; a sleep that
already elapsed returns at once, one in progress sleeps only what is left.
Like Resonate's ``ctx.run``, a step interrupted half way runs again
(at-least-once); a finished one never does.

Step values (``durable.checkpoint(name, value)`` to users: a value the cell
saves as it goes, nothing to do with namespace checkpoints) are versioned
promises ``exec:<msg_id>:ckpt:<name>:<v>``. The newest version of a name is
counted in memory, so a call costs the same after 10 or 10,000 versions. A new
execution starts every name at 0; only a resumed one (an earlier run, before a
crash, may have written some) finds it once, with a galloping search over ids
(no search API needed from the engine).

A step costs one write: it is stored created and settled
at once when its function returns. Only a resumed run looks its steps up first,
until the first that is not journaled yet (it replays the steps an earlier run
finished; steps are made in order, so none after a missing one exists).

``durable.run(fn, ..., retries=, timeout=)`` runs ``fn`` under
:class:`kernel.durable.attempts.Attempts`: each failed attempt is journaled
(:mod:`kernel.durable.attempt_journal`) before the next, and only the first
unfinished step of a resumed run reads those back, to go on with the next
attempt, the rest of its delay and the same deadline. The step is stored once,
at its end, as any other (rejected with the last error and the count when
every attempt failed). A step without either option takes the path it always
took: no attempt is read or written.

Every result and step value is sealed (:class:`kernel.checkpoint.signing.Sealer`):
signed with the session key and bound to the session and its promise id, and
checked before it is decoded. Plain-JSON values are sealed too -- JSON is
never executed, but a swapped result would still change what a resumed cell
computes -- and a pickled one is never unpickled unless it verifies.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from kernel.checkpoint.signing import Sealer
from kernel.core import tracing
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.errors import CheckpointNotFoundError, PyRepl3Error
from kernel.core.ids import KIND_TAG, ChildNumbering, step_id, step_value_id
from kernel.core.retries import policy_json, retry_policy
from kernel.durable.attempt_journal import AttemptRecords
from kernel.durable.attempts import Attempts
from kernel.durable.runtime import DurableRuntime

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
#: The default of :meth:`StepJournal.latest_value` that means "raise when there is none".
NO_DEFAULT: Any = object()


class StepError(PyRepl3Error):
    """A journaled step failed before (replayed), or its result cannot be stored."""


def encode_value(value: Any, what: str) -> dict[str, Any]:
    """JSON when the value is plain data (readable in the CLI), else cloudpickle."""
    try:
        text = json.dumps(value)
        if json.loads(text) == value:
            return {"json": value}
    except (TypeError, ValueError):
        pass
    try:
        return {"pickle": base64.b64encode(cloudpickle.dumps(value)).decode()}
    except Exception as exc:  # noqa: BLE001 - pickling raises anything
        raise StepError(f"{what}: a value of type {type(value).__name__} cannot be serialized ({exc})") from exc


def decode_value(data: dict[str, Any]) -> Any:
    """The value of an *unsealed* (verified) body."""
    if "json" in data:
        return data["json"]
    return cloudpickle.loads(base64.b64decode(data["pickle"]))


class StepJournal(ChildNumbering):
    """The steps and step values of the running execution, as child promises."""

    def __init__(self, runtime: DurableRuntime, sealer: Sealer, *, clock: Clock = SYSTEM) -> None:
        self.runtime = runtime
        self.sealer = sealer
        self._clock = clock
        super().__init__()
        #: Whether this run of the execution may still find journaled steps (until one is missing).
        self._replaying = True
        #: name -> newest version of that step value in this run (found once, then counted).
        self._versions: dict[str, int] = {}
        #: Whether the running execution was created for this run (nothing journaled before it).
        self._fresh = False

    @contextlib.contextmanager
    def executing(self, execution_id: str, *, fresh: bool = False) -> Iterator[None]:
        """As :meth:`ChildNumbering.executing`, with this run's replay state and version
        counts (a resumed execution nested in ``%durable resume`` has its own).
        ``fresh``: the execution was created for this run, so it has no steps or step
        values yet: none is looked up (every version is counted from 0)."""
        saved = (self._replaying, self._versions, self._fresh)
        self._replaying, self._versions, self._fresh = not fresh, {}, fresh
        try:
            with super().executing(execution_id):
                yield
        finally:
            self._replaying, self._versions, self._fresh = saved

    def _next_id(self) -> str:
        return self.next_child(step_id, "durable steps")

    def _open(self, pid: str, param: dict[str, Any]) -> Any:
        return self.runtime.create(pid, self._clock.ms_after(FAR_FUTURE), param, {KIND_TAG: "step"})

    def run(self, fn: Callable[..., Any], *args: Any, retries: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` as the next step; ``retries``/``timeout``: see :class:`Attempts`
        (checked before anything is stored or numbered)."""
        name = getattr(fn, "__qualname__", repr(fn))
        attempts = None
        if retries is not None or timeout is not None:
            attempts = Attempts(retry_policy(retries), what=f"durable.run({name})", timeout=timeout, clock=self._clock)
        pid = self._next_id()
        with tracing.span(tracing.STEP, promise_id=pid, kind="run", function=name):
            return self._run(pid, name, fn, args, kwargs, attempts, timeout)

    def _run(
        self, pid: str, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        attempts: Attempts | None, timeout: float | None,
    ) -> Any:
        record, lookup = None, self._replaying
        if self._replaying:
            record = self.runtime.find(pid)
            if record is None:
                # Steps are made in order, so none after this one exists either.
                self._replaying = False
            elif record.state == "resolved":
                tracing.annotate(replayed=True)
                return self._decode(pid, record.value.data, f"the result of durable.run({name})")
            elif record.state != "pending":
                error = (record.value.data or {}) if isinstance(record.value.data, dict) else {}
                n = error.get("attempts")
                count = f" after {n} attempt{'s' if n != 1 else ''}" if isinstance(n, int) else ""
                raise StepError(f"step {pid} ({name}) failed when it first ran{count}: {error.get('error', record.state)}")
        param: dict[str, Any] = {"kind": "run", "function": name}
        try:
            if attempts is None:
                result = fn(*args, **kwargs)
            else:
                param.update(retries=policy_json(attempts.policy), timeout=timeout)
                journal = AttemptRecords(self.runtime, self.sealer, pid, what=f"step {pid} ({name})", lookup=lookup, clock=self._clock)
                result = attempts.run(lambda: fn(*args, **kwargs), journal)
        except Exception as exc:
            failed: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
            if attempts is not None:
                failed["attempts"] = attempts.attempts
            self._store(pid, param, record, "rejected", failed)
            raise
        try:
            encoded = encode_value(result, f"durable.run({name})")
        except StepError as exc:
            self._store(pid, param, record, "rejected", {"error": str(exc)})
            raise
        self._store(pid, param, record, "resolved", self.sealer.seal(pid, encoded))
        return result

    def _store(self, pid: str, param: dict[str, Any], record: Any, state: str, value: Any) -> None:
        """Settle a step that was found pending (killed half way before), else create it
        settled: one trip to the runtime thread either way."""
        if record is not None:
            self.runtime.settle(pid, state, value)
        else:
            self.runtime.create_settled(pid, self._clock.ms_after(FAR_FUTURE), param, {KIND_TAG: "step"}, state, value)

    def _decode(self, pid: str, data: Any, what: str) -> Any:
        """Verify, then decode: a value this key did not seal for ``pid`` is never unpickled."""
        return decode_value(self.sealer.unseal(pid, data, what))

    def sleep(self, seconds: float) -> None:
        pid = self._next_id()
        with tracing.span(tracing.STEP, promise_id=pid, kind="sleep", seconds=seconds):
            self._sleep(pid, seconds)

    def _sleep(self, pid: str, seconds: float) -> None:
        record = self._open(pid, {"kind": "sleep", "seconds": seconds, "until": self._clock.wall() + seconds})
        if record.state != "pending":
            tracing.annotate(replayed=True)
            return
        until = float(record.param.data["until"])
        self._clock.wait_for(lambda: self._clock.wall() >= until, until - self._clock.wall(), interval=0.25)
        self.runtime.settle(pid, "resolved", {"json": None})

    # -- step values (``durable.checkpoint`` / ``durable.get_checkpoint``) ------

    def _value_id(self, name: str, version: int) -> str:
        if self.execution_id is None:
            raise PyRepl3Error("durable checkpoints can only be used inside a cell's execution")
        if not _NAME.match(name):
            raise PyRepl3Error(f"checkpoint name {name!r} must be 1-100 letters, digits, '_', '.' or '-'")
        return step_value_id(self.execution_id, name, version)

    def _latest(self, name: str) -> tuple[int, Any]:
        """(newest version, its record) or (0, None), in O(log n) lookups."""
        lo, hi, rec_lo = 0, 1, None
        while (rec := self.runtime.find(self._value_id(name, hi))) is not None:
            lo, rec_lo, hi = hi, rec, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            rec = self.runtime.find(self._value_id(name, mid))
            if rec is not None:
                lo, rec_lo = mid, rec
            else:
                hi = mid
        return lo, rec_lo

    def _head(self, name: str) -> int:
        """The newest version of ``name``: searched once per run of the execution (the
        journal of an earlier run may hold some), then counted here."""
        version = self._versions.get(name)
        if version is None:
            version = self._versions[name] = 0 if self._fresh else self._latest(name)[0]
        return version

    def save_value(self, name: str, value: Any) -> None:
        """Store ``value`` as the next version of the step value ``name``: one trip to the runtime thread."""
        encoded = encode_value(value, f"durable.checkpoint({name!r})")
        version = self._head(name) + 1
        pid = self._value_id(name, version)
        self.runtime.create_settled(
            pid, self._clock.ms_after(FAR_FUTURE), {"kind": "checkpoint", "name": name}, {KIND_TAG: "step"},
            "resolved", self.sealer.seal(pid, encoded),
        )
        self._versions[name] = version

    def latest_value(self, name: str, default: Any = NO_DEFAULT) -> Any:
        """The newest version of the step value ``name``, else ``default`` (read and verified)."""
        version = self._head(name)
        record = self.runtime.find(self._value_id(name, version)) if version else None
        if record is None or record.state != "resolved":
            if default is NO_DEFAULT:
                raise CheckpointNotFoundError(f"no checkpoint named {name!r} in {self.execution_id}")
            return default
        return self._decode(self._value_id(name, version), record.value.data, f"the step value {name!r}")
