"""Values restored before their large buffers have arrived, and what waits for them.

A restore unpickles a unit whose big out-of-band buffers are still being read
(:class:`kernel.store.chunks.Filling`: chunk by chunk, each verified before it
is copied in) only when its pickle stream, verified up front, can do nothing
with those bytes while it is unpickled: :func:`reads_no_buffer` allows only
numpy's own array reconstructor (``_frombuffer``, which wraps the buffer
without reading it) and ``numpy.dtype``. Anything else (a DataFrame, a class
whose ``__setstate__`` may look at the data) waits for its buffers first.

The values are in the namespace at once, over memory that holds zeros or
verified bytes; :data:`PENDING` then makes everything that could look at them
wait for their buffers (:meth:`PendingValues.settle`): a cell that may touch
them (by the same scan that decides what a checkpoint re-pickles, plus
``dir()``; anything the scan cannot follow waits for all), a completion, an
inspection, and any pickle of such a buffer (:mod:`kernel.checkpoint.pickling`).
A unit whose buffer failed (a changed chunk, a missing file) is taken out of
the namespace before anything runs, and named: it was never usable.

One registry per process (as the restore namespace in
:mod:`kernel.checkpoint.pickling`): a kernel restores into one namespace.
"""

from __future__ import annotations

import dataclasses
import logging
import pickletools
import sys
import threading
import types
from collections.abc import Iterable
from typing import Any

from kernel.checkpoint.scan import expand_touched, scan_cell
from kernel.core.errors import StoreError
from kernel.store.chunks import Filling

log = logging.getLogger(__name__)

#: The only globals a stream may name to be unpickled over buffers not read yet.
_READS_NO_BUFFER = frozenset(
    {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"), ("numpy", "dtype")}
)
_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"})
_NO_PUSH = frozenset({"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP"})
_NEVER = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "INST", "OBJ"})
# Top-level calls that list the namespace's names; the scan lets them by (they touch no object), but a
# value taken out for a failed buffer must be gone before a cell could see it listed.
_LISTS_NAMES = frozenset({"dir", "vars", "locals", "globals"})


def reads_no_buffer(stream: bytes) -> bool:
    """Whether unpickling ``stream`` only calls numpy's array reconstructor and ``numpy.dtype``."""
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # what each op pushed, when it is a string (else None)
    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name in _NEVER:
                return False
            if name in _STRINGS:
                pushed.append(arg)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name == "STACK_GLOBAL":
                if len(pushed) < 2 or (pushed[-2], pushed[-1]) not in _READS_NO_BUFFER:
                    return False
                pushed.append(None)
            elif name == "GLOBAL":
                if tuple(str(arg).split(" ", 1)) not in _READS_NO_BUFFER:
                    return False
                pushed.append(None)
            elif name not in _NO_PUSH:
                pushed.append(None)
    except Exception:  # noqa: BLE001 - not a stream we understand: not lazily
        return False
    return True


@dataclasses.dataclass(eq=False)
class _Unit:
    names: dict[str, Any]  # name -> the value restored under it
    fillings: list[Filling]


class PendingValues:
    """Restored units whose buffers are still arriving."""

    def __init__(self) -> None:
        self._units: list[_Unit] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._units)

    def add(self, names: dict[str, Any], fillings: list[Filling]) -> None:
        with self._lock:
            self._units.append(_Unit(dict(names), list(fillings)))

    def forget(self, names: Iterable[str]) -> None:
        """A restore is replacing these names: their earlier units no longer matter to them."""
        gone = set(names)
        with self._lock:
            for unit in self._units:
                for name in gone & unit.names.keys():
                    del unit.names[name]

    def settle(self, code: str | None, namespace: dict) -> list[tuple[list[str], str]]:
        """Wait for the buffers a request running ``code`` (None: anything) may reach.

        Returns the units that failed, as (names, why), after taking them out of
        ``namespace``; every failure known by then is reported, reached or not."""
        if not self._units:
            return []
        with self._lock:
            units = list(self._units)
        wanted = self._reached(code, namespace, units)
        failed: list[tuple[list[str], str]] = []
        keep: list[_Unit] = []
        for unit in units:
            if unit in wanted:
                for filling in unit.fillings:
                    try:
                        filling.wait()
                    except StoreError:
                        break
            error = next((f.error for f in unit.fillings if f.done and f.error is not None), None)
            if error is not None:
                names = [n for n, v in unit.names.items() if namespace.get(n) is v]
                for name in names:
                    del namespace[name]
                if names:
                    failed.append((sorted(names), f"its saved data is corrupt or unreadable ({error}); not restored"[:400]))
            elif not all(f.done for f in unit.fillings) and unit.names:
                keep.append(unit)
        with self._lock:
            self._units = [u for u in self._units if u in keep or u not in units]
        return failed

    def _reached(self, code: str | None, namespace: dict, units: list[_Unit]) -> list[_Unit]:
        if code is None:
            return units
        scan = scan_cell(code)
        if scan.doubt is not None or scan.names & _LISTS_NAMES:
            return units
        touched = {n for n in scan.names if n in namespace}
        if expand_touched(touched, namespace, namespace, lambda _name: frozenset()) is not None:
            return units
        if any(not _plain(namespace[n]) for n in touched):  # a container or an object may hold a function
            return units
        return [u for u in units if touched & u.names.keys()]

    def wait_for_buffer(self, buffer: memoryview) -> None:
        """Before a pickle writes ``buffer`` out: wait if it is (a view of) one still arriving; raise if it failed."""
        with self._lock:
            fillings = {id(f.buffer): f for u in self._units for f in u.fillings}
        if not fillings:
            return
        obj: Any = buffer.obj
        for _depth in range(16):
            filling = fillings.get(id(obj))
            if filling is not None:
                filling.wait()
                return
            nxt = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
            if nxt is None or nxt is obj:
                return
            obj = nxt


def _plain(value: Any) -> bool:
    """Values that reach no notebook function (what a cell touching them cannot reach a buffer through)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return value.dtype != object
    return isinstance(value, (int, float, complex, str, bytes, bool, type(None), type, types.FunctionType, types.ModuleType))


#: The kernel's registry (see the module docstring).
PENDING = PendingValues()

__all__ = ["PENDING", "PendingValues", "reads_no_buffer"]
