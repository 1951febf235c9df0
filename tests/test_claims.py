"""How many tasks a worker claims (kernel/store/claims.py): pure logic, a fake clock."""

from __future__ import annotations

import pytest

from kernel.core.clock import Clock
from kernel.core.errors import ConfigurationError
from kernel.store.claims import Claims


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_claims_no_more_than_its_capacity_and_is_woken_when_room_frees() -> None:
    ticks, woken = Ticks(), []
    claims = Claims(2, expire=10, clock=Clock(monotonic=ticks))
    claims.on_room = lambda: woken.append(True)
    assert claims.room() == 2
    claims.claimed("t1")
    claims.claimed("t1")  # the same task delivered twice holds one slot
    claims.claimed("t2")
    assert claims.room() == 0
    claims.started("t1")
    assert claims.running == 1 and claims.room() == 0
    claims.finished("t1")
    assert claims.room() == 1 and woken == [True]
    claims.finished("t1")  # not held any more: no second wake
    assert woken == [True]


def test_a_claimed_task_that_never_starts_gives_its_slot_back_after_a_while_a_started_one_never() -> None:
    ticks = Ticks()
    claims = Claims(2, expire=10, clock=Clock(monotonic=ticks))
    claims.claimed("lost")  # acquired by another worker first, say
    claims.claimed("long")
    claims.started("long")
    ticks.now = 11
    assert claims.room() == 1 and claims.running == 1


def test_a_closed_worker_claims_nothing_and_at_least_one_thread_is_needed() -> None:
    claims = Claims(3)
    claims.close()
    assert claims.closed and claims.room() == 0
    with pytest.raises(ConfigurationError, match="at least 1"):
        Claims(0)
