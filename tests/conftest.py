"""Shared fixtures: real ``pyrepl3`` kernels, each test in its own PYREPL3_HOME.

Nothing here mocks Resonate or the Jupyter protocol: kernels are started with
jupyter_client from the installed kernelspec, and the durable store is read
back through the ``pyrepl3`` CLI, as a user would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import KERNEL_NAME, SCRUBBED, Kernel, KernelFactory, Store, use_store
from jupyter_client.kernelspec import KernelSpecManager

# The kernelspec this checkout's install.py registered lives in the venv's data
# dir; put it first so a `pyrepl3` spec in the user's own Jupyter dir (another
# checkout, `install.py --user`) cannot shadow it.
_VENV_JUPYTER = str(Path(sys.prefix) / "share" / "jupyter")
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    [_VENV_JUPYTER, *[p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]]
)


#: A Postgres 16+ database with resonate-pg's resonate.sql applied; without it the
#: Postgres runs of the engine-parametrized tests are skipped (and say why).
PG_DSN = os.environ.get("PYREPL3_TEST_PG_DSN", "").strip()
PG_SKIP = "Postgres engine: set PYREPL3_TEST_PG_DSN=postgresql://... (Postgres 16+ with resonate-pg's resonate.sql applied)"

#: Modules whose kernel tests run on every engine (the core, input and checkpoint features).
ENGINE_MODULES = {"test_core", "test_prompts", "test_checkpoints", "test_engines"}
#: Tests of those modules that are about the embedded store itself, and why.
EMBEDDED_ONLY = {
    "test_corrupt_store_is_reported_and_left_untouched": "writes garbage into store.sqlite3",
    "test_second_kernel_on_a_live_session_runs_without_durability": "flock message; Postgres: test_engines",
    "test_pyrepl3_session_wins_over_jpy_session_name": "session resolution does not depend on the engine",
    "test_jpy_session_name_wins_over_kernel_id": "session resolution does not depend on the engine",
    "test_kernel_id_is_the_session_and_restart_keeps_it": "session resolution does not depend on the engine",
    "test_home_traitlet_and_pyrepl3_home_precedence": "PYREPL3_HOME is the embedded store's location",
    "test_durable_magic_shows_session_store_counts_and_table": "shows store.sqlite3; Postgres: test_engines",
    "test_corrupted_blob_is_reported_and_the_rest_restored": "corrupts a blob file; Postgres: test_engines",
    "test_tampered_checkpoints_are_refused": "edits store.sqlite3; Postgres: test_engines",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engines(*names): run this test on these engines (embedded, postgres)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the kernel tests of ENGINE_MODULES once per engine (or on the engines
    an ``engines`` mark names)."""
    if "store" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    mark = metafunc.definition.get_closest_marker("engines")
    if mark is not None:
        engines = mark.args
    elif module in ENGINE_MODULES and module != "test_engines" and metafunc.function.__name__ not in EMBEDDED_ONLY:
        engines = ("embedded", "postgres")
    else:
        return
    params = [
        pytest.param(e, id=e, marks=[pytest.mark.skipif(e == "postgres" and not PG_DSN, reason=PG_SKIP)]) for e in engines
    ]
    metafunc.parametrize("store", params, indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PG_SKIP in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} Postgres engine runs skipped: {PG_SKIP}")


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """The engine this test runs on (``embedded`` unless parametrized)."""
    kind = getattr(request, "param", "embedded")
    current = Store(kind, PG_DSN if kind == "postgres" else "")
    use_store(current)
    yield current
    use_store(Store())


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A safety net: any kernel started without an explicit env (the
    conformance suite, the console) still gets a throwaway store and IPython dir."""
    saved = {k: os.environ.get(k) for k in (*SCRUBBED, "IPYTHONDIR")}
    for key in SCRUBBED:
        os.environ.pop(key, None)
    os.environ["PYREPL3_HOME"] = str(tmp_path_factory.mktemp("default-home"))
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert Path(spec.argv[0]).parent.parent == Path(sys.prefix), (
        f"kernelspec {KERNEL_NAME!r} at {spec.resource_dir} runs {spec.argv[0]}, "
        f"not this venv ({sys.prefix}); run `python3 install.py --test`"
    )
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def home(tmp_path: Path, store: Store) -> Path:
    """A fresh PYREPL3_HOME (not created yet: the kernel makes it)."""
    return tmp_path / "pyrepl3-home"


@pytest.fixture
def kernels(home: Path) -> Iterator[KernelFactory]:
    factory = KernelFactory(home)
    yield factory
    factory.close()


@pytest.fixture
def kernel(kernels: KernelFactory) -> Kernel:
    return kernels.start()
