"""What numpy and pandas objects no two names can observe sharing (for alias groups).

:mod:`kernel.checkpoint.groups` pickles names together when their pickles reach
a common object. Library internals reach common objects all the time without
any aliasing a user could see, and each such object glued every DataFrame of a
notebook into one group (so changing one frame re-pickled and re-hashed all of
them). Two kinds are known here, looked up only once the library is imported:

* Value types that are immutable by contract (:func:`immutable_types`):
  numpy's ufuncs, pandas' dtypes (cached and handed to every array of that
  dtype: ``Int64Dtype()``, ``CategoricalDtype``, ...), its missing-value
  singletons and its scalars. They are Cython types with a ``__dict__``, so
  the generic test in :mod:`kernel.checkpoint.pickling` counts them as mutable.
* The data behind a pandas ``Index`` (:func:`index_data_ids`). Since pandas 3
  it is read-only through every public path (``idx.values``, ``idx.array``),
  and pandas shares it between distinct Index objects (``df[:]``, ``view()``):
  not aliasing anyone can observe. The Index object itself still counts: its
  ``name`` is mutable and ``d1.index is d2.index`` is visible.

Missing one here costs only speed (names glued that need not be); listing a
mutable type would lose sharing, so the lists stay short and explicit.
"""

from __future__ import annotations

import sys
from typing import Any

_IMMUTABLE: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy:ufunc",),  # np.add, np.sqrt, ...: pickled by name
    "pandas": (
        "pandas.api.extensions:ExtensionDtype", "pandas._libs.missing:NAType", "pandas._libs.tslibs.nattype:NaTType",
        "pandas:Timestamp", "pandas:Timedelta", "pandas:Period", "pandas:Interval", "pandas._libs.tslibs.offsets:BaseOffset",
    ),
}  # fmt: skip

#: Where pandas' arrays keep their data (``NDArrayBacked._ndarray``, ``Categorical._codes``, masked and
#: Arrow arrays, ...), followed from an Index's ``_data``.
_ARRAY_PARTS = ("_ndarray", "_codes", "_data", "_mask", "_pa_array", "_left", "_right", "_sparse_values")
_PANDAS_MIN = (3,)  # Index data read-only through public paths (copy-on-write); before, idx.values was writable


def immutable_types() -> tuple[type, ...]:
    """The listed types of the libraries imported so far."""
    found: list[type] = []
    for library, names in _IMMUTABLE.items():
        if library not in sys.modules:
            continue
        for name in names:
            module, _, attr = name.partition(":")
            cls = getattr(sys.modules.get(module), attr, None)
            if isinstance(cls, type):
                found.append(cls)
    return tuple(found)


def expected_count() -> int:
    return sum(len(names) for names in _IMMUTABLE.values())


def index_type() -> type | None:
    """pandas' ``Index``, when pandas is imported and new enough for its data to be read-only."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return None
    try:
        major = int(str(pandas.__version__).split(".", 1)[0])
    except ValueError:
        return None
    return getattr(pandas, "Index", None) if (major,) >= _PANDAS_MIN else None


def index_data_ids(index: Any) -> set[int]:
    """Ids of the objects holding an Index's data (its array and the buffers behind it)."""
    numpy = sys.modules.get("numpy")
    ndarray = numpy.ndarray if numpy is not None else ()
    found: set[int] = set()
    stack = [getattr(index, "_data", None)]
    while stack:
        part = stack.pop()
        if part is None or id(part) in found or type(part).__module__ == "builtins":
            continue
        found.add(id(part))
        if ndarray and isinstance(part, ndarray):
            continue
        stack.extend(getattr(part, attr, None) for attr in _ARRAY_PARTS)
    return found


__all__ = ["expected_count", "immutable_types", "index_data_ids", "index_type"]
