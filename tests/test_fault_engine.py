"""The fault suite, engine edges (issue 10, points 3 and 11): a stalled engine,
bad store settings. Real kernels, a real Postgres, a real frozen TCP relay."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path
from random import Random

import psycopg
import pytest
from conftest import PG_DSN
from harness import BIN, Kernel, KernelFactory, Store, kernel_env, show, wait_for
from relay import Relay

#: PYREPL3_START_TIMEOUT in these trials: short, so that a trial takes seconds.
START_TIMEOUT = 2.0

STALL_MODES = (
    "thaw-before-timeout",  # the relay moves again while the kernel still waits: the cell runs durably
    "thaw-after-reply",  # the cell ran without durability; the create lands late, in the live kernel
    "kill-then-thaw",  # kill -9 while the kernel waits; the create lands after it is gone
    "reply-kill-thaw",  # ran without durability, kill -9, then the create lands
)


def _settled(eid: str, timeout: float = 30.0) -> str:
    """The execution's state once it is settled, or (after ``timeout``) the state it is stuck in."""
    deadline = time.monotonic() + timeout
    while (state := _state(eid)) in ("pending", "absent") and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


def _effects(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _state(eid: str) -> str:
    """The promise's state straight from resonate-pg's table (``absent`` if never created): cheaper than the CLI."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM resonate.promises WHERE id = %s", (eid,)).fetchone()
    return str(row[0]) if row else "absent"


@pytest.mark.engines("postgres")
@pytest.mark.timeout(1800)  # about 10 s a trial; more trials (--fault-trials): raise it with --timeout
def test_stalled_engine_never_runs_a_cell_twice(
    kernels: KernelFactory, home: Path, store: Store, tmp_path: Path, fault_trials: int, fault_rng: Random
) -> None:
    """Point 3: freeze the link to Postgres, run a cell with a side effect, thaw at a random
    moment (before or after PYREPL3_START_TIMEOUT, after a kill -9 of the kernel), start the
    next kernel with PYREPL3_AUTO_RESUME=1 and run ``%durable resume``: the effect happens at
    most once, and the execution ends settled, never pending."""
    host, port = PG_DSN.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with Relay(host, int(port)) as relay:
        env = kernel_env(
            home, "stall", PYREPL3_STORE=relay.dsn(PG_DSN), PYREPL3_START_TIMEOUT=str(START_TIMEOUT),
            PYREPL3_AUTO_RESUME="1", PYREPL3_ENGINE_TIMEOUT="2",
        )
        kernel: Kernel | None = kernels.start(env=env)
        twice, pending, outcomes = 0, 0, Counter[str]()
        for trial in range(fault_trials):
            assert kernel is not None
            mode = fault_rng.choice(STALL_MODES)
            effects = tmp_path / f"effects-{trial}.txt"
            kernel.ok("%durable resume")  # the previous trial's kernel is gone: nothing left to resume
            kernel.ok("warm = 1")
            relay.freeze()
            msg_id = kernel.send_execute(f"open({str(effects)!r}, 'a').write('x\\n')")
            eid = f"exec:{msg_id}"
            if mode == "thaw-before-timeout":
                time.sleep(fault_rng.uniform(0.0, START_TIMEOUT * 0.8))  # the fault's timing, not a wait
                relay.thaw()
                kernel.collect(msg_id, timeout=60)
            elif mode == "thaw-after-reply":
                kernel.collect(msg_id, timeout=60)
                time.sleep(fault_rng.uniform(0.0, 1.0))
                relay.thaw()
            elif mode == "kill-then-thaw":
                time.sleep(fault_rng.uniform(0.0, START_TIMEOUT * 1.2))
                kernel.kill9()
                relay.thaw()
            else:
                kernel.collect(msg_id, timeout=60)
                kernel.kill9()
                relay.thaw()
            if kernel.km.is_alive():
                # The live kernel settles a late create itself; then it goes (randomly: cleanly or killed).
                _settled(eid)
                if fault_rng.random() < 0.5:
                    kernel.kill9()
                else:
                    kernel.km.shutdown_kernel(now=False)
            # Whatever the dead kernel had sent reaches Postgres before the next kernel looks.
            wait_for(lambda: relay.connections == 0, 60, what="the relay to pass on the dead kernel's bytes")
            kernel = kernels.start(env=env)  # PYREPL3_AUTO_RESUME=1
            kernel.ok("%durable resume")
            kernel.ok("pass")
            state = _settled(eid) if _state(eid) != "absent" else "absent"
            ename = (show(home, eid).get("error") or {}).get("ename", "") if state == "rejected" else ""
            n = _effects(effects)
            outcomes[f"{mode}: effects {n}, {state} {ename}".strip()] += 1
            twice += n > 1
            pending += state == "pending"
        print(f"stalled-engine trials: {fault_trials}, side effect twice: {twice}, left pending: {pending}")
        for line, count in sorted(outcomes.items()):
            print(f"  {count:3d} x {line}")
        assert twice == 0 and pending == 0, outcomes


def _pg_parts() -> tuple[str, str, str]:
    netloc, db = PG_DSN.split("@", 1)[1].split("/", 1)
    host, port = netloc.rsplit(":", 1)
    return host, port, db.split("?", 1)[0]


@pytest.mark.engines("postgres")
@pytest.mark.parametrize("reachable", [True, False], ids=["server", "no-server"])
def test_keyword_dsn_is_postgres_and_its_password_never_shows(
    kernels: KernelFactory, home: Path, store: Store, tmp_path: Path, reachable: bool
) -> None:
    """Point 11: a libpq keyword string is a Postgres DSN, never a directory; its password is never shown."""
    host, port, db = _pg_parts()
    secret = "KwSecret9731"
    dsn = f"host={host} port={port if reachable else '1'} user=postgres password={secret} dbname={db}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = tmp_path / "kernel.log"
    kernel = kernels.start(env=kernel_env(home, "kw", PYREPL3_STORE=dsn), cwd=cwd, log=log)
    shown = kernel.ok("%durable").stream("stdout") + kernel.ok("1 + 1").stream("stderr")
    settings = subprocess.run([str(BIN / "pyrepl3"), "settings"], env=kernel_env(home, "kw", PYREPL3_STORE=dsn),
                              cwd=cwd, capture_output=True, text=True, timeout=60)
    kernel.close()
    everything = shown + settings.stdout + settings.stderr + log.read_text()
    assert "password=***" in everything
    assert secret not in everything
    assert list(cwd.iterdir()) == []  # no folder named after the DSN
    if reachable:
        assert "postgres engine" in shown
    else:
        assert "RES004" in shown and "PYREPL3_STORE" in shown
    print(f"keyword DSN ({'reachable' if reachable else 'unreachable'}): secret shown 0 times, directories created 0")


@pytest.mark.engines("postgres")
def test_wrong_password_is_res005_and_not_retried(kernels: KernelFactory, home: Path, store: Store, tmp_path: Path) -> None:
    """Point 11: a refused login is RES005 (user shown, password never), and durability stays off: no reconnecting."""
    host, port, db = _pg_parts()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        hba = conn.execute("SHOW hba_file").fetchone()[0]  # type: ignore[index]
        conn.execute("DO $$BEGIN CREATE ROLE pyrepl3_pw LOGIN PASSWORD 'right-one'; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
        rule = "host all pyrepl3_pw 127.0.0.1/32 scram-sha-256\n"  # the test server trusts everyone else
        text = Path(hba).read_text()
        if rule not in text:
            Path(hba).write_text(rule + text)
        conn.execute("SELECT pg_reload_conf()")
    secret = "WrongSecret5521"
    log = tmp_path / "kernel.log"
    kernel = kernels.start(env=kernel_env(home, "pw", PYREPL3_STORE=f"postgresql://pyrepl3_pw:{secret}@{host}:{port}/{db}"), log=log)
    first = kernel.ok("1 + 1").stream("stderr")
    durable = kernel.ok("%durable").stream("stdout")
    kernel.close()
    assert "RES005" in first and "authentication failed for PYREPL3_STORE" in first and "pyrepl3_pw" in first
    assert "reconnect" not in first + durable  # the keeper does not retry a refused login
    assert secret not in first + durable + log.read_text()
    print("wrong password: RES005 1 time, retried 0 times, secret shown 0 times")
