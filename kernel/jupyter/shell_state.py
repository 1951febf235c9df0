"""The IPython side of the session state (:mod:`kernel.jupyter.session_state`):
loaded extensions, autoreload's mode and ``%aimport`` lists, ``%config``
values, and matplotlib's backend with IPython's integration. Each is read as
plain JSON data and applied again the way its magic would.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kernel.jupyter.secret_names import looks_secret

INLINE_BACKENDS = ("inline", "module://matplotlib_inline.backend_inline")


# -- IPython extensions and autoreload ---------------------------------------------


def load_extension(shell: Any, name: str) -> None:
    if name in shell.extension_manager.loaded:
        return
    if shell.extension_manager.load_extension(name) == "no load function":
        raise ImportError(f"{name} has no load_ipython_extension()")


def _autoreload_magics(shell: Any) -> Any:
    return shell.magics_manager.registry.get("AutoreloadMagics")


def autoreload_of(shell: Any) -> dict[str, Any] | None:
    """``%autoreload``'s mode (as its argument spells it) and the ``%aimport`` lists."""
    magics = _autoreload_magics(shell)
    if magics is None:
        return None
    r = magics._reloader
    mode = "off" if not r.enabled else "explicit" if not r.check_all else "complete" if r.autoload_obj else "all"
    deduper = getattr(r, "deduper_reloader", None)
    return {
        "mode": mode,
        "full": deduper is not None and not deduper.enabled,
        "hide_errors": bool(getattr(r, "hide_errors", False)),
        "aimport": sorted(r.modules),
        "skip": sorted(r.skip_modules),
    }


def autoreload_items(shell: Any, autoreload: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], None]]]:
    flags = (" --full" if autoreload.get("full") else "") + (" --hide-errors" if autoreload.get("hide_errors") else "")
    line = f"{autoreload['mode']}{flags}"

    def mode() -> None:
        if _autoreload_magics(shell) is None:
            raise RuntimeError("the autoreload extension is not loaded")
        shell.run_line_magic("autoreload", line)

    yield f"%autoreload {line}", mode
    for module in autoreload.get("aimport") or []:
        yield f"%aimport {module}", lambda m=module: shell.run_line_magic("aimport", m)
    for module in autoreload.get("skip") or []:
        yield f"%aimport -{module}", lambda m=module: shell.run_line_magic("aimport", f"-{m}")


# -- %config -------------------------------------------------------------------

_UNSAVED = object()


def _plain(value: Any) -> Any:
    """``value`` as JSON data (sets and tuples become lists, which traitlets casts
    back), or ``_UNSAVED`` when it is something else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _UNSAVED
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        if any(v is _UNSAVED for v in items):
            return _UNSAVED
        if isinstance(value, (set, frozenset)):
            try:
                items.sort()
            except TypeError:
                return _UNSAVED
        return items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        plain = {k: _plain(v) for k, v in value.items()}
        return _UNSAVED if any(v is _UNSAVED for v in plain.values()) else plain
    return _UNSAVED


def config_values(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The shell's config (``%config`` merges into it) as JSON data: section -> trait -> value."""
    values: dict[str, dict[str, Any]] = {}
    for section, traits in config.items():
        if not section[:1].isupper() or not isinstance(traits, Mapping):
            continue
        plain = {}
        for trait, value in traits.items():
            if isinstance(value, Mapping) and trait[:1].isupper():
                continue  # a nested section (Class.Other.trait), not a value
            converted = _plain(value)
            if converted is not _UNSAVED and not looks_secret(trait):
                plain[trait] = converted
        if plain:
            values[section] = plain
    return values


def config_changes(start: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]] | None:
    missing = object()
    changes = {}
    for section, traits in now.items():
        before = start.get(section, {})
        changed = {t: v for t, v in traits.items() if before.get(t, missing) != v}
        if changed:
            changes[section] = changed
    return changes or None


def set_config(shell: Any, section: str, trait: str, value: Any) -> None:
    """What ``%config Section.trait = value`` does: update every configurable of the shell."""
    from traitlets.config import Config

    cfg = Config({section: {trait: value}})
    for configurable in list(shell.configurables):
        configurable.update_config(cfg)


# -- matplotlib ----------------------------------------------------------------


def matplotlib_of(shell: Any) -> dict[str, Any] | None:
    """The backend pyplot uses, and whether IPython's integration (``%matplotlib``,
    or ipykernel's inline default) is on. Nothing while pyplot is not imported."""
    mpl = sys.modules.get("matplotlib")
    plt = sys.modules.get("matplotlib.pyplot")
    if mpl is None or plt is None:
        return None
    if getattr(mpl, "__version_info__", (0,)) >= (3, 10):
        backend = mpl.get_backend(auto_select=False)
    else:
        backend = mpl.rcParams._get("backend")
    if not isinstance(backend, str) or not backend:
        return None
    # IPython's activate_matplotlib wraps draw_if_interactive to see whether show() was called.
    return {"backend": backend, "ipython": hasattr(plt.draw_if_interactive, "called")}


def activate_matplotlib(shell: Any, mpl: Mapping[str, Any]) -> None:
    backend = mpl["backend"]
    if mpl.get("ipython"):
        with _kernel_findable(shell):
            shell.enable_matplotlib("inline" if backend in INLINE_BACKENDS else backend)
    else:
        import matplotlib

        matplotlib.use(backend)


@contextmanager
def _kernel_findable(shell: Any) -> Iterator[None]:
    """ipykernel's ``enable_gui`` finds the kernel through the running application,
    which has none yet while the kernel is being built (a restore at start): lend it."""
    from traitlets.config import Application

    app = Application.instance() if Application.initialized() else None
    kernel = getattr(shell, "kernel", None)
    lend = app is not None and kernel is not None and getattr(app, "kernel", False) is None
    if lend:
        app.kernel = kernel
    try:
        yield
    finally:
        if lend and app.kernel is kernel:
            app.kernel = None


__all__ = [
    "INLINE_BACKENDS", "activate_matplotlib", "autoreload_items", "autoreload_of", "config_changes",
    "config_values", "load_extension", "matplotlib_of", "set_config",
]
