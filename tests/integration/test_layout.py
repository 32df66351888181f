"""The tests mirror the package: every non-private module jaxgrpo/<path>/<name>.py has a test
file tests/<path>/test_<name>.py (modules and folders with a leading underscore, and
``__init__.py``, are exempt)."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def missing_test_files(root: str = ROOT):
    """``[(module path, expected test path)]`` relative to ``root``, for modules without one."""
    out = []
    pkg = os.path.join(root, "jaxgrpo")
    for dirpath, dirs, files in os.walk(pkg):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        rel = os.path.relpath(dirpath, pkg)
        for f in sorted(files):
            if not f.endswith(".py") or f.startswith("_"):
                continue
            test = os.path.normpath(os.path.join("tests", rel, "test_" + f))
            if not os.path.isfile(os.path.join(root, test)):
                out.append((os.path.normpath(os.path.join("jaxgrpo", rel, f)), test))
    return out


def test_every_module_has_a_test_file_named_after_it():
    missing = missing_test_files()
    assert not missing, "; ".join(f"{m} has no {t}" for m, t in missing)


def test_the_walk_sees_a_missing_file(tmp_path):
    (tmp_path / "jaxgrpo" / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "_private.py", "sub/__init__.py", "sub/b.py"):
        (tmp_path / "jaxgrpo" / f).write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    assert missing_test_files(str(tmp_path)) == [("jaxgrpo/sub/b.py", "tests/sub/test_b.py")]


# The modules a reader follows one training step through: each function short enough to read
# at once (issue 37: no function over 60 lines there, decorators and nested functions included).
STEP_MODULES = ("jaxgrpo/step.py", "jaxgrpo/train.py", "jaxgrpo/losses.py", "jaxgrpo/sampling.py")
MAX_FUNCTION_LINES = 60


def long_functions(paths=STEP_MODULES, root: str = ROOT, limit: int = MAX_FUNCTION_LINES):
    """``[(path, name, lines)]`` of the functions in ``paths`` longer than ``limit`` lines."""
    import ast
    out = []
    for path in paths:
        with open(os.path.join(root, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > limit:
                    out.append((path, node.name, node.end_lineno - start + 1))
    return out


def test_no_function_over_60_lines_in_the_step_modules(tmp_path):
    assert not long_functions(), long_functions()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n")  # 62 lines
    assert long_functions(["m.py"], str(tmp_path)) == [("m.py", "f", 62)]
