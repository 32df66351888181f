"""Fixtures shared by tests/advantages."""
import jax
import pytest


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Runs a test with the function jitted and eagerly (replaces chex.variants)."""
    return jax.jit if request.param == "jit" else (lambda f: f)
