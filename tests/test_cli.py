"""What ``pyrepl3`` prints: JSON for scripts, aligned text for grep, a styled table on a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import nbformat
import pexpect
import pytest
from harness import PYREPL3_CLI, SCRUBBED, Kernel, KernelFactory, Store, cli, kernel_env, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Cell code that is also rich markup and an emoji code: it must print as typed.
MARKUP = "print('[bold red]not markup[/bold red] :smile:')"


def exec_id(msg_id: str) -> str:
    return f"exec:{msg_id}"


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _assert_plain(text: str) -> None:
    """Not a terminal: no escapes, no trailing blanks, no box drawing."""
    assert not ANSI.search(text), text
    assert all(line == line.rstrip() for line in _lines(text)), text
    assert not re.search("[\u2500-\u257f]", text), text


def _assert_indented_json(stdout: str) -> None:
    """Exactly ``json.dumps(value, indent=2)`` and a newline: the shape scripts parse."""
    assert stdout == json.dumps(json.loads(stdout), indent=2) + "\n"


def _row(text: str, needle: str) -> str:
    [line] = [line for line in _lines(text) if needle in line]
    return line


@pytest.mark.engines("embedded", "postgres")
def test_executions_sessions_and_show_as_text_and_json(kernel: Kernel, home: Path, store: Store) -> None:
    ok = kernel.ok(MARKUP)
    bad = kernel.execute("raise KeyError('k')")
    session = store.session(kernel.session)

    text = cli(home, "executions", "--session", session).stdout
    _assert_plain(text)
    assert re.fullmatch(r"#\s+state\s+started\s+promise\s+session\s+code", _lines(text)[0]), text
    row = _row(text, exec_id(ok.msg_id))
    assert re.match(rf"1\s+resolved\s+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\s+{exec_id(ok.msg_id)}\s+{re.escape(session)}\s", row), row
    assert row.endswith(MARKUP), row
    assert "rejected (KeyError)" in _row(text, exec_id(bad.msg_id))

    as_json = cli(home, "executions", "--session", session, "--json").stdout
    _assert_indented_json(as_json)
    rows = json.loads(as_json)
    assert [r["id"] for r in rows] == [exec_id(ok.msg_id), exec_id(bad.msg_id)]
    assert {"id", "session", "state", "execution_count", "code", "ename", "created_at"} <= set(rows[0])

    text = cli(home, "sessions").stdout
    _assert_plain(text)
    assert re.fullmatch(r"session\s+executions\s+pending\s+last activity", _lines(text)[0]), text
    assert re.match(rf"{re.escape(session)}\s+2\s+0\s+\d{{4}}-", _row(text, session))
    _assert_indented_json(cli(home, "sessions", "--json").stdout)

    text = cli(home, "show", exec_id(bad.msg_id)).stdout
    _assert_plain(text)
    assert _lines(text)[:4] == [f"id:       {exec_id(bad.msg_id)}", "kind:     exec", f"session:  {session}", "state:    rejected"]
    assert "error:    KeyError: 'k'" in text
    as_json = cli(home, "show", exec_id(bad.msg_id), "--json").stdout
    _assert_indented_json(as_json)
    assert json.loads(as_json)["error"]["ename"] == "KeyError"

    missing = cli(home, "show", "exec:nope", check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "pyrepl3: no promise 'exec:nope' in this store\n"


@pytest.mark.engines("embedded", "postgres")
def test_pending_as_text_and_json(kernels: KernelFactory, home: Path, store: Store) -> None:
    kernel = kernels.start(env=kernel_env(home, "test-session", PYREPL3_HEADLESS_INPUT="wait"))
    assert cli(home, "pending", "--session", store.session(kernel.session)).stdout == "no prompts are waiting\n"
    asking = kernel.send_execute("input('[red]your name?[/red] ')", allow_stdin=False)
    items = wait_for(lambda: json.loads(cli(home, "pending", "--session", store.session(kernel.session), "--json").stdout),
                     what="the prompt")
    text = cli(home, "pending", "--session", store.session(kernel.session)).stdout
    _assert_plain(text)
    assert re.fullmatch(r"promise\s+kind\s+session\s+asked\s+prompt", _lines(text)[0]), text
    row = _row(text, items[0]["id"])
    assert re.search(rf"\s+input\s+{re.escape(store.session(kernel.session))}\s+", row), row
    assert row.endswith("[red]your name?[/red]"), row
    _assert_indented_json(cli(home, "pending", "--json").stdout)
    assert cli(home, "answer", items[0]["id"], "Ada").stdout == f"{items[0]['id']}: resolved\n"
    kernel.collect(asking)


def test_empty_store_says_so(home: Path) -> None:
    assert cli(home, "sessions").stdout == "no sessions in this store yet\n"
    assert cli(home, "executions").stdout == "no executions\n"
    assert cli(home, "executions", "--session", "s").stdout == "no executions in session 's'\n"
    assert cli(home, "sessions", "--json").stdout == "[]\n"
    assert cli(home, "executions", "--json").stdout == "[]\n"


def _spawn(home: Path, *args: str, columns: int = 80) -> str:
    """``pyrepl3 ARGS`` on a terminal ``columns`` wide; everything it drew."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED and k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    child = pexpect.spawn(str(PYREPL3_CLI), ["--home", str(home), *args], env=env, dimensions=(40, columns),
                          encoding="utf-8", timeout=180)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before


