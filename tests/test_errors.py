"""One error hierarchy (jaxgrpo/errors.py) and no import cycle between jaxgrpo's modules."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_checkpoint_error_class_everywhere():
    from jaxgrpo import checkpoint, errors, models
    from jaxgrpo.models import encoder, gguf_loader, loading, tokenizer

    for mod in (checkpoint, models, loading, gguf_loader, tokenizer):
        assert mod.CheckpointError is errors.CheckpointError, mod.__name__
    assert encoder.EncoderCheckpointError is errors.CheckpointError
    assert models.CheckpointNotFoundError is errors.CheckpointNotFoundError
    # The built-in bases callers catch today.
    assert issubclass(errors.CheckpointError, (ValueError, RuntimeError, errors.JaxgrpoError))
    assert issubclass(errors.CheckpointError, ValueError)
    assert issubclass(errors.CheckpointError, RuntimeError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.ConfigError, errors.JaxgrpoError)


def _import_graph():
    """module -> jaxgrpo modules it imports (top-level and inside functions), __init__ files
    excluded (a package importing its own submodules is not a cycle)."""
    pkg = os.path.join(ROOT, "jaxgrpo")
    files = {}
    for d, _, fs in os.walk(pkg):
        for f in fs:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                files[rel.replace(".__init__", "")] = path
    graph = {}
    for name, path in files.items():
        if path.endswith("__init__.py"):
            continue
        deps = set()
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxgrpo"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("jaxgrpo")}
        graph[name] = deps
    return {n: {d for d in ds if d in graph and d != n} for n, ds in graph.items()}


def test_no_import_cycle():
    graph = _import_graph()
    assert "jaxgrpo.models.gguf_loader" in graph and "jaxgrpo.step" in graph
    state = {}

    def visit(n, path):
        state[n] = "open"
        for d in sorted(graph[n]):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
