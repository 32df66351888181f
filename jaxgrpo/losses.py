"""Policy-gradient losses for GRPO-style training (METHODS §1).

* Clipped surrogate with asymmetric clip (PPO, arXiv 1707.06347; GRPO, arXiv 2402.03300;
  clip-higher from DAPO, arXiv 2503.14476): per token  -min(rho A, clip(rho, 1-eps_low,
  1+eps_high) A),  rho = exp(log pi_theta - log pi_old).
* KL estimators to the reference policy (Schulman's k1/k2/k3; k3 is the DeepSeekMath / TRL
  choice).
* Off-policy anchor tokens (LUFFY, arXiv 2504.14945): behaviour probability 1, so the ratio is
  p = pi_theta(token), shaped f(p) = p / (p + gamma), gamma = 0.1, not clipped.
* Aggregation (:func:`aggregate_loss`) with EXPLICIT global normalisers, so that the loss value
  does not depend on how a batch is split into minibatches, accumulation steps or shards
  (verl ``agg_loss``; Dr.GRPO arXiv 2503.20783 for ``seq-mean-token-sum-norm``).

Layout: flat ``[N, T]`` (N sequences, T completion positions). Per-token functions return
UNREDUCED ``[N, T]`` arrays (padding positions hold finite junk; aggregation masks them).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

Scalar = Union[int, float, jax.Array]


def _broadcast_adv(advantages: jax.Array, shape) -> jax.Array:
    """Per-sequence [N] or per-token [N, T] advantages -> [N, T] float32."""
    a = jax.lax.stop_gradient(advantages).astype(jnp.float32)
    if a.ndim == 1:
        a = a[:, None]
    elif a.ndim != 2:
        raise ValueError(f"advantages must be [N] or [N, T]; got shape {advantages.shape}.")
    return jnp.broadcast_to(a, shape)


def importance_ratio(logprobs: jax.Array, old_logprobs: jax.Array) -> jax.Array:
    """rho = exp(log pi_theta - log pi_old), [N, T]; no gradient through ``old_logprobs``."""
    chex.assert_equal_shape([logprobs, old_logprobs])
    return jnp.exp(logprobs.astype(jnp.float32)
                   - jax.lax.stop_gradient(old_logprobs).astype(jnp.float32))


def clipped_surrogate(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, *,
                      eps_low: float = 0.2, eps_high: float = 0.2) -> jax.Array:
    """Per-token clipped surrogate loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), [N, T].

    Args:
      logprobs: [N, T] log pi_theta of the sampled tokens (differentiated).
      old_logprobs: [N, T] log pi_old (behaviour policy; treated as a constant).
      advantages: [N] per-sequence (broadcast over tokens) or [N, T]; treated as a constant.
      eps_low / eps_high: clip range (0.2 / 0.2 default; DAPO clip-higher uses eps_high = 0.28).
    """
    rho = importance_ratio(logprobs, old_logprobs)
    a = _broadcast_adv(advantages, rho.shape)
    return -jnp.minimum(rho * a, jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high) * a)


def anchor_surrogate(logprobs: jax.Array, advantages: jax.Array, *,
                     gamma: float = 0.1) -> jax.Array:
    """Per-token off-policy anchor loss -f(p) A with p = pi_theta(token), f(p) = p/(p + gamma).

    LUFFY policy shaping (arXiv 2504.14945): the behaviour probability of an expert token is
    taken as 1, so the ratio is p itself; f is not clipped. Gradient: -A gamma p/(p+gamma)^2 per
    unit log-prob, which up-weights low-probability tokens relative to plain p.
    """
    p = jnp.exp(logprobs.astype(jnp.float32))
    a = _broadcast_adv(advantages, p.shape)
    return -(p / (p + gamma)) * a


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, *, estimator: str = "k3",
               clamp: Optional[float] = None) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) estimate [N, T]; no gradient through ``ref_logprobs``.

    With d = log pi_theta - log pi_ref: k1 = d; k2 = d^2 / 2; k3 = exp(-d) + d - 1 (default; the
    DeepSeekMath / TRL choice). ``clamp`` optionally clips the value to [-clamp, clamp] (verl
    clamps k3 at 10); default None (no clamp, as TRL).
    """
    chex.assert_equal_shape([logprobs, ref_logprobs])
    d = logprobs.astype(jnp.float32) - jax.lax.stop_gradient(ref_logprobs).astype(jnp.float32)
    if estimator == "k1":
        kl = d
    elif estimator == "k2":
        kl = 0.5 * d**2
    elif estimator == "k3":
        kl = jnp.expm1(-d) + d  # = exp(-d) + d - 1, with less cancellation for small d
    else:
        raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}; got {estimator!r}.")
    if clamp is not None:
        kl = jnp.clip(kl, -clamp, clamp)
    return kl


