"""distill/ has no import cycle: every import of a distill module, at the top of a file or
inside a function, is an edge of the module graph, and that graph is acyclic."""
from __future__ import annotations

import ast
from pathlib import Path

DISTILL = Path(__file__).resolve().parents[1] / "distill"


def module_name(path: Path) -> str:
    parts = path.relative_to(DISTILL.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: set[str]) -> set[str]:
    """The distill modules one import statement loads (`from distill import x` names module x;
    a relative import is resolved against `here`)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = here.split(".") if is_package else here.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    own_packages = {here.rsplit(".", k)[0] for k in range(1, here.count(".") + 1)}
    found = set()
    for name in names:
        while name and name not in modules:           # `from distill.ship import main`: the module distill.ship
            name = name.rpartition(".")[0]
        found.add(name)
        package = name.rpartition(".")[0]
        while package and package not in own_packages:  # and the packages above it, whose __init__ runs
            found.add(package)                        # first (already running for this module's own)
            package = package.rpartition(".")[0]
    return found - {here, ""}


def import_graph() -> dict[str, set[str]]:
    files = sorted(DISTILL.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {}
    for f in files:
        here = module_name(f)
        nodes = [n for n in ast.walk(ast.parse(f.read_text(), str(f))) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[here] = set().union(*(imported(n, here, f.name == "__init__.py", modules) for n in nodes))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}                        # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_distill_has_no_import_cycle():
    graph = import_graph()
    assert "distill.ship" in graph and "distill.quantize" in graph["distill.ship"]   # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in distill/: " + " -> ".join(cycle)


def test_function_level_imports_count():
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    src = "def f():\n    from distill.ship import main\n"
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    modules = {"distill", "distill.ship", "distill.quantize", "distill.data", "distill.data.cache"}
    assert imported(nodes[0], "distill.quantize", False, modules) == {"distill.ship"}
    deep = ast.parse("import distill.data.cache").body[0]
    assert imported(deep, "distill.ship", False, modules) == {"distill.data.cache", "distill.data"}
    assert imported(deep, "distill.data.items", False, modules) == {"distill.data.cache"}
    relative = ast.parse("from .cache import load_faces").body[0]
    assert imported(relative, "distill.data", True, modules) == {"distill.data.cache"}
