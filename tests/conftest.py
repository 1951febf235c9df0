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
from harness import KERNEL_NAME, SCRUBBED, Kernel, KernelFactory
from jupyter_client.kernelspec import KernelSpecManager

# The kernelspec this checkout's install.py registered lives in the venv's data
# dir; put it first so a `pyrepl3` spec in the user's own Jupyter dir (another
# checkout, `install.py --user`) cannot shadow it.
_VENV_JUPYTER = str(Path(sys.prefix) / "share" / "jupyter")
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    [_VENV_JUPYTER, *[p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]]
)


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
def home(tmp_path: Path) -> Path:
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