def aggregate_loss(
    per_token: jax.Array,
    mask: jax.Array,
    *,
    mode: str,
    global_num_tokens: Optional[Scalar] = None,
    global_num_seqs: Optional[Scalar] = None,
    max_completion_length: Optional[Scalar] = None,
) -> jax.Array:
    """Reduces a per-token loss [N, T] to a scalar with explicit global normalisers.

    Modes (m = mask, n_i = sum_t m_it):
      * ``"seq-mean-token-mean"`` (GRPO): sum_i [sum_t m l / max(n_i, 1)] / global_num_seqs;
      * ``"token-mean"`` (DAPO): sum_{i,t} m l / global_num_tokens;
      * ``"seq-mean-token-sum-norm"`` (Dr.GRPO): sum_{i,t} m l / (global_num_seqs *
        max_completion_length).

    Pass the normalisers of the GLOBAL batch (all minibatch pieces, accumulation steps and
    shards of one optimiser step); then summing the values of the pieces gives the full-batch
    value. Left None, they are taken from this call's arrays (correct only when this call sees
    the whole batch): number of valid tokens, N, and T. A sequence with no valid token adds 0
    but still counts in global_num_seqs.
    """
    chex.assert_equal_shape([per_token, mask])
    m = mask.astype(jnp.float32)
    x = jnp.where(mask, per_token.astype(jnp.float32), 0.0)
    if mode == "token-mean":
        denom = jnp.sum(m) if global_num_tokens is None else global_num_tokens
        return jnp.sum(x) / jnp.maximum(jnp.asarray(denom, jnp.float32), 1.0)
    nseq = per_token.shape[0] if global_num_seqs is None else global_num_seqs
    nseq = jnp.maximum(jnp.asarray(nseq, jnp.float32), 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = jnp.sum(x, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
        return jnp.sum(per_seq) / nseq
    if mode == "seq-mean-token-sum-norm":
        lmax = per_token.shape[-1] if max_completion_length is None else max_completion_length
        return jnp.sum(x) / (nseq * jnp.asarray(lmax, jnp.float32))
    raise ValueError(f"aggregation mode must be one of {AGG_MODES}; got {mode!r}.")


def _masked_stats(x: jax.Array, mask: jax.Array) -> Dict[str, jax.Array]:
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    nn = jnp.maximum(n, 1.0)
    mean = jnp.sum(x * m) / nn
    var = jnp.sum(((x - mean) ** 2) * m) / nn
    has = n > 0
    return {
        "mean": jnp.where(has, mean, 0.0),
        "std": jnp.where(has, jnp.sqrt(var), 0.0),
        "min": jnp.where(has, jnp.min(jnp.where(mask, x, jnp.inf)), 0.0),
        "max": jnp.where(has, jnp.max(jnp.where(mask, x, -jnp.inf)), 0.0),
    }


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg_mode: str = "seq-mean-token-mean",
    global_num_tokens: Optional[Scalar] = None,
    global_num_seqs: Optional[Scalar] = None,
    max_completion_length: Optional[Scalar] = None,
    ref_logprobs: Optional[jax.Array] = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    kl_clamp: Optional[float] = None,
    is_anchor: Optional[jax.Array] = None,
    anchor_gamma: float = 0.1,
    token_entropy: Optional[jax.Array] = None,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """GRPO-family policy loss on flat [N, T] arrays: (scalar loss, metrics).

    loss = aggregate(surrogate + beta * kl), where surrogate is :func:`clipped_surrogate` on
    on-policy rows and :func:`anchor_surrogate` on anchor rows (``is_anchor``).

    Args:
      logprobs: [N, T] log pi_theta (the only differentiated input).
      old_logprobs: [N, T] log pi_old (0 on anchor rows).
      advantages: [N] or [N, T].
      mask: bool [N, T], valid completion tokens.
      eps_low, eps_high: clip range (see :func:`clipped_surrogate`).
      agg_mode, global_num_tokens, global_num_seqs, max_completion_length: see
        :func:`aggregate_loss`. Default ``"seq-mean-token-mean"`` (original GRPO).
      ref_logprobs: optional [N, T] log pi_ref; required when beta > 0.
      beta: KL weight (0 default: no reference model).
      kl_estimator, kl_clamp: see :func:`kl_penalty`.
      is_anchor: optional bool [N], off-policy anchor rows.
      anchor_gamma: LUFFY shaping gamma (0.1).
      token_entropy: optional [N, T] per-token policy entropy, for the metric only.

    Returns:
      ``(loss, metrics)``; metrics are jnp scalars computed over this call's tokens (no host
      sync): ``pg_loss``, ``kl_loss``, ``clip_frac_low`` (A < 0 and rho < 1 - eps_low),
      ``clip_frac_high`` (A > 0 and rho > 1 + eps_high), ``clip_frac``, ``ratio_{min,mean,max}``
      (on-policy tokens), ``kl_mean``, ``entropy_mean`` (if given), ``adv_{mean,std,min,max}``,
      ``anchor_token_frac``, ``anchor_prob_mean``, ``num_tokens``.
    """
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs.")
    mask = mask.astype(bool)
    n = logprobs.shape[0]
    anchor = (jnp.zeros((n,), bool) if is_anchor is None
              else jnp.asarray(is_anchor).astype(bool).reshape(n))
    anchor_tok = anchor[:, None] & mask
    onpol_tok = ~anchor[:, None] & mask

    rho = importance_ratio(logprobs, old_logprobs)
    a = _broadcast_adv(advantages, rho.shape)
    surr = clipped_surrogate(logprobs, old_logprobs, advantages, eps_low=eps_low,
                             eps_high=eps_high)
    if is_anchor is not None:
        surr = jnp.where(anchor[:, None], anchor_surrogate(logprobs, advantages, gamma=anchor_gamma),
                         surr)
    agg = dict(mode=agg_mode, global_num_tokens=global_num_tokens,
               global_num_seqs=global_num_seqs, max_completion_length=max_completion_length)
    pg_loss = aggregate_loss(surr, mask, **agg)
    metrics: Dict[str, jax.Array] = {}
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, estimator=kl_estimator, clamp=kl_clamp)
        kl_loss = aggregate_loss(kl, mask, **agg)
        metrics["kl_mean"] = _masked_stats(jax.lax.stop_gradient(kl), mask)["mean"]
    else:
        kl_loss = jnp.zeros((), jnp.float32)
    loss = pg_loss + beta * kl_loss

    sg_rho = jax.lax.stop_gradient(rho)
    nvalid_on = jnp.maximum(jnp.sum(onpol_tok), 1)
    low = onpol_tok & (a < 0) & (sg_rho < 1.0 - eps_low)
    high = onpol_tok & (a > 0) & (sg_rho > 1.0 + eps_high)
    rstats = _masked_stats(sg_rho, onpol_tok)
    astats = _masked_stats(a, mask)
    p_anchor = jnp.exp(jax.lax.stop_gradient(logprobs).astype(jnp.float32))
    metrics.update({
        "pg_loss": jax.lax.stop_gradient(pg_loss),
        "kl_loss": jax.lax.stop_gradient(kl_loss),
        "clip_frac_low": jnp.sum(low) / nvalid_on,
        "clip_frac_high": jnp.sum(high) / nvalid_on,
        "clip_frac": jnp.sum(low | high) / nvalid_on,
        "ratio_min": rstats["min"],
        "ratio_mean": rstats["mean"],
        "ratio_max": rstats["max"],
        "adv_mean": astats["mean"],
        "adv_std": astats["std"],
        "adv_min": astats["min"],
        "adv_max": astats["max"],
        "anchor_token_frac": jnp.sum(anchor_tok) / jnp.maximum(jnp.sum(mask), 1),
        "anchor_prob_mean": _masked_stats(p_anchor, anchor_tok)["mean"],
        "num_tokens": jnp.sum(mask).astype(jnp.float32),
    })
    if token_entropy is not None:
        chex.assert_equal_shape([token_entropy, mask])
        metrics["entropy_mean"] = _masked_stats(
            jax.lax.stop_gradient(token_entropy).astype(jnp.float32), mask)["mean"]
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return loss, metrics
