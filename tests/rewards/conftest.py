"""Fixtures shared by tests/rewards."""
from __future__ import annotations

import pytest

from jaxgrpo.rewards import math_verify_pool as mvp


# ------------------------------------------------------------------------- math-verify pool


@pytest.fixture(scope="module")
def verifier():
    v = mvp.MathVerifier(num_workers=2, item_timeout_s=3.0, batch_timeout_s=60.0)
    yield v
    v.close()
