"""Pickling notebook values for checkpoints: cloudpickle, tuned for a namespace.

* Functions whose globals are the notebook namespace are pickled *without*
  those globals and rebound, on restore, to the namespace they are restored
  into (:func:`restoring_into`): a restored ``def bump(): global n; n += 1``
  still updates the notebook's ``n``, and a function never drags a copy of a
  big array into its own blob.
* Contiguous buffers of :data:`OUT_OF_BAND_MIN` bytes or more go out-of-band
  (pickle protocol 5), to be written straight from their memoryviews.
* Open files are refused instead of snapshotted, and a failure is explained by
  naming the unpicklable part (:func:`unpicklable_reason`).
* Each pickle reports which of the objects it reached other names could share
  (:attr:`Pickled.shared`), which is how aliases end up pickled together.
  Objects a library owns are left out of it: functions of extension modules
  pickled by name (Cython's, as pandas' ``_unpickle_block``) and the class
  attributes of classes pickled by reference (pandas' ``NDFrame._metadata``
  list, which every DataFrame's state holds), and the numpy and pandas objects
  :mod:`kernel.checkpoint.libraries` knows no two names can observe sharing.
  Every DataFrame reaches them, so counting them glued all frames of a notebook
  into one group; and no restore could keep them shared with the library anyway
  (see :meth:`PickleContext.library_owned`).

This relies on two private parts of cloudpickle (the function reducer
``Pickler._dynamic_function_reduce`` and ``cloudpickle._should_pickle_by_reference``),
so cloudpickle is pinned in pyproject.toml to :data:`CLOUDPICKLE_VERIFIED`, and a
unit test fails, naming the version, when the installed one is outside it.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import decimal
import enum
import fractions
import gc
import io
import pathlib
import pickle
import re
import sys
import threading
import types
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import cloudpickle

from kernel.checkpoint import libraries
from kernel.checkpoint.lazy import PENDING
from kernel.checkpoint.scan import code_names

#: The cloudpickle versions (``>=`` first, ``<`` second) whose private API this module was verified on.
CLOUDPICKLE_VERIFIED = ((3, 1), (3, 2))
PROTOCOL = 5
OUT_OF_BAND_MIN = 64 << 10  # smaller buffers stay in the pickle stream: a blob each would cost more


class _NamespaceRef:
    """Stands for "the namespace being restored into" in pickles (notebook functions' globals)."""

    __slots__ = ()

    def __reduce__(self) -> tuple:
        return (_target_namespace, ())


_NS_REF = _NamespaceRef()
_restoring = threading.local()


def _target_namespace() -> dict:
    """Called by the unpickler: the namespace restored functions must use as their globals."""
    namespace = getattr(_restoring, "namespace", None)
    return namespace if namespace is not None else {"__builtins__": builtins}


@contextlib.contextmanager
def restoring_into(namespace: dict) -> Iterator[None]:
    """Unpickle inside this block: notebook functions get ``namespace`` as their globals.

    Unpickling a function may set ``__builtins__`` in its globals; the
    namespace's own ``__builtins__`` (or its absence) is put back afterwards.
    """
    had_builtins = "__builtins__" in namespace
    saved_builtins = namespace.get("__builtins__")
    _restoring.namespace = namespace
    try:
        yield
    finally:
        _restoring.namespace = None
        if had_builtins:
            namespace["__builtins__"] = saved_builtins
        else:
            namespace.pop("__builtins__", None)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, plus: notebook functions rebind to the restore namespace; open files refuse."""

    def __init__(self, file: Any, namespace: dict, buffer_callback: Any) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self.namespace = namespace

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, io.IOBase):
            # cloudpickle would snapshot a readable file's contents into a StringIO; an
            # open file is a live resource, not a value, so it is reported instead.
            cls = type(obj)
            raise TypeError(f"cannot pickle '{cls.__module__}.{cls.__qualname__}' object")
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        if func.__globals__ is not self.namespace:
            return reduced
        make, (code, _globals, name, argdefs, closure), (state, slotstate), *rest = reduced
        slotstate = dict(slotstate, __globals__={})
        return (make, (code, _NS_REF, name, argdefs, closure), (state, slotstate), *rest)


# How objects found in a pickle's memo take part in sharing detection.
_NEVER, _FUNCTION, _CLASS, _SHAREABLE, _NAMED, _INDEX = range(1, 7)  # all truthy: cache lookups use `or`
_ATOMIC = (str, bytes, int, float, complex, bool, tuple, frozenset, range, slice)
# Objects of these types carry no state a second name could observe changing
# (unless a subclass adds a ``__dict__``). Everything else counts as shareable:
# wrongly counting an immutable object only glues two names into one blob
# (cost), wrongly ignoring a mutable one would lose sharing (correctness).
_IMMUTABLE = (
    *_ATOMIC, type(None), type(Ellipsis), type(NotImplemented), types.CodeType, types.CellType,
    types.BuiltinFunctionType, types.MethodType, types.MethodDescriptorType, types.WrapperDescriptorType,
    types.MethodWrapperType, types.GetSetDescriptorType, types.MemberDescriptorType,
    types.ClassMethodDescriptorType, property, staticmethod, classmethod, decimal.Decimal, fractions.Fraction,
    datetime.date, datetime.time, datetime.timedelta, datetime.tzinfo, re.Pattern, uuid.UUID, pathlib.PurePath,
)  # fmt: skip
_ALWAYS_IMMUTABLE = (types.ModuleType, enum.Enum)  # even with a __dict__: pickled by reference
_KINDS: dict[type, int] = {}
def _kind(cls: type) -> int:
    """Whether identity matters for objects of this type (mutable containers and instances do)."""
    kind = _KINDS.get(cls)
    if kind is None:
        numpy = sys.modules.get("numpy")
        immutable = _IMMUTABLE + ((numpy.generic, numpy.dtype) if numpy is not None else ())
        if cls is types.FunctionType:
            kind = _FUNCTION
        elif issubclass(cls, type):
            kind = _CLASS
        elif issubclass(cls, (*_ALWAYS_IMMUTABLE, _NamespaceRef, *libraries.immutable_types())):
            kind = _NEVER
        elif issubclass(cls, immutable) and cls.__dictoffset__ == 0:
            kind = _NEVER
        elif (index := libraries.index_type()) is not None and issubclass(cls, index):
            kind = _INDEX  # shareable itself, its data not (see kernel.checkpoint.libraries)
        elif any("__qualname__" in vars(k) for k in cls.__mro__[:-1]):
            kind = _NAMED  # function-like objects of an extension type (a Cython function, ...)
        else:
            kind = _SHAREABLE
        _KINDS[cls] = kind
    return kind


@dataclasses.dataclass
class Pickled:
    """One pickle of one name (or a group of names), before it is written."""

    stream: bytes
    buffers: list[memoryview]
    shared: dict[int, Any]  # id -> object, for objects whose identity other names may share
    global_names: frozenset[str]  # names notebook functions inside it may use
    #: ids in ``shared`` reached as the read-only data behind a pandas Index: they join this name to
    #: another only if that one reaches them otherwise (:mod:`kernel.checkpoint.groups`)
    weak: frozenset[int] = frozenset()

    @property
    def size(self) -> int:
        return len(self.stream) + sum(b.nbytes for b in self.buffers)


class PickleContext:
    """Per-capture (or per-restore) facts the pickles of several names share."""

    def __init__(self, namespace: dict, roots: Iterable[Any]) -> None:
        self.namespace = namespace
        roots = list(roots)
        self.root_ids = {id(v) for v in roots}  # objects bound to names: their identity always matters
        self.root_functions = {id(v) for v in roots if type(v) is types.FunctionType}
        self._internals: dict[type, set[int]] = {}
        self._owned: dict[type, frozenset[int]] = {}
        self._named: dict[int, bool] = {}

    def class_internals(self, cls: type) -> set[int]:
        """Ids of objects owned by a by-value notebook class (its dict, methods, their defaults, ...).

        Every blob holding an instance of a notebook class carries a copy of the
        class; cloudpickle's class tracker merges those copies on restore (the
        newest pickle's state wins, by ``pickled_at``). Their contents must not
        count as "shared between names", or every holder of an instance would
        be glued into one group.
        """
        ids = self._internals.get(cls)
        if ids is None:
            ids = set()
            stack = list(vars(cls).values())
            stop = (self.namespace, builtins.__dict__)
            while stack:
                o = stack.pop()
                if id(o) in ids or any(o is s for s in stop) or isinstance(o, (type, types.ModuleType)):
                    continue
                ids.add(id(o))
                if not isinstance(o, _ATOMIC) or isinstance(o, tuple):
                    stack.extend(gc.get_referents(o))
            self._internals[cls] = ids
        return ids

    def library_owned(self, cls: type) -> frozenset[int]:
        """Ids of the class attributes of a class pickled by reference (and of its bases').

        A pickle that reaches one (pandas' ``NDFrame._metadata``, reached by
        every DataFrame's ``__getstate__``) copies it by value, so after a
        restore no name shares it with the library any more, grouped or not.
        Two names reaching it is therefore no aliasing a restore could keep, and
        they are not glued together for it. Computed once per capture: class
        attributes may be rebound between cells.
        """
        ids = self._owned.get(cls)
        if ids is None:
            ids = frozenset(id(v) for k in cls.__mro__[:-1] for v in vars(k).values())
            self._owned[cls] = ids
        return ids

    def is_named_global(self, obj: Any) -> bool:
        """Whether ``obj`` is what its module exposes under its own name (pickled by reference).

        Such an object is restored as the module's own one, shared by every
        name that reaches it without any grouping.
        """
        known = self._named.get(id(obj))
        if known is None:
            found = sys.modules.get(getattr(obj, "__module__", None) or "")
            for part in str(getattr(obj, "__qualname__", "<>")).split("."):
                found = getattr(found, part, None)
            known = self._named[id(obj)] = found is obj
        return known

    def pickle(self, value: Any, *, keep_buffers: bool = True) -> Pickled:
        buffers: list[memoryview] = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            try:
                raw = buf.raw()
            except BufferError:  # not contiguous: let pickle copy it in-band
                return True
            if raw.nbytes < OUT_OF_BAND_MIN:
                return True
            if keep_buffers:
                if PENDING:  # a restored array still arriving: its bytes are written only once all are in, verified
                    PENDING.wait_for_buffer(raw)
                buffers.append(raw)
            return False

        out = io.BytesIO()
        pickler = _Pickler(out, self.namespace, out_of_band)
        pickler.dump(value)
        shared, global_names, weak = self._scan_memo(pickler.memo.copy())
        del pickler
        return Pickled(out.getvalue(), buffers, shared, global_names, weak)

    def _scan_memo(self, memo: dict) -> tuple[dict[int, Any], frozenset[str], frozenset[int]]:
        """Objects in a pickle whose identity other names could share, and notebook functions' names.

        The memo also holds temporaries the reducers made (argument tuples,
        state dicts) whose ids die with the pickler and would alias later
        objects. Those with no owner besides the pickler are dropped by their
        reference count; the few held by other temporaries are kept alive in
        ``shared`` so their ids cannot be reused while they are recorded.
        """
        namespace, roots, roots_all, floor = self.namespace, self.root_functions, self.root_ids, _TEMP_REFCOUNT
        shared: dict[int, Any] = {}
        names: set[str] = set()
        classes: list[type] = []
        by_reference: list[type] = []
        indexes: list[Any] = []
        getrefcount = sys.getrefcount
        for _index, obj in memo.values():
            kind = _KINDS.get(type(obj)) or _kind(type(obj))
            if kind == _SHAREABLE:
                if getrefcount(obj) > floor:
                    shared[id(obj)] = obj
            elif kind == _INDEX:
                if getrefcount(obj) > floor:
                    shared[id(obj)] = obj
                indexes.append(obj)
            elif kind == _FUNCTION:
                if obj.__globals__ is namespace:
                    names |= code_names(obj.__code__)
                if id(obj) in roots:
                    shared[id(obj)] = obj
            elif kind == _CLASS:
                (by_reference if _pickled_by_reference(obj) else classes).append(obj)
            elif kind == _NAMED:
                if getrefcount(obj) > floor and (id(obj) in roots_all or not self.is_named_global(obj)):
                    shared[id(obj)] = obj
        root_ids = self.root_ids
        for cls in classes:
            for oid in self.class_internals(cls):
                if oid not in root_ids:
                    shared.pop(oid, None)
        for cls in by_reference:
            for oid in self.library_owned(cls) & shared.keys():
                if oid not in root_ids:
                    del shared[oid]
        weak: set[int] = set()
        for index in indexes:
            weak |= libraries.index_data_ids(index) & shared.keys()
        return shared, frozenset(names), frozenset(weak - root_ids)


def _pickled_by_reference(cls: type) -> bool:
    try:
        return cloudpickle.cloudpickle._should_pickle_by_reference(cls)
    except Exception:  # noqa: BLE001 - private helper; assume by value (the safe side)
        return False


def _calibrate_temp_refcount() -> int:
    """The reference count :meth:`PickleContext._scan_memo` sees for an object only the memo holds."""

    class Probe:
        def __reduce__(self) -> tuple:
            return (list, (["pyrepl3-probe"],))

    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=PROTOCOL)
    pickler.dump(Probe())
    for _index, obj in pickler.memo.copy().values():
        if type(obj) is tuple and obj and obj[0] == ["pyrepl3-probe"]:
            return sys.getrefcount(obj)
    return 4  # CPython 3.12's value, should the probe ever not be found


_TEMP_REFCOUNT = _calibrate_temp_refcount()


def type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"


_FRIENDLY = {
    "TextIOWrapper": "open file", "BufferedReader": "open file", "BufferedWriter": "open file",
    "BufferedRandom": "open file", "FileIO": "open file", "socket": "socket", "SSLSocket": "socket",
    "generator": "generator", "coroutine": "coroutine", "async_generator": "async generator",
    "lock": "lock", "RLock": "lock", "Condition": "lock", "Connection": "database connection",
    "Cursor": "database cursor", "frame": "stack frame", "mmap": "memory map",
}  # fmt: skip
_CULPRIT = re.compile(r"cannot pickle '([^']+)' object")


def unpicklable_reason(value: Any, exc: BaseException) -> str:
    """Why a value was skipped, naming the type that could not be pickled."""
    match = _CULPRIT.search(str(exc))
    if match is None:
        return f"cannot be pickled ({type(exc).__name__}: {exc})"[:300]
    culprit = match.group(1)
    what = _FRIENDLY.get(culprit.rsplit(".", 1)[-1], culprit)
    cls = type(value)
    if culprit in (cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"):
        return f"{what} (cannot be pickled)"
    article = "an" if what[:1] in "aeiou" else "a"
    return f"{type_name(cls)} holding {article} {what} ({culprit}), which cannot be pickled"



__all__ = [
    "CLOUDPICKLE_VERIFIED",
    "OUT_OF_BAND_MIN",
    "PROTOCOL",
    "PickleContext",
    "Pickled",
    "restoring_into",
    "type_name",
    "unpicklable_reason",
]
