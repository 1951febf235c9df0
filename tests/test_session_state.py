"""Kernel-level session state comes back with the namespace after ``kill -9``:
matplotlib, ``%config``, extensions with autoreload's mode, the working
directory, ``sys.path`` and the environment (kernel/jupyter/session_state.py).

Each test sets one item up in a real kernel, runs a cell, kills the kernel
with ``kill -9``, starts a new kernel on the session and checks the item is
back, by its effect where it has one (a figure appears, a module reloads).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from harness import Kernel, KernelFactory, kernel_env

from kernel.jupyter.secret_names import looks_secret
from kernel.jupyter.session_state import _compose_path, _path_changes

pytestmark = pytest.mark.engines("embedded", "postgres")


def restarted(kernels: KernelFactory, kernel: Kernel, session: str, **start: object) -> Kernel:
    """``kill -9`` the kernel and start a new one on its session."""
    kernel.kill9()
    return kernels.start(session=session, **start)  # type: ignore[arg-type]


def displays(run, mime: str) -> list[dict]:
    return [m for m in run.of_type("display_data") if mime in m["content"]["data"]]


# -- matplotlib and %config ------------------------------------------------------------


def test_matplotlib_inline_comes_back(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="mpl-inline")
    kernel.ok("%matplotlib inline\nimport matplotlib.pyplot as plt")
    again = restarted(kernels, kernel, "mpl-inline")
    shown = again.ok("plt.plot([1, 2]); plt.show()")
    assert len(displays(shown, "image/png")) == 1, shown.iopub
    # Without show(): inline support's post-execute hook displays the open figure.
    drawn = again.ok("plt.plot([3, 4])")
    assert len(displays(drawn, "image/png")) == 1, drawn.iopub
    assert "not restored" not in shown.stream("stderr"), shown.stream("stderr")


def test_another_matplotlib_backend_comes_back(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="mpl-file")
    kernel.ok("%matplotlib svg\nimport matplotlib.pyplot as plt")
    again = restarted(kernels, kernel, "mpl-file")
    run = again.ok("import matplotlib\nprint(matplotlib.get_backend())\nplt.plot([1, 2]); plt.show()")
    assert run.stream("stdout") == "svg\n"
    assert run.of_type("display_data") == []  # svg (a file backend) draws nothing inline: neither inline nor agg, the defaults


def test_inline_backend_config_comes_back(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="mpl-svg")
    kernel.ok(
        "%config InlineBackend.rc = {'figure.figsize': (2.0, 1.5)}\n%matplotlib inline\n"
        "%config InlineBackend.figure_formats = ['svg']\nimport matplotlib.pyplot as plt"
    )
    assert len(displays(kernel.ok("plt.plot([1, 2]); plt.show()"), "image/svg+xml")) == 1
    again = restarted(kernels, kernel, "mpl-svg")
    run = again.ok("print(list(plt.rcParams['figure.figsize']))\nplt.plot([1, 2]); plt.show()")
    assert len(displays(run, "image/svg+xml")) == 1 and displays(run, "image/png") == [], run.iopub
    assert run.stream("stdout") == "[2.0, 1.5]\n"  # InlineBackend.rc, applied when inline support is configured


def test_config_values_come_back(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="config")
    kernel.ok("%config IPCompleter.greedy = True\n%config InteractiveShell.ast_node_interactivity = 'all'")
    again = restarted(kernels, kernel, "config")
    assert again.ok("print(get_ipython().Completer.greedy)").stream("stdout") == "True\n"
    # ast_node_interactivity = 'all': every expression statement of a cell shows its value.
    results = again.ok("1 + 1\n2 + 2").of_type("execute_result")
    assert [r["content"]["data"]["text/plain"] for r in results] == ["2", "4"]


# -- extensions ------------------------------------------------------------------------


def test_autoreload_comes_back_with_its_mode(kernels: KernelFactory, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    module = lib / "reloadme.py"
    module.write_text("def value():\n    return 1\n")
    kernel = kernels.start(session="autoreload")
    kernel.ok(f"import sys\nsys.path.insert(0, {str(lib)!r})\n%load_ext autoreload\n%autoreload 2\nimport reloadme")
    again = restarted(kernels, kernel, "autoreload")
    state = again.ok(
        "ip = get_ipython()\nr = ip.magics_manager.registry['AutoreloadMagics']._reloader\n"
        "print(any(e.endswith('autoreload') for e in ip.extension_manager.loaded), r.enabled, r.check_all, r.autoload_obj)\n"
        "print(reloadme.value())"
    )
    assert state.stream("stdout") == "True True True False\n1\n"  # %autoreload 2: enabled, every module
    module.write_text("def value():\n    return 2\n")
    later = time.time() + 10  # a newer mtime than the loaded one, whatever the file system's resolution
    os.utime(module, (later, later))
    assert again.ok("print(reloadme.value())").stream("stdout") == "2\n"


# -- the working directory, sys.path, the environment ---------------------------------------


@pytest.mark.parametrize("how", ["%cd", "os.chdir"])
def test_working_directory_comes_back(kernels: KernelFactory, tmp_path: Path, how: str) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    (work / "data.txt").write_text("relative paths work")
    kernel = kernels.start(session="cwd")
    kernel.ok(f"%cd {work}" if how == "%cd" else f"import os\nos.chdir({str(work)!r})")
    again = restarted(kernels, kernel, "cwd")
    run = again.ok("import os\nprint(os.getcwd())\nprint(open('data.txt').read())")
    assert run.stream("stdout") == f"{work}\nrelative paths work\n"


def test_sys_path_additions_come_back_before_the_namespace(kernels: KernelFactory, tmp_path: Path) -> None:
    front, back = tmp_path / "front", tmp_path / "back"
    front.mkdir()
    back.mkdir()
    (back / "onlyhere.py").write_text("ANSWER = 42\n")
    kernel = kernels.start(session="syspath")
    kernel.ok(f"import sys\nsys.path.insert(0, {str(front)!r})\nsys.path.append({str(back)!r})\nimport onlyhere")
    again = restarted(kernels, kernel, "syspath")
    run = again.ok(
        f"import sys\nprint(sys.path[0] == {str(front)!r}, sys.path[-1] == {str(back)!r}, sys.path.count({str(back)!r}))\n"
        "print(onlyhere.ANSWER)"
    )
    # The module bound in the namespace is importable only from the added entry: sys.path came back first.
    assert run.stream("stdout") == "True True 1\n42\n", run.stream("stderr")


def test_environment_comes_back_without_secrets(kernels: KernelFactory, home: Path) -> None:
    env = kernel_env(home, "env", GONE_LATER="here")
    kernel = kernels.start(env=env)
    kernel.ok(
        "%env STAGE=dev\nimport os\nos.environ['FROM_CODE'] = 'x y'\ndel os.environ['GONE_LATER']\n"
        "os.environ['MY_API_KEY'] = 's3cret-value'\nos.environ['DB_URL'] = 'postgresql://me:s3cret-pw@db/x'"
    )
    kernel.kill9()
    again = kernels.start(env=env)
    run = again.ok(
        "import os\nprint(os.environ.get('STAGE'), os.environ.get('FROM_CODE'), 'GONE_LATER' in os.environ,"
        " 'MY_API_KEY' in os.environ, 'DB_URL' in os.environ)"
    )
    assert run.stream("stdout") == "dev x y False False False\n"
    notice = run.stream("stderr")
    assert "look like secrets are never saved; set them again: DB_URL, MY_API_KEY" in notice, notice
    # The checkpoint records as the engine holds them name the secrets, never their values.
    stored = again.ok(
        "import json\ntext = json.dumps(get_ipython().kernel.durable.history._records())\n"
        "print('s3cret' in text, 'MY_API_KEY' in text, 'STAGE' in text)"
    )
    assert stored.stream("stdout") == "False True True\n"


# -- failures, time travel, signing ------------------------------------------------------


def test_a_failing_item_is_named_and_the_rest_comes_back(kernels: KernelFactory, tmp_path: Path) -> None:
    gone, lib = tmp_path / "gone", tmp_path / "lib"
    gone.mkdir()
    lib.mkdir()
    (lib / "myext.py").write_text("def load_ipython_extension(ip):\n    ip.user_ns['myext_loaded'] = True\n")
    kernel = kernels.start(session="partial")
    kernel.ok(f"import sys\nsys.path.append({str(lib)!r})\n%load_ext myext\n%env KEPT=yes\n%cd {gone}")
    kernel.kill9()
    shutil.rmtree(gone)
    (lib / "myext.py").unlink()
    again = kernels.start(session="partial")
    run = again.ok(f"import os, sys\nprint(os.environ.get('KEPT'), sys.path[-1] == {str(lib)!r})")
    assert run.stream("stdout") == "yes True\n"
    notice = run.stream("stderr")
    assert "not restored from the session:" in notice, notice
    assert f"working directory {gone} (FileNotFoundError" in notice, notice
    assert "extension myext (ModuleNotFoundError" in notice, notice


def test_time_travel_brings_back_the_state_of_that_execution(kernels: KernelFactory, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    kernel = kernels.start(session="travel-state")
    kernel.ok(f"%env STAGE=one\n%cd {first}")
    kernel.ok(f"%env STAGE=two\n%env LATER=1\n%cd {second}\nimport sys\nsys.path.append({str(second)!r})")
    run = kernel.ok(
        f"%durable restore 1\nimport os, sys\nprint(os.environ.get('STAGE'), 'LATER' in os.environ, os.getcwd(),"
        f" {str(second)!r} in sys.path)"
    )
    assert run.stream("stdout").endswith(f"one False {first} False\n"), run.stream("stdout")


@pytest.mark.embedded_only("edits store.sqlite3")
def test_tampered_state_is_refused(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    """The state is inside the signed manifest: changing it breaks the signature."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    kernel = kernels.start(session="tamper-state")
    kernel.ok("%env STAGE=signed\nkept = 1")
    kernel.kill9()
    db = sqlite3.connect(home / "store.sqlite3")
    [(pid, blob)] = db.execute("SELECT id, record FROM promises WHERE kind = 'checkpoint'").fetchall()
    record = json.loads(blob)
    value = json.loads(base64.b64decode(record["value"]["data"]))
    assert value["manifest"]["state"]["env"]["set"] == {"STAGE": "signed"}
    value["manifest"]["state"]["cwd"] = str(target)
    record["value"]["data"] = base64.b64encode(json.dumps(value).encode()).decode()
    db.execute("UPDATE promises SET record = ? WHERE id = ?", (json.dumps(record).encode(), pid))
    db.commit()
    db.close()
    again = kernels.start(session="tamper-state")
    run = again.ok("import os\nprint(os.getcwd() == " + repr(str(target)) + ", os.environ.get('STAGE'), 'kept' in dir())")
    assert run.stream("stdout") == "False None False\n"
    assert "refusing to load it" in run.stream("stderr"), run.stream("stderr")


