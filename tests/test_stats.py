"""``pyrepl3 stats``: the figures of real kernels' executions, read back from the store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from harness import TIMEOUT, KernelFactory, Store, cli, cli_json, kernel_env

from kernel.cli.stats import percentile, spread

#: An rpc child promise as a worker leaves it (``durable.rpc`` is not on this branch yet): created
#: by the running execution, resolved with the wall time its worker started it, 0.25 s later.
_RPC = """
import time as _t
_ds = durable._session()
_eid = _ds.current_execution
_ds.runtime.create_settled(f"{_eid}:rpc:1", int(_t.time() * 1000) + 60_000, {"kind": "rpc"}, {"pyrepl3:kind": "rpc"},
                           "resolved", {"started_at": _t.time() + 0.25, "json": 1})
_ds.runtime.create_settled(f"{_eid}:rpc:2", int(_t.time() * 1000) + 60_000, {"kind": "rpc"}, {"pyrepl3:kind": "rpc"},
                           "resolved", {"json": 2})  # no started_at: not counted
"""


@pytest.mark.engines("embedded", "postgres")
def test_stats_summarise_executions_errors_checkpoints_prompts_and_rpc(kernels: KernelFactory, home: Path, store: Store) -> None:
    kernel = kernels.start("stats-a")
    kernel.ok(f"data = [{uuid.uuid4().hex!r} + str(i) for i in range(2000)]")  # its own blobs, even in a shared database
    assert kernel.execute("raise ValueError('one')").content["status"] == "error"
    assert kernel.execute("raise ValueError('two')").content["status"] == "error"
    assert kernel.execute("{}['missing']").content["status"] == "error"
    asking = kernel.send_execute("name = input('name? ')", allow_stdin=True)
    assert kernel.kc.get_stdin_msg(timeout=TIMEOUT)["msg_type"] == "input_request"
    kernel.kc.input("ada")
    assert kernel.collect(asking).content["status"] == "ok"
    kernel.ok(_RPC)
    other = kernels.start("stats-b")
    other.ok("x = 1")

    data = cli_json(home, "stats", "--session", "stats-a")
    ex = data["executions"]
    assert (ex["count"], ex["ok"], ex["error"], ex["pending"]) == (6, 3, 3, 0)
    assert ex["duration_s"]["count"] == 6
    assert 0 < ex["duration_s"]["p50"] <= ex["duration_s"]["p90"] <= ex["duration_s"]["max"]
    assert data["errors"] == {"ValueError": 2, "KeyError": 1}
    ck = data["checkpoints"]
    assert ck["count"] == 6
    assert ck["bytes_written"]["count"] == 6 and ck["bytes_written_total"] > 20000  # the list was written once at least
    assert ck["size_median"] > 0
    assert ck["capture_s"]["count"] == 6 and ck["capture_s"]["p50"] > 0
    waits = data["prompts"]["wait_s"]
    assert waits["count"] == 1 and waits["max"] > 0
    queue = data["rpc"]["queue_s"]
    assert queue["count"] == 1 and 0.2 < queue["p50"] < 30

    only_b = cli_json(home, "stats", "--session", "stats-b")
    assert (only_b["executions"]["count"], only_b["errors"], only_b["checkpoints"]["count"]) == (1, {}, 1)
    assert only_b["prompts"]["wait_s"]["count"] == 0 and only_b["rpc"]["queue_s"]["p50"] is None
    if not store.shared:  # a shared database holds other tests' sessions too
        everything = cli_json(home, "stats")
        assert everything["executions"]["count"] == 7 and everything["checkpoints"]["count"] == 7

    text = cli(home, "stats", "--session", "stats-a").stdout
    assert "6 executions (3 ok, 3 error, 0 pending), 6 checkpoints" in text
    for label in ("execution time", "checkpoint written", "checkpoint capture", "prompt wait", "rpc queue"):
        assert label in text
    assert "ValueError" in text and "KeyError" in text


def test_stats_of_an_empty_store(home: Path) -> None:
    data = cli_json(home, "stats")
    assert data["executions"]["count"] == 0 and data["checkpoints"]["count"] == 0 and data["errors"] == {}
    assert "0 executions" in cli(home, "stats").stdout


@pytest.mark.engines("postgres")
def test_stats_over_a_resonate_server(kernels: KernelFactory, home: Path, tmp_path: Path, store: Store) -> None:
    from test_engines import ResonateHttpFront  # noqa: PLC0415 - the http engine's test server (over resonate-pg)

    front = ResonateHttpFront(store.dsn)
    try:
        http = Store("http", front.url, store.ns, blobs=str(tmp_path / "shared"))
        kernel = kernels.start(env=kernel_env(home, "stats-http", store=http))
        kernel.ok(f"data = [{uuid.uuid4().hex!r}] * 100")
        assert kernel.execute("raise KeyError('k')").content["status"] == "error"
        data = cli_json(home, "stats", "--session", "stats-http", store=http)
    finally:
        front.close()
    assert (data["executions"]["count"], data["executions"]["ok"], data["executions"]["error"]) == (2, 1, 1)
    assert data["errors"] == {"KeyError": 1}
    assert data["checkpoints"]["count"] == 2 and data["checkpoints"]["bytes_written_total"] > 0


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.9) == 3.0
    assert [percentile([4.0, 1.0, 3.0, 2.0], q) for q in (0.25, 0.5, 0.9, 1.0)] == [1.0, 2.0, 4.0, 4.0]
    assert spread([2.0, 1.0]) == {"count": 2, "p50": 1.0, "p90": 2.0, "max": 2.0}
