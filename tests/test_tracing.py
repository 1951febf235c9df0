"""OpenTelemetry spans and metrics of real kernels (``PYREPL3_OTEL_SETUP``), and the
trace context carried to another process (:func:`kernel.core.tracing.carrier`).

The kernel is a process of its own: ``tests/otel/otel_setup.py`` (on its PYTHONPATH)
installs the SDK with in-memory exporters, and a cell prints what they hold."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import TIMEOUT, KernelFactory, Store, kernel_env, show, wait_for
from opentelemetry.sdk.trace import TracerProvider

from kernel.core import tracing
from kernel.core.settings import Settings

OTEL_DIR = Path(__file__).resolve().parent / "otel"


def _traced_env(home: Path, session: str, setup: str = "otel_setup:install") -> dict[str, str]:
    return kernel_env(home, session, PYREPL3_OTEL_SETUP=setup, PYTHONPATH=str(OTEL_DIR))


def _dump(kernel: Any) -> dict[str, Any]:
    out = kernel.ok("import otel_setup\notel_setup.dump()").stream("stdout")
    line = next(text for text in out.splitlines() if text.startswith("OTEL-DUMP "))
    return json.loads(line.removeprefix("OTEL-DUMP "))


def _points(dump: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return dump["metrics"].get(name, [])


@pytest.mark.engines("embedded", "postgres")
def test_a_kernels_spans_and_metrics(kernels: KernelFactory, home: Path, store: Store) -> None:
    kernel = kernels.start("traced", env=_traced_env(home, "traced"))
    # A value of its own: blobs are content-addressed, and a shared database may hold an earlier run's.
    first = f"def twice(x):\n    return 2 * x\nr = durable.run(twice, 21)\ndurable.sleep(0.01)\ndata = [{uuid.uuid4().hex!r}] * 5000"
    ran = kernel.ok(first)
    failed = kernel.execute("raise ValueError('boom')")
    assert failed.content["status"] == "error"
    asking = kernel.send_execute("name = input('name? ')", allow_stdin=True)
    request = kernel.kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["msg_type"] == "input_request"
    kernel.kc.input("ada")
    assert kernel.collect(asking).content["status"] == "ok"
    replayed = kernel.execute(first, msg_id=ran.msg_id)  # the same msg_id again: replayed, not run
    assert replayed.content["status"] == "ok"

    dump = _dump(kernel)
    assert dump["calls"] == 1, "the setup callable runs once per kernel"
    spans = dump["spans"]
    by_id = {s["span_id"]: s for s in spans}
    executions = [s for s in spans if s["name"] == "pyrepl3.execution"]
    assert len(executions) == 4, [s["attributes"] for s in executions]  # three ran, one replayed (the dump's is open)
    by_msg = {}
    for s in executions:
        by_msg.setdefault(s["attributes"]["pyrepl3.msg_id"], []).append(s)
    run_span = next(s for s in by_msg[ran.msg_id] if not s["attributes"].get("pyrepl3.replayed"))
    replay_span = next(s for s in by_msg[ran.msg_id] if s["attributes"].get("pyrepl3.replayed"))
    error_span = by_msg[failed.msg_id][0]
    prompt_exec = by_msg[asking][0]
    session = store.session("traced")
    for s in (run_span, error_span, prompt_exec):
        a = s["attributes"]
        assert a["pyrepl3.promise_id"] == f"exec:{a['pyrepl3.msg_id']}"
        assert a["pyrepl3.session"] == session
        assert isinstance(a["pyrepl3.execution_count"], int)
        assert a["pyrepl3.resumed"] is False
    assert run_span["attributes"]["pyrepl3.outcome"] == "ok" and run_span["status"] == "UNSET"
    assert error_span["attributes"]["pyrepl3.outcome"] == "error"
    assert error_span["attributes"]["pyrepl3.ename"] == "ValueError" and error_span["status"] == "ERROR"
    assert replay_span["attributes"]["pyrepl3.outcome"] == "ok"

    steps = [s for s in spans if s["name"] == "pyrepl3.step"]
    assert sorted(s["attributes"]["pyrepl3.kind"] for s in steps) == ["run", "sleep"]
    assert all(s["parent"] == run_span["span_id"] and s["trace_id"] == run_span["trace_id"] for s in steps)
    assert {s["attributes"]["pyrepl3.promise_id"] for s in steps} == {f"exec:{ran.msg_id}:step:1", f"exec:{ran.msg_id}:step:2"}

    prompts = [s for s in spans if s["name"] == "pyrepl3.prompt"]
    assert len(prompts) == 1 and prompts[0]["parent"] == prompt_exec["span_id"]
    assert prompts[0]["attributes"]["pyrepl3.promise_id"] == f"exec:{asking}:input:1"

    checkpoints = [s for s in spans if s["name"] == "pyrepl3.checkpoint"]
    assert {by_id[c["parent"]]["attributes"]["pyrepl3.msg_id"] for c in checkpoints} == {ran.msg_id, failed.msg_id, asking}
    first_ckpt = next(c for c in checkpoints if c["parent"] == run_span["span_id"])
    assert first_ckpt["attributes"]["pyrepl3.written_bytes"] > 0
    assert first_ckpt["attributes"]["pyrepl3.promise_id"].startswith("ckpt:")
    assert isinstance(first_ckpt["attributes"]["pyrepl3.delta"], bool)
    assert {s["attributes"]["test.thread"] for s in spans if s["name"].startswith("pyrepl3.")} == {"MainThread"}

    errors = _points(dump, "pyrepl3.execution.errors")
    assert errors == [{"attributes": {"pyrepl3.ename": "ValueError"}, "value": 1}]
    assert sum(p["count"] for p in _points(dump, "pyrepl3.execution.duration")) == 3  # the replay is not counted
    assert [p["value"] for p in _points(dump, "pyrepl3.executions.active")] == [1]  # the dump's own cell
    sizes = _points(dump, "pyrepl3.checkpoint.size")
    assert sum(p["count"] for p in sizes) == 3 and sum(p["sum"] for p in sizes) > 0
    assert sum(p["count"] for p in _points(dump, "pyrepl3.checkpoint.duration")) == 3
    waits = _points(dump, "pyrepl3.prompt.wait")
    assert [(p["attributes"], p["count"]) for p in waits] == [({"pyrepl3.kind": "input"}, 1)]


def test_a_broken_setup_is_logged_naming_the_setting_and_the_kernel_works(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    log = tmp_path / "kernel.log"
    kernel = kernels.start("broken-otel", env=_traced_env(home, "broken-otel", "otel_setup:broken"), log=log)
    assert kernel.ok("print(6 * 7)").stream("stdout").strip() == "42"
    text = log.read_text()
    assert "PYREPL3_OTEL_SETUP='otel_setup:broken' failed: RuntimeError: this setup is broken on purpose" in text
    assert "this setup is broken" not in kernel.ok("print('clean')").stream("stderr")


def test_a_malformed_setup_value_is_a_problem_naming_the_setting() -> None:
    settings = Settings.load({"PYREPL3_OTEL_SETUP": "not a module"})
    assert settings.otel_setup == ""
    assert "PYREPL3_OTEL_SETUP='not a module' is not module:callable" in settings.problems["otel_setup"]
    assert Settings.load({"PYREPL3_OTEL_SETUP": "pkg.mod:obj.setup"}).otel_setup == "pkg.mod:obj.setup"


_WORKER = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kernel.core import tracing

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
carried = json.loads(sys.argv[1])
with tracing.continued(carried):
    try:
        with tracing.span(tracing.RPC_RUN, promise_id="exec:m:rpc:1", group="gpu"):
            raise KeyError("lost")
    except KeyError:
        pass
with tracing.span(tracing.RPC_RUN, promise_id="exec:m:rpc:2"):
    pass
print(json.dumps([
    {"name": s.name, "trace": format(s.context.trace_id, "032x"), "parent": format(s.parent.span_id, "016x") if s.parent else None,
     "status": s.status.status_code.name, "events": [e.name for e in s.events], "attributes": dict(s.attributes)}
    for s in exporter.get_finished_spans()
]))
"""


