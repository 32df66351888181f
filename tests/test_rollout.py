"""Tests for jaxgrpo.rollout on small hand-made Rollouts: the update's completion width, trimming,
TRL's truncated-completion mask, and the group selection of dynamic sampling."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.rollout import (Rollout, completion_width, concat_groups, group_has_spread,
                             mask_truncated_completions, take_groups, trim_completions)


def _rollout(p=3, g=2, tp=2, tc=5, **fields):
    """Every array holds its own coordinates so that a moved or dropped element shows."""
    base = dict(
        prompt_tokens=jnp.arange(p * tp, dtype=jnp.int32).reshape(p, tp) + 1,
        prompt_mask=jnp.ones((p, tp), bool),
        completion_tokens=jnp.arange(p * g * tc, dtype=jnp.int32).reshape(p, g, tc),
        completion_mask=jnp.ones((p, g, tc), bool),
        logprobs=-jnp.arange(p * g * tc, dtype=jnp.float32).reshape(p, g, tc),
        prompt_logprobs=jnp.full((p, tp), -0.5, jnp.float32),
        rewards=jnp.arange(p * g, dtype=jnp.float32).reshape(p, g),
        correct=jnp.zeros((p, g), bool), member_mask=jnp.ones((p, g), bool),
        is_anchor=jnp.zeros((p, g), bool))
    base.update(fields)
    return Rollout(**base)


def test_completion_width_buckets_by_hand():
    # max_new_tokens 32 in 4 buckets: widths 8, 16, 24, 32
    assert [completion_width(n, 32, 4) for n in (1, 8, 9, 16, 17, 25, 32)] == [
        8, 8, 16, 16, 24, 32, 32]
    # 20 in 3 buckets: ceil(20/3)=7 -> 8, ceil(40/3)=14 -> 16, the last is 20 itself (not 24)
    assert [completion_width(n, 20, 3) for n in (7, 8, 9, 16, 17, 20)] == [8, 8, 16, 16, 20, 20]
    assert completion_width(3, 32, 1) == 32  # one bucket: always max_new_tokens
    assert completion_width(40, 32, 4) == 32  # never wider than max_new_tokens


def test_trim_completions_cuts_the_completion_axis_only():
    ro = _rollout(ref_logprobs=jnp.ones((3, 2, 5), jnp.float32))
    out = trim_completions(ro, 3)
    assert out.completion_tokens.shape == (3, 2, 3) and out.ref_logprobs.shape == (3, 2, 3)
    np.testing.assert_array_equal(out.completion_tokens[1, 0], [10, 11, 12])
    np.testing.assert_array_equal(out.logprobs[2, 1], [-25, -26, -27])
    assert out.completion_mask.shape == (3, 2, 3)
    np.testing.assert_array_equal(out.prompt_tokens, ro.prompt_tokens)  # untouched
    assert trim_completions(ro, 5) is ro and trim_completions(ro, 8) is ro
    assert trim_completions(_rollout(), 2).ref_logprobs is None


def test_mask_truncated_completions_masks_whole_rows():
    mask = np.ones((3, 2, 5), bool)
    mask[0, 1, 3:] = False
    ro = _rollout(completion_mask=jnp.asarray(mask),
                  truncated=jnp.asarray([[True, False], [False, False], [False, True]]))
    out = np.asarray(mask_truncated_completions(ro).completion_mask)
    assert out.sum(-1).tolist() == [[0, 3], [5, 5], [5, 0]]
    np.testing.assert_array_equal(mask_truncated_completions(ro).rewards, ro.rewards)
    with pytest.raises(ValueError, match="rollout.truncated"):
        mask_truncated_completions(_rollout())


def test_group_has_spread_ignores_masked_members_and_anchors():
    rewards = jnp.asarray([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 2.0, 5.0], [0.0, 0.0, 3.0]])
    member = jnp.asarray([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
    anchor = jnp.asarray([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]], bool)
    ro = _rollout(p=4, g=3, rewards=rewards, member_mask=member, is_anchor=anchor)
    np.testing.assert_array_equal(group_has_spread(ro), [False, True, False, False])


def test_take_groups_reorders_every_field_on_the_prompt_axis():
    ro = _rollout(question_mask=jnp.asarray([[0, 1], [1, 1], [0, 0]], bool))
    out = take_groups(ro, [2, 0])
    np.testing.assert_array_equal(out.rewards, [[4, 5], [0, 1]])
    np.testing.assert_array_equal(out.prompt_tokens, [[5, 6], [1, 2]])
    np.testing.assert_array_equal(out.completion_tokens[0, 1], [25, 26, 27, 28, 29])
    np.testing.assert_array_equal(out.question_mask, [[0, 0], [0, 1]])
    assert out.embeddings is None


def test_concat_groups_left_pads_the_narrower_prompts():
    a = _rollout(p=1, tp=2)
    b = _rollout(p=2, tp=3)
    out = concat_groups([a, b])
    assert out.num_prompts == 3 and out.group_size == 2
    np.testing.assert_array_equal(out.prompt_tokens, [[0, 1, 2], [1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(out.prompt_mask, [[0, 1, 1], [1, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(out.prompt_logprobs[0], [0.0, -0.5, -0.5])
    np.testing.assert_array_equal(out.rewards, [[0, 1], [0, 1], [2, 3]])
    np.testing.assert_array_equal(out.completion_tokens[2], np.arange(10, 20).reshape(2, 5))
