"""Tests for jaxgrpo.metrics against math.comb / scipy float64 values."""
import math

import numpy as np
import pytest
from scipy import special

import jax.numpy as jnp
from jaxgrpo import metrics


def comb_pass_at_k(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_comb():
    cases = [(n, c, k) for n in (1, 2, 5, 16, 32, 64) for c in range(0, n + 1, max(1, n // 7))
             for k in (1, 2, 4, 8, 16, 32) if k <= n]
    n, c, k = (np.asarray(x) for x in zip(*cases))
    out = metrics.pass_at_k(n, c, k)
    ref = np.asarray([comb_pass_at_k(*x) for x in cases])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
    ref_scipy = 1 - special.comb(n - c, k, exact=False) / special.comb(n, k, exact=False)
    np.testing.assert_allclose(out, ref_scipy, rtol=1e-9, atol=1e-12)


def test_pass_at_k_scalar_and_edges():
    assert metrics.pass_at_k(10, 0, 5) == 0.0
    assert metrics.pass_at_k(10, 6, 5) == 1.0  # n - c < k
    np.testing.assert_allclose(metrics.pass_at_k(10, 3, 1), 0.3)
    np.testing.assert_allclose(metrics.pass_at_k(np.array([4, 8]), np.array([1, 2]), 1),
                               [0.25, 0.25])


def test_pass_at_k_large_n_stable():
    # C(1000, 500) overflows float64 (~1e299 is fine, C(2000,1000) is not); the product form
    # stays exact to float precision.
    out = metrics.pass_at_k(2000, 3, 1000)
    np.testing.assert_allclose(out, comb_pass_at_k(2000, 3, 1000), rtol=1e-12)
    assert np.isfinite(out)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="k must be <= n"):
        metrics.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="integers"):
        metrics.pass_at_k(4.5, 1, 1)


def test_maj_at_k():
    answers = ["3", "4", "4", None, "3", "3"]
    correct = [True, False, False, False, True, True]
    assert metrics.maj_at_k(answers, correct, 1) is True
    assert metrics.maj_at_k(answers, correct, 3) is False  # "4" wins 2-1
    assert metrics.maj_at_k(answers, correct, 4) is False  # None does not vote
    assert metrics.maj_at_k(answers, correct, 5) is True  # 2-2 tie -> first seen ("3")
    assert metrics.maj_at_k([None, None], [False, False], 2) is False
    np.testing.assert_allclose(metrics.maj_at_k_mean([answers, ["1"]], [correct, [True]], 1), 1.0)
    with pytest.raises(ValueError):
        metrics.maj_at_k(answers, correct, 7)


def test_mean_pairwise_cosine_distance():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 5, 4))
    mask = rng.uniform(size=(3, 5)) > 0.3
    mask[2] = [True, False, False, False, False]
    out = np.asarray(metrics.mean_pairwise_cosine_distance(jnp.asarray(e, jnp.float32),
                                                           jnp.asarray(mask)))
    for p in range(3):
        idx = np.nonzero(mask[p])[0]
        u = e[p][idx] / np.linalg.norm(e[p][idx], axis=-1, keepdims=True)
        d = [1 - u[i] @ u[j] for i in range(len(idx)) for j in range(i + 1, len(idx))]
        np.testing.assert_allclose(out[p], np.mean(d) if d else 0.0, rtol=1e-5, atol=1e-6)
    same = jnp.ones((1, 4, 3))
    np.testing.assert_allclose(metrics.mean_pairwise_cosine_distance(same), [0.0], atol=1e-6)
