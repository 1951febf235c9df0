"""Fault suite, the hot path (issue 12, point 3): the end of a cell is one transaction.

On the engines that store a batch of requests as one unit (embedded, Postgres) a
cell's checkpoint and the settle of its ``exec:<msg_id>`` are written together, so
a ``kill -9`` at any moment leaves both or neither -- read straight from the engine
after the kill, before any kernel opens the session again (no repair at start
hides a gap). Trials send a few short cells back to back and kill the kernel at a
random moment. Every count is printed.
"""

from __future__ import annotations

import time
from pathlib import Path
from random import Random

import pytest
from harness import KernelFactory, Store

from kernel.core.settings import Settings
from kernel.store.registry import opened

pytestmark = pytest.mark.engines("embedded", "postgres")

#: Seconds a random-trial test may take (CI: 20 trials, a kernel start each).
TRIALS_TIMEOUT = 1200
CELLS = ("pass", "x = 1", "x += 1", "y = [x] * 3", "1/0", "print(x)")


def stored(store: Store, home: Path, session: str) -> tuple[dict[str, str], set[str]]:
    """(exec id -> state, msg_ids that a resolved checkpoint names) of ``session``, read from the engine."""
    name = store.session(session) or session
    with opened(Settings(store=store.dsn if store.shared else "", home=str(home))) as engine:
        catalog = engine.catalog()
        try:
            states = {e.id: e.state for e in catalog.executions(name)}
            named = {rec["value"].get("msg_id") for rec in catalog.checkpoints(name) if isinstance(rec["value"], dict)}
        finally:
            catalog.close()
    return states, {m for m in named if isinstance(m, str)}


@pytest.mark.timeout(TRIALS_TIMEOUT)
def test_kill9_leaves_a_cells_checkpoint_and_its_settle_both_or_neither(
    kernels: KernelFactory, home: Path, store: Store, fault_trials: int, fault_rng: Random
) -> None:
    session = "hot-kill"
    kernel = kernels.start(session)
    kernel.ok("x = 0")
    started = time.monotonic()
    kernel.ok("x = 1")
    span = time.monotonic() - started
    both = neither = checkpoint_only = settled_only = 0
    sent_total = 0
    for trial in range(fault_trials):
        sent = [kernel.send_execute(fault_rng.choice(CELLS)) for _ in range(fault_rng.randint(1, 4))]
        sent_total += len(sent)
        time.sleep(fault_rng.uniform(0, 3 * span))
        kernel.kill9()
        states, named = stored(store, home, session)
        for msg_id in sent:
            settled = states.get(f"exec:{msg_id}", "absent") not in ("pending", "absent")
            has_checkpoint = msg_id in named
            if settled and has_checkpoint:
                both += 1
            elif not settled and not has_checkpoint:
                neither += 1
            elif has_checkpoint:
                checkpoint_only += 1
                print(f"trial {trial}: exec:{msg_id} has its checkpoint but is {states.get(f'exec:{msg_id}', 'absent')}")
            else:
                settled_only += 1
                print(f"trial {trial}: exec:{msg_id} is {states[f'exec:{msg_id}']} without its checkpoint")
        kernel = kernels.start(session)
        kernel.ok("1")  # the next cell runs on the namespace restored
    print(
        f"kill -9 trials: {fault_trials}, cells sent: {sent_total}; checkpoint and settle both stored: {both}, "
        f"neither (interrupted): {neither}; checkpoint without its settle: {checkpoint_only}, settled without its checkpoint: {settled_only}"
    )
    assert (checkpoint_only, settled_only) == (0, 0)
