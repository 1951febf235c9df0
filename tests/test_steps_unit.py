"""StepJournal's trips to the engine, counted with an in-memory runtime (no timing).

What is specified: a durable step costs one trip once the run is past the
journaled steps; ``durable.checkpoint`` of a name costs one trip whatever the
number of versions before it (the newest is counted, not searched); and a new
run of the same execution (a resume) finds the newest version written by the
earlier run once, then counts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from kernel.checkpoint.signing import Sealer, Signer
from kernel.core.errors import CheckpointNotFoundError
from kernel.durable.steps import StepError, StepJournal


@dataclass
class _Value:
    data: Any


@dataclass
class _Record:
    state: str
    value: _Value
    param: _Value


class FakeRuntime:
    """The part of DurableRuntime that StepJournal uses, as a dict; counts every trip."""

    def __init__(self) -> None:
        self.promises: dict[str, _Record] = {}
        self.trips: list[str] = []

    def find(self, pid: str) -> _Record | None:
        self.trips.append("find")
        return self.promises.get(pid)

    def create(self, pid: str, timeout: int, param: Any, tags: dict[str, str]) -> _Record:
        self.trips.append("create")
        return self.promises.setdefault(pid, _Record("pending", _Value(None), _Value(param)))

    def settle(self, pid: str, state: str, value: Any) -> _Record:
        self.trips.append("settle")
        rec = self.promises[pid]
        if rec.state == "pending":
            rec.state, rec.value = state, _Value(value)
        return rec

    def create_settled(self, pid: str, timeout: int, param: Any, tags: dict[str, str], state: str, value: Any) -> _Record:
        self.trips.append("create_settled")
        return self.promises.setdefault(pid, _Record(state, _Value(value), _Value(param)))


@pytest.fixture
def journal() -> StepJournal:
    return StepJournal(FakeRuntime(), Sealer(Signer(b"k"), "s"))  # type: ignore[arg-type]


def test_a_step_costs_one_trip_past_the_journaled_ones(journal: StepJournal) -> None:
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    calls: list[int] = []
    with journal.executing("exec:a"):
        for i in range(5):
            journal.run(lambda i=i: calls.append(i) or i * 10)
    assert rt.trips == ["find"] + ["create_settled"] * 5  # one look-up: step 1 was missing, so were the rest
    rt.trips.clear()
    with journal.executing("exec:a"):  # the same execution again (a resume): replayed, not repeated
        assert [journal.run(lambda: calls.append(99)) for _ in range(5)] == [0, 10, 20, 30, 40]
        assert journal.run(lambda: 7) == 7
    assert calls == [0, 1, 2, 3, 4] and rt.trips == ["find"] * 6 + ["create_settled"]


def test_a_failed_step_is_journaled_in_one_trip_and_not_run_again(journal: StepJournal) -> None:
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    with journal.executing("exec:b"), pytest.raises(ZeroDivisionError):
        journal.run(lambda: 1 / 0)
    assert rt.promises["exec:b:step:1"].state == "rejected" and rt.trips == ["find", "create_settled"]
    with journal.executing("exec:b"), pytest.raises(StepError, match="failed when it first ran"):
        journal.run(lambda: 1)


def test_checkpoint_is_one_trip_after_many_versions_and_newest_wins_after_a_resume(journal: StepJournal) -> None:
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    with journal.executing("exec:c"):
        for i in range(1000):
            journal.save_value("n", {"i": i})
        rt.trips.clear()
        journal.save_value("n", {"i": 1000})
        assert rt.trips == ["create_settled"], "a checkpoint after 1,000 versions searched for the newest"
        rt.trips.clear()
        assert journal.latest_value("n") == {"i": 1000} and rt.trips == ["find"]
    with journal.executing("exec:c"):  # a new run (a resume in a new kernel): searched once, then counted
        assert journal.latest_value("n") == {"i": 1000}
        searched = len(rt.trips)
        assert set(rt.trips) == {"find"} and searched <= 25, rt.trips  # a galloping search, once
        journal.save_value("n", {"i": 1001})
        journal.save_value("n", {"i": 1002})
        assert rt.trips[searched:] == ["create_settled", "create_settled"]
        assert journal.latest_value("n") == {"i": 1002}
        assert journal.latest_value("other", None) is None
        with pytest.raises(CheckpointNotFoundError):
            journal.latest_value("other")
    assert "exec:c:ckpt:n:1003" in rt.promises and "exec:c:ckpt:n:1004" not in rt.promises


def test_a_nested_run_keeps_its_own_counts(journal: StepJournal) -> None:
    with journal.executing("exec:outer"):
        journal.save_value("x", 1)
        with journal.executing("exec:inner"):
            assert journal.latest_value("x", "none") == "none"
            journal.save_value("x", 2)
        journal.save_value("x", 3)
        assert journal.latest_value("x") == 3
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    assert sorted(p for p in rt.promises if ":ckpt:" in p) == ["exec:inner:ckpt:x:1", "exec:outer:ckpt:x:1", "exec:outer:ckpt:x:2"]
