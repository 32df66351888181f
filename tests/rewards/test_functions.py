"""Tests for jaxgrpo.rewards.functions: reward functions against hand values, reference formulas
(open-r1, TRL) and make_reward_fn."""
from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxgrpo.rewards import functions as fn


# --------------------------------------------------------------------------- reward functions


def _ref_cosine(correct, n, min_w=0.0, max_w=-0.5, min_c=0.5, max_c=1.0, max_len=1000):
    """Line-for-line port of Open-R1 / DRA-GRPO get_cosine_scaled_reward's inner formula."""
    progress = n / max_len
    cosine = math.cos(progress * math.pi)
    if correct:
        min_value, max_value = min_c, max_c
    else:
        min_value, max_value = max_w, min_w
    return min_value + 0.5 * (max_value - min_value) * (1.0 + cosine)


def test_cosine_hand_values():
    r = fn.cosine_scaled_reward([1, 1, 1, 0, 0, 0, 1], [0, 500, 1000, 0, 500, 1000, 2000])
    np.testing.assert_allclose(r, [1.0, 0.75, 0.5, 0.0, -0.25, -0.5, 1.0], atol=1e-7)
    r = fn.cosine_scaled_reward([1, 0], [2000, 2000], clip=True)
    np.testing.assert_allclose(r, [0.5, -0.5], atol=1e-7)
    r = fn.cosine_scaled_reward([0, 0], [10, 10], gold_unparsed=[True, False])
    assert r[0] == 1.0 and r[1] < 0
    assert r.dtype == np.float32


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), min_size=1, max_size=20),
       st.floats(-2, 0), st.floats(-2, 0), st.floats(0, 2), st.floats(0, 2),
       st.integers(1, 4000))
def test_cosine_matches_reference(items, a, b, c, d, max_len):
    correct = [x for x, _ in items]
    lengths = [n for _, n in items]
    got = fn.cosine_scaled_reward(correct, lengths, a, b, c, d, max_len)
    want = [_ref_cosine(x, n, a, b, c, d, max_len) for x, n in items]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


OPEN_R1_FORMAT = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x"]),
                max_size=12))
def test_think_answer_format_equals_open_r1_regex(parts):
    text = "".join(parts)
    want = float(OPEN_R1_FORMAT.match(text) is not None)
    assert fn.format_reward([text], style="think_answer")[0] == want


def test_format_styles():
    texts = ["<think>\nreason\n</think>\n<answer>\\boxed{3}</answer>",
             "<think>reason</think><answer>3</answer>",
             "no tags \\boxed{4}",
             "\n</think>\n twice \n</think>\n"]
    np.testing.assert_array_equal(fn.format_reward(texts), [1, 0, 0, 0])  # DRA default
    np.testing.assert_array_equal(fn.format_reward(texts, style="think_answer"), [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="boxed"), [1, 0, 1, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="answer_tag"), [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="regex", pattern=r"reason"),
                                  [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.tag_count_reward(texts), [1, 0, 0, 0])
    long = "<think>" + "</think>" * 5000 + "<answer>"
    t0 = time.perf_counter()
    assert fn.format_reward([long], style="think_answer")[0] == 0
    assert time.perf_counter() - t0 < 0.2


def test_make_reward_fn_validation():
    with pytest.raises(ValueError, match=r"\['bogus', 'nope'\]"):
        fn.make_reward_fn([fn.RewardSpec("format"), fn.RewardSpec("bogus"),
                           fn.RewardSpec("nope")])
    with pytest.raises(ValueError, match="max_lenn"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"max_lenn": 3})])
    with pytest.raises(ValueError, match="format style"):
        fn.make_reward_fn([fn.RewardSpec("format", 1.0, {"style": "fancy"})])
    with pytest.raises(ValueError, match="max_len"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"max_len": 0})])
    with pytest.raises(ValueError, match="duplicate"):
        fn.make_reward_fn([("format", 1.0), ("format", 2.0)])
    with pytest.raises(ValueError, match="length_unit"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"length_unit": "words"})])


