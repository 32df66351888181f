"""Tests for jaxgrpo.rewards.token_rewards against a per-row Python reference."""
from __future__ import annotations

import numpy as np
import pytest


# ------------------------------------------------------------------------------ token reward


def _ref_digit_reward(toks, mask, tgt, tmask, ans_ids, eos, which, partial):
    """Plain-Python reference for one row."""
    seq = []
    for t, m in zip(toks, mask):
        if not m:
            continue
        if t == eos:
            break
        seq.append(t)
    ans = set(ans_ids)
    if which == "all":
        pred = [t for t in seq if t in ans]
    else:
        pred = []
        for t in reversed(seq):
            if t in ans:
                pred.append(t)
            elif pred:
                break
        pred = pred[::-1]
    target = [t for t, m in zip(tgt, tmask) if m]
    if partial:
        hits = sum(1 for i in range(min(len(pred), len(target))) if pred[i] == target[i])
        return hits / max(len(pred), len(target), 1)
    return float(pred == target)


@pytest.mark.parametrize("which", ["all", "last_run"])
@pytest.mark.parametrize("partial", [False, True])
def test_digit_match_reward_matches_reference(which, partial):
    import jax

    from jaxgrpo.rewards import token_rewards as tr

    rng = np.random.default_rng(0)
    n, t, length = 64, 12, 4
    ans_ids = np.arange(3, 8)  # five "digit" ids; 0 = pad, 1 = eos, 2 = other
    eos = 1
    toks = rng.integers(0, 9, size=(n, t)).astype(np.int32)
    mask = np.ones((n, t), bool)
    lens = rng.integers(0, t + 1, size=n)
    for i, L in enumerate(lens):
        mask[i, L:] = False
    tlens = rng.integers(0, length + 1, size=n)
    tgt = rng.integers(3, 8, size=(n, length)).astype(np.int32)
    tmask = np.arange(length)[None, :] < tlens[:, None]
    # Make some rows exact hits so both outcomes are exercised.
    for i in range(0, n, 4):
        k = tlens[i]
        toks[i, :k] = tgt[i, :k]
        toks[i, k] = eos
        mask[i, :k + 1] = True
    got = jax.jit(tr.digit_match_reward, static_argnames=("eos_id", "which", "partial_credit"))(
        toks, mask, tgt, tmask, ans_ids, eos_id=eos, which=which, partial_credit=partial)
    want = [_ref_digit_reward(toks[i], mask[i], tgt[i], tmask[i], ans_ids, eos, which, partial)
            for i in range(n)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert got.shape == (n,) and got.dtype == np.float32
    if not partial:
        assert 0 < np.asarray(got).sum() < n


def test_encode_digit_targets_and_arithmetic_example():
    from jaxgrpo.rewards import token_rewards as tr

    vocab = {str(d): 10 + d for d in range(10)} | {"-": 20}
    tgt, tmask = tr.encode_digit_targets(["-42", "7", "1,000"], vocab, max_len=5)
    np.testing.assert_array_equal(tgt[0, :3], [20, 14, 12])
    np.testing.assert_array_equal(tmask.sum(1), [3, 1, 4])
    eos, space = 2, 3
    comps = np.array([[20, 14, 12, eos, 0, 0],  # "-42<eos>": exact
                      [11, space, 17, eos, 0, 0],  # "1 7<eos>": all-digits "17" != "7"
                      [10 + 1, 10, 10, 10, 14, eos]], np.int32)  # "10004": 4 of 5 positions
    cmask = comps != 0
    ids = np.array(list(vocab.values()))
    exact = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos)
    np.testing.assert_array_equal(np.asarray(exact), [1, 0, 0])
    last = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos, which="last_run")
    np.testing.assert_array_equal(np.asarray(last), [1, 1, 0])
    part = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos, partial_credit=True)
    np.testing.assert_allclose(np.asarray(part), [1.0, 0.0, 4 / 5])
    with pytest.raises(ValueError):
        tr.encode_digit_targets(["123456"], vocab, max_len=5)
