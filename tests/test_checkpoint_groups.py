"""Which names are pickled together (alias groups): real sharing groups, library internals do not.

Pure logic on real pickles and a real blob store (no kernel): see tests/test_checkpoints.py
for the same on a real kernel with kill -9.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_checkpoint_unit import Notebook

from kernel.checkpoint.groups import pickle_units
from kernel.checkpoint import libraries
from kernel.checkpoint.pickling import PickleContext

FRAMES = "\n".join(
    ["import numpy as np, pandas as pd"]
    + [f"df{i} = pd.DataFrame(np.full((200, 5), {i}.0), columns=list('abcde'))" for i in range(20)]
)


def _units(namespace: dict) -> list[tuple[str, ...]]:
    names = {k: v for k, v in namespace.items() if not k.startswith("__")}
    ctx = PickleContext(namespace, names.values())
    alone = {k: ctx.pickle(v) for k, v in names.items()}
    return sorted(n for n, _p in pickle_units(alone, names, ctx))


def _glue(namespace: dict) -> list[str]:
    """Each object two names' pickles both report as shared, by type (what would join them)."""
    names = {k: v for k, v in namespace.items() if not k.startswith("__")}
    ctx = PickleContext(namespace, names.values())
    pickles = {name: ctx.pickle(names[name]) for name in sorted(names)}  # alive: their ids stay unique
    owner: dict[int, str] = {}
    found = []
    for name, pickled in pickles.items():
        for oid, obj in pickled.shared.items():
            if owner.setdefault(oid, name) != name:
                found.append(f"{owner[oid]}+{name}: {type(obj).__module__}.{type(obj).__qualname__} {obj!r:.60}")
    return found


def test_frames_built_separately_are_not_glued() -> None:
    """What glued them (pandas 2.2-3.x): Cython functions pickled by name (``_unpickle_block``,
    ``__pyx_unpickle_NDArrayBacked``), the class attribute ``NDFrame._metadata`` (a list every
    frame's state holds), cached dtypes (``Int64Dtype()``, ``CategoricalDtype``), ``pd.NA``, ``pd.NaT``,
    numpy's ufuncs."""
    ns: dict = {"__name__": "__main__"}
    for i in range(2):
        ns[f"f{i}"] = pd.DataFrame(np.random.rand(50, 3), columns=list("abc"))
        ns[f"ext{i}"] = pd.DataFrame({"c": pd.Categorical(["x", "y"]), "n": pd.array([1, None], dtype="Int64"), "s": ["a", None]})
        ns[f"obj{i}"] = pd.Series([pd.NA, pd.NaT, None, "x"], dtype=object)
        ns[f"tz{i}"] = pd.Series(pd.date_range("2024", periods=3, tz="UTC"))
        ns[f"per{i}"] = pd.Series(pd.period_range("2024", periods=3, freq="M"))
        ns[f"iv{i}"] = pd.Series(pd.interval_range(0, 3))
        ns[f"mi{i}"] = pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
        ns[f"str{i}"] = pd.Series(["a", "b"], dtype="string")
        ns[f"off{i}"] = pd.Series([pd.offsets.Day(2)], dtype=object)
        ns[f"dti{i}"] = pd.DataFrame({"v": range(3)}, index=pd.date_range("2024", periods=3, freq="D"))
        ns[f"bool{i}"] = pd.Series([True, None], dtype="boolean")
        ns[f"ord{i}"] = pd.Series(["a"], dtype=pd.CategoricalDtype(["a", "b"], ordered=True))
        ns[f"ufuncs{i}"] = [np.add, np.sqrt]
    assert _glue(ns) == []
    assert all(len(unit) == 1 for unit in _units(ns))


def test_library_immutable_types_all_resolve() -> None:
    """A renamed pandas class would silently glue frames again: every listed type must be found."""
    assert "pandas" in sys.modules and "numpy" in sys.modules
    found = libraries.immutable_types()
    assert len(found) == libraries.expected_count(), found
    assert libraries.index_type() is pd.Index, "pandas 3: an Index's data is read-only"


@pytest.mark.parametrize(
    ("cell", "together"),
    [
        ("a = pd.DataFrame({'x': [1.0, 2.0]})\nb = a", ("a", "b")),  # the same object
        ("inner = [1]\nx = [inner, inner]\ny = {'k': inner}", ("inner", "x", "y")),  # a list held twice, across names
        ("idx = pd.Index([10, 20])\nd1 = pd.DataFrame({'q': [1, 2]}, index=idx)\nd2 = pd.DataFrame({'q': [3, 4]}, index=idx)", ("d1", "d2", "idx")),
        ("base = pd.DataFrame({'x': np.arange(10.0)})\ndouble = base * 2", ("base", "double")),  # pandas shares the axes
        ("a = np.arange(5)\nidx = pd.Index(a, copy=False)", ("a", "idx")),  # a writable array behind an Index
        ("m = pd.DataFrame._metadata\nd = pd.DataFrame({'q': [1]})", ("d", "m")),  # a library object bound to a name
    ],
)
def test_real_sharing_still_groups(cell: str, together: tuple[str, ...]) -> None:
    ns: dict = {"__name__": "__main__", "np": np, "pd": pd}
    exec(cell, ns)
    ns.pop("np"), ns.pop("pd")
    assert together in _units(ns)


