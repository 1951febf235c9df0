"""Integration tests: real pyrepl3 kernels, a real store, read back through the CLI."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import TIMEOUT, Kernel, KernelFactory, cli, executions, kernel_env, show, wait_for
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

#: Durable cells work the same on every engine: each kernel test here runs on both,
#: except those marked ``embedded_only`` (with the reason).
pytestmark = pytest.mark.engines("embedded", "postgres")


def plain(obj: Any) -> Any:
    """NotebookNodes and protocol dicts as plain JSON data, for comparison."""
    return json.loads(json.dumps(obj))


def exec_id(msg_id: str) -> str:
    return f"exec:{msg_id}"


# -- notebooks through nbclient ------------------------------------------------


def test_nbclient_notebook_cells_are_durable_promises(tmp_path: Path, home: Path) -> None:
    session = "nb-session"
    nb = new_notebook(
        cells=[
            new_markdown_cell("# A durable notebook"),
            new_code_cell("print('hello from a durable cell')"),
            new_code_cell("6 * 7"),
            new_code_cell("from IPython.display import HTML, display\ndisplay(HTML('<b>durable</b>'))"),
            new_code_cell("raise ValueError('boom')"),
        ],
        metadata={"kernelspec": {"name": "pyrepl3", "display_name": "PyREPL3", "language": "python"}},
    )
    msg_ids: dict[int, str] = {}

    def on_cell_executed(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        msg_ids[cell_index] = execute_reply["parent_header"]["msg_id"]

    client = NotebookClient(
        nb,
        kernel_name="pyrepl3",
        timeout=TIMEOUT,
        startup_timeout=TIMEOUT,
        on_cell_executed=on_cell_executed,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    with pytest.raises(CellExecutionError, match="boom"):
        client.execute(env=kernel_env(home, session))

    code_cells = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    assert sorted(msg_ids) == sorted(code_cells), "every code cell ran, the error cell last"
    nb_outputs = {i: plain(c.outputs) for i, c in code_cells.items()}
    assert nb_outputs[1] == [{"output_type": "stream", "name": "stdout", "text": "hello from a durable cell\n"}]
    assert nb_outputs[2][0]["data"]["text/plain"] == "42"
    assert nb_outputs[3][0]["data"]["text/html"] == "<b>durable</b>"
    assert nb_outputs[4][0]["output_type"] == "error"

    rows = executions(home, session)
    assert set(rows) == {exec_id(m) for m in msg_ids.values()}
    for i, cell in code_cells.items():
        eid = exec_id(msg_ids[i])
        row = rows[eid]
        assert row["session"] == session
        assert row["code"] == cell.source
        assert row["execution_count"] == cell.execution_count
        rec = show(home, eid)
        assert rec["id"] == eid and rec["kind"] == "exec" and rec["session"] == session
        if i == 4:
            assert row["state"] == rec["state"] == "rejected"
            assert row["ename"] == "ValueError"
            error = rec["error"]
            assert error["ename"] == "ValueError"
            assert error["evalue"] == "boom"
            assert error["execution_count"] == cell.execution_count
            assert error["traceback"] and any("ValueError" in line for line in error["traceback"])
            assert error["outputs"] == nb_outputs[i]
        else:
            assert row["state"] == rec["state"] == "resolved", rec
            assert rec["value"]["status"] == "ok"
            assert rec["value"]["execution_count"] == cell.execution_count
            assert rec["value"]["outputs"] == nb_outputs[i]
            assert rec["settled_at"] >= rec["created_at"]


# -- one msg_id, one run -------------------------------------------------------


def test_same_msg_id_twice_runs_once_and_replays_outputs(tmp_path: Path, kernel: Kernel) -> None:
    side_effect = tmp_path / "side-effect.txt"
    code = f"with open({str(side_effect)!r}, 'a') as f:\n    f.write('ran\\n')\nprint('side effect done')\n6 * 7"
    msg_id = f"dup-{uuid.uuid4().hex}"

    first = kernel.execute(code, msg_id=msg_id)
    second = kernel.execute(code, msg_id=msg_id)

    assert side_effect.read_text() == "ran\n", "the cell ran exactly once"
    assert first.content["status"] == second.content["status"] == "ok"
    assert first.content["execution_count"] == second.content["execution_count"]
    for run in (first, second):
        assert run.stream("stdout") == "side effect done\n"
        [result] = run.of_type("execute_result")
        assert result["content"]["data"]["text/plain"] == "42"
        assert result["content"]["execution_count"] == first.content["execution_count"]

    stored = show(kernel.home, exec_id(msg_id))
    assert stored["state"] == "resolved"
    assert [o["output_type"] for o in stored["value"]["outputs"]] == ["stream", "execute_result"]
    assert len(executions(kernel.home, kernel.session)) == 1

    # A new msg_id with the same code is a new execution.
    third = kernel.ok(code)
    assert side_effect.read_text() == "ran\nran\n"
    assert third.content["execution_count"] == first.content["execution_count"] + 1


def test_same_msg_id_twice_replays_a_stored_error(tmp_path: Path, kernel: Kernel) -> None:
    side_effect = tmp_path / "side-effect.txt"
    code = f"open({str(side_effect)!r}, 'a').write('x\\n')\nraise KeyError('gone')"
    msg_id = f"dup-err-{uuid.uuid4().hex}"

    first = kernel.execute(code, msg_id=msg_id)
    second = kernel.execute(code, msg_id=msg_id)

    assert side_effect.read_text() == "x\n"
    for run in (first, second):
        assert run.content["status"] == "error"
        assert run.content["ename"] == "KeyError"
        [error] = run.of_type("error")
        assert error["content"]["ename"] == "KeyError"
    assert first.content["execution_count"] == second.content["execution_count"]
    assert show(kernel.home, exec_id(msg_id))["error"]["ename"] == "KeyError"


# -- crashes -------------------------------------------------------------------


def test_kill_9_keeps_settled_promises_and_session_resumes(tmp_path: Path, kernels: KernelFactory, home: Path) -> None:
    session = "crash-session"
    side_effect = tmp_path / "side-effect.txt"
    k1 = kernels.start(session)
    first = k1.ok(f"open({str(side_effect)!r}, 'a').write('once\\n')\nprint('before the crash')")
    second = k1.ok("6 * 7")
    third = k1.execute("1 / 0")
    assert third.content["status"] == "error"
    # A cell still running when the kernel dies.
    running = k1.send_execute("import time\nprint('started', flush=True)\ntime.sleep(600)")
    wait_for(lambda: executions(home, session).get(exec_id(running), {}).get("state") == "pending",
             what="the running cell's promise to be stored as pending")

    k1.kill9()

    rows = executions(home, session)
    assert set(rows) >= {exec_id(r.msg_id) for r in (first, second, third)} | {exec_id(running)}
    assert rows[exec_id(first.msg_id)]["state"] == "resolved"
    assert rows[exec_id(second.msg_id)]["state"] == "resolved"
    assert rows[exec_id(third.msg_id)]["state"] == "rejected"
    assert rows[exec_id(third.msg_id)]["ename"] == "ZeroDivisionError"
    outputs = show(home, exec_id(first.msg_id))["value"]["outputs"]
    assert outputs == [{"output_type": "stream", "name": "stdout", "text": "before the crash\n"}]
    assert show(home, exec_id(second.msg_id))["value"]["outputs"][0]["data"]["text/plain"] == "42"
    error = show(home, exec_id(third.msg_id))["error"]
    assert error["ename"] == "ZeroDivisionError" and error["traceback"]
    before = {eid: show(home, eid) for eid in rows if eid != exec_id(running)}

    # The same session in a new kernel: it starts, runs code, keeps the history.
    k2 = kernels.start(session)
    after = k2.ok("print('after the crash')")
    assert after.stream("stdout") == "after the crash\n"
    assert "durability is off" not in after.stream("stderr")
    rows = executions(home, session)
    assert exec_id(after.msg_id) in rows and rows[exec_id(after.msg_id)]["state"] == "resolved"
    for eid, rec in before.items():
        assert show(home, eid) == rec, f"{eid} changed after the restart"
    assert {r["session"] for r in rows.values()} == {session}

    # The cell the crash interrupted is settled, not left pending forever.
    interrupted = wait_for(
        lambda: (r := show(home, exec_id(running)))["state"] != "pending" and r,
        what="the interrupted execution to be settled",
    )
    assert interrupted["state"] == "rejected"
    assert interrupted["error"]["ename"] == "KernelExitInterruption"

    # Re-sending a msg_id that ran before the crash replays it; it does not run again.
    replay = k2.execute(f"open({str(side_effect)!r}, 'a').write('once\\n')\nprint('before the crash')", msg_id=first.msg_id)
    assert replay.content["status"] == "ok"
    assert replay.content["execution_count"] == first.content["execution_count"]
    assert replay.stream("stdout") == "before the crash\n"
    assert side_effect.read_text() == "once\n"


# -- one live kernel per session ----------------------------------------------


@pytest.mark.embedded_only("flock message; Postgres: test_engines")
def test_second_kernel_on_a_live_session_runs_without_durability(kernels: KernelFactory, home: Path) -> None:
    session = "shared-session"
    a = kernels.start(session)
    first = a.ok("print('a')")
    b = kernels.start(session)

    run = b.ok("print('b')")
    assert run.stream("stdout") == "b\n"
    notice = run.stream("stderr")
    assert f"PyREPL3: durability is off: session {session!r} is in use by a live kernel" in notice
    assert f"pid {a.pid}" in notice
    assert "PYREPL3_SESSION" in notice, "the message says how to get out of it"
    again = b.ok("1 + 1")
    assert "durability is off" not in again.stream("stderr"), "the notice is printed once"

    a.ok("print('a again')")
    rows = executions(home, session)
    assert exec_id(first.msg_id) in rows
    assert exec_id(run.msg_id) not in rows and exec_id(again.msg_id) not in rows
    assert all(r["state"] == "resolved" for r in rows.values())


# -- a corrupt store -----------------------------------------------------------


@pytest.mark.embedded_only("writes garbage into store.sqlite3")
@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"this is not a database\n" * 200 + bytes(range(256)), id="not-sqlite"),
        pytest.param(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 1024, id="bad-sqlite-header"),
    ],
)
def test_corrupt_store_is_reported_and_left_untouched(garbage: bytes, kernels: KernelFactory, home: Path) -> None:
    home.mkdir(parents=True)
    store = home / "store.sqlite3"
    store.write_bytes(garbage)
    k = kernels.start("corrupt-session")

    run = k.ok("print(6 * 7)")
    assert run.stream("stdout") == "42\n"
    notice = run.stream("stderr")
    assert "PyREPL3: durability is off" in notice
    assert re.search(r"unreadable|corrupt", notice), notice
    assert str(store) in notice
    assert k.ok("21 * 2").of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    magic = k.ok("%durable")
    assert "durability is off" in magic.stream("stdout")

    assert store.read_bytes() == garbage, "the corrupt store was modified"

    proc = cli(home, "executions", "--json", check=False)
    assert proc.returncode != 0
    assert str(store) in proc.stderr
    assert store.read_bytes() == garbage


# -- session identity ----------------------------------------------------------


def _sessions_of(home: Path) -> set[str]:
    return {r["session"] for r in executions(home).values()}


@pytest.mark.embedded_only("session resolution does not depend on the engine")
def test_pyrepl3_session_wins_over_jpy_session_name(kernels: KernelFactory, home: Path) -> None:
    env = kernel_env(home, "explicit-session", JPY_SESSION_NAME="/notebooks/analysis.ipynb")
    k = kernels.start(env=env)
    k.ok("1")
    assert _sessions_of(home) == {"explicit-session"}


@pytest.mark.embedded_only("session resolution does not depend on the engine")
def test_jpy_session_name_wins_over_kernel_id(kernels: KernelFactory, home: Path) -> None:
    env = kernel_env(home, None, JPY_SESSION_NAME="/notebooks/analysis.ipynb")
    k = kernels.start(env=env, multi=True)
    k.ok("1")
    assert _sessions_of(home) == {"/notebooks/analysis.ipynb"}
    assert k.km.kernel_id not in _sessions_of(home)


@pytest.mark.embedded_only("session resolution does not depend on the engine")
@pytest.mark.parametrize("multi", [True, False], ids=["multikernelmanager", "kernelmanager"])
def test_kernel_id_is_the_session_and_restart_keeps_it(multi: bool, kernels: KernelFactory, home: Path) -> None:
    k = kernels.start(session=None, multi=multi)
    # jupyter_server names connection files kernel-<kernel id>.json; a bare
    # KernelManager uses a random file name, whose stem is then the session.
    expected = k.km.kernel_id if multi else Path(k.km.connection_file).stem
    assert expected
    before = k.ok("print('before restart')")
    old_pid = k.pid

    k.km.restart_kernel()
    k.kc.wait_for_ready(timeout=TIMEOUT)
    assert k.pid != old_pid
    after = k.ok("print('after restart')")
    assert "durability is off" not in after.stream("stderr")

    rows = executions(home)
    assert rows[exec_id(before.msg_id)]["session"] == expected
    assert rows[exec_id(after.msg_id)]["session"] == expected
    assert _sessions_of(home) == {expected}
    sessions = json.loads(cli(home, "sessions", "--json").stdout)
    assert [(s["session"], s["executions"]) for s in sessions] == [(expected, 2)]


@pytest.mark.embedded_only("PYREPL3_HOME is the embedded store's location")
def test_home_traitlet_and_pyrepl3_home_precedence(tmp_path: Path, kernels: KernelFactory) -> None:
    configured, from_env = tmp_path / "configured-home", tmp_path / "env-home"
    k = kernels.start(env=kernel_env(None, "traitlet"), extra_arguments=[f"--DurableKernel.home={configured}"])
    run = k.ok("1")
    assert exec_id(run.msg_id) in executions(configured, "traitlet")

    k = kernels.start(env=kernel_env(from_env, "env-wins"), extra_arguments=[f"--DurableKernel.home={configured}"])
    run = k.ok("2")
    assert exec_id(run.msg_id) in executions(from_env, "env-wins")
    assert "env-wins" not in {r["session"] for r in executions(configured).values()}


# -- %durable ------------------------------------------------------------------


@pytest.mark.embedded_only("shows store.sqlite3; Postgres: test_engines")
def test_durable_magic_shows_session_store_counts_and_table(kernel: Kernel, home: Path) -> None:
    ran = [kernel.ok("print('one')"), kernel.ok("2 + 2"), kernel.execute("raise RuntimeError('nope')")]
    run = kernel.ok("%durable")

    text = run.stream("stdout")
    assert f"session: {kernel.session}" in text
    assert str(home / "store.sqlite3") in text
    # The %durable cell is itself an execution, still pending while it runs.
    assert "executions: 4 (1 pending, 1 rejected, 2 resolved)" in text, text
    [shown] = run.of_type("display_data")
    data = shown["content"]["data"]
    table = data["text/plain"]
    assert "state" in table and "promise" in table
    html = data["text/html"]
    assert "<table" in html and "</table>" in html
    for r in ran:
        assert exec_id(r.msg_id) in table
        assert exec_id(r.msg_id) in html
    assert "rejected (RuntimeError)" in table

    listing = kernel.ok("%durable executions")
    [shown] = listing.of_type("display_data")
    assert exec_id(run.msg_id) in shown["content"]["data"]["text/plain"]


# -- more than one kernel on a store; interrupts ---------------------------------


def test_two_sessions_share_one_store(kernels: KernelFactory, home: Path) -> None:
    a, b = kernels.start("session-a"), kernels.start("session-b")
    ran = {"session-a": [], "session-b": []}
    for n in range(5):
        ran["session-a"].append(a.ok(f"print('a{n}')").msg_id)
        ran["session-b"].append(b.ok(f"print('b{n}')").msg_id)
    for session, msg_ids in ran.items():
        rows = executions(home, session)
        assert list(rows) == [exec_id(m) for m in msg_ids], "in execution order, only this session's"
        assert {r["state"] for r in rows.values()} == {"resolved"}
    sessions = {s["session"]: s["executions"] for s in json.loads(cli(home, "sessions", "--json").stdout)}
    assert sessions == {"session-a": 5, "session-b": 5}


def test_interrupted_cell_is_rejected_with_keyboard_interrupt(kernel: Kernel, home: Path) -> None:
    msg_id = kernel.send_execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    wait_for(lambda: executions(home, kernel.session).get(exec_id(msg_id), {}).get("state") == "pending",
             what="the cell to start")
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.content["status"] == "error" and run.content["ename"] == "KeyboardInterrupt"
    rec = show(home, exec_id(msg_id))
    assert rec["state"] == "rejected"
    assert rec["error"]["ename"] == "KeyboardInterrupt"
    assert rec["error"]["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": "sleeping\n"}
    assert kernel.ok("print('still alive')").stream("stdout") == "still alive\n"


def test_replay_returns_the_stored_user_expressions_and_payload(kernel: Kernel) -> None:
    msg_id = f"ue-{uuid.uuid4().hex}"
    first = kernel.execute("a = 5", msg_id=msg_id, user_expressions={"double": "a * 2"})
    kernel.ok("a = 100")
    again = kernel.execute("a = 5", msg_id=msg_id, user_expressions={"double": "a * 2"})
    assert first.content["user_expressions"]["double"]["data"]["text/plain"] == "10"
    assert again.content["user_expressions"] == first.content["user_expressions"]

    msg_id = f"pager-{uuid.uuid4().hex}"
    first = kernel.execute("zip?", msg_id=msg_id)
    again = kernel.execute("zip?", msg_id=msg_id)
    assert first.content["payload"] and first.content["payload"][0]["source"] == "page"
    assert again.content["payload"] == first.content["payload"]


def test_silent_requests_are_not_durable(kernel: Kernel, home: Path) -> None:
    silent = kernel.execute("b = 1", silent=True)
    assert silent.content["status"] == "ok"
    assert exec_id(silent.msg_id) not in executions(home, kernel.session)


def test_execution_count_without_history_matches_the_reply(kernel: Kernel, home: Path) -> None:
    kernel.ok("1")
    quiet = kernel.execute("c = 1", store_history=False)
    after = kernel.ok("d = 1")
    rows = executions(home, kernel.session)
    assert rows[exec_id(quiet.msg_id)]["execution_count"] == quiet.content["execution_count"]
    assert rows[exec_id(after.msg_id)]["execution_count"] == after.content["execution_count"]


def test_wrong_settings_are_named_and_not_fatal(kernels: KernelFactory, home: Path) -> None:
    env = kernel_env(home, "bad-settings", PYREPL3_NOTICES="loud", PYREPL3_INPUT_TIMEOUT="soon")
    kernel = kernels.start(env=env)
    run = kernel.ok("print(6 * 7)")
    assert run.stream("stdout") == "42\n"
    message = run.stream("stderr")
    assert "PYREPL3_NOTICES='loud' is not one of cell, log" in message
    assert "durability is off: PYREPL3_INPUT_TIMEOUT='soon'" in message