def test_dra_reward_combination(verifier):
    """format x1 + cosine x2 (DRA-GRPO), checked against an independent computation."""
    comps = [
        "<think>\nshort\n</think>\n<answer>\\boxed{\\frac{1}{2}}</answer>",  # right, formatted
        "<think>\n" + "long " * 300 + "\n</think>\n<answer>\\boxed{0.5}</answer>",  # right, long
        "<think>\nwrong\n</think>\n<answer>\\boxed{3}</answer>",  # wrong, formatted
        "no format, \\boxed{1/2}",  # right, unformatted
        "nothing",  # no answer
        "\\boxed{2}",  # unparsable gold
    ]
    golds = ["0.5", "1/2", "0.5", "0.5", "0.5", ""]
    rf = fn.make_reward_fn(fn.DRA_REWARDS, verifier=verifier)
    out = rf(comps, golds)
    correct = [1, 1, 0, 1, 0, 0]
    fmt = [1, 1, 1, 0, 0, 0]
    cos = [_ref_cosine(c, len(t)) for c, t in zip(correct, comps)]
    cos[5] = 1.0  # the reference gives 1.0 when the gold does not parse
    want = np.asarray(fmt) + 2 * np.asarray(cos)
    np.testing.assert_allclose(out.rewards, want, rtol=1e-6)
    np.testing.assert_allclose(out.components["cosine"], cos, rtol=1e-6)
    np.testing.assert_array_equal(out.components["format"], fmt)
    np.testing.assert_array_equal(out.correct, correct)
    assert out.rewards.dtype == np.float32 and out.stats["n_gold_unparsed"] == 1
    # Options: token lengths, clipping, gold-unparsed as wrong, accuracy term.
    rf2 = fn.make_reward_fn(
        [("accuracy", 0.5, {"gold_unparsed_reward": None}),
         ("cosine", 1.0, {"length_unit": "tokens", "max_len": 10, "clip": True,
                          "gold_unparsed_reward": None})], verifier=verifier)
    out2 = rf2(comps, golds, lengths=[5, 20, 5, 0, 3, 1])
    cos2 = [_ref_cosine(c, min(n, 10), max_len=10) for c, n in zip(correct, [5, 20, 5, 0, 3, 1])]
    np.testing.assert_allclose(out2.rewards, 0.5 * np.asarray(correct) + np.asarray(cos2),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="golds"):
        rf(comps)


def test_reward_fn_without_correctness_needs_no_pool():
    rf = fn.make_reward_fn([("format", 1.0, {"style": "boxed"}), ("tag_count", 0.5)])
    out = rf(["\\boxed{1}", "<think>\nx\n</think>\n"])
    np.testing.assert_allclose(out.rewards, [1.0, 0.5])
    assert rf._verifier is None and out.correct is None


def test_register_custom_reward():
    name = "length_penalty_test"
    fn.register_reward(name, lambda inp, scale=1.0: -scale * inp.lengths_chars, options=("scale",))
    try:
        rf = fn.make_reward_fn([(name, 2.0, {"scale": 0.5})])
        np.testing.assert_allclose(rf(["ab", "abcd"]).rewards, [-2.0, -4.0])
        with pytest.raises(ValueError, match="already"):
            fn.register_reward(name, lambda inp: inp.lengths_chars)
    finally:
        del fn.REWARD_REGISTRY[name]


# ------------------------------------------------------------------------------ overlong


def _trl_soft_overlong(completion_ids, max_completion_len, soft_punish_cache):
    """trl/rewards/other_rewards.py get_soft_overlong_punishment, verbatim logic."""
    rewards = []
    for ids in completion_ids:
        completion_length = len(ids)
        if completion_length <= max_completion_len - soft_punish_cache:
            rewards.append(0.0)
        elif max_completion_len - soft_punish_cache < completion_length <= max_completion_len:
            rewards.append((max_completion_len - soft_punish_cache - completion_length)
                           / soft_punish_cache)
        else:
            rewards.append(-1.0)
    return rewards


def test_soft_overlong_punishment_matches_trl():
    lengths = np.arange(0, 40)
    want = _trl_soft_overlong([[0] * n for n in lengths], 32, 8)
    got = fn.soft_overlong_punishment(lengths, max_len=32, buffer_len=8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[24] == 0.0 and got[28] == -0.5 and got[32] == -1.0 and got[39] == -1.0
    # verl's DAPO manager: penalty_factor * min(-(L - (L_max - buffer)) / buffer, 0)
    verl = np.minimum(-(lengths - (32 - 8)) / 8 * 1.0, 0.0)
    np.testing.assert_allclose(got[:33], verl[:33], rtol=1e-6)
    with pytest.raises(ValueError, match="buffer_len"):
        fn.soft_overlong_punishment(lengths, max_len=8, buffer_len=8)


def test_overlong_reward_in_tokens_through_make_reward_fn():
    r = fn.make_reward_fn([("format", 1.0, {"style": "boxed"}),
                           ("overlong", 0.5, {"max_len": 10, "buffer_len": 4})])
    out = r(["\\boxed{1}", "\\boxed{2}", "x"], lengths=[3, 8, 10])
    np.testing.assert_allclose(out.components["overlong"], [0.0, -0.5, -1.0])
    np.testing.assert_allclose(out.rewards, [1.0, 1.0 - 0.25, -0.5])
    with pytest.raises(ValueError, match="lengths"):
        r(["a"])
    with pytest.raises(ValueError, match="buffer_len"):
        fn.make_reward_fn([("overlong", 1.0)])


def test_overlong_config_checks():
    from jaxgrpo.experiment import base_config, validate

    c = base_config()
    c.rewards.overlong = 1.0
    with pytest.raises(ValueError, match="rewards.overlong_buffer"):
        validate(c)
    c.rewards.overlong_buffer = c.sampling.max_new_tokens
    with pytest.raises(ValueError, match="sampling.max_new_tokens"):
        validate(c)
    c.rewards.overlong_buffer = 8
    validate(c)
    c.rewards.overlong = -1.0
    with pytest.raises(ValueError, match="rewards.overlong"):
        validate(c)
