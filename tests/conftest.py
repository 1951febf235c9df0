"""Shared fixtures: real ``pyrepl3`` kernels, each test in its own PYREPL3_HOME.

Nothing here mocks Resonate or the Jupyter protocol: kernels are started with
jupyter_client from the installed kernelspec, and the durable store is read
back through the ``pyrepl3`` CLI, as a user would.
"""

from __future__ import annotations

import os
import random
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
PG_SKIP = (
    "Postgres engine: set PYREPL3_TEST_PG_DSN=postgresql://... (Postgres 16+ with resonate-pg's resonate.sql applied;"
    " `.venv/bin/python tests/pg_server.py start` starts one and prints its DSN)"
)

ENGINES = ("embedded", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyrepl3 faults", "the fault suite (tests/test_fault_*.py)")
    group.addoption("--fault-trials", type=int, default=20, help="random trials per fault test (CI: 20; try hundreds by hand)")
    group.addoption("--fault-seed", type=int, default=None, help="seed of the fault suite's random choices (default: a fresh one, printed)")


@pytest.fixture
def fault_trials(request: pytest.FixtureRequest) -> int:
    """How many random trials a fault test runs (``--fault-trials``)."""
    return int(request.config.getoption("--fault-trials"))


@pytest.fixture
def fault_rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded random source for fault injection; the seed is printed so a failing run can be repeated
    with ``--fault-seed``."""
    seed = request.config.getoption("--fault-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"fault seed: {seed} (repeat with --fault-seed {seed})")
    return random.Random(seed)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engines(*names): run this test once on each of these engines (embedded, postgres)")
    config.addinivalue_line("markers", "embedded_only(reason): run this test only on the embedded store, overriding a module's engines mark")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test once per engine its ``engines`` mark names (its own, or its
    module's ``pytestmark``), unless it is marked ``embedded_only``.

    Only tests that use the ``store`` fixture (directly or through ``home``,
    ``kernels`` or ``kernel``) have an engine; the rest run once, as do
    unmarked tests, which run on the embedded store.
    """
    if "store" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("embedded_only")
    if only is not None:
        if not (only.args or only.kwargs.get("reason")):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: embedded_only needs a reason")
        return
    mark = metafunc.definition.get_closest_marker("engines")
    if mark is None:
        return
    unknown = set(mark.args) - set(ENGINES)
    if unknown or not mark.args:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: engines{mark.args}: the engines are {', '.join(ENGINES)}")
    params = [
        pytest.param(e, id=e, marks=[pytest.mark.skipif(e == "postgres" and not PG_DSN, reason=PG_SKIP)]) for e in mark.args
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
