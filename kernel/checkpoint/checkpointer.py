"""Namespace checkpoints: save the user's variables after every cell, cheaply, and bring them back.

A checkpoint is a small :class:`Manifest` (name -> content hash, type, size,
how to restore) that the kernel stores in a durable promise. The values live in
the content-addressed :class:`~kernel.store.embedded.blobs.BlobStore`, written once per
distinct content, so any older manifest can be restored the same way (time
travel) and unchanged values cost nothing to keep.

How values are saved
    * Modules are recorded as imports (``np`` -> ``numpy``) and re-imported.
    * Everything else goes through cloudpickle (protocol 5), so functions,
      lambdas and classes defined in the notebook (module ``__main__``) come
      back by value. Functions whose globals are the notebook namespace are
      pickled *without* those globals and rebound to the namespace they are
      restored into: a restored ``def bump(): global n; n += 1`` still updates
      the notebook's ``n``, and a function never drags a copy of a big array
      into its own blob.
    * Contiguous buffers (numpy arrays, ...) of 64 KiB or more go out-of-band:
      each is hashed and written straight from its memoryview as its own blob,
      never copied into the pickle stream or through JSON. Restored arrays are
      private copy-on-write mappings of the blob files, hence writable.
    * Names whose objects are shared (two names bound to one list, a dict
      holding an object also bound to a name) are pickled together in one blob
      so they stay shared after restore.
    * A notebook class travels by value inside every blob holding one of its
      instances; cloudpickle merges the copies on restore, and blobs are loaded
      oldest first so the newest class state wins.
    * Values that cannot be pickled (open files, sockets, generators, locks,
      connections, or anything holding one) are skipped and reported by name,
      as are excluded names and values over the size limit. Nothing else is
      lost because of them.

Why incremental, and how
    A checkpoint runs after every cell, and the namespace may hold gigabytes.
    So a capture only re-pickles the names the cell *could* have changed and
    reuses the previous entries for the rest, by object identity. The rules
    (see :func:`scan_cell` and :meth:`Checkpointer._expand`):

    1. New names and names bound to a different object than at the last
       checkpoint (rebinding, however it happened); deleted names are removed.
    2. Every name the cell's code mentions (load, store, del, import, def,
       global, ...), including inside functions and lambdas it defines.
    3. The globals used by notebook functions reachable from those names
       (``__code__.co_names``, transitively, including methods of notebook
       classes of touched instances and functions held in touched containers
       at the last checkpoint), and named numpy arrays that are views of the
       same memory as a touched one.
    4. Names pickled together with a touched name (shared objects) and names
       whose objects turn out to be shared with a re-pickled one.
    5. When the cell's code defeats this analysis (``exec``, ``eval``,
       ``globals()``, star imports, ``get_ipython()`` -- which is what magics
       become -- frame or ``sys.modules`` access), every name is touched; blobs
       whose hash did not change are still not rewritten.

    Blind spots are listed in :meth:`Checkpointer._expand`.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import gc
import importlib
import io
import pathlib
import pickle
import re
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterable
from typing import Any, Literal

import cloudpickle
from pydantic import BaseModel, Field

from kernel.core.errors import StoreError
from kernel.core.text import human_size as _human
from kernel.store.embedded.blobs import HASH_NAME, BlobStore

FORMAT = 1
PROTOCOL = 5
OUT_OF_BAND_MIN = 64 << 10  # smaller buffers stay in the pickle stream: a blob each would cost more


# ---------------------------------------------------------------------------
# The manifest and the reports
# ---------------------------------------------------------------------------


class Entry(BaseModel):
    """How to bring back one name."""

    kind: Literal["pickle", "module"]
    type: str  # qualified type name of the value, for display
    size: int = 0  # bytes this value takes when pickled on its own (stream + buffers)
    blob: str | None = None  # pickle stream (of the value, or of the tuple of ``group`` values)
    blob_size: int = 0
    buffers: list[str] = []  # out-of-band buffers of that stream, in pickle order
    buffer_sizes: list[int] = []
    group: list[str] = []  # names pickled together in ``blob``, in tuple order; empty = just this name
    module: str | None = None  # for kind == "module"
    submodules: list[str] = []  # ``import a.b.c`` binds ``a``; restoring ``a`` must import a.b.c too
    pickled_at: float = 0.0  # later pickles win when two blobs carry the same notebook class


class Manifest(BaseModel):
    """One checkpoint of a namespace. JSON via ``model_dump(mode="json")`` / ``model_validate``."""

    format: int = FORMAT
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created: float = Field(default_factory=time.time)
    hash: str = HASH_NAME
    entries: dict[str, Entry] = {}
    skipped: dict[str, str] = {}  # name -> why it is not in this checkpoint
    changed: list[str] = []  # names whose saved value differs from the previous manifest's
    removed: list[str] = []  # names in the previous manifest that are gone from the namespace

    def blob_sizes(self) -> dict[str, int]:
        """Every blob this checkpoint needs, with its size."""
        sizes: dict[str, int] = {}
        for entry in self.entries.values():
            if entry.blob is not None:
                sizes[entry.blob] = entry.blob_size
            sizes.update(zip(entry.buffers, entry.buffer_sizes, strict=False))
        return sizes

    @property
    def total_size(self) -> int:
        """Bytes of blob data this checkpoint refers to (shared blobs counted once)."""
        return sum(self.blob_sizes().values())


@dataclasses.dataclass
class CaptureReport:
    skipped: dict[str, str]
    changed: list[str]
    removed: list[str]
    written_bytes: int  # bytes of new blobs actually written
    seconds: float
    pickled: list[str] = dataclasses.field(default_factory=list)  # names re-pickled by this capture
    full: bool = False  # every name was treated as touched
    full_reason: str | None = None


@dataclasses.dataclass
class RestoreReport:
    restored: list[str]
    skipped: dict[str, str]
    seconds: float

    def summary(self) -> str:
        """One line for the user: what came back and what did not, and why."""
        n = len(self.restored)
        shown = ", ".join(self.restored[:8]) + (", …" if n > 8 else "")
        text = f"restored {n} name{'' if n == 1 else 's'}" + (f" ({shown})" if n else "") + f" in {self.seconds:.2f}s"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{name}: {why}" for name, why in sorted(self.skipped.items()))
        return text


# ---------------------------------------------------------------------------
# Which names are the user's
# ---------------------------------------------------------------------------

_IPYTHON_NAMES = frozenset(
    {
        "In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh", "_exit_code",
        "exit", "quit", "get_ipython",
    }
)  # fmt: skip
_IPYTHON_PATTERN = re.compile(r"_i?\d+|__\w*__")


@functools.lru_cache(maxsize=1 << 16)
def _ipython_name(name: str) -> bool:
    return name in _IPYTHON_NAMES or _IPYTHON_PATTERN.fullmatch(name) is not None


def is_ipython_name(name: str, value: Any = None) -> bool:
    """Names IPython (or Python) puts in the namespace; never checkpointed.

    User names with one leading underscore (``_cache``) are the user's, unless
    they match IPython's history patterns (``_5``, ``_i5``). ``open`` is
    IPython's wrapper unless the user rebound it.
    """
    if _ipython_name(name):
        return True
    if name == "open":
        return value is builtins.open or str(getattr(value, "__module__", "")).startswith(("IPython", "io", "_io"))
    return False


# ---------------------------------------------------------------------------
# What a cell may touch: its source
# ---------------------------------------------------------------------------

# Calls that reach the namespace without naming the variables they touch.
# (Binding names that way is harmless -- rebinding is detected by identity --
# but mutating objects through it is not.)
_DOUBT_NAMES = frozenset({"exec", "eval", "globals", "get_ipython", "breakpoint", "__main__", "__builtins__"})
_NAMESPACE_WITHOUT_ARGS = frozenset({"vars", "locals"})  # vars() / locals() at top level are globals()
# The same in notebook functions' bytecode (``locals``/``vars`` there are the function's own).
_DOUBT_CODE_NAMES = frozenset({"exec", "eval", "globals", "get_ipython", "breakpoint", "__main__"})
# Attributes that lead to the namespace or to arbitrary live objects.
_DOUBT_ATTRS = frozenset(
    {
        "modules", "_getframe", "currentframe", "f_globals", "f_locals", "f_back", "__globals__",
        "gi_frame", "cr_frame", "tb_frame", "get_objects", "get_referrers", "user_ns",
        "user_global_ns", "run_line_magic", "run_cell_magic", "run_cell", "ex", "ev",
    }
)  # fmt: skip


@dataclasses.dataclass
class CellScan:
    names: set[str]  # every identifier the cell mentions as a variable
    imports: dict[str, set[str]]  # bound name -> dotted modules imported through it
    doubt: str | None  # why the analysis cannot be trusted (then every name is touched)


def scan_cell(code: str) -> CellScan:
    """The names a cell's (transformed) source may load, store or delete.

    Deliberately generous: every identifier counts, in nested functions and
    comprehensions too, since a function defined and called in the same cell
    touches the globals it names.
    """
    names: set[str] = set()
    imports: dict[str, set[str]] = {}
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError) as exc:
        return CellScan(names, imports, f"cell source does not parse ({exc.__class__.__name__})")
    with_args = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and (n.args or n.keywords)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in _DOUBT_NAMES or (node.id in _NAMESPACE_WITHOUT_ARGS and id(node) not in with_args):
                return CellScan(names, imports, f"cell uses {node.id}")
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr in _DOUBT_ATTRS:
                return CellScan(names, imports, f"cell uses .{node.attr}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "__main__":
                    return CellScan(names, imports, "cell imports __main__")
                bound = alias.asname or alias.name.split(".")[0]
                names.add(bound)
                if alias.asname is None and "." in alias.name:
                    imports.setdefault(bound, set()).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__main__":
                return CellScan(names, imports, "cell imports from __main__")
            for alias in node.names:
                if alias.name == "*":
                    return CellScan(names, imports, "cell uses a star import")
                names.add(alias.asname or alias.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return CellScan(names, imports, None)


@functools.lru_cache(maxsize=4096)
def _code_names(code: types.CodeType) -> frozenset[str]:
    """Global (and attribute) names a code object and the code nested in it may use."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _code_names(const)
    return frozenset(found)


