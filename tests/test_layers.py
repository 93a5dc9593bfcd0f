"""The package's layers (ARCHITECTURE.md): no import runs back up a layer, and modules form no cycle.

Every import counts, also the ones deferred into a function body or guarded by TYPE_CHECKING: a
deferred import hides a cycle from Python's import system, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "autodeco_cli"

# bottom to top; subpackages on one rank may not import each other
RANKS = {
    "core": 1,
    "engine": 2,
    "tasks": 2,
    "evaluation": 3,
    "training": 4,
    "grid": 4,
    "studies": 5,
    "commands": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, resolved to the deepest module named."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("autodeco_cli"):
                module = node.module[len("autodeco_cli") :].lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}" if module else alias.name
                targets.add(candidate if candidate in modules else module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("autodeco_cli."):
                    targets.add(alias.name[len("autodeco_cli.") :])
    return {t for t in targets if t and t != name and t in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_every_subpackage_has_a_rank():
    layers = {_layer(m) for m in _modules() if m}
    assert layers <= set(RANKS), f"give these a rank in RANKS and ARCHITECTURE.md: {layers - set(RANKS)}"


def test_no_import_runs_back_up_a_layer():
    upward = [
        f"{a} -> {b}"
        for a, targets in _graph().items()
        for b in targets
        if a and _layer(a) != _layer(b) and RANKS[_layer(b)] >= RANKS[_layer(a)]
    ]
    assert not upward, "imports that run up (or across) a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_deferred_and_relative_imports(tmp_path):
    """The checks above must be able to fail: a deferred relative import is found and resolved."""
    modules = {"core.errors": tmp_path / "errors.py", "engine.models": tmp_path / "models.py"}
    source = tmp_path / "errors.py"
    source.write_text("def f():\n    from ..engine.models import load\n    return load\n", encoding="utf-8")
    assert _imports("core.errors", source, modules) == {"engine.models"}
