"""The demo's modules import one another in one direction only: no circle, lazy imports
included (only ``if TYPE_CHECKING:`` imports, which never run, are left out)."""

from __future__ import annotations

import ast
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "demo"


def _imports(path: Path) -> set[str]:
    """``demo.*`` modules that ``path`` imports anywhere (functions too), outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("demo"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("demo")}
    return found - {"demo"}


def _graph() -> dict[str, set[str]]:
    return {f"demo.{p.stem}": _imports(p) for p in DEMO.glob("*.py") if p.stem != "__init__"}


def test_demo_imports_form_no_circle():
    graph = _graph()
    assert "demo.models" in graph["demo.chat"]  # the walk sees imports at all
    assert "demo.reconstruct" in graph["demo.models"]  # ... lazy ones too (the registry's loader)
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != "open", f"import circle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
