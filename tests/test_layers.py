"""The shape of the code, as a specification: layers import only downwards, no
import circles, modules of a readable size, settings read in one place, promise
ids spelled in one place. Pure ``ast`` over ``kernel/``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "kernel"

#: Bottom to top. A module may import its own layer and the ones before it.
LAYERS = ("core", "store", "checkpoint", "durable", "jupyter", "cli")
TOP = len(LAYERS)  # kernel/__main__.py and other top-level modules
MAX_LINES = 450
SETTINGS_MODULE = "kernel.core.settings"
IDS_MODULE = "kernel.core.ids"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    if module == "kernel":  # the package itself holds only __version__; every kernel import runs it anyway
        return -1
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP


def _resolve(target: str) -> str | None:
    """The kernel module an import names (``from kernel.x import y`` may name module ``kernel.x.y``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _imports(module: str) -> set[str]:
    """Every kernel module ``module`` imports, anywhere in it (top level, functions, TYPE_CHECKING)."""
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(TREES[module]):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            if name == "kernel" or name.startswith("kernel."):
                resolved = _resolve(name)
                if resolved and resolved != module:
                    found.add(resolved)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{m} ({LAYERS[_layer(m)] if _layer(m) < TOP else 'top'}) imports {t} ({LAYERS[_layer(t)] if _layer(t) < TOP else 'top'})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert circles == []


def test_modules_are_of_a_readable_size() -> None:
    too_long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_settings_are_read_only_in_the_settings_module() -> None:
    """No ``env.get("PYREPL3_...")``, ``os.environ["PYREPL3_..."]`` or ``os.getenv`` outside it."""
    reads = []
    for module, tree in TREES.items():
        if module == SETTINGS_MODULE:
            continue
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv", "pop", "setdefault"):
                    key = node.args[0].value
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant):
                key = node.slice.value
            if isinstance(key, str) and (key.startswith("PYREPL3_") or key in ("RESONATE_TOKEN", "JPY_SESSION_NAME")):
                reads.append(f"{module}:{node.lineno} reads {key}")
    assert reads == []


def test_promise_ids_and_tags_are_spelled_only_in_ids() -> None:
    spelled = []
    for module, tree in TREES.items():
        if module == IDS_MODULE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                parts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
                if (parts and parts[0].startswith(("exec:", "ckpt:"))) or any(
                    s in text for s in (":input:", ":step:", ":resume:", ":ckpt:")
                ):
                    # An f-string that builds an id (not a message that merely names one).
                    if len(text) < 24:
                        spelled.append(f"{module}:{node.lineno} builds an id: {ast.unparse(node)}")
        for const in _string_constants(tree):
            if const.value in ("pyrepl3:session", "pyrepl3:kind", "resonate:external"):
                spelled.append(f"{module}:{const.lineno} spells the tag {const.value!r}")
    assert spelled == []


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_exists(layer: str) -> None:
    assert (ROOT / layer / "__init__.py").exists()
