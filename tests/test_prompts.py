"""input(), getpass() and approvals as durable promises (real kernels, real store)."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import nbformat
import pytest
from harness import TIMEOUT, KernelFactory, cli, cli_json, kernel_env, show, wait_for
from nbclient import NotebookClient

#: Prompts work the same on every engine: each kernel test here runs on both.
pytestmark = pytest.mark.engines("embedded", "postgres")


def _answer_stdin(kernel, answers: list[str]) -> list[dict]:
    """Answer each input_request in turn; return the requests seen."""
    seen = []
    for value in answers:
        msg = kernel.kc.get_stdin_msg(timeout=TIMEOUT)
        assert msg["msg_type"] == "input_request"
        seen.append(msg["content"])
        kernel.kc.input(value)
    return seen


def _pending(home: Path) -> list[dict]:
    return cli_json(home, "pending")


def test_stdin_round_trip_two_inputs_and_a_getpass(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start()
    code = (
        "import getpass\n"
        "a = input('first? ')\n"
        "pw = getpass.getpass('password? ')\n"
        "b = input('second? ')\n"
        "print(a, len(pw), b)"
    )
    msg_id = kernel.send_execute(code, allow_stdin=True)
    requests = _answer_stdin(kernel, ["alpha", "hunter2-secret", "beta"])
    run = kernel.collect(msg_id)
    assert run.content["status"] == "ok"
    assert [r["prompt"] for r in requests] == ["first? ", "password? ", "second? "]
    assert [r["password"] for r in requests] == [False, True, False]
    assert run.stream("stdout") == "alpha 14 beta\n"

    first, pw, second = (show(home, f"exec:{msg_id}:input:{n}") for n in (1, 2, 3))
    assert (first["state"], first["value"]["value"]) == ("resolved", "alpha")
    assert (second["state"], second["value"]["value"]) == ("resolved", "beta")
    assert pw["state"] == "resolved" and pw["value"]["answered"] is True
    assert "value" not in pw["value"]
    # The secret is nowhere in the store's files (database, WAL).
    for f in home.rglob("*"):
        if f.is_file():
            assert b"hunter2-secret" not in f.read_bytes(), f


def test_out_of_band_answer_wins_and_late_reply_is_ignored(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start()
    msg_id = kernel.send_execute("x = input('name? ')\nprint('got', x)", allow_stdin=True)
    request = kernel.kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["content"]["prompt"] == "name? "
    pending = wait_for(lambda: _pending(home), what="a pending prompt")
    assert [p["id"] for p in pending] == [f"exec:{msg_id}:input:1"]
    assert pending[0]["prompt"] == "name? "
    # A separate process (the CLI) answers while the frontend is still asking.
    answered = cli(home, "answer", pending[0]["id"], "from-outside")
    assert "resolved" in answered.stdout
    run = kernel.collect(msg_id)
    assert run.content["status"] == "ok"
    assert run.stream("stdout") == "got from-outside\n"
    kernel.kc.input("too-late")  # the frontend's answer arrives after the fact
    after = kernel.ok("print(x)")
    assert after.stream("stdout") == "from-outside\n"
    assert show(home, f"exec:{msg_id}:input:1")["value"]["value"] == "from-outside"
    assert _pending(home) == []


def test_headless_nbclient_input_answered_out_of_band(home: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("answer = input('What is the answer? ')"),
        nbformat.v4.new_code_cell("print('answer is', answer)"),
    ]
    client = NotebookClient(
        nb, kernel_name="pyrepl3", timeout=60, startup_timeout=60,
        resources={"metadata": {"path": str(home.parent)}},
    )
    env = kernel_env(home, "headless-session", PYREPL3_HEADLESS_INPUT="wait")
    errors: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            client.execute(env=env)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.put(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    pending = wait_for(lambda: _pending(home), timeout=60, what="the headless prompt")
    assert pending[0]["prompt"] == "What is the answer? "
    cli(home, "answer", pending[0]["id"], "42")
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert errors.empty(), errors.get()
    first, second = nb.cells
    hint = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
    assert f"answer {pending[0]['id']} VALUE" in hint  # the exact command is logged once
    assert hint.count("is waiting for an answer") == 1
    assert second.outputs[0]["text"] == "answer is 42\n"


def test_headless_input_raises_by_default_as_ipykernel_does(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(env=kernel_env(home, "s"))
    run = kernel.execute("input('x? ')")
    assert run.content["ename"] == "StdinNotImplementedError"
    assert _pending(home) == [], "no prompt promise waits for an answer"
    assert kernel.ok("1 + 1").content["status"] == "ok"


@pytest.mark.parametrize("how", ["environment", "traitlet"])
def test_headless_wait_setting_waits_for_an_out_of_band_answer(kernels: KernelFactory, home: Path, how: str) -> None:
    if how == "environment":
        kernel = kernels.start(env=kernel_env(home, "s", PYREPL3_HEADLESS_INPUT="wait"))
    else:
        kernel = kernels.start(env=kernel_env(home, "s"), extra_arguments=["--DurableKernel.headless_input=wait"])
    msg_id = kernel.send_execute("x = input('x? ')\nprint('got', x)", allow_stdin=False)
    pending = wait_for(lambda: _pending(home), what="the prompt promise")
    assert pending[0]["id"] == f"exec:{msg_id}:input:1"
    cli(home, "answer", pending[0]["id"], "out of band")
    assert kernel.collect(msg_id).stream("stdout") == "got out of band\n"


def test_timeout_gives_a_clear_error(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(env=kernel_env(home, "s", PYREPL3_INPUT_TIMEOUT="1", PYREPL3_HEADLESS_INPUT="wait"))
    run = kernel.execute("input('never answered? ')")
    assert run.content["status"] == "error"
    assert run.content["ename"] == "PromptTimeoutError"
    assert f"exec:{run.msg_id}:input:1" in run.content["evalue"]
    assert "PYREPL3_INPUT_TIMEOUT" in run.content["evalue"]
    assert show(home, f"exec:{run.msg_id}:input:1")["state"] == "rejected_timedout"
    kernel.ok("from kernel.durable.prompts import PromptTimeoutError\nassert issubclass(PromptTimeoutError, TimeoutError)")


@pytest.mark.parametrize("allow_stdin", [True, False], ids=["stdin", "out-of-band"])
def test_interrupt_while_waiting(kernels: KernelFactory, home: Path, allow_stdin: bool) -> None:
    kernel = kernels.start(env=kernel_env(home, "test-session", PYREPL3_HEADLESS_INPUT="wait"))
    msg_id = kernel.send_execute("x = input('wait? ')", allow_stdin=allow_stdin)
    if allow_stdin:
        kernel.kc.get_stdin_msg(timeout=TIMEOUT)
    wait_for(lambda: _pending(home), what="the prompt promise")
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.content["ename"] == "KeyboardInterrupt"
    assert show(home, f"exec:{msg_id}:input:1")["state"] == "rejected_canceled"
    assert kernel.ok("1 + 1").content["status"] == "ok"


def test_answer_survives_kill_9(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(session="crashy")
    msg_id = kernel.send_execute("a = input('one? ')\nb = input('two? ')", allow_stdin=True)
    _answer_stdin(kernel, ["first-answer"])
    kernel.kc.get_stdin_msg(timeout=TIMEOUT)  # the second prompt is out; nobody answers
    wait_for(lambda: show(home, f"exec:{msg_id}:input:2")["state"] == "pending", what="second prompt")
    kernel.kill9()
    fresh = kernels.start(session="crashy")
    fresh.ok("pass")
    first = show(home, f"exec:{msg_id}:input:1")
    assert (first["state"], first["value"]["value"]) == ("resolved", "first-answer")
    # The interrupted execution is settled by the new kernel, not left pending.
    wait_for(lambda: show(home, f"exec:{msg_id}")["state"] == "rejected", what="interrupted execution rejected")


def test_approvals_over_stdin_and_out_of_band(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start()
    msg_id = kernel.send_execute("d = durable.approve('Ship it?', details={'rows': 3})\nprint(d.approved, d.reason)", allow_stdin=True)
    request = kernel.kc.get_stdin_msg(timeout=TIMEOUT)
    assert "Ship it?" in request["content"]["prompt"] and "rows" in request["content"]["prompt"]
    kernel.kc.input("y looks fine")
    run = kernel.collect(msg_id)
    assert run.stream("stdout") == "True looks fine\n"

    msg_id = kernel.send_execute("durable.approve('Drop the table?')", allow_stdin=False)
    pending = wait_for(lambda: _pending(home), what="approval request")
    assert pending[0]["kind"] == "approval"
    cli(home, "deny", pending[0]["id"], "--reason", "not on a Friday")
    run = kernel.collect(msg_id)
    assert run.content["ename"] == "ApprovalDenied"
    assert "not on a Friday" in run.content["evalue"]


def test_replayed_execution_does_not_ask_again(tmp_path: Path) -> None:
    """The broker over a real store: a second run of the same execution id gets
    the stored answers, without sending any input request."""
    from kernel.durable.prompts import PromptBroker
    from kernel.durable.dispatcher import CellDispatcher
    from kernel.durable.runtime import DurableRuntime
    from kernel.store.embedded.store import EmbeddedStore

    class RecordingChannel:
        def __init__(self, answers: list[str]) -> None:
            self.answers, self.requests = list(answers), []

        def send_request(self, prompt: str, password: bool) -> None:
            self.requests.append(prompt)

        def poll_reply(self, timeout: float) -> str | None:
            return self.answers.pop(0) if self.answers else None

    store = EmbeddedStore(tmp_path / "store.sqlite3", "s").open()
    runtime = DurableRuntime(store, session="s", dispatcher=CellDispatcher()).start()
    try:
        broker = PromptBroker(runtime, timeout=5)
        first = RecordingChannel(["one", "two"])
        broker.begin("exec:replayed")
        assert [broker.ask("a?", channel=first), broker.ask("b?", channel=first)] == ["one", "two"]
        again = RecordingChannel([])
        broker.begin("exec:replayed")
        assert [broker.ask("a?", channel=again), broker.ask("b?", channel=again)] == ["one", "two"]
        assert first.requests == ["a?", "b?"] and again.requests == []
    finally:
        runtime.stop()
        store.close()
