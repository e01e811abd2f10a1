"""The package layout: no import circles anywhere, and lower layers never import higher ones.

Every import statement counts, at module level, inside functions and under TYPE_CHECKING: a lazy
import that hides a circle is still a circle.
"""
import ast
from pathlib import Path

import prunegreedy

ROOT = Path(prunegreedy.__file__).parent

# Layers from the bottom; a module may import its own folder or a strictly lower layer.
LAYERS = [
    {"errors"},
    {"config", "fileio"},
    {"nn", "data"},
    {"train"},
    {"measure", "records"},
    {"compress"},
    {"trainers", "deploy", "report"},
    {"api"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, name: str, package: str, modules: set[str]) -> set[str]:
    """Package modules that module `name` (in `package`) imports, by any import statement anywhere."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from pkg import module` imports the module; `from mod import name`, mod
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p.read_text(), module_name(p), _package(p), modules) for p in paths}


def _package(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_cycle_finder_finds_a_lazy_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_inside_functions_and_type_checking_count():
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..x import y\n"
           "def f():\n    from .net import GreedyNet\n    import prunegreedy.errors\n")
    mods = {"prunegreedy.x", "prunegreedy.x.y", "prunegreedy.nn.net", "prunegreedy.errors"}
    found = imports_of(src, "prunegreedy.nn.spec", "prunegreedy.nn", mods)
    assert found == {"prunegreedy.x.y", "prunegreedy.nn.net", "prunegreedy.errors"}


def test_no_import_circles_in_the_package():
    assert find_cycle(graph()) is None


def test_every_folder_has_a_layer_and_imports_only_lower_ones():
    edges = graph()
    assert {unit(m) for m in edges} <= set(RANK), f"new top-level modules need a layer: {set(map(unit, edges)) - set(RANK)}"
    upward = [(a, b) for a, deps in edges.items() for b in deps
              if unit(a) != unit(b) and RANK[unit(b)] >= RANK[unit(a)]]
    assert upward == []