def _notebook_functions(value: Any, namespace: dict) -> list[types.FunctionType]:
    """Functions with the notebook's globals that calling into ``value`` may run.

    Looks through the wrappers a value can put around them (bound methods,
    partials, decorators with ``__wrapped__``, static/class methods,
    properties) and, for classes and instances, through the methods of the
    class and its bases. Containers are not searched here: the functions they
    held are recorded when they are pickled (``_Group.global_names``).
    """
    found: list[types.FunctionType] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, types.FunctionType):
            if v.__globals__ is namespace:
                found.append(v)
            wrapped = getattr(v, "__wrapped__", None)
            if wrapped is not None:
                stack.append(wrapped)
        elif isinstance(v, types.MethodType):
            stack += (v.__func__, v.__self__)
        elif isinstance(v, functools.partial):
            stack.append(v.func)
        elif isinstance(v, (staticmethod, classmethod)):
            stack.append(v.__func__)
        elif isinstance(v, property):
            stack += [f for f in (v.fget, v.fset, v.fdel) if f is not None]
        elif isinstance(v, type):
            if v.__module__ == "builtins":
                continue
            for klass in v.__mro__:
                for attr in vars(klass).values():
                    if isinstance(attr, (types.FunctionType, staticmethod, classmethod, property, functools.partial)):
                        stack.append(attr)
        elif not isinstance(v, types.ModuleType):
            cls = type(v)
            if cls.__module__ != "builtins":
                stack.append(cls)
            try:  # decorators (functools.wraps, lru_cache) keep the notebook function here
                wrapped = getattr(v, "__wrapped__", None)
            except Exception:  # noqa: BLE001 - a hostile __getattr__ is not our problem
                wrapped = None
            if isinstance(wrapped, types.FunctionType):
                stack.append(wrapped)
    return found


