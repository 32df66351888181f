"""Tests for jaxgrpo.advantages against independent NumPy float64 references."""
import fractions
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.experimental import checkify

from jaxgrpo.advantages import (add_anchors, answer_confidence, arm_reweight, dagrpo, dr_grpo,
                                dra_reweight, get_transform, grpo, make_advantage_fn,
                                prompt_confidence, required_inputs, rloo)
from jaxgrpo.advantages.dagrpo import dagrpo_score
from jaxgrpo.advantages.dra import dra_weights
from jaxgrpo.rollout import Rollout

HYP = settings(max_examples=50, deadline=None)


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Runs a test with the function jitted and eagerly (replaces chex.variants)."""
    return jax.jit if request.param == "jit" else (lambda f: f)


# ---------------------------------------------------------------- NumPy float64 references


def np_grpo(r, ddof=1, eps=1e-4, mask=None, scale=True):
    r = np.asarray(r, np.float64)
    mask = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        x = r[p][mask[p]]
        if x.size == 0 or x.max() == x.min():
            continue
        c = x - x.mean()
        if scale:
            c = c / (x.std(ddof=ddof) + eps)
        out[p][mask[p]] = c
    return out


def np_dra(r, e, eps=1e-6, floor=None):
    r = np.asarray(r, np.float64)
    e = np.asarray(e, np.float64)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        s = e[p] @ e[p].T
        rs = s.sum(1)
        if floor is not None:
            rs = np.maximum(rs, floor)
        out[p] = r[p] / (rs + eps)
    return out


def np_dagrpo(r, tau=0.1, adaptive=False, kappa=0.1, z_mode="group", dist=None):
    r = np.asarray(r, np.float64)
    p_, g = r.shape
    out = np.zeros_like(r)
    for p in range(p_):
        d = np.abs(r[p][:, None] - r[p][None, :]) if dist is None else dist[p]
        thr = kappa * max(d[i, j] for i in range(g) for j in range(g) if i != j) if adaptive else tau
        for i in range(g):
            kept = [j for j in range(g) if j != i and d[i, j] >= thr]
            tot = sum(r[p, i] - r[p, j] for j in kept)
            z = (g - 1) if z_mode == "group" else max(1, len(kept))
            out[p, i] = tot / z
    return out


def np_low_k(n, rho):
    return max(1, math.ceil(fractions.Fraction(rho).limit_denominator(1000) * n))


def np_answer_conf(lp, m, reading="low_fraction", rho=0.2):
    lp = np.asarray(lp, np.float64)
    out = np.ones(lp.shape[:-1])
    for idx in np.ndindex(*lp.shape[:-1]):
        v = lp[idx][np.asarray(m)[idx].astype(bool)]
        if v.size == 0:
            continue
        if reading == "low_fraction":
            out[idx] = math.exp(np.sort(v)[:np_low_k(v.size, rho)].mean())
        elif reading == "low_fraction_norm":
            out[idx] = math.exp(v.sum() / (rho * v.size))
        else:
            out[idx] = math.exp(v.mean())
    return out


def np_prompt_conf(plp, pm, reading="mean", rho=0.2):
    out = np.ones(plp.shape[0])
    for p in range(plp.shape[0]):
        idx = np.nonzero(pm[p])[0][1:]  # predicted tokens: real tokens after the first
        v = np.asarray(plp[p], np.float64)[idx]
        if v.size == 0:
            continue
        if reading == "mean":
            out[p] = math.exp(v.mean())
        else:
            out[p] = math.exp(np.sort(v)[:np_low_k(v.size, rho)].mean())
    return out


def np_arm(a, correct, ca, cq, alpha=1.0, gate_all_correct=False):
    out = np.array(a, np.float64)
    for p in range(out.shape[0]):
        nc = int(np.sum(correct[p]))
        if nc == 0 or (gate_all_correct and nc == out.shape[1]):
            continue
        out[p] = out[p] + alpha * (cq[p] - ca[p])
    return out


# ---------------------------------------------------------------- helpers


def make_rollout(rewards, *, correct=None, tc=6, tp=5, d=4, seed=0, fine=True, emb=True,
                 empty=None):
    rewards = np.asarray(rewards, np.float32)
    p, g = rewards.shape
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, tc + 1, size=(p, g))
    cmask = np.arange(tc)[None, None, :] < lengths[..., None]
    if empty is not None:
        cmask[empty] = False
    lp = np.where(cmask, -rng.exponential(1.0, size=(p, g, tc)), 0.0).astype(np.float32)
    plen = rng.integers(2, tp + 1, size=(p,))
    pmask = np.arange(tp)[None, :] >= (tp - plen)[:, None]  # left-padded
    plp = np.where(pmask, -rng.exponential(0.5, size=(p, tp)), 0.0)
    plp[np.arange(p), tp - plen] = 0.0  # the first real token has no prediction
    e = rng.normal(size=(p, g, d))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    if correct is None:
        correct = rewards > 0.5
    return Rollout(
        prompt_tokens=jnp.asarray(rng.integers(0, 100, size=(p, tp)), jnp.int32),
        prompt_mask=jnp.asarray(pmask),
        completion_tokens=jnp.asarray(rng.integers(0, 100, size=(p, g, tc)), jnp.int32),
        completion_mask=jnp.asarray(cmask),
        logprobs=jnp.asarray(lp),
        prompt_logprobs=jnp.asarray(plp, jnp.float32),
        rewards=jnp.asarray(rewards),
        correct=jnp.asarray(np.asarray(correct, bool)),
        member_mask=jnp.ones((p, g), bool),
        is_anchor=jnp.zeros((p, g), bool),
        fine_scores=jnp.asarray(rng.uniform(size=(p, g)), jnp.float32) if fine else None,
        embeddings=jnp.asarray(e, jnp.float32) if emb else None,
    )


# Few distinct shapes (P = 3, G in {2, 4, 7}) so that the jitted functions compile a few times
# only; values are multiples of 1/4, exact in float32.
group_rewards = st.sampled_from([2, 4, 7]).flatmap(
    lambda g: st.lists(st.lists(st.integers(-8, 8), min_size=g, max_size=g), min_size=3,
                       max_size=3)).map(lambda x: np.asarray(x, np.float32) * 0.25)

jit_grpo = jax.jit(grpo, static_argnames=("std_ddof", "eps", "zero_spread_tol", "nonfinite"))
jit_dr_grpo = jax.jit(dr_grpo)
jit_dagrpo = jax.jit(functools.partial(dagrpo, score="reward"),
                     static_argnames=("tau", "tau_mode", "normalizer"))
jit_dra = jax.jit(dra_reweight)


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


# ---------------------------------------------------------------- DaGRPO



@pytest.mark.parametrize("tau_mode,normalizer", [("fixed", "group"), ("fixed", "unmasked"), ("adaptive", "group"),
                          ("adaptive", "unmasked")])


def test_dagrpo_matches_numpy(variant, tau_mode, normalizer):
    rng = np.random.default_rng(6)
    r = (rng.integers(0, 2, size=(4, 6)) + 0.5 * rng.uniform(size=(4, 6))).astype(np.float32)
    fn = variant(functools.partial(dagrpo, score="reward", tau=0.2, tau_mode=tau_mode,
                                   kappa=0.3, normalizer=normalizer))
    np.testing.assert_allclose(
        fn(jnp.asarray(r)),
        np_dagrpo(r, tau=0.2, adaptive=tau_mode == "adaptive", kappa=0.3, z_mode=normalizer),
        rtol=1e-5, atol=1e-6)


@HYP
@given(group_rewards)
def test_dagrpo_tau0_equals_scaled_dr_grpo(r):
    g = r.shape[1]
    np.testing.assert_allclose(jit_dagrpo(jnp.asarray(r), tau=0.0),
                               g / (g - 1) * np.asarray(jit_dr_grpo(jnp.asarray(r))), atol=1e-5)


@HYP
@given(group_rewards, st.sampled_from([0.0, 0.25, 0.6, 1.0]))
def test_dagrpo_antisymmetry_and_bound(r, tau):
    a = np.asarray(jit_dagrpo(jnp.asarray(r), tau=tau))
    np.testing.assert_allclose(a.sum(1), 0.0, atol=1e-4)
    assert np.all(np.abs(a) <= (r.max(1) - r.min(1))[:, None] + 1e-5)


def test_dagrpo_all_pairs_masked_gives_zero():
    r = jnp.asarray([[1.0, 1.05, 1.02, 0.98], [1.0, 1.0, 1.0, 1.0]])
    assert np.all(np.asarray(dagrpo(r, score="reward", tau=0.5)) == 0.0)
    assert np.all(np.asarray(dagrpo(r, score="reward", tau=0.0))[1] == 0.0)


def test_dagrpo_embedding_distinctiveness_and_cross_label():
    e = np.asarray([[[1, 0], [1, 0], [0, 1]]], np.float32)
    r = np.asarray([[1.0, 0.0, 0.5]], np.float32)
    dist = 1.0 - np.einsum("pid,pjd->pij", e, e)
    out = dagrpo(jnp.asarray(r), score="reward", tau=0.5, distinctiveness="embedding",
                 embeddings=jnp.asarray(e))
    np.testing.assert_allclose(out, np_dagrpo(r, tau=0.5, dist=dist), atol=1e-6)
    # members 0 and 1 are textually identical: their pair is masked unless labels protect it.
    prot = dagrpo(jnp.asarray(r), score="reward", tau=0.5, distinctiveness="embedding",
                  embeddings=jnp.asarray(e), never_mask_cross_label=True,
                  correct=jnp.asarray([[True, False, False]]))
    np.testing.assert_allclose(prot, [[(1 + 0.5) / 2, (-1 - 0.5) / 2, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="embeddings"):
        dagrpo(jnp.asarray(r), score="reward", distinctiveness="embedding")


def test_dagrpo_score():
    s = dagrpo_score(jnp.asarray([[True, False]]), jnp.asarray([[0.4, 1.0]]), alpha=0.5)
    np.testing.assert_allclose(s, [[1.2, 0.5]], rtol=1e-6)


def test_dagrpo_transform_requires_fine_scores():
    ro = make_rollout(np.ones((2, 3)), fine=False)
    with pytest.raises(ValueError, match="fine_scores"):
        get_transform("dagrpo")(ro)
    a, diag = jax.jit(functools.partial(get_transform("dagrpo"), score="reward"))(ro)
    assert np.all(np.asarray(a) == 0.0)
    assert float(diag["frac_pairs_masked"]) == 1.0


@pytest.mark.parametrize("trigger,expect_fire", [("none_correct", [True, False, False]),
                          ("at_most_one_correct", [True, True, False]),
                          ("always", [True, True, True])])


def test_dagrpo_add_anchors(trigger, expect_fire):
    correct = np.asarray([[0, 0, 0], [1, 0, 0], [1, 1, 0]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, tc=6)
    ro = ro.replace(ref_logprobs=None)
    anchor_tokens = jnp.arange(3 * 8, dtype=jnp.int32).reshape(3, 8)
    anchor_mask = jnp.arange(8)[None, :] < jnp.asarray([[8], [3], [5]])
    out = jax.jit(functools.partial(add_anchors, trigger=trigger))(
        ro, anchor_tokens, anchor_mask, anchor_embeddings=jnp.eye(4)[:3])
    assert out.rewards.shape == (3, 4) and out.completion_tokens.shape == (3, 4, 8)
    np.testing.assert_array_equal(out.member_mask[:, 3], expect_fire)
    np.testing.assert_array_equal(out.is_anchor, np.tile([False] * 3 + [True], (3, 1)))
    assert np.all(np.asarray(out.logprobs[:, 3]) == 0.0)
    np.testing.assert_array_equal(out.completion_tokens[:, 3], anchor_tokens)
    np.testing.assert_array_equal(out.completion_mask[:, 3], anchor_mask)
    np.testing.assert_array_equal(out.completion_tokens[:, :3, :6], ro.completion_tokens)
    assert not np.any(out.completion_mask[:, :3, 6:])
    np.testing.assert_array_equal(out.correct[:, 3], True)
    np.testing.assert_allclose(out.rewards[:, 3], 1.0)
    np.testing.assert_allclose(out.fine_scores[:, 3], 1.0)
    # The advantage is computed with the group; an unfired anchor slot gets 0 and no say.
    a = np.asarray(jit_grpo(out.rewards, member_mask=out.member_mask))
    np.testing.assert_allclose(a, np_grpo(out.rewards, mask=np.asarray(out.member_mask)),
                               atol=1e-5)
    if trigger == "none_correct":
        assert a[0, 3] > 0 and np.all(a[0, :3] < 0)
        assert a[1, 3] == 0.0
        np.testing.assert_allclose(a[1, :3], np_grpo(ro.rewards)[1], atol=1e-5)


def test_dagrpo_add_anchors_errors():
    ro = make_rollout(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="anchor_embeddings"):
        add_anchors(ro, jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    ro2 = ro.replace(embeddings=None, ref_logprobs=jnp.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match="anchor_ref_logprobs"):
        add_anchors(ro2, jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="trigger"):
        add_anchors(ro.replace(embeddings=None), jnp.zeros((2, 4), jnp.int32),
                    jnp.ones((2, 4), bool), trigger="sometimes")


def test_dagrpo_add_anchors_jit():
    ro = make_rollout(np.zeros((2, 3)), emb=False)
    fn = jax.jit(lambda r, t, m: add_anchors(r, t, m))
    out = fn(ro, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    assert out.completion_tokens.shape == (2, 4, 6)
    np.testing.assert_array_equal(out.member_mask[:, 3], True)


# ---------------------------------------------------------------- ProGRPO / ARM



def test_progrpo_low_fraction_count_exact():
    n = jnp.asarray([0, 1, 4, 5, 6, 10, 15, 16, 100, 3584])
    from jaxgrpo.advantages.progrpo import low_fraction_count
    k = np.asarray(low_fraction_count(n, 0.2))
    np.testing.assert_array_equal(k, [1, 1, 1, 1, 2, 2, 3, 4, 20, 717])


@pytest.mark.parametrize("reading", ["low_fraction", "low_fraction_norm", "mean"])
def test_progrpo_answer_confidence(variant, reading):
    ro = make_rollout(np.zeros((3, 4)), tc=12, empty=(1, 2))
    fn = variant(functools.partial(answer_confidence, reading=reading, rho=0.2))
    out = fn(ro.logprobs, ro.completion_mask)
    np.testing.assert_allclose(out, np_answer_conf(ro.logprobs, ro.completion_mask, reading),
                               rtol=1e-5)
    assert float(out[1, 2]) == 1.0  # empty completion: defined value


@pytest.mark.parametrize("reading", ["mean", "low_fraction"])
def test_progrpo_prompt_confidence(reading):
    ro = make_rollout(np.zeros((4, 3)), tp=9, seed=3)
    out = prompt_confidence(ro.prompt_logprobs, ro.prompt_mask, reading=reading)
    np.testing.assert_allclose(out, np_prompt_conf(np.asarray(ro.prompt_logprobs),
                                                   np.asarray(ro.prompt_mask), reading),
                               rtol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_progrpo_transform_matches_numpy(gate):
    correct = np.asarray([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, tc=10)
    base = grpo(ro.rewards)
    fn = jax.jit(functools.partial(get_transform("progrpo"), alpha=0.7,
                                        gate_all_correct=gate))
    out, diag = fn(ro, base)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    ref = np_arm(np_grpo(ro.rewards), correct, ca, cq, alpha=0.7, gate_all_correct=gate)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[0] == 0.0)  # all-wrong group unchanged (0)
    assert (np.abs(np.asarray(out)[2]).max() > 0) != gate  # all-correct group gets a signal
    for v in diag.values():
        assert v.shape == () and np.isfinite(v)


def test_progrpo_group_mean_answer_reading_is_zero_mean():
    correct = np.asarray([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, tc=10)
    base = grpo(ro.rewards)
    out, _ = jax.jit(functools.partial(get_transform("progrpo"),
                                       prompt_confidence_reading="group_mean_answer"))(ro, base)
    np.testing.assert_allclose(np.asarray(out - base).sum(1), 0.0, atol=1e-6)


def test_progrpo_stop_gradient():
    correct = np.asarray([[1, 0, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct)

    def f(lp, plp):
        out, _ = get_transform("progrpo")(ro.replace(logprobs=lp, prompt_logprobs=plp),
                                           grpo(ro.rewards))
        return jnp.sum(out**2)

    g1, g2 = jax.jit(jax.grad(f, argnums=(0, 1)))(ro.logprobs, ro.prompt_logprobs)
    assert np.all(np.asarray(g1) == 0.0) and np.all(np.asarray(g2) == 0.0)


def test_progrpo_empty_completion_and_anchor_not_corrected():
    correct = np.asarray([[1, 0, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, empty=(0, 1))
    ro = ro.replace(is_anchor=jnp.asarray([[False, False, False, True]]))
    base = grpo(ro.rewards)
    out, _ = jax.jit(get_transform("progrpo"))(ro, base)
    d = np.asarray(out - base)
    assert d[0, 1] == 0.0 and d[0, 3] == 0.0 and d[0, 0] != 0.0
    out2, _ = jax.jit(functools.partial(get_transform("progrpo"), apply_to_anchors=True))(
        ro, base)
    assert np.asarray(out2 - base)[0, 3] != 0.0


def test_progrpo_arm_reweight_direct():
    # One-token answers with probabilities c(o|q) and two-token prompts whose one predicted
    # token has probability c(q) = 0.5, so both confidences are exact inputs.
    a = jnp.zeros((2, 2))
    correct = jnp.asarray([[True, True], [False, False]])
    ca = jnp.asarray([[0.9, 0.3], [0.5, 0.5]])
    plp = jnp.log(jnp.asarray([[1.0, 0.5], [1.0, 0.5]]))
    out = arm_reweight(a, correct.astype(jnp.float32), correct, jnp.log(ca)[..., None],
                       jnp.ones((2, 2, 1), bool), plp, jnp.ones((2, 2), bool),
                       answer_confidence_reading="mean")
    np.testing.assert_allclose(out, [[-0.4, 0.2], [0.0, 0.0]], atol=1e-6)


# ---------------------------------------------------------------- registry / composition



def test_registry_dra_then_grpo_then_progrpo():
    correct = np.asarray([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32) * 2.0, correct=correct, tc=8)
    fn = make_advantage_fn("grpo", ("dra",), ("progrpo",),
                           options={"grpo": {"eps": 1e-6}, "progrpo": {"alpha": 0.5}})
    adv, diag = jax.jit(fn)(ro)
    tilde = np_dra(ro.rewards, ro.embeddings, floor=0.1)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    ref = np_arm(np_grpo(tilde, eps=1e-6), correct, ca, cq, alpha=0.5)
    np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-5)
    assert adv.shape == (3, 4)
    for k in ("dra/weight_mean", "grpo/frac_zero_spread_groups", "progrpo/correction_mean"):
        assert k in diag
    # The final advantages' statistics, once, over members (float64 reference).
    a64 = np.asarray(ref, np.float64).ravel()
    for k, want in (("mean", a64.mean()), ("abs_mean", np.abs(a64).mean()), ("std", a64.std()),
                    ("min", a64.min()), ("max", a64.max())):
        np.testing.assert_allclose(diag[f"adv/{k}"], want, rtol=1e-4, atol=1e-5)
    assert [k for k in diag if "adv_" in k or k.endswith("/adv_mean")] == []
    for v in diag.values():
        assert isinstance(v, jax.Array) and v.shape == ()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dagrpo"])
def test_registry_baselines_by_name(name):
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    adv, diag = jax.jit(make_advantage_fn(name))(ro)
    assert adv.shape == (2, 3) and np.all(np.isfinite(adv))
    assert np.all(np.asarray(adv)[1] == 0.0) or name == "dagrpo"


def test_registry_dagrpo_by_name_matches_function():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0, 0.0]]), seed=7)
    adv, diag = jax.jit(make_advantage_fn("dagrpo",
                                          options={"dagrpo": {"tau": 0.05, "alpha": 0.3}}))(ro)
    s = np.asarray(ro.correct, np.float64) + 0.3 * np.asarray(ro.fine_scores, np.float64)
    np.testing.assert_allclose(adv, np_dagrpo(s, tau=0.05), rtol=1e-5, atol=1e-6)
    assert "dagrpo/frac_pairs_masked" in diag


def test_registry_anchor_rollout_through_composition():
    correct = np.zeros((2, 3), bool)
    correct[1, 0] = True
    ro = make_rollout(correct.astype(np.float32), correct=correct, emb=False)
    ro = add_anchors(ro, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    adv, _ = jax.jit(make_advantage_fn("dr_grpo", advantage_transforms=("progrpo",)))(ro)
    base, _ = jax.jit(make_advantage_fn("dr_grpo"))(ro)
    assert adv[0, 3] > 0 and adv[1, 3] == 0.0
    # Group 0's own samples are all wrong: the anchor does not switch ARM on there.
    np.testing.assert_array_equal(adv[0], base[0])
    assert np.all(np.asarray(adv[1, :3] != base[1, :3]))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown advantage transform 'grpoo'"):
        make_advantage_fn("grpoo")
    with pytest.raises(ValueError, match="'drx'"):
        make_advantage_fn("grpo", reward_transforms=("drx",))
    with pytest.raises(ValueError, match="not a baseline"):
        make_advantage_fn("dra")
    with pytest.raises(ValueError, match="not a reward"):
        make_advantage_fn("grpo", reward_transforms=("progrpo",))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epsilon'\].*'grpo'"):
        make_advantage_fn("grpo", options={"grpo": {"epsilon": 1e-4}})
    with pytest.raises(ValueError, match="not in the chain"):
        make_advantage_fn("grpo", options={"dra": {"eps": 1e-6}})
    with pytest.raises(ValueError, match="twice"):
        make_advantage_fn("grpo", ("dra", "dra"))
    with pytest.raises(ValueError, match="no effect"):
        make_advantage_fn("dagrpo", ("dra",))
    make_advantage_fn("dagrpo", ("dra",), options={"dagrpo": {"score": "reward"}})


def test_registry_all_masked_completion_and_group():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), empty=(0, 1))
    ro = ro.replace(member_mask=jnp.asarray([[True, True, True], [False, False, False]]))
    adv, diag = jax.jit(make_advantage_fn("grpo", ("dra",), ("progrpo",)))(ro)
    assert np.all(np.isfinite(adv)) and np.all(np.asarray(adv)[1] == 0.0)
    assert all(np.isfinite(v) for v in diag.values())
    # The empty completion keeps its baseline advantage (no ARM correction).
    base, _ = jax.jit(make_advantage_fn("grpo", ("dra",)))(ro)
    assert float(adv[0, 1]) == float(base[0, 1])


def test_registry_nonfinite_reward_through_composition():
    ro = make_rollout(np.asarray([[1.0, np.nan, 0.0, 1.0]]))
    adv, diag = jax.jit(make_advantage_fn("grpo", ("dra",)))(ro)
    assert np.all(np.isfinite(adv)) and float(adv[0, 1]) == 0.0
    assert float(diag["grpo/frac_nonfinite_rewards"]) == 0.25


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


def np_arm_gate(a, rewards, correct, ca, cq, alpha=1.0, gate="reward_sum"):
    """METHODS §4: no correction where sum_k r_k = 0 (gate "reward_sum") or, as an option,
    where no correctness flag is set (gate "correct")."""
    out = np.array(a, np.float64)
    for p in range(out.shape[0]):
        off = (np.sum(rewards[p]) == 0) if gate == "reward_sum" else (not np.any(correct[p]))
        if not off:
            out[p] = out[p] + alpha * (cq[p] - ca[p])
    return out


@pytest.mark.parametrize("gate", ["reward_sum", "correct"])
def test_progrpo_gate(gate):
    # Group 0: no correct answer but a format reward (sum r > 0); group 1: rewards all 0 but a
    # correctness flag set (e.g. accuracy weight 0); group 2: both zero; group 3: both set.
    rewards = np.asarray([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.5]],
                         np.float32)
    correct = np.asarray([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    ro = make_rollout(rewards, correct=correct, tc=9, seed=22)
    base = grpo(ro.rewards)
    out, _ = jax.jit(functools.partial(get_transform("progrpo"), gate=gate))(ro, base)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    want = np_arm_gate(np_grpo(rewards), rewards, correct, ca, cq, gate=gate)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    d = np.abs(np.asarray(out - base)).max(1)
    assert (d[0] > 0) == (gate == "reward_sum") and (d[1] > 0) == (gate == "correct")
    assert d[2] == 0 and d[3] > 0


def test_progrpo_question_tokens_only():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), tp=8, seed=23)
    pm = np.asarray(ro.prompt_mask)
    qm = pm.copy()
    qm[:, -2:] = False  # the last two prompt tokens: the template's generation prompt
    qm[0, np.nonzero(pm[0])[0][:2]] = False  # and a system prefix on prompt 0
    ro = ro.replace(question_mask=jnp.asarray(qm))
    base = grpo(ro.rewards)
    out, diag = jax.jit(functools.partial(get_transform("progrpo"), prompt_tokens="question"))(
        ro, base)
    plp = np.asarray(ro.prompt_logprobs, np.float64)
    cq = np.ones(2)
    for p in range(2):
        pred = np.nonzero(pm[p])[0][1:]  # tokens with a prediction
        v = plp[p][[t for t in pred if qm[p, t]]]
        cq[p] = math.exp(v.mean()) if v.size else 1.0
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    np.testing.assert_allclose(out, np_arm(np_grpo(ro.rewards), np.asarray(ro.correct), ca, cq),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diag["prompt_confidence_mean"], cq.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="question_mask"):
        get_transform("progrpo")(ro.replace(question_mask=None), base, prompt_tokens="question")


def test_public_functions_return_diagnostics_on_request():
    r = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    adv, diag = grpo(r, return_diagnostics=True)
    np.testing.assert_allclose(adv, grpo(r))
    np.testing.assert_allclose(diag["frac_zero_spread_groups"], 0.5)
    e = make_rollout(np.ones((2, 3))).embeddings
    tilde, d = dra_reweight(r, e, return_diagnostics=True)
    np.testing.assert_allclose(tilde, dra_reweight(r, e))
    assert set(d) >= {"weight_mean", "frac_rows_floored"}


# ---------------------------------------------------------------- declared rollout needs


@pytest.mark.parametrize("chain,options,want", [
    (("grpo", (), ()), {}, set()),
    (("dr_grpo", (), ()), {}, set()),
    (("rloo", (), ()), {}, set()),
    (("grpo", ("dra",), ()), {}, {"embeddings"}),
    (("dagrpo", (), ()), {}, {"fine_scores"}),
    (("dagrpo", (), ()), {"dagrpo": {"score": "reward"}}, set()),
    (("dagrpo", (), ()), {"dagrpo": {"distinctiveness": "embedding"}},
     {"fine_scores", "embeddings"}),
    (("dagrpo", (), ()), {"dagrpo": {"score": "reward", "distinctiveness": "embedding"}},
     {"embeddings"}),
    (("grpo", (), ("progrpo",)), {}, {"prompt_logprobs"}),
    (("grpo", (), ("progrpo",)), {"progrpo": {"prompt_tokens": "question"}},
     {"prompt_logprobs", "question_mask"}),
    (("grpo", (), ("progrpo",)), {"progrpo": {"prompt_confidence_reading": "group_mean_answer"}},
     set()),
    (("dr_grpo", ("dra",), ("progrpo",)), {}, {"embeddings", "prompt_logprobs"}),
])
def test_required_inputs_and_one_step_with_exactly_those(chain, options, want):
    """The declared needs are what the chain reads: a rollout holding only those optional
    fields (prompt log-probs / question mask poisoned with NaN when not declared) gives finite
    advantages."""
    baseline, rt, at = chain
    need = required_inputs(baseline, rt, at, options)
    assert need == frozenset(want)
    correct = np.asarray([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct * 1.0, correct=correct)
    ro = ro.replace(
        embeddings=ro.embeddings if "embeddings" in need else None,
        fine_scores=ro.fine_scores if "fine_scores" in need else None,
        prompt_logprobs=(ro.prompt_logprobs if "prompt_logprobs" in need
                         else jnp.full_like(ro.prompt_logprobs, jnp.nan)),
        question_mask=ro.prompt_mask if "question_mask" in need else None)
    adv, diag = jax.jit(make_advantage_fn(baseline, rt, at, options))(ro)
    assert np.all(np.isfinite(np.asarray(adv)))


def test_every_registered_transform_declares_its_needs():
    from jaxgrpo.advantages.registry import ROLLOUT_INPUTS, available_transforms

    for name in available_transforms():
        t = get_transform(name)
        assert t.required_inputs() <= set(ROLLOUT_INPUTS), name


def test_register_checks_the_signature_and_needs():
    from jaxgrpo.advantages import registry

    def bad(rewards, scale=1.0):  # an option before `*`
        return rewards, {}

    with pytest.raises(ValueError, match="scale"):
        registry.register_transform("bad", "baseline", bad)
    with pytest.raises(ValueError, match="logits"):
        registry.register_transform("bad", "baseline", grpo, needs={"logits"})

    def emb_baseline(rewards, embeddings, *, k: float = 1.0):
        return k * rewards, {}

    registry.register_transform("emb_baseline", "baseline", emb_baseline)
    try:
        assert required_inputs("emb_baseline") == {"embeddings"}  # derived from the signature
    finally:
        registry._REGISTRY.pop("emb_baseline")
    assert "bad" not in registry._REGISTRY


def test_add_anchors_extends_truncated():
    ro = make_rollout(np.zeros((2, 3)), emb=False).replace(
        truncated=jnp.asarray([[True, False, True], [False, False, False]]))
    out = add_anchors(ro, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    np.testing.assert_array_equal(out.truncated, [[True, False, True, False],
                                                  [False, False, False, False]])


def test_question_token_mask_marks_the_question_in_the_templated_prompt(tiny_tokenizer):
    import ml_collections as mc

    from jaxgrpo.data import encode_prompts, question_token_mask

    rows = [{"question": "what is 12 + 30?"}, {"question": "The capital of France"}]
    cfg = mc.ConfigDict(dict(template="chat", prompt_format="{question}\nAnswer: ",
                             system_prompt="Let me think step by step.", max_prompt_tokens=64))
    pad = tiny_tokenizer.pad_token_id
    tokens, pmask, _ = encode_prompts(tiny_tokenizer, rows, cfg, pad)
    qm = question_token_mask(tiny_tokenizer, rows, cfg, tokens.shape[1])
    assert qm.shape == tokens.shape and not np.any(qm & ~pmask)
    for i, r in enumerate(rows):
        q_ids = tokens[i][qm[i]]
        assert tiny_tokenizer.decode(q_ids.tolist()).strip() == r["question"]
        assert qm[i].sum() < pmask[i].sum()  # template and instructions are not question tokens
    cfg.max_prompt_tokens = 6  # truncation keeps the end of the prompt: no question token left
    tokens, pmask, _ = encode_prompts(tiny_tokenizer, rows, cfg, pad)
    qm = question_token_mask(tiny_tokenizer, rows, cfg, tokens.shape[1])
    assert qm.shape == tokens.shape and not np.any(qm & ~pmask)
