"""Tests for jaxgrpo.advantages.dagrpo (DaGRPO baseline, scores, anchors) against independent NumPy
float64 references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from jaxgrpo.advantages import add_anchors, dagrpo, get_transform
from jaxgrpo.advantages.dagrpo import dagrpo_score
from tests.advantages._helpers import (group_rewards, HYP, jit_dr_grpo, jit_grpo, make_rollout,
                                       np_dagrpo, np_grpo)


jit_dagrpo = jax.jit(functools.partial(dagrpo, score="reward"),
                     static_argnames=("tau", "tau_mode", "normalizer"))


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


def test_add_anchors_extends_truncated():
    ro = make_rollout(np.zeros((2, 3)), emb=False).replace(
        truncated=jnp.asarray([[True, False, True], [False, False, False]]))
    out = add_anchors(ro, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    np.testing.assert_array_equal(out.truncated, [[True, False, True, False],
                                                  [False, False, False, False]])
