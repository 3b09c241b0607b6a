"""The package's shape: stage subpackages whose imports point one way, down the stages, never in a circle;
functions that fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kwsbatch"

# Each stage may import only from stages ranked below it. The foundation (errors, class names,
# progress display, install commands of the extras, the version, malloc tuning) is below everything; the CLI sits on top.
RANKS = {
    "kwsbatch": 0, "errors": 0, "classes": 0, "progress": 0, "faults": 0, "settings": 0, "extras": 0, "sigterm": 0, "allocator": 0,
    "files": 1,
    "model": 2, "corpus": 2,
    "train": 3, "label": 3,
    "evaluate": 4,
    "tools": 5,
    "cli": 6, "__main__": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every kwsbatch module a file imports, at the top or inside functions, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kwsbatch" and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "kwsbatch")
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_belongs_to_a_ranked_stage():
    assert {stage(m) for m in import_graph()} <= set(RANKS)


def test_imports_point_down_the_stages():
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if stage(target) != stage(module) and RANKS[stage(target)] >= RANKS[stage(module)] and stage(target) != "kwsbatch"
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    imports = import_graph()  # once: each call parses every module
    graph = {module: targets & imports.keys() for module, targets in imports.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path, module, target]
            if target not in state and (cycle := visit(target, [*path, module])):
                return cycle
        state[module] = "done"
        return None

    cycles = [cycle for module in sorted(graph) if module not in state and (cycle := visit(module, []))]
    assert cycles == []


MAX_FUNCTION_LINES = 60  # a function fits on a screen (STYLE.md)


def test_every_function_fits_on_a_screen():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
