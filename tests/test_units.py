"""Unit tests for the pure parts: ids, settings, the session lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyter_core.paths import jupyter_data_dir

from kernel.core.locations import resolve_home, resolve_session, store_path

from kernel.core.settings import Settings
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
        ("exec:m1:rpc:2", "rpc", "exec:m1"),
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


def _settings(env: dict[str, str], **traits: str) -> Settings:
    return Settings.load(env, traits)


def test_session_precedence() -> None:
    conn = "/run/jupyter/kernel-1234-abcd.json"
    both = {"PYREPL3_SESSION": "mine", "JPY_SESSION_NAME": "nb.ipynb"}
    assert resolve_session(_settings(both), conn) == "mine"
    assert resolve_session(_settings({"JPY_SESSION_NAME": "dir/nb.ipynb"}), conn) == "dir/nb.ipynb"
    assert resolve_session(_settings({}), conn) == "1234-abcd"
    assert resolve_session(_settings({"PYREPL3_SESSION": "  ", "JPY_SESSION_NAME": ""}), conn) == "1234-abcd"
    assert resolve_session(_settings({}), "/tmp/tmp_x1y2.json") == "tmp_x1y2"
    assert resolve_session(_settings({})) == "default"


def test_home_precedence(tmp_path: Path) -> None:
    assert resolve_home(_settings({"PYREPL3_HOME": str(tmp_path / "a")}, home=str(tmp_path / "b"))) == tmp_path / "a"
    assert resolve_home(_settings({}, home=str(tmp_path / "b"))) == tmp_path / "b"
    assert resolve_home(_settings({})) == Path(jupyter_data_dir()) / "pyrepl3"
    assert store_path(tmp_path) == tmp_path / "store.sqlite3"


def test_home_that_is_a_file_names_the_setting(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigurationError, match="PYREPL3_HOME"):
        resolve_home(_settings({"PYREPL3_HOME": str(f)}))
    with pytest.raises(ConfigurationError, match="DurableKernel.home"):
        resolve_home(_settings({}, home=str(f)))


def test_numeric_and_boolean_settings() -> None:
    assert _settings({}).start_timeout == 30.0
    assert _settings({"PYREPL3_START_TIMEOUT": "2.5"}).start_timeout == 2.5
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigurationError, match="PYREPL3_START_TIMEOUT"):
            _settings({"PYREPL3_START_TIMEOUT": bad}).check("start_timeout")
    assert _settings({"PYREPL3_FSYNC": "Yes"}).fsync is True
    assert _settings({"PYREPL3_AUTO_RESUME": "off"}).auto_resume is False
    assert _settings({}).fsync is False
    with pytest.raises(ConfigurationError, match="PYREPL3_FSYNC="):
        _settings({"PYREPL3_FSYNC": "maybe"}).check("fsync")


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
