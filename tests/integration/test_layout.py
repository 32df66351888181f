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
