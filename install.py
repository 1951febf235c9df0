#!/usr/bin/env python3
"""Set up PyREPL3: find Python >= 3.12, create .venv, install, register the kernelspec.

    python3 install.py            # the kernel and its CLI
    python3 install.py --test     # ... plus what the test suite needs
    python3 install.py --user     # also register the kernelspec for your own Jupyter

Runs on any Python 3 (it only *looks* for 3.12+). Idempotent: running it again
reuses .venv and refreshes the install and the kernelspec.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
MINIMUM = (3, 12)
KERNEL_NAME = "pyrepl3"


def version_of(python):
    try:
        out = subprocess.run(
            [python, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        major, minor = out.stdout.strip().split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def candidates():
    """Interpreters to try, best guesses first: env override, PATH, then pyenv."""
    if os.environ.get("PYREPL3_PYTHON"):
        yield os.environ["PYREPL3_PYTHON"]
    yield sys.executable
    for name in ("python3.13", "python3.12", "python3", "python"):
        found = shutil.which(name)
        if found:
            yield found
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv"), "/root/.pyenv", "/usr/local/pyenv"]
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            roots.insert(0, subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=20).stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    found = []
    for root in filter(None, roots):
        found += glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))
    # newest first
    def key(p):
        parts = Path(p).parts[-3].split(".")
        return tuple(int(x) if x.isdigit() else 0 for x in parts)
    for p in sorted(set(found), key=key, reverse=True):
        yield p
    for p in sorted(glob.glob("/usr/bin/python3.1[2-9]") + glob.glob("/usr/local/bin/python3.1[2-9]"), reverse=True):
        yield p


def find_python():
    seen = set()
    for python in candidates():
        real = os.path.realpath(python)
        if real in seen:
            continue
        seen.add(real)
        v = version_of(python)
        if v is not None and v >= MINIMUM:
            return python, v
    return None, None


def run(cmd):
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def venv_python():
    return VENV / "bin" / "python"


def ensure_venv():
    if venv_python().exists():
        v = version_of(str(venv_python()))
        if v is not None and v >= MINIMUM:
            print("Using existing %s (Python %d.%d)" % (VENV, v[0], v[1]))
            return
        print("Existing %s is not Python >= 3.12; recreating it" % VENV)
        shutil.rmtree(VENV)
    python, v = find_python()
    if python is None:
        sys.exit(
            "PyREPL3 needs Python 3.12 or newer, and none was found on PATH or under pyenv.\n"
            "Install one (for example `pyenv install 3.12` or your system's python3.12 package),\n"
            "or point PYREPL3_PYTHON at it, then run this script again."
        )
    print("Creating %s with %s (Python %d.%d)" % (VENV, python, v[0], v[1]))
    run([python, "-m", "venv", VENV])


def write_kernelspec(target_dir):
    target = Path(target_dir) / KERNEL_NAME
    target.mkdir(parents=True, exist_ok=True)
    spec = json.loads((ROOT / "kernelspec" / "kernel.json").read_text())
    spec["argv"][0] = str(venv_python())
    (target / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
    for logo in (ROOT / "kernelspec").glob("logo-*.png"):
        shutil.copy2(logo, target / logo.name)
    print("Registered kernelspec %r in %s" % (KERNEL_NAME, target))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also install the test dependencies")
    parser.add_argument("--user", action="store_true", help="also register the kernelspec for your user's Jupyter")
    args = parser.parse_args()

    ensure_venv()
    py = venv_python()
    run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    target = ".[test]" if args.test else "."
    run([py, "-m", "pip", "install", "--quiet", "-e", target])
    # An editable install leaves the package's bytecode to be written at first import, which
    # PYTHONDONTWRITEBYTECODE (or a read-only checkout) prevents: then every kernel start would
    # compile the whole package again. Compile it now, as pip does for an installed wheel.
    run([py, "-m", "compileall", "-q", ROOT / "kernel"])
    write_kernelspec(VENV / "share" / "jupyter" / "kernels")
    if args.user:
        user_dir = subprocess.run(
            [py, "-c", "from jupyter_core.paths import jupyter_data_dir; print(jupyter_data_dir())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        write_kernelspec(Path(user_dir) / "kernels")
    print("\nPyREPL3 is installed. Try:  .venv/bin/jupyter console --kernel pyrepl3")


if __name__ == "__main__":
    main()