def test_a_span_in_another_process_continues_the_carried_context() -> None:
    provider = TracerProvider()  # the "kernel" side: a provider of its own, not the process's global one
    with provider.get_tracer("test").start_as_current_span("cell") as cell:
        carried = tracing.carrier()
    assert set(carried) >= {"traceparent"}
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(carried)], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    child, alone = json.loads(proc.stdout)
    assert child["trace"] == format(cell.get_span_context().trace_id, "032x")
    assert child["parent"] == format(cell.get_span_context().span_id, "016x")
    assert child["status"] == "ERROR" and child["events"] == ["exception"]
    assert child["attributes"] == {"pyrepl3.promise_id": "exec:m:rpc:1", "pyrepl3.group": "gpu"}
    assert alone["parent"] is None and alone["trace"] != child["trace"]  # outside continued(): a trace of its own
    assert tracing.carrier() == {}  # no span is current here


def test_without_an_sdk_spans_cost_nothing_and_carry_nothing() -> None:
    with tracing.span(tracing.STEP, promise_id="exec:x:step:1") as span:
        assert not span.is_recording()
        assert tracing.carrier() == {}
        tracing.annotate(replayed=True)  # a no-op
    with tracing.continued({}):
        pass
    tracing.record_rpc_queue(0.5, "gpu")


def test_a_resumed_execution_is_marked_and_parents_its_replayed_step_and_checkpoint(
    kernels: KernelFactory, home: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    code = f"""
import os, time
first = durable.run(lambda: 41)
while not os.path.exists({str(gate)!r}):
    time.sleep(0.05)
print('after', first + 1)
"""
    kernel = kernels.start("resumed", env=_traced_env(home, "resumed"))
    msg_id = kernel.send_execute(code)
    wait_for(lambda: show(home, f"exec:{msg_id}:step:1")["state"] == "resolved", what="the step journaled")
    kernel.kill9()
    gate.touch()
    fresh = kernels.start("resumed", env=_traced_env(home, "resumed"))
    resume = fresh.ok("%durable resume", timeout=60)
    assert "after 42" in resume.stream("stdout")
    spans = _dump(fresh)["spans"]
    executions = {s["attributes"]["pyrepl3.msg_id"]: s for s in spans if s["name"] == "pyrepl3.execution"}
    resumed, outer = executions[msg_id], executions[resume.msg_id]
    assert resumed["attributes"]["pyrepl3.resumed"] is True and outer["attributes"]["pyrepl3.resumed"] is False
    assert resumed["parent"] == outer["span_id"] and resumed["attributes"]["pyrepl3.outcome"] == "ok"
    (step,) = [s for s in spans if s["name"] == "pyrepl3.step"]
    assert step["parent"] == resumed["span_id"] and step["attributes"]["pyrepl3.replayed"] is True
    parents = {s["parent"] for s in spans if s["name"] == "pyrepl3.checkpoint"}
    assert parents == {resumed["span_id"], outer["span_id"]}  # each execution its own checkpoint


def test_a_kernel_without_a_setup_never_imports_opentelemetry(kernels: KernelFactory) -> None:
    kernel = kernels.start("untraced")
    kernel.ok("def f():\n    return 1\ndurable.run(f)")
    out = kernel.ok("import sys\nprint(sorted(m for m in sys.modules if m.startswith('opentelemetry')))").stream("stdout")
    assert out.strip() == "[]"
