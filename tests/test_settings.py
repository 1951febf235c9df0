"""Settings: declared once, read once; a wrong value is named, never fatal, never leaks a secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernel.core.settings import DECLARED, SESSION_SETTINGS, Settings
from kernel.core.errors import ConfigurationError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_without_anything_set() -> None:
    s = Settings.load({})
    assert s == Settings()
    assert s.problems == {}
    assert all(source == "default" for source in s.sources.values())


def test_environment_wins_over_traitlet_and_traitlet_over_default() -> None:
    traits = {"input_timeout": 60.0, "notices_to": "log", "store": "/from/config"}
    s = Settings.load({"PYREPL3_INPUT_TIMEOUT": "5"}, traits)
    assert s.input_timeout == 5.0 and s.sources["input_timeout"] == "PYREPL3_INPUT_TIMEOUT"
    assert s.notices_to == "log" and s.sources["notices_to"] == "DurableKernel.notices_to"
    assert s.store == "/from/config" and s.source("store") == "DurableKernel.store"
    assert s.source("home") == "PYREPL3_HOME"


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("PYREPL3_AUTO_RESUME", "yes", True),
        ("PYREPL3_AUTO_RESUME", "0", False),
        ("PYREPL3_RESUME_LIMIT", "5", 5),
        ("PYREPL3_CHECKPOINT_EXCLUDE", " big, other ,,", ("big", "other")),
        ("PYREPL3_CHECKPOINT_MAX_BYTES", "200MB", 200 * 1024**2),
        ("PYREPL3_CHECKPOINT_MAX_BYTES", "1000", 1000),
        ("PYREPL3_HEADLESS_INPUT", "RAISE", "raise"),
        ("PYREPL3_LEASE_SECONDS", "2.5", 2.5),
    ],
)
def test_values_are_parsed_by_type(variable: str, raw: str, expected: object) -> None:
    name = next(n for n, d in DECLARED.items() if d.env == variable)
    s = Settings.load({variable: raw})
    assert getattr(s, name) == expected
    assert s.problems == {}


@pytest.mark.parametrize(
    ("variable", "raw", "says"),
    [
        ("PYREPL3_NOTICES", "loud", "PYREPL3_NOTICES='loud' is not one of cell, log"),
        ("PYREPL3_INPUT_TIMEOUT", "soon", "PYREPL3_INPUT_TIMEOUT='soon' is not a non-negative number of seconds"),
        ("PYREPL3_FSYNC", "maybe", "PYREPL3_FSYNC='maybe' is not a boolean"),
        ("PYREPL3_RESUME_LIMIT", "2.5", "PYREPL3_RESUME_LIMIT='2.5' is not a non-negative whole number"),
        ("PYREPL3_CHECKPOINT_MAX_BYTES", "lots", "PYREPL3_CHECKPOINT_MAX_BYTES='lots' is not a size"),
    ],
)
def test_a_wrong_value_is_named_with_what_is_allowed_and_keeps_the_default(variable: str, raw: str, says: str) -> None:
    name = next(n for n, d in DECLARED.items() if d.env == variable)
    s = Settings.load({variable: raw})
    assert getattr(s, name) == DECLARED[name].default
    assert s.problems[name].startswith(says)
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        s.check(name)
    s.check(*(n for n in DECLARED if n != name))  # the other settings are fine


def test_secrets_are_never_shown() -> None:
    s = Settings.load({"PYREPL3_KEY": "sekrit-key", "RESONATE_TOKEN": "tok-123"})
    assert s.token == "tok-123" and s.sources["token"] == "RESONATE_TOKEN"
    shown = repr(s) + repr(s.rows())
    assert "sekrit-key" not in shown and "tok-123" not in shown
    assert ("PYREPL3_KEY", "***") == s.rows()[[r[0] for r in s.rows()].index("PYREPL3_KEY")][:2]


def test_with_values_overrides_and_clears_the_problem() -> None:
    s = Settings.load({"PYREPL3_STORE": "  "}).with_values(store="postgresql://u@h/db")
    assert s.store == "postgresql://u@h/db" and s.sources["store"] == "argument"


def test_session_settings_are_declared() -> None:
    assert set(SESSION_SETTINGS) <= set(DECLARED)


def test_every_setting_is_in_the_readme_table() -> None:
    text = README.read_text()
    missing = [d.env for d in DECLARED.values() if f"`{d.env}`" not in text]
    assert missing == []
