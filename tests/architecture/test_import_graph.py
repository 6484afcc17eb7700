"""The project's own imports form no circle, and packages import only down the pipeline.

Every ``import`` of a project module counts: at module level, inside functions (the lazy imports
at the command boundary) and under ``if TYPE_CHECKING:``. A circle among them means two modules
that cannot be understood, or loaded, one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("genhancer", "enhance", "llava_integration", "eval", "demo")
#: Pipeline order: a package may import itself and those before it, never one after it.
ORDER = {name: i for i, name in enumerate(PACKAGES)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``a.b.c`` may be a module or a name in ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            target = _resolve(n, modules)
            if target is not None:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    # Explicit imports only: that importing ``a.b.c`` first runs ``a/b/__init__`` is how Python
    # loads a package, and a registry in ``__init__`` importing its members is no design circle.
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_lazy_and_type_checking_imports():
    g = graph()
    assert "enhance.methods.genhancer.model" in g["enhance.methods.genhancer.method"]  # a lazy one
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_packages_import_only_down_the_pipeline():
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in graph().items()
        for dep in deps
        if ORDER[dep.split(".")[0]] > ORDER[mod.split(".")[0]]
    ]
    assert not bad, bad
