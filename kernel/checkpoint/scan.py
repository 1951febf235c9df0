"""Which names a cell could have changed: its source, and the code it can reach.

A capture re-pickles only those names (see :mod:`kernel.checkpoint.checkpointer`
for the rules), so this module errs on the generous side: every identifier a
cell mentions counts, and anything that reaches the namespace without naming
what it touches (``exec``, ``globals()``, magics, frames) makes the scan give up,
with the reason, so that every name is re-pickled.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import sys
import types
from collections.abc import Callable
from typing import Any

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
def code_names(code: types.CodeType) -> frozenset[str]:
    """Global (and attribute) names a code object and the code nested in it may use."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= code_names(const)
    return frozenset(found)


def _reachable_code(value: Any, namespace: dict) -> tuple[list[types.CodeType], list[Any]]:
    """Code with the notebook's globals that calling into (or advancing) ``value`` may run,
    and the objects suspended generators hold in their locals.

    Looks through the wrappers a value can put around functions (bound methods,
    partials, decorators with ``__wrapped__``, static/class methods,
    properties), for classes and instances through the methods of the class
    and its bases, and into suspended generators, coroutines and async
    generators of the notebook: ``next(it)`` runs the generator's code, which
    may mutate the globals it names or the objects in its frame (its
    arguments, ``yield from`` sub-generators). Containers are not searched
    here: the functions they held are recorded when they are pickled
    (``pickled_globals`` in :func:`expand_touched`).
    """
    found: list[types.CodeType] = []
    held: list[Any] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, types.FunctionType):
            if v.__globals__ is namespace:
                found.append(v.__code__)
            wrapped = getattr(v, "__wrapped__", None)
            if wrapped is not None:
                stack.append(wrapped)
        elif isinstance(v, _SUSPENDABLE):
            frame, code, inner = _suspended(v)
            if frame is not None and frame.f_globals is namespace:
                found.append(code)
                frame_locals = list(frame.f_locals.values())
                held += frame_locals
                stack += frame_locals
            if inner is not None:
                stack.append(inner)
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
    return found, held


_SUSPENDABLE = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)


def _suspended(v: Any) -> tuple[types.FrameType | None, types.CodeType, Any]:
    """A generator's (coroutine's, async generator's) frame (None once finished), code and delegate."""
    if isinstance(v, types.GeneratorType):
        return v.gi_frame, v.gi_code, v.gi_yieldfrom
    if isinstance(v, types.CoroutineType):
        return v.cr_frame, v.cr_code, v.cr_await
    return v.ag_frame, v.ag_code, v.ag_await


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


def expand_touched(
    touched: set[str], candidates: dict[str, Any], namespace: dict, pickled_globals: Callable[[str], frozenset[str]]
) -> str | None:
    """Add the names notebook functions reachable from touched names may use (rule 3).

    ``pickled_globals(name)`` are the names used by the notebook functions the
    name's last pickle held (functions inside containers, which are not searched
    here). Returns why the analysis must give up, or None. Known blind spots (a
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
    touch each other: a write through one changes the other's data. A touched
    notebook generator (``next(it)``, ``for x in it``) touches the globals its
    code names and the named objects its suspended frame holds.
    """
    views = _array_families(candidates)
    by_id: dict[int, str] | None = None
    work = list(touched)
    while work:
        name = work.pop()
        found = set(pickled_globals(name))
        codes, held = _reachable_code(candidates.get(name), namespace)
        for code in codes:
            found |= code_names(code)
        if held:  # objects a suspended generator holds: the names bound to them
            by_id = by_id if by_id is not None else {id(v): n for n, v in candidates.items()}
            found |= {by_id[id(o)] for o in held if id(o) in by_id}
        found |= views.get(name, set())
        doubt = found & _DOUBT_CODE_NAMES or found & _DOUBT_ATTRS
        if doubt:
            return f"a notebook function reachable from {name} uses {sorted(doubt)[0]}"
        for other in found:
            if other in candidates and other not in touched:
                touched.add(other)
                work.append(other)
    return None


__all__ = ["CellScan", "code_names", "expand_touched", "scan_cell"]
