"""``%durable``'s arguments: parsed by IPython's magic_arguments, wrong ones are a UsageError in the cell."""

from __future__ import annotations

import pytest
from harness import Kernel


def _usage_error(kernel: Kernel, line: str) -> str:
    """Run ``line``; it must fail as a UsageError without a traceback. Returns what the cell showed."""
    run = kernel.execute(line)
    assert run.content["status"] == "error", run.content
    assert run.content["ename"] == "UsageError", run.content
    shown = run.stream("stderr") + "".join("\n".join(m["content"]["traceback"]) for m in run.of_type("error"))
    assert "Traceback" not in shown and "File " not in shown, shown
    return shown


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("%durable bogus", ["%durable: argument SUBCOMMAND: invalid choice: 'bogus'", "'restore'", "'limit'"]),
        ("%durable restore", ["%durable restore: the following arguments are required: N", "usage: %durable restore N"]),
        ("%durable restore x", ["%durable restore: argument N: 'x' is not an execution count", "usage: %durable restore N"]),
        ("%durable restore 1 2", ["%durable restore: unrecognized arguments: 2"]),
        ("%durable executions extra", ["%durable executions: unrecognized arguments: extra", "usage: %durable executions"]),
        ("%durable limit lots", ["%durable limit: 'lots' is not a size such as 200MB"]),
        ("%durable limit 1 2", ["%durable limit: unrecognized arguments: 2", "usage: %durable limit [SIZE]"]),
    ],
)
def test_wrong_arguments_are_a_usage_error_and_the_kernel_keeps_answering(kernel: Kernel, line: str, says: list[str]) -> None:
    shown = _usage_error(kernel, line)
    for text in says:
        assert text in shown, shown
    assert kernel.ok("6 * 7").of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    assert "session: " in kernel.ok("%durable").stream("stdout")


def test_limit_and_exclude_show_and_change_the_settings(kernel: Kernel) -> None:
    assert kernel.ok("%durable limit").stream("stdout") == "checkpoint size limit per value: none\n"
    assert kernel.ok("%durable limit 200MB").stream("stdout") == "checkpoint size limit per value: 200.0 MB\n"
    assert kernel.ok("%durable limit 1.5kb").stream("stdout") == "checkpoint size limit per value: 1.5 KB\n"
    assert kernel.ok("%durable limit 0").stream("stdout") == "checkpoint size limit per value: none\n"
    assert kernel.ok("%durable exclude").stream("stdout") == "not checkpointed: (nothing)\n"
    assert kernel.ok("%durable exclude token secret").stream("stdout") == "not checkpointed: secret, token\n"
    assert kernel.ok("%durable exclude").stream("stdout") == "not checkpointed: secret, token\n"


def test_status_is_the_default_subcommand_and_help_lists_them(kernel: Kernel) -> None:
    kernel.ok("1")
    both = [kernel.ok(line) for line in ("%durable", "%durable status")]
    for run in both:
        assert run.stream("stdout").startswith(f"session: {kernel.session}\n"), run.stream("stdout")
        assert run.of_type("display_data")
    helped = kernel.ok("%durable?")
    pages = [m["content"]["data"]["text/plain"] for m in helped.iopub if m["header"]["msg_type"] == "execute_result"]
    pages += [p["data"]["text/plain"] for p in helped.content.get("payload", []) if "data" in p]
    text = "\n".join(pages)
    for sub in ("executions", "pending", "resume", "checkpoints", "restore N", "exclude NAME", "limit SIZE", "SUBCOMMAND"):
        assert sub in text, text


def test_outputs_shows_again_what_an_execution_stored(kernel: Kernel) -> None:
    first = kernel.ok("print('one')\n'first result'", cell_id="cell-a")
    kernel.ok("from IPython.display import HTML, display\ndisplay(HTML('<b>two</b>'))\nprint('two', flush=True)", cell_id="cell-b")
    kernel.ok("x = 3")  # no outputs: skipped by the default

    latest = kernel.ok("%durable outputs")
    assert latest.stream("stdout") == "two\n"
    assert [m["content"]["data"]["text/html"] for m in latest.of_type("display_data")] == ["<b>two</b>"]
    assert latest.of_type("execute_result") == []  # no second Out[N] in this cell

    by_count = kernel.ok(f"%durable outputs {first.content['execution_count']}")
    assert by_count.stream("stdout") == "one\n"
    assert [m["content"]["data"]["text/plain"] for m in by_count.of_type("display_data")] == ["'first result'"]
    assert kernel.ok("%durable outputs --cell cell-a").stream("stdout") == "one\n"
    assert "no stored outputs for cell nope" in kernel.ok("%durable outputs --cell nope").stream("stdout")
    assert "no stored outputs for execution 999" in kernel.ok("%durable outputs 999").stream("stdout")
