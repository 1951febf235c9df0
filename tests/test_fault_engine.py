"""The fault suite, engine edges (issue 10, points 3 and 11): a stalled engine,
bad store settings. Real kernels, a real Postgres, a real frozen TCP relay."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from random import Random

import psycopg
import pytest
from conftest import PG_DSN
from harness import Kernel, KernelFactory, Store, kernel_env, show, wait_for
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