def _array_families(candidates: dict[str, Any]) -> dict[str, set[str]]:
    """Names of numpy arrays sharing memory through ``.base``, keyed by each member's name."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return {}
    ndarray = numpy.ndarray
    by_base: dict[int, set[str]] = {}
    for name, value in candidates.items():
        if isinstance(value, ndarray):
            root = value
            while isinstance(root.base, ndarray):
                root = root.base
            by_base.setdefault(id(root.base if root.base is not None else root), set()).add(name)
    return {name: family for family in by_base.values() if len(family) > 1 for name in family}


# ---------------------------------------------------------------------------
# Pickling
# ---------------------------------------------------------------------------


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
_NEVER, _FUNCTION, _CLASS, _SHAREABLE = range(1, 5)  # all truthy: cache lookups use `or`
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
        elif issubclass(cls, (*_ALWAYS_IMMUTABLE, _NamespaceRef)):
            kind = _NEVER
        elif issubclass(cls, immutable) and cls.__dictoffset__ == 0:
            kind = _NEVER
        else:
            kind = _SHAREABLE
        _KINDS[cls] = kind
    return kind


@dataclasses.dataclass
class _Pickled:
    """One pickle of one name (or a group of names), before it is written."""

    stream: bytes
    buffers: list[memoryview]
    shared: dict[int, Any]  # id -> object, for objects whose identity other names may share
    global_names: frozenset[str]  # names notebook functions inside it may use

    @property
    def size(self) -> int:
        return len(self.stream) + sum(b.nbytes for b in self.buffers)


class _PickleContext:
    """Per-capture (or per-restore) facts the pickles of several names share."""

    def __init__(self, namespace: dict, roots: Iterable[Any]) -> None:
        self.namespace = namespace
        roots = list(roots)
        self.root_ids = {id(v) for v in roots}  # objects bound to names: their identity always matters
        self.root_functions = {id(v) for v in roots if type(v) is types.FunctionType}
        self._internals: dict[type, set[int]] = {}

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

    def pickle(self, value: Any, *, keep_buffers: bool = True) -> _Pickled:
        buffers: list[memoryview] = []

        def out_of_band(buf: pickle.PickleBuffer) -> bool:
            try:
                raw = buf.raw()
            except BufferError:  # not contiguous: let pickle copy it in-band
                return True
            if raw.nbytes < OUT_OF_BAND_MIN:
                return True
            if keep_buffers:
                buffers.append(raw)
            return False

        out = io.BytesIO()
        pickler = _Pickler(out, self.namespace, out_of_band)
        pickler.dump(value)
        shared, global_names = self._scan_memo(pickler.memo.copy())
        del pickler
        return _Pickled(out.getvalue(), buffers, shared, global_names)

    def _scan_memo(self, memo: dict) -> tuple[dict[int, Any], frozenset[str]]:
        """Objects in a pickle whose identity other names could share, and notebook functions' names.

        The memo also holds temporaries the reducers made (argument tuples,
        state dicts) whose ids die with the pickler and would alias later
        objects. Those with no owner besides the pickler are dropped by their
        reference count; the few held by other temporaries are kept alive in
        ``shared`` so their ids cannot be reused while they are recorded.
        """
        namespace, roots, floor = self.namespace, self.root_functions, _TEMP_REFCOUNT
        shared: dict[int, Any] = {}
        names: set[str] = set()
        classes: list[type] = []
        getrefcount = sys.getrefcount
        for _index, obj in memo.values():
            kind = _KINDS.get(type(obj)) or _kind(type(obj))
            if kind == _SHAREABLE:
                if getrefcount(obj) > floor:
                    shared[id(obj)] = obj
            elif kind == _FUNCTION:
                if obj.__globals__ is namespace:
                    names |= _code_names(obj.__code__)
                if id(obj) in roots:
                    shared[id(obj)] = obj
            elif kind == _CLASS and not _pickled_by_reference(obj):
                classes.append(obj)
        root_ids = self.root_ids
        for cls in classes:
            for oid in self.class_internals(cls):
                if oid not in root_ids:
                    shared.pop(oid, None)
        return shared, frozenset(names)


def _pickled_by_reference(cls: type) -> bool:
    try:
        return cloudpickle.cloudpickle._should_pickle_by_reference(cls)
    except Exception:  # noqa: BLE001 - private helper; assume by value (the safe side)
        return False


def _calibrate_temp_refcount() -> int:
    """The reference count :meth:`_PickleContext._scan_memo` sees for an object only the memo holds."""

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


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"


_FRIENDLY = {
    "TextIOWrapper": "open file", "BufferedReader": "open file", "BufferedWriter": "open file",
    "BufferedRandom": "open file", "FileIO": "open file", "socket": "socket", "SSLSocket": "socket",
    "generator": "generator", "coroutine": "coroutine", "async_generator": "async generator",
    "lock": "lock", "RLock": "lock", "Condition": "lock", "Connection": "database connection",
    "Cursor": "database cursor", "frame": "stack frame", "mmap": "memory map",
}  # fmt: skip
_CULPRIT = re.compile(r"cannot pickle '([^']+)' object")


def _unpicklable_reason(value: Any, exc: BaseException) -> str:
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
    return f"{_type_name(cls)} holding {article} {what} ({culprit}), which cannot be pickled"


# ---------------------------------------------------------------------------
# Incremental state
# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Group:
    """Names pickled together in one blob, and what their pickle reached."""

    names: tuple[str, ...]
    shared: dict[int, Any]
    global_names: frozenset[str]


@dataclasses.dataclass(eq=False)
class _Slot:
    """What the last checkpoint knows about one name."""

    value: Any  # held so that "same object" (``is``) is a sound test; freed at the next capture
    entry: Entry | None = None
    reason: str | None = None  # why skipped, if entry is None
    group: _Group | None = None
    too_large: int | None = None  # pickled size, when skipped for the size limit


@dataclasses.dataclass
class _State:
    manifest_id: str | None = None
    slots: dict[str, _Slot] = dataclasses.field(default_factory=dict)
    index: dict[int, _Group] = dataclasses.field(default_factory=dict)  # shared object id -> its group


class _UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, i: str) -> str:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> list[tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for i in self.parent:
            out.setdefault(self.find(i), []).append(i)
        return [tuple(sorted(c)) for c in out.values()]


# ---------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Module:
    entry: Entry


@dataclasses.dataclass
class _Skip:
    reason: str
    too_large: int | None = None


class Checkpointer:
    """Captures namespaces into manifests + blobs and restores them.

    ``exclude`` and ``size_limit`` (bytes after pickling, per value; ``None``
    for no limit) may be changed between captures; excluded names are reported
    as skipped, ``hidden`` ones are not mentioned at all. Not thread-safe: the kernel
    calls it from its main thread only.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        exclude: set[str] | None = None,
        size_limit: int | None = None,
        hidden: set[str] | None = None,
    ) -> None:
        self.blobs = blobs
        self.exclude: set[str] = set(exclude or ())
        #: Names the kernel itself puts in the namespace: never saved, never reported.
        self.hidden: frozenset[str] = frozenset(hidden or ())
        self._secrets: list[str] = []  # kept alive so their ids stay theirs
        self._secret_ids: set[int] = set()
        self.size_limit: int | None = size_limit
        self._state = _State()

    def keep_out(self, secret: str) -> str:
        """Never save this object (a getpass() answer), under whatever name it is bound."""
        self._secrets.append(secret)
        self._secret_ids.add(id(secret))
        return secret

    def reset(self) -> None:
        """Forget the incremental state: the next capture pickles every name."""
        self._state = _State()

    # -- capture ---------------------------------------------------------------

    def capture(self, namespace: dict, *, code: str | None, previous: Manifest | None) -> tuple[Manifest, CaptureReport]:
        """Checkpoint ``namespace`` after a cell whose transformed source is ``code``.

        ``previous`` is the last manifest this process captured or restored;
        unless it is the one the incremental state belongs to (or ``code`` is
        None), every name is re-pickled -- still without rewriting blobs whose
        content is unchanged. The returned manifest's blobs are all durable.
        """
        started = time.perf_counter()
        state = self._state
        candidates, skipped = self._candidates(namespace)
        scan = scan_cell(code) if code is not None else None
        touched, full_reason = self._touched(candidates, namespace, scan, previous)
        ctx = _PickleContext(namespace, candidates.values())
        outcomes, replaced = self._pickle_touched(touched, candidates, scan, ctx)
        units = self._units(outcomes, candidates, ctx)

        with self.blobs.batch():
            stored = self.blobs.put_many([view for _names, p in units for view in (p.stream, *p.buffers)])
        written = sum(n for _digest, n in stored)
        digests = iter(d for d, _n in stored)

        now = time.time()
        entries: dict[str, Entry] = {}
        slots: dict[str, _Slot] = {}
        new_groups: list[_Group] = []
        for names, pickled in units:
            blob = next(digests)
            buffers = [next(digests) for _ in pickled.buffers]
            group = _Group(names, pickled.shared, pickled.global_names)
            new_groups.append(group)
            for name in names:
                value = candidates[name]
                entries[name] = _pickle_entry(value, outcomes[name].size, blob, buffers, pickled, names, now)  # type: ignore[union-attr]
                slots[name] = _Slot(value, entry=entries[name], group=group)
        for name, outcome in outcomes.items():
            if isinstance(outcome, _Module):
                entries[name] = outcome.entry
                slots[name] = _Slot(candidates[name], entry=outcome.entry)
            elif isinstance(outcome, _Skip):
                skipped[name] = outcome.reason
                slots[name] = _Slot(candidates[name], reason=outcome.reason, too_large=outcome.too_large)
        for name in candidates.keys() - outcomes.keys():  # untouched: the previous entry stands
            slot = slots[name] = state.slots[name]
            if slot.entry is not None:
                entries[name] = slot.entry
            else:
                skipped[name] = slot.reason or "skipped"

        prev_entries = previous.entries if previous is not None else {}
        changed = sorted(n for n, e in entries.items() if not _same_entry(prev_entries.get(n), e))
        removed: list[str] = []
        if previous is not None:
            present = candidates.keys() | skipped.keys()
            removed = sorted((previous.entries.keys() | previous.skipped.keys()) - present)
        manifest = Manifest.model_construct(
            entries=dict(sorted(entries.items())), skipped=dict(sorted(skipped.items())), changed=changed, removed=removed
        )

        # Everything is durable: only now does the incremental state move on.
        index = state.index
        for group in replaced:
            for oid in group.shared:
                if index.get(oid) is group:
                    del index[oid]
        for group in new_groups:
            for oid in group.shared:
                index[oid] = group
        self._state = _State(manifest.id, slots, index)
        report = CaptureReport(
            skipped=dict(manifest.skipped),
            changed=changed,
            removed=removed,
            written_bytes=written,
            seconds=time.perf_counter() - started,
            pickled=sorted(n for n, o in outcomes.items() if isinstance(o, _Pickled)),
            full=full_reason is not None,
            full_reason=full_reason,
        )
        return manifest, report

    def _candidates(self, namespace: dict) -> tuple[dict[str, Any], dict[str, str]]:
        """The user's names to checkpoint, and the excluded ones (reported as skipped)."""
        candidates: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for name, value in list(namespace.items()):
            if not isinstance(name, str) or name in self.hidden or is_ipython_name(name, value):
                continue
            if name in self.exclude:
                skipped[name] = "excluded"
            elif id(value) in self._secret_ids:
                skipped[name] = "a getpass() secret (never stored)"
            else:
                candidates[name] = value
        return candidates, skipped

    def _touched(
        self, candidates: dict[str, Any], namespace: dict, scan: CellScan | None, previous: Manifest | None
    ) -> tuple[set[str], str | None]:
        """The names this cell could have changed (rules 1-3), or all of them and why."""
        state, limit = self._state, self.size_limit
        if scan is None:
            full_reason: str | None = "no cell source given"
        elif previous is None:
            full_reason = "no previous checkpoint"
        elif state.manifest_id != previous.id:
            full_reason = "the previous checkpoint was not taken or restored by this checkpointer"
        else:
            full_reason = scan.doubt
        if full_reason is not None:
            return set(candidates), full_reason
        touched = {n for n in scan.names if n in candidates}  # type: ignore[union-attr]
        for name, value in candidates.items():
            slot = state.slots.get(name)
            if (
                slot is None
                or slot.value is not value
                or (slot.too_large is not None and (limit is None or slot.too_large <= limit))
                or (slot.entry is not None and limit is not None and slot.entry.size > limit)
            ):
                touched.add(name)
        full_reason = self._expand(touched, candidates, namespace, state)
        return (set(candidates) if full_reason else touched), full_reason

    def _pickle_touched(
        self, touched: set[str], candidates: dict[str, Any], scan: CellScan | None, ctx: _PickleContext
    ) -> tuple[dict[str, _Pickled | _Module | _Skip], list[_Group]]:
        """Pickle each touched name alone, pulling in the names it shares objects with (rule 4).

        Returns each name's outcome and the previous groups that are replaced.
        """
        state = self._state
        outcomes: dict[str, _Pickled | _Module | _Skip] = {}
        seen: set[int] = set()
        replaced: list[_Group] = []
        pending = set(touched)
        for name in state.slots.keys() - candidates.keys():  # a deleted member re-forms its group
            self._close_over_group(state.slots[name].group, candidates, touched, pending, seen, replaced)
        while pending:
            batch, pending = sorted(pending), set()
            for name in batch:
                slot = state.slots.get(name)
                if slot is not None:
                    self._close_over_group(slot.group, candidates, touched, pending, seen, replaced)
                outcome = outcomes[name] = self._capture_one(name, candidates[name], scan, slot, ctx)
                if isinstance(outcome, _Pickled):
                    for oid in outcome.shared:
                        group = state.index.get(oid)
                        if group is not None:
                            self._close_over_group(group, candidates, touched, pending, seen, replaced)
            pending -= outcomes.keys()
        return outcomes, replaced

    @staticmethod
    def _close_over_group(
        group: _Group | None,
        candidates: dict[str, Any],
        touched: set[str],
        pending: set[str],
        seen: set[int],
        replaced: list[_Group],
    ) -> None:
        """A group is re-pickled as a whole: touching one member touches all."""
        if group is None or id(group) in seen:
            return
        seen.add(id(group))
        replaced.append(group)
        for member in group.names:
            if member in candidates and member not in touched:
                touched.add(member)
                pending.add(member)

    def _expand(self, touched: set[str], candidates: dict[str, Any], namespace: dict, state: _State) -> str | None:
        """Add the names notebook functions reachable from touched names may use (rule 3).

        Returns why the analysis must give up, or None. Known blind spots (a
        mutation there is missed until the name is next touched or a full
        capture runs):

        * objects mutated by code the cell does not name: library code holding a
          reference registered earlier (callbacks, caches, ``plt``'s current
          figure), background threads, signal handlers, ``__del__``;
        * notebook functions reached only through objects of library classes
          that store them (e.g. a callback inside a library object), or called
          by name through ``getattr(module, "f")`` on the ``__main__`` module;
        * objects held by a notebook class's attributes are not tracked for
          sharing unless they are also bound to a name themselves;
        * memory shared by other means than numpy's ``.base`` (``memoryview``
          slices, ``np.frombuffer`` over a named ``bytearray``, shared memory).

        Named numpy arrays that are views of one another (``b = a[::2]``)
        touch each other: a write through one changes the other's data.
        """
        views = _array_families(candidates)
        work = list(touched)
        while work:
            name = work.pop()
            found: set[str] = set()
            slot = state.slots.get(name)
            if slot is not None and slot.group is not None:
                found |= slot.group.global_names
            for func in _notebook_functions(candidates.get(name), namespace):
                found |= _code_names(func.__code__)
            found |= views.get(name, set())
            doubt = found & _DOUBT_CODE_NAMES or found & _DOUBT_ATTRS
            if doubt:
                return f"a notebook function reachable from {name} uses {sorted(doubt)[0]}"
            for other in found:
                if other in candidates and other not in touched:
                    touched.add(other)
                    work.append(other)
        return None

    def _capture_one(self, name: str, value: Any, scan: CellScan | None, slot: _Slot | None, ctx: _PickleContext) -> _Pickled | _Module | _Skip:
        if value is ctx.namespace:
            return _Skip("the notebook namespace itself (globals())")
        if isinstance(value, types.ModuleType):
            modname = value.__name__
            if modname == "__main__":
                return _Skip("the notebook's own module (__main__)")
            if sys.modules.get(modname) is value:
                subs = set(scan.imports.get(name, ())) if scan is not None else set()
                if slot is not None and slot.value is value and slot.entry is not None:
                    subs |= set(slot.entry.submodules)
                entry = Entry.model_construct(
                    kind="module",
                    type="module",
                    size=0,
                    blob=None,
                    blob_size=0,
                    buffers=[],
                    buffer_sizes=[],
                    group=[],
                    module=modname,
                    submodules=sorted(s for s in subs if s in sys.modules),
                    pickled_at=time.time(),
                )
                return _Module(entry)
        try:
            pickled = ctx.pickle(value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means "skip this name"
            return _Skip(_unpicklable_reason(value, exc))
        limit = self.size_limit
        if limit is not None and pickled.size > limit:
            return _Skip(f"too large ({_human(pickled.size)} pickled; limit {_human(limit)})", too_large=pickled.size)
        return pickled

    @staticmethod
    def _units(outcomes: dict[str, Any], candidates: dict[str, Any], ctx: _PickleContext) -> list[tuple[tuple[str, ...], _Pickled]]:
        """Group names whose pickles share objects; pickle each multi-name group together."""
        alone = {n: o for n, o in outcomes.items() if isinstance(o, _Pickled)}
        uf = _UnionFind(alone)
        owner: dict[int, str] = {}
        for name in sorted(alone):
            for oid in alone[name].shared:
                first = owner.setdefault(oid, name)
                if first != name:
                    uf.union(first, name)
        units: list[tuple[tuple[str, ...], _Pickled]] = []
        for names in sorted(uf.components()):
            if len(names) == 1:
                units.append((names, alone[names[0]]))
                continue
            try:
                together = ctx.pickle(tuple(candidates[n] for n in names))
            except Exception:  # noqa: BLE001 - each pickled alone; keep them, sharing is lost
                units.extend(((n,), alone[n]) for n in names)
            else:
                units.append((names, together))
        return units

    # -- restore ---------------------------------------------------------------

    def restore(self, manifest: Manifest, namespace: dict) -> RestoreReport:
        """Put the manifest's values into ``namespace``; report what came back and what did not.

        Names not in the manifest are left alone (the caller clears the
        namespace first if it wants an exact copy). Afterwards the incremental
        state describes this manifest, so the next capture is incremental.
        """
        started = time.perf_counter()
        if manifest.format > FORMAT or manifest.hash != HASH_NAME:
            raise StoreError(
                f"checkpoint {manifest.id} has format {manifest.format} / hash {manifest.hash}; "
                f"this PyREPL3 reads format {FORMAT} / {HASH_NAME}"
            )
        skipped: dict[str, str] = dict(manifest.skipped)
        restored: dict[str, Any] = {}
        slots: dict[str, _Slot] = {}

        units: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for name, entry in manifest.entries.items():
            if entry.kind == "module":
                try:
                    module = importlib.import_module(entry.module or name)
                    for sub in entry.submodules:
                        importlib.import_module(sub)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    skipped[name] = f"module {entry.module} could not be imported ({type(exc).__name__}: {exc})"
                    continue
                namespace[name] = module
                restored[name] = module
                slots[name] = _Slot(module, entry=entry)
            elif entry.blob is None:
                skipped[name] = "manifest entry has no blob"
            else:
                units.setdefault((entry.blob, tuple(entry.group) or (name,)), []).append(name)

        # Newest pickle last: when several blobs carry one notebook class, the newest state wins.
        order = sorted(units, key=lambda key: manifest.entries[units[key][0]].pickled_at)
        wanted = [d for key in order for d in manifest.entries[units[key][0]].buffers]
        opened = iter(self.blobs.open_buffers(wanted))
        loaded: list[tuple[tuple[str, ...], list[str]]] = []
        had_builtins = "__builtins__" in namespace
        saved_builtins = namespace.get("__builtins__")
        _restoring.namespace = namespace
        try:
            for key in order:
                members = units[key]
                entry = manifest.entries[members[0]]
                buffers = [next(opened) for _ in entry.buffers]
                try:
                    for buf in buffers:
                        if isinstance(buf, Exception):
                            raise buf
                    stream = self.blobs.get(entry.blob)  # type: ignore[arg-type]
                except StoreError as exc:
                    for name in members:
                        skipped[name] = _blob_problem(exc)
                    continue
                try:
                    value = pickle.loads(stream, buffers=buffers)
                    values = value if entry.group else (value,)
                    if len(values) != len(key[1]):
                        raise ValueError(f"blob holds {len(values)} values, the manifest expects {len(key[1])}")
                except Exception as exc:  # noqa: BLE001 - report and go on
                    for name in members:
                        skipped[name] = f"could not be unpickled ({type(exc).__name__}: {exc})"[:300]
                    continue
                for name, v in zip(key[1], values, strict=True):
                    if name in members:
                        namespace[name] = v
                        restored[name] = v
                loaded.append((key[1], members))
        finally:
            _restoring.namespace = None
            if had_builtins:
                namespace["__builtins__"] = saved_builtins
            else:
                namespace.pop("__builtins__", None)

        # Rebuild the incremental state (what each blob shares) without writing anything.
        ctx = _PickleContext(namespace, restored.values())
        index: dict[int, _Group] = {}
        for _names, members in loaded:
            values = tuple(restored[n] for n in members)
            try:
                pickled = ctx.pickle(values[0] if len(values) == 1 else values, keep_buffers=False)
                group = _Group(tuple(members), pickled.shared, pickled.global_names)
            except Exception:  # noqa: BLE001 - unexpected; the next capture re-pickles these names
                for name in members:
                    slots.pop(name, None)
                continue
            for oid in group.shared:
                index[oid] = group
            for name in members:
                slots[name] = _Slot(restored[name], entry=manifest.entries[name], group=group)
        self._state = _State(manifest.id, slots, index)
        return RestoreReport(sorted(restored), skipped, time.perf_counter() - started)


def _pickle_entry(
    value: Any, size: int, blob: str, buffers: list[str], pickled: _Pickled, names: tuple[str, ...], now: float
) -> Entry:
    return Entry.model_construct(  # built from trusted parts: skip validation, it is the hot path
        kind="pickle",
        type=_type_name(type(value)),
        size=size,
        blob=blob,
        blob_size=len(pickled.stream),
        buffers=buffers,
        buffer_sizes=[b.nbytes for b in pickled.buffers],
        group=list(names) if len(names) > 1 else [],
        module=None,
        submodules=[],
        pickled_at=now,
    )


def _same_entry(old: Entry | None, new: Entry) -> bool:
    if old is None:
        return False
    return (old.kind, old.blob, old.buffers, old.module, old.group) == (new.kind, new.blob, new.buffers, new.module, new.group)


def _blob_problem(exc: StoreError) -> str:
    from kernel.store.embedded.blobs import BlobCorruptError, BlobMissingError

    if isinstance(exc, BlobMissingError):
        return f"its saved data is missing ({exc})"
    if isinstance(exc, BlobCorruptError):
        return f"its saved data is corrupt ({exc})"
    return f"its saved data cannot be read ({exc})"


__all__ = [
    "CaptureReport",
    "Checkpointer",
    "Entry",
    "Manifest",
    "RestoreReport",
    "is_ipython_name",
    "scan_cell",
]