# -- the rules, on their own -------------------------------------------------------------


def test_secret_rule() -> None:
    for name in ("PYREPL3_KEY", "PYREPL3_TOKEN", "RESONATE_TOKEN", "db_password", "AWS_SECRET_ACCESS_KEY", "GH_TOKEN",
                 "OPENAI_API_KEY", "SMTP_PASSWD", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert looks_secret(name), name
    assert looks_secret("DATABASE_URL", "postgresql://me:pw@db:5432/x")
    for name, value in (("STAGE", "dev"), ("PATH", "/usr/bin"), ("DATABASE_URL", "postgresql://me@db/x")):
        assert not looks_secret(name, value), name


@pytest.mark.parametrize(
    ("start", "now", "other_start", "expected"),
    [
        (["", "/lib", "/site"], ["/front", "", "/lib", "/site", "/back"], ["", "/lib2", "/site"], ["/front", "", "/lib2", "/site", "/back"]),
        (["", "/lib", "/site"], ["", "/mid", "/lib", "/site"], ["/x", "", "/site"], ["/x", "", "/mid", "/site"]),
        (["", "/lib", "/site"], ["", "/site"], ["", "/lib", "/site", "/more"], ["", "/site", "/more"]),
        (["", "/lib"], ["", "/lib", "/a", "/b"], ["/other"], ["/other", "/a", "/b"]),
    ],
    ids=["front-and-back", "after-an-entry", "removed", "anchor-missing"],
)
def test_sys_path_changes_apply_to_another_start(start: list[str], now: list[str], other_start: list[str], expected: list[str]) -> None:
    changes = _path_changes(start, now)
    assert changes is not None
    assert _compose_path(start, changes) == now
    assert _compose_path(other_start, changes) == expected