def test_copy_on_write_views_are_pickled_alone() -> None:
    """Under copy-on-write a view behaves as a copy: a write through either is not seen through
    the other. They share only the read-only data of their columns' Index (distinct Index objects)."""
    base = pd.DataFrame({"x": np.arange(100_000.0), "y": 1.0})
    ns: dict = {"__name__": "__main__", "base": base, "view": base[:], "col": base["x"], "cols": base.columns.view()}
    assert _units(ns) == [("base",), ("col",), ("cols",), ("view",)]


def test_an_array_behind_two_indexes_joins_them_only_through_a_name_that_holds_it(tmp_path: Path) -> None:
    """``pd.DataFrame(..., index=a)`` keeps ``a`` itself: writing ``keys[0][0]`` renames a row of
    both frames, live and after a restore; the frames alone would not be joined by it."""
    a = np.arange(5)
    ns: dict = {"__name__": "__main__", "f1": pd.DataFrame({"v": range(5)}, index=a), "f2": pd.DataFrame({"w": range(5)}, index=a)}
    assert ns["f1"].index is not ns["f2"].index and _units(ns) == [("f1",), ("f2",)]
    ns["keys"] = [a]
    assert _units(ns) == [("f1", "f2", "keys")]

    nb = Notebook(tmp_path)
    nb.run("import numpy as np, pandas as pd\na = np.arange(5)\nf1 = pd.DataFrame({'v': range(5)}, index=a)\nf2 = pd.DataFrame({'w': range(5)}, index=a)\ndel a")
    assert not nb.manifest.entries["f1"].group and not nb.manifest.entries["f2"].group
    nb.run("keys = [f1.index._data]")  # f2 is untouched: the incremental state must find it
    assert nb.manifest.entries["keys"].group == ["f1", "f2", "keys"]
    restored, _ = nb.restore_fresh()
    restored["keys"][0][0] = 99
    assert restored["f1"].index[0] == 99 and restored["f2"].index[0] == 99


def test_a_shared_index_is_aliasing_a_user_sees() -> None:
    """Why frames sharing an Index object stay one group: its name is mutable, through either frame."""
    idx = pd.Index([1, 2])
    d1, d2 = pd.DataFrame({"q": [1, 2]}, index=idx), pd.DataFrame({"q": [3, 4]}, index=idx)
    d1.index.name = "key"
    assert d2.index.name == "key" and d1.index is d2.index


def test_changing_one_of_twenty_frames_repickles_it_alone(tmp_path: Path) -> None:
    nb = Notebook(tmp_path)
    nb.run(FRAMES)
    assert all(not e.group for n, e in nb.manifest.entries.items() if n.startswith("df"))
    report = nb.run("df7.iloc[0, 0] = -7.0")
    print(f"re-pickled after changing df7: {report.pickled}; changed: {report.changed}")
    assert report.pickled == ["df7"] and report.changed == ["df7"]
    ns, restored = nb.restore_fresh()
    assert not restored.skipped
    for i in range(20):
        expected = pd.DataFrame(np.full((200, 5), float(i)), columns=list("abcde"))
        if i == 7:
            expected.iloc[0, 0] = -7.0
        pd.testing.assert_frame_equal(ns[f"df{i}"], expected)


def test_aliases_and_copy_on_write_views_after_restore(tmp_path: Path) -> None:
    nb = Notebook(tmp_path)
    nb.run(
        "import numpy as np, pandas as pd\n"
        "df = pd.DataFrame({'x': np.arange(100_000.0), 'y': 1.0})\nsame = df\nview = df[:]\ncol = df['x']\n"
        "idx = pd.Index([1, 2])\nd1 = pd.DataFrame({'q': [1, 2]}, index=idx)\nd2 = pd.DataFrame({'q': [3, 4]}, index=idx)\n"
        "inner = [1]\nx = [inner, inner]\ny = [inner]\n"
    )
    ns, _ = nb.restore_fresh()
    assert ns["same"] is ns["df"] and ns["d1"].index is ns["d2"].index is ns["idx"]
    assert ns["x"][0] is ns["x"][1] is ns["y"][0] is ns["inner"]
    # Copy-on-write, as before the restore: a write through one is not seen through the other.
    ns["df"].iloc[0, 0] = -1.0
    assert ns["view"].iloc[0, 0] == 0.0 and ns["col"].iloc[0] == 0.0 and ns["same"].iloc[0, 0] == -1.0
    ns["view"].iloc[1, 0] = -2.0
    assert ns["df"].iloc[1, 0] == 1.0
