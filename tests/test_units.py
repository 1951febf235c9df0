"""Unit tests for the pure parts: ids, settings, the session lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyter_core.paths import jupyter_data_dir

from kernel.core.settings import bool_setting, float_setting, resolve_home, resolve_session, store_path
from kernel.core.errors import ConfigurationError, StoreLockedError
from kernel.core.ids import exec_id, execution_of, input_id, kind_of, step_id
from kernel.store.embedded.locks import FlockSessionLock, session_key

# -- ids -------------------------------------------------------------------------


def test_promise_ids_are_spelled_in_one_place() -> None:
    eid = exec_id("abc-1")
    assert eid == "exec:abc-1"
    assert input_id(eid, 2) == "exec:abc-1:input:2"
    assert step_id(eid, 0) == "exec:abc-1:step:0"


@pytest.mark.parametrize(
    ("promise_id", "kind", "execution"),
    [
        ("exec:m1", "exec", "exec:m1"),
        ("exec:m1:input:0", "input", "exec:m1"),
        ("exec:m1:step:3", "step", "exec:m1"),
        ("exec:m1:other:3", "other", "exec:m1"),
        ("exec:m1:input", "other", "exec:m1"),
        ("ckpt:abc:4", "checkpoint", None),
        ("something-else", "other", None),
    ],
)
def test_kind_and_execution_of(promise_id: str, kind: str, execution: str | None) -> None:
    assert kind_of(promise_id) == kind
    assert execution_of(promise_id) == execution


# -- settings --------------------------------------------------------------------


def test_session_precedence() -> None:
    conn = "/run/jupyter/kernel-1234-abcd.json"
    both = {"PYREPL3_SESSION": "mine", "JPY_SESSION_NAME": "nb.ipynb"}
    assert resolve_session(both, conn) == "mine"
    assert resolve_session({"JPY_SESSION_NAME": "dir/nb.ipynb"}, conn) == "dir/nb.ipynb"
    assert resolve_session({}, conn) == "1234-abcd"
    assert resolve_session({"PYREPL3_SESSION": "  ", "JPY_SESSION_NAME": ""}, conn) == "1234-abcd"
    assert resolve_session({}, "/tmp/tmp_x1y2.json") == "tmp_x1y2"
    assert resolve_session({}) == "default"


def test_home_precedence(tmp_path: Path) -> None:
    assert resolve_home({"PYREPL3_HOME": str(tmp_path / "a")}, str(tmp_path / "b")) == tmp_path / "a"
    assert resolve_home({}, str(tmp_path / "b")) == tmp_path / "b"
    assert resolve_home({}) == Path(jupyter_data_dir()) / "pyrepl3"
    assert store_path(tmp_path) == tmp_path / "store.sqlite3"


def test_home_that_is_a_file_names_the_setting(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigurationError, match="PYREPL3_HOME"):
        resolve_home({"PYREPL3_HOME": str(f)})
    with pytest.raises(ConfigurationError, match="DurableKernel.home"):
        resolve_home({}, str(f))


def test_numeric_and_boolean_settings() -> None:
    assert float_setting({}, "PYREPL3_START_TIMEOUT", 30.0) == 30.0
    assert float_setting({"PYREPL3_START_TIMEOUT": "2.5"}, "PYREPL3_START_TIMEOUT", 30.0) == 2.5
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigurationError, match="PYREPL3_START_TIMEOUT"):
            float_setting({"PYREPL3_START_TIMEOUT": bad}, "PYREPL3_START_TIMEOUT", 30.0)
    assert bool_setting({"X": "Yes"}, "X", False) is True
    assert bool_setting({"X": "off"}, "X", True) is False
    assert bool_setting({}, "X", True) is True
    with pytest.raises(ConfigurationError, match="X="):
        bool_setting({"X": "maybe"}, "X", True)


# -- the session lock ------------------------------------------------------------


def test_session_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first = FlockSessionLock(tmp_path, "nb/one.ipynb").acquire()
    assert first.path.name == f"{session_key('nb/one.ipynb')}.lock"
    with pytest.raises(StoreLockedError, match="in use by a live kernel"):
        FlockSessionLock(tmp_path, "nb/one.ipynb").acquire()
    other = FlockSessionLock(tmp_path, "nb/two.ipynb")
    assert other.try_acquire(), "another session is not blocked"
    first.release()
    again = FlockSessionLock(tmp_path, "nb/one.ipynb")
    assert again.try_acquire()
    again.release()
    other.release()
