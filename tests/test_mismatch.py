"""jaxgrpo.mismatch against float64 NumPy ports of TRL's and verl's arithmetic.

TRL: trl/trainer/grpo_trainer.py, `vllm_importance_sampling_correction` (commit f2cd577):
  diff = (old - sampling) * mask; sequence modes sum it over the row; ratio = exp(diff);
  *_truncate: clamp(ratio, C_min, C_max); *_mask: ratio outside [C_min, C_max] -> 0.
verl: verl/trainer/ppo/rollout_corr_helper.py `compute_rollout_correction_weights` (b178a3c):
  token: exp(clamp(log_ratio, -20, 20)); sequence: exp(clamp(masked_sum(log_ratio), -20, 20));
  times the mask, then clamp(max=rollout_is_threshold).
  Metrics `kl` = masked_mean(rollout - old), `k3_kl` = masked_mean(exp(r) - r - 1), r = old - rollout.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.mismatch import mismatch_metrics, sampler_correction_weights


def _batch(seed=0, n=8, t=9):
    rng = np.random.default_rng(seed)
    old = -rng.exponential(1.0, (n, t))
    sampler = old + rng.normal(0.0, 1.0, (n, t))  # ratios from ~0.1 to ~10: both bounds bite
    mask = np.ones((n, t), bool)
    for i, length in enumerate(rng.integers(1, t + 1, n)):
        mask[i, length:] = False
    return old, sampler, mask


def _trl(old, sampler, mask, mode, cmin, cmax):
    diff = (old - sampler) * mask
    if mode.startswith("sequence"):
        diff = np.broadcast_to(diff.sum(-1, keepdims=True), diff.shape)
    ratio = np.exp(diff)
    if mode.endswith("truncate"):
        return np.clip(ratio, -np.inf if cmin is None else cmin, cmax)
    lo = -np.inf if cmin is None else cmin
    return np.where((ratio < lo) | (ratio > cmax), 0.0, ratio)


def _verl(old, rollout, mask, level, threshold):
    log_ratio = old - rollout
    if level == "token":
        w = np.exp(np.clip(log_ratio, -20, 20))
    else:
        w = np.broadcast_to(np.exp(np.clip((log_ratio * mask).sum(-1, keepdims=True), -20, 20)),
                            log_ratio.shape)
    return np.minimum(w * mask, threshold)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate",
                                  "sequence_mask"])
@pytest.mark.parametrize("cmin", [None, 0.5])
def test_weights_equal_trl(mode, cmin):
    old, sampler, mask = _batch()
    ref = _trl(old, sampler, mask, mode, cmin, 3.0)
    got = sampler_correction_weights(jnp.asarray(old, jnp.float32), jnp.asarray(sampler, jnp.float32),
                                     jnp.asarray(mask), mode=mode, cap=3.0,
                                     floor=0.0 if cmin is None else cmin)
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got[mask], ref[mask], rtol=2e-6, atol=1e-7)
    assert np.all(got[~mask] == 0)  # padding carries no weight (TRL's loss masks it anyway)
    # both bounds matter in this batch, so the test would notice a missing clip / mask
    raw = _trl(old, sampler, mask, mode.split("_")[0] + "_truncate", None, np.inf)[mask]
    assert (raw > 3.0).any() and (raw < 0.5).any()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_weights_equal_verl(level):
    old, rollout, mask = _batch(seed=3)
    ref = _verl(old, rollout, mask, level, 2.0)
    got = sampler_correction_weights(jnp.asarray(old, jnp.float32), jnp.asarray(rollout, jnp.float32),
                                     jnp.asarray(mask), mode=f"{level}_truncate", cap=2.0)
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-6, atol=1e-7)


def test_sequence_log_weight_is_bounded():
    # 4,000 tokens each 0.01 apart: sum 40 > 20, exp would be 2e17; verl's bound keeps e^20.
    old = jnp.zeros((1, 4000))
    w = sampler_correction_weights(old, old - 0.01, jnp.ones((1, 4000), bool),
                                   mode="sequence_truncate", cap=np.inf)
    np.testing.assert_allclose(np.asarray(w)[0, 0], np.exp(20.0), rtol=1e-5)


def test_weights_carry_no_gradient_and_none_is_one():
    old, sampler, mask = (jnp.asarray(x) for x in _batch())

    def total(o):
        return jnp.sum(sampler_correction_weights(o, sampler, mask, mode="token_truncate",
                                                  cap=3.0))
    assert np.all(np.asarray(jax.grad(total)(old.astype(jnp.float32))) == 0)
    ones = sampler_correction_weights(old, sampler, mask, mode="none", cap=3.0)
    assert np.all(np.asarray(ones) == 1)
    with pytest.raises(ValueError, match="sampler correction mode"):
        sampler_correction_weights(old, sampler, mask, mode="token", cap=3.0)


def test_mismatch_metrics_equal_verl():
    old, rollout, mask = _batch(seed=5)
    r = (old - rollout)[mask]
    got = mismatch_metrics(jnp.asarray(old, jnp.float32), jnp.asarray(rollout, jnp.float32),
                           jnp.asarray(mask))
    np.testing.assert_allclose(float(got["mismatch/abs_mean"]), np.abs(r).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(got["mismatch/abs_max"]), np.abs(r).max(), rtol=1e-5)
    np.testing.assert_allclose(float(got["mismatch/kl"]), (-r).mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(got["mismatch/k3"]), (np.exp(r) - r - 1).mean(), rtol=1e-5)


def test_mismatch_metrics_small_gap_and_no_gap():
    # bf16-size gaps (1e-3) and float32-size gaps (1e-6): k3 ~ r^2 / 2 must not round to 0
    old = jnp.zeros((2, 3))  # exact in float32: r is eps itself
    for eps in (1e-3, 1e-6):
        got = mismatch_metrics(old + eps, old, jnp.ones((2, 3), bool))
        np.testing.assert_allclose(float(got["mismatch/k3"]), eps ** 2 / 2, rtol=2e-2)
        np.testing.assert_allclose(float(got["mismatch/abs_max"]), eps, rtol=1e-2)
    same = mismatch_metrics(old, old, jnp.zeros((2, 3), bool))
    assert all(float(v) == 0.0 for v in same.values())
