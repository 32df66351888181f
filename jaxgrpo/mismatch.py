"""The sampler / trainer gap: its size per step, and the importance weight that corrects for it.

The sampler scores each completion token on its own path (a prefill, then one-token decode steps
over a KV cache that may be bfloat16); the update scores the same tokens teacher-forced, chunked
and rematerialised. In float32 the two agree to ~1e-5; in bfloat16 they do not, so the update
takes pi_old from its own forward pass (``train.old_logprobs = "trainer"``) and keeps the
sampler's log-probs only for what this module computes:

* :func:`mismatch_metrics`: mean / max |log pi_trainer - log pi_sampler| over completion tokens
  and two estimates of KL(pi_sampler || pi_trainer) on the sampled tokens (verl
  ``rollout_corr`` metrics ``kl`` and ``k3_kl``).
* :func:`sampler_correction_weights`: the truncated or masked importance weight
  w = exp(log pi_old - log pi_sampler) of TRL's ``vllm_importance_sampling_correction``
  (modes ``token_truncate`` / ``token_mask`` / ``sequence_truncate`` / ``sequence_mask``, bounds
  ``[C_min, C_max]``) and verl's ``algorithm.rollout_correction.rollout_is`` (``token`` /
  ``sequence``, truncated above at ``rollout_is_threshold``: a ``*_truncate`` mode with
  ``floor = 0``). The loss multiplies it into the policy-gradient term (not the KL term), as
  both peers do; it is never differentiated.

Shapes: ``[N, T]`` log-probs and a boolean completion mask, N rows of T completion tokens.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

__all__ = ["SAMPLER_CORRECTIONS", "LOG_RATIO_BOUND", "sampler_correction_weights",
           "mismatch_sums", "metrics_from_sums", "mismatch_metrics"]

# "none" or "<level>_<constraint>", named as TRL's vllm_importance_sampling_mode.
SAMPLER_CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate",
                       "sequence_mask")
# |log w| is clamped here before exp (verl rollout_corr_helper SAFETY_BOUND): a sequence-level
# sum over thousands of tokens would otherwise overflow float32.
LOG_RATIO_BOUND = 20.0


def sampler_correction_weights(old_logprobs: jax.Array, sampler_logprobs: jax.Array,
                               mask: jax.Array, *, mode: str, cap: float,
                               floor: float = 0.0) -> jax.Array:
    """Importance weights [N, T] for tokens drawn by the sampler and trained as pi_old's.

    d_t = log pi_old(o_t) - log pi_sampler(o_t) on valid tokens; the log-weight is d_t
    (``token_*``) or the row's sum of d over its valid tokens, broadcast to its tokens
    (``sequence_*``); then w = exp(clip(log-weight, -20, 20)).
    ``*_truncate``: w = clip(w, floor, cap). ``*_mask``: w = 0 where w < floor or w > cap.
    Padding tokens get weight 0; the result carries no gradient. ``mode="none"``: all ones.
    """
    if mode not in SAMPLER_CORRECTIONS:
        raise ValueError(f"sampler correction mode must be one of {SAMPLER_CORRECTIONS}, "
                         f"got {mode!r}")
    m = mask.astype(bool)
    if mode == "none":
        return jnp.ones(old_logprobs.shape, jnp.float32)
    level, constraint = mode.split("_")
    d = jnp.where(m, old_logprobs.astype(jnp.float32) - sampler_logprobs.astype(jnp.float32),
                  0.0)
    if level == "sequence":
        d = jnp.broadcast_to(jnp.sum(d, axis=-1, keepdims=True), d.shape)
    w = jnp.exp(jnp.clip(d, -LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    if constraint == "truncate":
        w = jnp.clip(w, floor, cap)
    else:
        w = jnp.where((w < floor) | (w > cap), 0.0, w)
    return jax.lax.stop_gradient(jnp.where(m, w, 0.0))


def mismatch_sums(trainer_logprobs: jax.Array, sampler_logprobs: jax.Array,
                  mask: jax.Array) -> Dict[str, jax.Array]:
    """The sums behind :func:`mismatch_metrics` over the valid tokens ``mask``: ``count``,
    ``abs`` (sum |r|), ``abs_max``, ``kl`` (sum -r), ``k3`` (sum exp(r) - r - 1), with
    r_t = log pi_trainer(o_t) - log pi_sampler(o_t). Sums of several batches add up (maxima
    take the max), so a micro-batched update reports token means over its whole batch."""
    m = mask.astype(bool)
    r = jnp.where(m, trainer_logprobs.astype(jnp.float32) - sampler_logprobs.astype(jnp.float32),
                  0.0)
    # exp(r) - r - 1 cancels to rounding noise for the small gaps of interest (1e-6 .. 1e-2):
    # there its Taylor series (error < r^5 / 100) is exact in float32.
    series = r * r * (0.5 + r / 6.0 + r * r / 24.0)
    k3 = jnp.where(m, jnp.where(jnp.abs(r) < 1e-2, series, jnp.expm1(r) - r), 0.0)
    return {"count": jnp.sum(m).astype(jnp.float32), "abs": jnp.sum(jnp.abs(r)),
            "abs_max": jnp.max(jnp.abs(r)), "kl": jnp.sum(-r), "k3": jnp.sum(k3)}


def metrics_from_sums(sums: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """``mismatch/*`` token means (and the max) of :func:`mismatch_sums`' sums."""
    n = jnp.maximum(sums["count"], 1.0)
    return {"mismatch/abs_mean": sums["abs"] / n, "mismatch/abs_max": sums["abs_max"],
            "mismatch/kl": sums["kl"] / n, "mismatch/k3": sums["k3"] / n}


def mismatch_metrics(trainer_logprobs: jax.Array, sampler_logprobs: jax.Array,
                     mask: jax.Array) -> Dict[str, jax.Array]:
    """The gap between the trainer's and the sampler's log-probs of the sampled tokens.

    With r_t = log pi_trainer(o_t) - log pi_sampler(o_t) over valid tokens:
    ``mismatch/abs_mean`` = mean |r|, ``mismatch/abs_max`` = max |r|, ``mismatch/kl`` = mean(-r)
    (k1 estimate of KL(pi_sampler || pi_trainer): the tokens are the sampler's; verl ``kl``),
    ``mismatch/k3`` = mean(exp(r) - r - 1) (k3 estimate, >= 0; verl ``k3_kl``). Scalars, float32;
    0 when there is no valid token.
    """
    return metrics_from_sums(mismatch_sums(trainer_logprobs, sampler_logprobs, mask))
