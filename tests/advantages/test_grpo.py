"""Tests for jaxgrpo.advantages.grpo (GRPO, Dr.GRPO, RLOO baselines) against independent NumPy
float64 references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.experimental import checkify

from jaxgrpo.advantages import dr_grpo, grpo, make_advantage_fn, rloo
from tests.advantages._helpers import (group_rewards, HYP, jit_dr_grpo, jit_grpo, make_rollout,
                                       np_grpo)


# ---------------------------------------------------------------- GRPO / Dr.GRPO


@pytest.mark.parametrize("ddof,eps", [(1, 1e-4), (0, 1e-4), (1, 1e-6)])
def test_grpo_matches_numpy(variant, ddof, eps):
    r = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    r[2] = 0.7  # a constant group
    fn = variant(functools.partial(grpo, std_ddof=ddof, eps=eps))
    np.testing.assert_allclose(fn(jnp.asarray(r)), np_grpo(r, ddof, eps), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(fn(jnp.asarray(r)))[2] == 0.0)


def test_grpo_member_mask(variant):
    rng = np.random.default_rng(2)
    r = rng.normal(size=(4, 5)).astype(np.float32)
    m = rng.uniform(size=(4, 5)) > 0.3
    m[3] = False  # an all-masked group
    out = variant(grpo)(jnp.asarray(r), member_mask=jnp.asarray(m))
    np.testing.assert_allclose(out, np_grpo(r, mask=m), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[~m] == 0.0)


def test_dr_grpo_matches_numpy(variant):
    r = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(variant(dr_grpo)(jnp.asarray(r)),
                               np_grpo(r, scale=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_grpo_zero_spread_exact_zero(dtype):
    r = jnp.asarray([[0.1] * 8, [1e4] * 8, [-3.3] * 8], dtype)
    for fn in (grpo, dr_grpo, jax.jit(grpo)):
        out = fn(r)
        assert out.dtype == dtype
        assert np.all(np.asarray(out, np.float32) == 0.0)


def test_grpo_bf16_mixed_group_finite_and_close():
    r = np.asarray([[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]], np.float32)
    out = grpo(jnp.asarray(r, jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(out, np.float32), np_grpo(r), rtol=1e-2)


def test_grpo_zero_spread_tol():
    r = jnp.asarray([[1.0, 1.0 + 1e-6, 1.0 - 1e-6, 1.0]])
    assert np.abs(np.asarray(grpo(r))).max() > 1e-3  # noise scaled up by 1/(std + eps)
    assert np.all(np.asarray(grpo(r, zero_spread_tol=1e-5)) == 0.0)


@HYP
@given(group_rewards, st.data())
def test_grpo_shift_and_scale_invariance(r, data):
    shift = np.asarray(data.draw(st.lists(st.integers(-16, 16), min_size=r.shape[0],
                                          max_size=r.shape[0])), np.float32)[:, None] * 0.25
    scale = data.draw(st.sampled_from([0.5, 2.0, 4.0]))
    base = np.asarray(jit_grpo(jnp.asarray(r), eps=0.0))
    np.testing.assert_allclose(jit_grpo(jnp.asarray(r + shift), eps=0.0), base, atol=1e-5)
    np.testing.assert_allclose(jit_grpo(jnp.asarray(r * scale), eps=0.0), base, atol=1e-5)
    np.testing.assert_allclose(jit_dr_grpo(jnp.asarray(r + shift)),
                               jit_dr_grpo(jnp.asarray(r)), atol=1e-5)


@HYP
@given(group_rewards, st.randoms(use_true_random=False))
def test_grpo_permutation_equivariant(r, rnd):
    perm = list(range(r.shape[1]))
    rnd.shuffle(perm)
    perm = np.asarray(perm)
    a = np.asarray(jit_grpo(jnp.asarray(r)))
    np.testing.assert_allclose(jit_grpo(jnp.asarray(r[:, perm])), a[:, perm], atol=1e-6)


@HYP
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=16), min_size=4, max_size=4),
       st.sampled_from([2, 8]))


def test_grpo_constant_group_zero_bf16(values, g):
    r = jnp.broadcast_to(jnp.asarray(values, jnp.bfloat16)[:, None], (4, g))
    assert np.all(np.asarray(jit_grpo(r), np.float32) == 0.0)
    assert np.all(np.asarray(jit_dr_grpo(r), np.float32) == 0.0)


def test_grpo_integer_rewards_and_traced_options():
    r = np.asarray([[1, 0, 1, 1], [0, 0, 0, 0]])
    out = grpo(jnp.asarray(r, jnp.int32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np_grpo(r), rtol=1e-5)
    traced = jax.jit(lambda x, e, d: grpo(x, eps=e, std_ddof=d))(jnp.asarray(r, jnp.float32),
                                                                 1e-6, 0)
    np.testing.assert_allclose(traced, np_grpo(r, ddof=0, eps=1e-6), rtol=1e-5)


def test_grpo_bad_shapes():
    with pytest.raises(ValueError, match="G=1"):
        grpo(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="rank 2"):
        grpo(jnp.ones((6,)))
    with pytest.raises(ValueError, match="member_mask"):
        grpo(jnp.ones((2, 3)), member_mask=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="std_ddof"):
        grpo(jnp.ones((2, 3)), std_ddof=2)
    with pytest.raises(ValueError, match="G=1"):
        jax.jit(dr_grpo)(jnp.ones((3, 1)))


def test_grpo_nonfinite_mask():
    r = np.asarray([[1.0, np.nan, 0.0, 1.0], [np.inf, 1.0, 1.0, 1.0]], np.float32)
    out = np.asarray(jax.jit(grpo)(jnp.asarray(r)))
    finite = np.isfinite(r)
    np.testing.assert_allclose(out, np_grpo(np.where(finite, r, 0), mask=finite), atol=1e-6)
    assert out[0, 1] == 0.0 and np.all(out[1] == 0.0) and np.all(np.isfinite(out))


def test_grpo_nonfinite_propagate_and_check():
    r = jnp.asarray([[1.0, jnp.nan, 0.0], [1.0, 0.0, 0.0]])
    out = np.asarray(grpo(r, nonfinite="propagate"))
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))
    with pytest.raises(checkify.JaxRuntimeError, match="non-finite"):
        grpo(r, nonfinite="check")
    err, _ = jax.jit(checkify.checkify(functools.partial(grpo, nonfinite="check")))(r)
    assert err.get() is not None and "non-finite" in err.get()
    err, _ = jax.jit(checkify.checkify(functools.partial(grpo, nonfinite="check")))(
        jnp.nan_to_num(r))
    assert err.get() is None
    with pytest.raises(ValueError, match="nonfinite"):
        grpo(r, nonfinite="ignore")


# ---------------------------------------------------------------- RLOO, batch std, ProGRPO gates


def np_rloo(r, mask=None):
    """verl compute_rloo_outcome_advantage / Tunix rloo: R_i - mean of the other members."""
    r = np.asarray(r, np.float64)
    mask = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        idx = np.nonzero(mask[p])[0]
        if idx.size < 2:
            continue
        for i in idx:
            others = [r[p, j] for j in idx if j != i]
            out[p, i] = r[p, i] - np.mean(others)
    return out


def test_rloo_matches_numpy(variant):
    rng = np.random.default_rng(20)
    r = rng.normal(size=(5, 6)).astype(np.float32)
    m = rng.uniform(size=(5, 6)) > 0.2
    m[3] = [True] + [False] * 5  # a group of one member: no baseline
    r[4] = 0.3  # a constant group
    out = variant(rloo)(jnp.asarray(r), jnp.asarray(m))
    np.testing.assert_allclose(out, np_rloo(r, m), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[3] == 0.0) and np.all(np.asarray(out)[4] == 0.0)
    adv, diag = jax.jit(make_advantage_fn("rloo"))(make_rollout(r))
    np.testing.assert_allclose(adv, np_rloo(r), rtol=1e-5, atol=1e-6)
    assert "rloo/frac_zero_spread_groups" in diag


def test_grpo_scale_rewards_batch_matches_trl():
    rng = np.random.default_rng(21)
    r = rng.normal(size=(4, 5)).astype(np.float32)
    r[1] = 2.0  # a constant group: advantage 0, but its rewards enter the batch std
    # TRL sum_then_normalize, scale_rewards="batch": (r - group mean) / (nanstd(all r) + 1e-4)
    x = np.asarray(r, np.float64)
    want = (x - x.mean(1, keepdims=True)) / (x.std(ddof=1) + 1e-4)
    out = grpo(jnp.asarray(r), scale_rewards="batch")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[1] == 0.0)
    m = np.ones((4, 5), bool)
    m[0, :2] = False  # non-members are left out of the batch std too
    xm = np.where(m, x, np.nan)
    want_m = np.where(m, (x - np.nanmean(xm, 1, keepdims=True))
                      / (np.nanstd(xm, ddof=1) + 1e-4), 0.0)
    np.testing.assert_allclose(grpo(jnp.asarray(r), jnp.asarray(m), scale_rewards="batch"), want_m,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo(jnp.asarray(r), scale_rewards="none")
