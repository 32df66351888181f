"""Tests for jaxgrpo.advantages.dra (DRA reward re-weighting) against independent NumPy float64
references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from jaxgrpo.advantages import dr_grpo, dra_reweight, get_transform, grpo
from jaxgrpo.advantages.dra import dra_weights
from tests.advantages._helpers import HYP, make_rollout, np_dra


jit_dra = jax.jit(dra_reweight)


# ---------------------------------------------------------------- DRA


E1 = [[1, 0], [1, 0], [0, 1]]


E2 = [[1, 0], [0.6, 0.8], [0, 1]]


def test_dra_methods_reference_table(variant):
    e = jnp.asarray([E1, E1, E2], jnp.float32)
    r = jnp.asarray([[1, 1, 1], [3, 3, -1], [2, 0, 2]], jnp.float32)
    tilde = variant(dra_reweight)(r, e)
    np.testing.assert_allclose(tilde, [[.5, .5, .999999], [1.5, 1.5, -1.0],
                                       [1.25, 0, 1.1111]], atol=1e-4)
    np.testing.assert_allclose(grpo(tilde), [[-.5772, -.5772, 1.1543], [.5773, .5773, -1.1546],
                                             [.6756, -1.1486, .4729]], atol=1e-4)
    np.testing.assert_allclose(dr_grpo(tilde), [[-.1667, -.1667, .3333],
                                                [.8333, .8333, -1.6667],
                                                [.4630, -.7870, .3241]], atol=1e-4)
    w, _ = dra_weights(e)
    np.testing.assert_allclose(w[2], [.625, .41667, .55556], atol=1e-4)


def test_dra_matches_numpy_random():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(3, 5, 8))
    e = np.abs(e) / np.linalg.norm(e, axis=-1, keepdims=True)  # positive cosines
    r = rng.normal(size=(3, 5))
    np.testing.assert_allclose(dra_reweight(jnp.asarray(r, jnp.float32),
                                            jnp.asarray(e, jnp.float32)),
                               np_dra(r, e), rtol=1e-5, atol=1e-6)


@HYP
@given(st.just(3), st.sampled_from([2, 6]), st.integers(0, 10_000))
def test_dra_orthogonal_embeddings_leave_rewards_unchanged(p, g, seed):
    rng = np.random.default_rng(seed)
    d = g + 2
    q = np.stack([np.linalg.qr(rng.normal(size=(d, d)))[0][:, :g].T for _ in range(p)])
    r = rng.normal(size=(p, g)).astype(np.float32)
    np.testing.assert_allclose(jit_dra(jnp.asarray(r), jnp.asarray(q, jnp.float32)), r,
                               rtol=1e-5, atol=1e-5)


def test_dra_nonpositive_row_sum_guard():
    # Group 0: member 0 has row sum 1 - 1 - 1 = -1 (sign flip); group 1: three unit vectors
    # 120 degrees apart, every row sum 1 - 1/2 - 1/2 = 0 (weight 1e6 without a guard).
    c, s = -0.5, math.sqrt(3) / 2
    e = jnp.asarray([[[1, 0], [-1, 0], [-1, 0]], [[1, 0], [c, s], [c, -s]]], jnp.float32)
    r = jnp.ones((2, 3))
    raw = np.asarray(dra_reweight(r, e, row_sum_floor=None))
    np.testing.assert_allclose(raw[0], np_dra(r, e)[0], rtol=1e-5)
    assert raw[0, 0] < 0 and np.abs(raw[1]).min() > 1e4  # the hazards
    guarded = np.asarray(dra_reweight(r, e))  # default floor 0.1
    np.testing.assert_allclose(guarded, np_dra(r, e, floor=0.1), rtol=1e-5)
    assert np.all(guarded > 0) and guarded.max() <= 10.0
    np.testing.assert_allclose(guarded[0, 1:], 1 / (1 + 1e-6), rtol=1e-6)  # untouched rows
    _, diag = get_transform("dra")(make_rollout(np.ones((2, 3))).replace(embeddings=e))
    np.testing.assert_allclose(diag["frac_rows_floored"], 4 / 6, rtol=1e-6)
    np.testing.assert_allclose(diag["weight_max"], 1 / (0.1 + 1e-6), rtol=1e-5)


def test_dra_microbatch_scope_reproduces_reference_code():
    rng = np.random.default_rng(5)
    p, g, d, mb = 2, 6, 4, 4
    e = np.abs(rng.normal(size=(p, g, d)))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    r = rng.normal(size=(p, g))
    flat_e, flat_r = e.reshape(p * g, d), r.reshape(p * g)
    ref = np.concatenate([flat_r[i:i + mb] / ((flat_e[i:i + mb] @ flat_e[i:i + mb].T).sum(1)
                                              + 1e-6) for i in range(0, p * g, mb)])
    out = dra_reweight(jnp.asarray(r, jnp.float32), jnp.asarray(e, jnp.float32),
                       scope="microbatch", microbatch_size=mb)
    np.testing.assert_allclose(out, ref.reshape(p, g), rtol=1e-5)
    with pytest.raises(ValueError, match="microbatch_size"):
        dra_reweight(jnp.asarray(r), jnp.asarray(e), scope="microbatch", microbatch_size=5)


def test_dra_member_mask_and_shape_errors():
    e = jnp.asarray([E1], jnp.float32)
    r = jnp.asarray([[1.0, 1.0, 1.0]])
    out = dra_reweight(r, e, member_mask=jnp.asarray([[True, False, True]]))
    np.testing.assert_allclose(out, [[1 / (1 + 1e-6), 1.0, 1 / (1 + 1e-6)]], rtol=1e-6)
    with pytest.raises(ValueError, match="match"):
        dra_reweight(r, jnp.ones((1, 4, 2)))
    with pytest.raises(ValueError, match="embeddings"):
        get_transform("dra")(make_rollout(np.ones((1, 3)), emb=False))