def test_on_a_terminal_tables_are_styled_and_ids_are_never_cut(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(session="a-session-with-a-rather-long-name-to-push-the-table-wide")
    runs = [kernel.ok(f"x{n} = {n}  # " + "a long comment " * 6) for n in range(3)]
    drawn = _spawn(home, "executions", columns=80)
    assert ANSI.search(drawn), "styled on a terminal"
    shown = ANSI.sub("", drawn)
    assert "\u2500" in shown, "a header rule"
    for run in runs:
        assert exec_id(run.msg_id) in shown, shown
    assert shown.count(kernel.session) == len(runs), shown
    assert "…" in shown, "the code column gave way"


def test_run_on_a_terminal_draws_a_progress_bar(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in ("a = 1", "b = a + 1", "print(b)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    drawn = ANSI.sub("", _spawn(tmp_path / "home", "run", str(path), columns=100))
    assert "3/3 cells" in drawn and "cell 3: ok" in drawn, drawn
    assert "\u2501" in drawn, "rich's bar"
    assert f"pyrepl3 run: wrote {path}" in drawn
    assert nbformat.read(path, as_version=4).cells[2].outputs[0]["text"] == "2\n"


def test_settings_lists_every_setting_with_its_source_and_hides_secrets(tmp_path: Path) -> None:
    from kernel.core.settings import DECLARED

    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env |= {"PYREPL3_KEY": "sekrit-key", "PYREPL3_LEASE_SECONDS": "2", "PYREPL3_FSYNC": "maybe"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(PYREPL3_CLI), "--store", "postgresql://alice:pw-123@db/x", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    rows = {r["setting"].split(" ")[0]: r for r in json.loads(run("settings", "--json").stdout)}
    assert set(rows) == {d.env for d in DECLARED.values()}
    assert rows["PYREPL3_STORE"]["value"] == "postgresql://alice:***@db/x" and rows["PYREPL3_STORE"]["source"] == "argument"
    assert rows["PYREPL3_LEASE_SECONDS"]["value"] == "2" and rows["PYREPL3_LEASE_SECONDS"]["source"] == "PYREPL3_LEASE_SECONDS"
    assert rows["PYREPL3_KEY"]["value"] == "***"
    assert rows["PYREPL3_FSYNC"]["source"] == "default" and rows["PYREPL3_FSYNC"]["help"]
    text = run("settings")
    assert text.returncode == 0
    assert "sekrit-key" not in text.stdout + text.stderr and "pw-123" not in text.stdout + text.stderr
    assert "PYREPL3_FSYNC='maybe' is not a boolean" in text.stderr
    _assert_plain(text.stdout)
