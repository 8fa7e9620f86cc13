"""The layout DESIGN.md fixes, checked on the source: imports point one way, no module of the
project imports another that imports it back (imports inside functions count), and no library
function is longer than 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGES = ("search", "spaces", "agents", "evaluators", "kernels")
ALLOWED = {
    ("search", "agents"),
    ("search", "evaluators"),
    ("search", "kernels"),
    ("search", "spaces"),
    ("agents", "spaces"),
    ("evaluators", "kernels"),
    ("evaluators", "spaces"),
    ("kernels", "spaces"),
}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _import_graph() -> nx.DiGraph:
    """Module -> module it imports, anywhere in its source (also inside functions and under
    TYPE_CHECKING: a cycle hidden there is still a cycle of meaning)."""
    mods, g = _modules(), nx.DiGraph()

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    for mod, path in mods.items():
        g.add_node(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != mod:
                    g.add_edge(mod, r)
    return g


def test_imports_point_one_way():
    upward = [
        (a, b)
        for a, b in _import_graph().edges()
        if a.split(".")[0] != b.split(".")[0] and (a.split(".")[0], b.split(".")[0]) not in ALLOWED
    ]
    assert not upward, f"imports against DESIGN.md's arrows: {upward}"


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_import_graph()))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_library_function_over_60_lines():
    long = []
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{mod}.{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
