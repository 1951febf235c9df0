"""Every PyREPL3 setting, declared once, and read once into one :class:`Settings`.

Each setting has an environment variable (``PYREPL3_*``), sometimes a
``DurableKernel`` traitlet (Jupyter config), a type, a default and a help
text. The kernel and the ``pyrepl3`` command build one ``Settings`` from the
environment and the traitlets' values at start; nothing else in the code reads
``PYREPL3_*`` variables, so ``pyrepl3 settings`` and the README table list
everything there is.

A wrong value never stops a kernel: the setting keeps its default and the
problem is recorded, naming the setting and what is allowed. The layer that
needs a setting decides what a problem means (:meth:`Settings.check`): the
durable session refuses to start (durability off, with the reason), the kernel
just says which default it used.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kernel.core.errors import ConfigurationError
from kernel.core.redaction import redact
from kernel.core.text import parse_size

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _text(raw: str) -> str:
    return raw.strip()


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or value != value:  # NaN
        raise ValueError("is not a non-negative number of seconds")
    return value


def _count(raw: str) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or value != int(value):
        raise ValueError("is not a non-negative whole number")
    return int(value)


def _bytes(raw: str) -> int:
    try:
        size = parse_size(raw) or 0
    except ValueError:
        raise ValueError("is not a size (for example 200MB, 1.5GB or 1000000; 0 = no limit)") from None
    if size < 0:
        raise ValueError("is not a size (for example 200MB, 1.5GB or 1000000; 0 = no limit)")
    return size


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _entry_point(raw: str) -> str:
    module, sep, name = raw.strip().partition(":")
    if not sep or not all(part.isidentifier() for part in (*module.split("."), *name.split("."))):
        raise ValueError("is not module:callable (for example mypkg.otel:setup)")
    return raw.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"is not one of {', '.join(allowed)}")
        return value

    return parse


@dataclass(frozen=True)
class Setting:
    """One setting: where it comes from, what it takes, what it does."""

    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    trait: str = ""
    secret: bool = False
    #: Older or foreign variables read when ``env`` is unset (``RESONATE_TOKEN``).
    fallbacks: tuple[str, ...] = ()


#: field name -> declaration; the order is the order of ``pyrepl3 settings`` and the README.
DECLARED: dict[str, Setting] = {
    "home": Setting(
        "PYREPL3_HOME", _text, "", "Root directory of the embedded store (store.sqlite3, blobs/, locks/).", trait="home"
    ),
    "store": Setting(
        "PYREPL3_STORE",
        _text,
        "",
        "The engine: empty or a directory (embedded SQLite), postgresql://... (resonate-pg), http(s)://... (a Resonate server).",
        trait="store",
    ),
    "blobs": Setting(
        "PYREPL3_BLOBS", _text, "", "With a Resonate server: a shared directory or a postgresql:// DSN for blobs, index and locks."
    ),
    "session": Setting("PYREPL3_SESSION", _text, "", "The session id (else JPY_SESSION_NAME, else the kernel id)."),
    "start_timeout": Setting(
        "PYREPL3_START_TIMEOUT", _seconds, 30.0, "Seconds to wait for the engine to start a cell before it runs without durability."
    ),
    "input_timeout": Setting(
        "PYREPL3_INPUT_TIMEOUT",
        _seconds,
        86400.0,
        "Seconds an input(), getpass() or approval waits for an answer (then PromptTimeoutError).",
        trait="input_timeout",
    ),
    "headless_input": Setting(
        "PYREPL3_HEADLESS_INPUT",
        _choice("wait", "raise"),
        "raise",
        "input() with a frontend that has no stdin: raise StdinNotImplementedError (as ipykernel), or wait for an out-of-band answer.",
        trait="headless_input",
    ),
    "auto_resume": Setting("PYREPL3_AUTO_RESUME", _flag, False, "Resume executions a dead kernel left unfinished at kernel start."),
    "resume_limit": Setting(
        "PYREPL3_RESUME_LIMIT", _count, 3, "How often an interrupted execution is resumed before it is rejected."
    ),
    "checkpoint_exclude": Setting(
        "PYREPL3_CHECKPOINT_EXCLUDE", _names, (), "Comma-separated names never checkpointed (also %durable exclude NAME)."
    ),
    "checkpoint_max_bytes": Setting(
        "PYREPL3_CHECKPOINT_MAX_BYTES", _bytes, 0, "Values larger than this (pickled) are skipped and reported; 0 = no limit."
    ),
    "keep_last": Setting(
        "PYREPL3_KEEP_LAST", _count, 20, "Garbage collection keeps at least this many of a session's newest checkpoints (and the newest always)."
    ),
    "keep_hours": Setting(
        "PYREPL3_KEEP_HOURS", _seconds, 24.0, "Garbage collection keeps every checkpoint of the last this many hours (also pinned ones: %durable keep N)."
    ),
    "gc_every": Setting(
        "PYREPL3_GC_EVERY", _count, 50, "A kernel collects garbage in the background after every this many checkpoints; 0 = only pyrepl3 gc."
    ),
    "output_blob_bytes": Setting(
        "PYREPL3_OUTPUT_BLOB_BYTES", _bytes, 1 << 20, "An output text larger than this is stored once, as a blob named by its digest; 0 = never."
    ),
    "gc_grace": Setting(
        "PYREPL3_GC_GRACE", _seconds, 3600.0, "Seconds a blob written or reused is never collected (a checkpoint in progress has no record yet)."
    ),
    "key": Setting(
        "PYREPL3_KEY", _text, "", "Key for the HMAC signatures on checkpoints (else a 0600 key file in the Jupyter data dir).", secret=True
    ),
    "fsync": Setting("PYREPL3_FSYNC", _flag, False, "fsync blobs and run SQLite with synchronous=FULL (survive power loss)."),
    "notices_to": Setting(
        "PYREPL3_NOTICES",
        _choice("cell", "log"),
        "cell",
        "Where PyREPL3's messages about a broken promise (durability off, a failed restore) go: also the next cell's stderr "
        "(cell) or only the kernel's log (log). Informational ones only ever go to the log and %durable.",
        trait="notices_to",
    ),
    "lock_wait": Setting("PYREPL3_LOCK_WAIT", _seconds, 3.0, "Seconds a starting kernel waits for its session's lock."),
    # The lease on a running cell (``Resonate(ttl=...)``). The SDK heartbeats every
    # ttl/2 from the runtime's own loop thread, which stays free while the cell runs
    # on the main thread, so a cell may run far longer than this. It bounds how long
    # a task of a kernel that vanished without a successor stays leased; a successor
    # on the same session gives such leases back at start.
    "lease_seconds": Setting(
        "PYREPL3_LEASE_SECONDS", _seconds, 15.0, "Lease on a running cell, renewed every half lease while it runs."
    ),
    "reconnect_seconds": Setting(
        "PYREPL3_RECONNECT_SECONDS", _seconds, 5.0, "Seconds between attempts to reach a lost engine."
    ),
    "engine_timeout": Setting(
        "PYREPL3_ENGINE_TIMEOUT", _seconds, 5.0, "Seconds to wait for a connection before the engine counts as unreachable."
    ),
    "token": Setting(
        "PYREPL3_TOKEN", _text, "", "Bearer token for a Resonate server.", secret=True, fallbacks=("RESONATE_TOKEN",)
    ),
    "otel_setup": Setting(
        "PYREPL3_OTEL_SETUP",
        _entry_point,
        "",
        "module:callable called once at kernel (and pyrepl3 worker) start to install OpenTelemetry providers and exporters.",
    ),
    "debug": Setting("PYREPL3_DEBUG", _flag, False, "Log PyREPL3's own modules at INFO instead of WARNING."),
}

#: What the durable session cannot start without a valid value for.
SESSION_SETTINGS = (
    "home",
    "store",
    "blobs",
    "start_timeout",
    "input_timeout",
    "auto_resume",
    "resume_limit",
    "checkpoint_exclude",
    "checkpoint_max_bytes",
    "fsync",
    "lock_wait",
    "lease_seconds",
    "engine_timeout",
)


@dataclass(frozen=True)
class Settings:
    """The values in force, and where each came from (environment, traitlet or default)."""

    home: str = ""
    store: str = ""
    blobs: str = ""
    session: str = ""
    start_timeout: float = 30.0
    input_timeout: float = 86400.0
    headless_input: str = "raise"
    auto_resume: bool = False
    resume_limit: int = 3
    checkpoint_exclude: tuple[str, ...] = ()
    checkpoint_max_bytes: int = 0
    keep_last: int = 20
    keep_hours: float = 24.0
    gc_every: int = 50
    gc_grace: float = 3600.0
    output_blob_bytes: int = 1 << 20
    key: str = field(default="", repr=False)
    fsync: bool = False
    notices_to: str = "cell"
    lock_wait: float = 3.0
    lease_seconds: float = 15.0
    reconnect_seconds: float = 5.0
    engine_timeout: float = 5.0
    token: str = field(default="", repr=False)
    otel_setup: str = ""
    debug: bool = False
    #: The Jupyter session name (the notebook's path under jupyter_server), a fallback session id.
    jupyter_session: str = ""
    #: field -> "PYREPL3_X" / "DurableKernel.x" / "default"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: field -> "PYREPL3_X='abc' is not ...": values that were given but could not be used.
    problems: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, traits: Mapping[str, Any] | None = None) -> Settings:
        """Read every setting: the environment wins over a traitlet, a traitlet over the default.

        ``env`` is the process environment unless given (tests, the child
        kernels of ``pyrepl3 run``). ``traits`` holds the values of ``DurableKernel``'s traitlets that the user
        configured (field name -> value). Never raises: see :attr:`problems`.
        """
        env = os.environ if env is None else env
        traits = traits or {}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        problems: dict[str, str] = {}
        for name, setting in DECLARED.items():
            raw, source = _given(env, setting)
            if raw is None and setting.trait and traits.get(name) not in (None, ""):
                value, source = traits[name], f"DurableKernel.{setting.trait}"
                raw = value if isinstance(value, str) else None
                if raw is None:
                    values[name], sources[name] = value, source
                    continue
            if raw is None:
                values[name], sources[name] = setting.default, "default"
                continue
            try:
                values[name], sources[name] = setting.parse(raw), source
            except ValueError as exc:
                shown = "***" if setting.secret else repr(redact(raw))
                problems[name] = f"{source}={shown} {exc}"
                values[name], sources[name] = setting.default, "default"
        values["jupyter_session"] = env.get("JPY_SESSION_NAME", "").strip()
        return cls(**values, sources=sources, problems=problems)

    def check(self, *names: str) -> None:
        """Raise :class:`ConfigurationError` for the first of ``names`` given a value it cannot use."""
        for name in names or tuple(DECLARED):
            if name in self.problems:
                raise ConfigurationError(self.problems[name])

    def source(self, name: str) -> str:
        """The setting a value came from, for error messages (``PYREPL3_STORE``, ``DurableKernel.store``)."""
        found = self.sources.get(name, "default")
        return DECLARED[name].env if found == "default" else found

    def with_values(self, **values: Any) -> Settings:
        """A copy with some values set by the program (the CLI's ``--store`` / ``--home``)."""
        sources = {**self.sources, **{k: "argument" for k in values}}
        problems = {k: v for k, v in self.problems.items() if k not in values}
        return replace(self, **values, sources=sources, problems=problems)

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(variable, value, source, default, help) per setting, secrets hidden: for ``pyrepl3 settings``."""
        out = []
        for name, setting in DECLARED.items():
            value = getattr(self, name)
            shown = ("***" if value else "") if setting.secret else redact(_show(value))
            env = setting.env + (f" / DurableKernel.{setting.trait}" if setting.trait else "")
            out.append((env, shown, self.sources.get(name, "default"), _show(setting.default), setting.help))
        return out


def _given(env: Mapping[str, str], setting: Setting) -> tuple[str | None, str]:
    for variable in (setting.env, *setting.fallbacks):
        raw = env.get(variable)
        if raw is not None and raw.strip() != "":
            return raw, variable
    return None, setting.env


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def names() -> list[str]:
    """Every field of :class:`Settings` that is a declared setting."""
    return [f.name for f in fields(Settings) if f.name in DECLARED]
