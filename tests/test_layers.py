"""The shape of the package, read from its source: the layer rule, no import cycle, small functions.

The one rule of the layers (README, "Layout"): flows → tasks → models → storage → core. A module
imports from its own floor or a floor below it, never from one above; `voxtox.corpus` is part of
the core. Every import counts: at module level, inside a function, and under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Top floor first. A `voxtox.<name>` module whose <name> is not listed here belongs to the core.
LAYERS = ("flows", "tasks", "models", "storage", "core")
MAX_FUNCTION_LINES = 50


def package_dirs() -> dict[str, Path]:
    """Each package's folder, as pyproject.toml maps it (`voxtox` → core/, `voxtox.flows` → flows/, ...)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    found: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found.setdefault(name.removesuffix(".__init__"), path)
    return found


def layer(module: str) -> int:
    """The floor of `module`: 0 is the top (flows)."""
    sub = module.split(".")[1] if "." in module else ""
    return LAYERS.index(sub) if sub in LAYERS[:-1] else LAYERS.index("core")


def imports(path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """The voxtox modules `path` imports (with line numbers), wherever the import statement is."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "voxtox")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "voxtox":
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
            yield from ((m, node.lineno) for m in submodules or [node.module])


def import_graph() -> dict[str, dict[str, int]]:
    found = modules()
    return {name: {target: line for target, line in imports(path, set(found)) if target != name}
            for name, path in found.items()}


def test_the_graph_is_read() -> None:
    """The test sees the package: every floor has modules, and the arrows we know are there."""
    graph = import_graph()
    assert {LAYERS[layer(m)] for m in graph} == set(LAYERS)
    assert "voxtox.tasks.train" in graph["voxtox.flows.train"]
    assert "voxtox.storage.catalog" in graph["voxtox.models.scoring"]


def test_no_module_imports_from_a_floor_above() -> None:
    graph, found = import_graph(), modules()
    upward = [
        f"{found[source].relative_to(ROOT)}:{line} imports {target} ({LAYERS[layer(source)]} → {LAYERS[layer(target)]})"
        for source, targets in graph.items()
        for target, line in targets.items()
        if layer(target) < layer(source)
    ]
    assert not upward, "imports against the layer rule (flows → tasks → models → storage → core):\n" + "\n".join(upward)


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, {}):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    """The cycle finder and the floors on a made-up graph, so a passing test means something."""
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None
    assert layer("voxtox.flows.cli") < layer("voxtox.tasks.train") < layer("voxtox.models.scoring")
    assert layer("voxtox.models.scoring") < layer("voxtox.storage.runs") < layer("voxtox.corpus.synth")


def long_functions() -> list[str]:
    found = []
    for path in sorted(modules().values()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_over_50_lines() -> None:
    assert not long_functions(), "functions over 50 lines:\n" + "\n".join(long_functions())
