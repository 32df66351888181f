"""The import graph of jaxgrpo/ (function-local imports included): no cycle, config.py a leaf.

Every module of the package is parsed with ``ast`` (nothing is imported). An edge ``a -> b``
is an import statement anywhere in ``a`` (module level or inside a function) that names the
jaxgrpo module ``b``: ``import jaxgrpo.b``, ``from jaxgrpo.b import x``, or ``from jaxgrpo import
b`` where ``b`` is a submodule. Importing a submodule first runs the ``__init__`` of each package
on its path, so ``rollout`` importing ``jaxgrpo.advantages.dagrpo`` is also an edge to the package
face ``jaxgrpo.advantages``; only the packages that contain ``a`` itself are left out (a package's
own submodules importing each other while its face imports them is Python's ordinary layout).

The layering printed by ``python tests/integration/test_imports.py``: layer 0 = modules importing no other
jaxgrpo module, layer n = modules whose imports are all in layers < n.
"""
from __future__ import annotations

import ast
import os
import sys
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "jaxgrpo"

def module_files(root: str = ROOT) -> Dict[str, str]:
    """``{dotted module name: path}`` of every ``.py`` file under ``root/jaxgrpo``."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(tree: ast.AST) -> List[Tuple[ast.AST, bool]]:
    """Every import statement of a module with whether it sits inside a function."""
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def _targets(node: ast.AST, modules: Set[str], here: str) -> Set[str]:
    """The jaxgrpo modules one import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    if node.level:  # relative: from the package of `here`
        pkg = here.split(".")
        is_pkg = os.path.basename(module_files().get(here, "")) == "__init__.py"
        pkg = pkg if is_pkg else pkg[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    if base.split(".")[0] != PACKAGE:
        return set()
    out = set()
    for a in node.names:
        sub = f"{base}.{a.name}"
        if sub in modules:
            out.add(sub)
        elif base in modules:
            out.add(base)
    return out


def _with_faces(targets: Set[str], modules: Set[str], here: str) -> Set[str]:
    """``targets`` plus the package faces Python runs on the way to them, less the packages
    that contain ``here``."""
    own = {".".join(here.split(".")[:i]) for i in range(1, here.count(".") + 2)}
    out = set(targets)
    for t in targets:
        parts = t.split(".")
        for i in range(1, len(parts)):
            face = ".".join(parts[:i])
            if face in modules and face not in own:
                out.add(face)
    return out


def import_graph(root: str = ROOT) -> Tuple[Dict[str, Set[str]], int]:
    """``({module: set of jaxgrpo modules it imports}, number of function-local ``from
    jaxgrpo...`` imports)``."""
    files = module_files(root)
    modules = set(files)
    graph: Dict[str, Set[str]] = {m: set() for m in files}
    n_local = 0
    for m, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node, in_function in _imports(tree):
            targets = _with_faces(_targets(node, modules, m), modules, m) - {m}
            graph[m] |= targets
            if (in_function and isinstance(node, ast.ImportFrom) and node.level == 0
                    and (node.module or "").split(".")[0] == PACKAGE):
                n_local += 1
    return graph, n_local


def cycles(graph: Dict[str, Set[str]]) -> List[frozenset]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[frozenset] = []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(old)
    return out


def layers(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Modules by layer (see the module docstring); the modules of a cycle share one layer,
    placed above everything the cycle imports."""
    comp_of = {m: m for m in graph}
    for comp in cycles(graph):
        head = min(comp)
        for m in comp:
            comp_of[m] = head
    deps: Dict[str, Set[str]] = {}
    for m, targets in graph.items():
        deps.setdefault(comp_of[m], set()).update(comp_of[t] for t in targets)
    level: Dict[str, int] = {}

    def depth(c):
        if c not in level:
            level[c] = 0  # a guard; the condensed graph has no cycle
            level[c] = 1 + max((depth(d) for d in deps[c] if d != c), default=-1)
        return level[c]

    out: List[List[str]] = []
    for m in sorted(graph):
        n = depth(comp_of[m])
        while len(out) <= n:
            out.append([])
        out[n].append(m)
    return out


def test_the_graph_sees_function_local_imports():
    graph, n_local = import_graph()
    # jaxgrpo.experiment composes the sections of the modules that read them
    assert {"jaxgrpo.losses", "jaxgrpo.sampling", "jaxgrpo.train"} <= graph["jaxgrpo.experiment"]
    assert n_local > 0


def test_no_import_cycle():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_config_imports_only_errors():
    graph, _ = import_graph()
    assert graph["jaxgrpo.config"] <= {"jaxgrpo.errors"}, sorted(graph["jaxgrpo.config"])


def test_layers_cover_every_module_once():
    graph, _ = import_graph()
    found = layers(graph)
    flat = [m for layer in found for m in layer]
    assert sorted(flat) == sorted(graph)
    assert "jaxgrpo.errors" in found[0] and "jaxgrpo.config" in found[1]
    # no import goes from a lower layer to a higher one
    where = {m: i for i, layer in enumerate(found) for m in layer}
    for m, targets in graph.items():
        for t in targets:
            assert where[t] < where[m], f"{m} (layer {where[m]}) imports {t} ({where[t]})"


if __name__ == "__main__":
    g, n = import_graph()
    print(f"{len(g)} modules, {sum(map(len, g.values()))} edges, "
          f"{n} function-local `from jaxgrpo` imports")
    for c in cycles(g):
        print("cycle:", " ".join(sorted(c)))
    for i, layer in enumerate(layers(g)):
        print(f"layer {i}: {' '.join(layer)}")
