"""Policy-gradient losses for GRPO-style training (METHODS §1).

* Clipped surrogate with asymmetric clip (PPO, arXiv 1707.06347; GRPO, arXiv 2402.03300;
  clip-higher from DAPO, arXiv 2503.14476): per token  -min(rho A, clip(rho, 1-eps_low,
  1+eps_high) A),  rho = exp(log pi_theta - log pi_old). Options, each off by default:
  - importance-sampling level (:func:`log_importance_weights`): per token (PPO / GRPO), per
    sequence (GSPO, Zheng et al., arXiv 2507.18071; TRL ``importance_sampling_level=
    "sequence"``) or GSPO-token (the same sequence value with per-token gradients; verl
    ``policy_loss.loss_mode="gspo"``, Tunix ``loss_algo="gspo-token"``);
  - a clamp of the per-token log-ratio before the exponential (verl and Tunix clamp at +-20);
  - dual-clip (Ye et al., arXiv 1912.09729; verl ``clip_ratio_c``, 3.0 there): for A < 0 the
    loss is capped at ``clip_ratio_c * |A|``;
  - TRL's two-sided ``delta`` (INTELLECT-2, arXiv 2505.07291): the unclipped ratio is capped
    at ``delta`` before the min.
* KL estimators to the reference policy (Schulman's k1/k2/k3; k3 is the DeepSeekMath / TRL
  choice), with optional clamps (:data:`KL_CLAMP_PRESETS`: verl's ``low_var_kl`` clamps the
  log-ratio at +-20 and the k3 value at +-10).
* Off-policy anchor tokens (LUFFY, arXiv 2504.14945): behaviour probability 1, so the ratio is
  p = pi_theta(token), shaped f(p) = p / (p + gamma), gamma = 0.1, not clipped.
* Aggregation (:func:`aggregate_loss`) with EXPLICIT global normalisers, so that the loss value
  does not depend on how a batch is split into minibatches, accumulation steps or shards
  (verl ``agg_loss``; Dr.GRPO arXiv 2503.20783 for ``seq-mean-token-sum-norm``; TRL
  ``loss_type="bnpo"`` and ``"dapo"`` for the two per-batch token normalisers).

Layout: flat ``[N, T]`` (N sequences, T completion positions). Per-token functions return
UNREDUCED ``[N, T]`` arrays (padding positions hold finite junk; aggregation masks them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, NamedTuple, Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp

from jaxgrpo import config
from jaxgrpo.errors import ConfigError
from jaxgrpo.metrics import masked_stats
from jaxgrpo.mismatch import SAMPLER_CORRECTIONS

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "bnpo", "dapo")
DEFAULT_AGG_MODE = "token-mean"  # also config.loss.agg_mode's default (verl's default)
KL_ESTIMATORS = ("k1", "k2", "k3")
IS_LEVELS = ("token", "sequence", "gspo-token")
# (value clamp, log-ratio clamp) of the KL estimate; None = no clamp.
KL_CLAMP_PRESETS = {
    "none": (None, None),  # TRL, Tunix default
    "verl": (10.0, 20.0),  # verl kl_penalty(..., "low_var_kl"): log-ratio +-20, value +-10
}

Scalar = Union[int, float, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig(config.Section):
    """The clipped policy loss: the ``config.loss`` section, the options of :func:`policy_loss`.

    Numbers where 0 means off (``kl_clamp``, ``kl_log_ratio_clamp``, ``log_ratio_clamp``,
    ``clip_ratio_c``, ``delta``) are read through :func:`off`; ``kl_clamp_preset`` other than
    ``"none"`` sets both KL clamps (:func:`kl_clamps`). ``mask_truncated_completions`` is read by
    the update (``jaxgrpo.train``), which drops truncated completions before the loss.
    """

    NAME: ClassVar[str] = "loss"
    eps_low: float = config.key(0.2, 'lower clip range of the importance ratio', ge=0)
    eps_high: float = config.key(0.2, "upper clip range; 0.28 = DAPO's clip-higher", ge=0)
    beta: float = config.key(0.0, 'KL weight; 0 keeps no reference model', ge=0)
    kl_estimator: str = config.key(
        'k3', "per-token KL estimator (Schulman's k1 / k2 / k3)", choices=KL_ESTIMATORS)
    kl_clamp: float = config.key(0.0, '0 = no clamp of the per-token KL value', ge=0)
    kl_log_ratio_clamp: float = config.key(
        0.0, '0 = no clamp of log pi - log pi_ref before the estimator', ge=0)
    kl_clamp_preset: str = config.key(
        'none',
        '"verl": low_var_kl\'s clamps (log-ratio 20, value 10)',
        choices=tuple(KL_CLAMP_PRESETS))
    importance_sampling_level: str = config.key(
        'token',
        'Ratio level: "token" (PPO/GRPO), "sequence" (GSPO arXiv 2507.18071, TRL '
        'importance_sampling_level), "gspo-token" (verl loss_mode=gspo, Tunix loss_algo).',
        choices=IS_LEVELS)
    log_ratio_clamp: float = config.key(
        0.0, '0 = none; verl / Tunix clamp log pi - log pi_old at 20', ge=0)
    clip_ratio_c: float = config.key(
        0.0, 'dual-clip (verl clip_ratio_c, 3.0 there); 0 = off, else > 1', ge=0)
    delta: float = config.key(
        0.0, 'TRL two-sided clip `delta` (INTELLECT-2); 0 = off, else > 1', ge=0)
    agg_mode: str = config.key(
        DEFAULT_AGG_MODE,
        'token-mean | seq-mean-token-mean | seq-mean-token-sum-norm | bnpo | dapo '
        '(losses.AGG_MODES)',
        choices=AGG_MODES)
    anchor_gamma: float = config.key(0.1, "DaGRPO's anchor-token weight shaping", ge=0)
    mask_truncated_completions: bool = config.key(
        False,
        'TRL mask_truncated_completions: completions without EOS (cut at max_new_tokens) take '
        'part in the advantages but not in the loss nor its token / sequence normalisers.')
    sampler_correction: str = config.key(
        'none',
        "Importance correction for the sampler / trainer gap (needs train.pi_old='trainer'): "
        'the policy-gradient term of each token is multiplied by w = exp(log pi_old - log '
        "pi_sampler), per token or per sequence, truncated to [floor, cap] or masked outside it "
        "(TRL vllm_importance_sampling_mode; verl rollout_is = '<level>_truncate', floor 0); "
        '"none" = off (jaxgrpo.mismatch).',
        choices=SAMPLER_CORRECTIONS)
    sampler_correction_cap: float = config.key(
        3.0, "C_max of loss.sampler_correction (TRL's default 3; verl's rollout_is_threshold 2)",
        gt=0)
    sampler_correction_floor: float = config.key(
        0.0, 'C_min of loss.sampler_correction; 0 = none (TRL and verl)', ge=0)

    def __post_init__(self):
        if self.kl_clamp_preset != "none" and (self.kl_clamp or self.kl_log_ratio_clamp):
            raise ConfigError(
                f"config.loss.kl_clamp_preset={self.kl_clamp_preset!r} sets the KL clamps itself: "
                "leave config.loss.kl_clamp and config.loss.kl_log_ratio_clamp at 0")
        # verl asserts clip_ratio_c > 1; a cap at or below 1 would also cap on-policy tokens.
        for name in ("clip_ratio_c", "delta"):
            v = getattr(self, name)
            if v and v <= 1.0:
                raise ConfigError(f"config.loss.{name}={v} must be > 1 (or 0 = off)")
        if self.sampler_correction_floor >= self.sampler_correction_cap:
            raise ConfigError(
                f"config.loss.sampler_correction_floor={self.sampler_correction_floor} must be "
                f"below config.loss.sampler_correction_cap={self.sampler_correction_cap}")


def _broadcast_adv(advantages: jax.Array, shape) -> jax.Array:
    """Per-sequence [N] or per-token [N, T] advantages -> [N, T] float32."""
    a = jax.lax.stop_gradient(advantages).astype(jnp.float32)
    if a.ndim == 1:
        a = a[:, None]
    elif a.ndim != 2:
        raise ValueError(f"advantages must be [N] or [N, T]; got shape {advantages.shape}.")
    return jnp.broadcast_to(a, shape)


def log_importance_weights(logprobs: jax.Array, old_logprobs: jax.Array,
                           mask: Optional[jax.Array] = None, *, level: str = "token",
                           log_ratio_clamp: Optional[float] = None) -> jax.Array:
    """Log importance weights log w [N, T]; no gradient through ``old_logprobs``.

    With d_t = log pi_theta(y_t) - log pi_old(y_t) (clamped to [-log_ratio_clamp,
    log_ratio_clamp] first when given; verl and Tunix use 20):
      * ``"token"`` (PPO / GRPO): log w_t = d_t;
      * ``"sequence"`` (GSPO, arXiv 2507.18071 eq. 7; TRL ``importance_sampling_level=
        "sequence"``): log w_t = s = sum_t m_t d_t / max(sum_t m_t, 1), the length-normalised
        sequence log-ratio, the same for every token of a sequence (its gradient reaches every
        token through the mean);
      * ``"gspo-token"`` (GSPO-token, arXiv 2507.18071 eq. 13; verl ``loss_mode="gspo"``, Tunix
        ``loss_algo="gspo-token"``): log w_t = log pi_theta(y_t) - sg(log pi_theta(y_t)) + sg(s):
        the value of ``"sequence"`` with the gradient of log pi_theta(y_t) at token t only.

    ``mask`` (bool [N, T], valid tokens) is needed by the two sequence levels.
    """
    chex.assert_equal_shape([logprobs, old_logprobs])
    lp = logprobs.astype(jnp.float32)
    d = lp - jax.lax.stop_gradient(old_logprobs).astype(jnp.float32)
    if log_ratio_clamp is not None:
        d = jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)
    if level == "token":
        return d
    if level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IS_LEVELS}; got {level!r}.")
    if mask is None:
        raise ValueError(f"importance_sampling_level={level!r} needs the token mask.")
    chex.assert_equal_shape([logprobs, mask])
    m = mask.astype(jnp.float32)
    s = jnp.sum(d * m, axis=-1, keepdims=True) / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True),
                                                             1.0)
    if level == "sequence":
        return jnp.broadcast_to(s, d.shape)
    return lp - jax.lax.stop_gradient(lp) + jax.lax.stop_gradient(s)


def importance_ratio(logprobs: jax.Array, old_logprobs: jax.Array,
                     mask: Optional[jax.Array] = None, *, level: str = "token",
                     log_ratio_clamp: Optional[float] = None) -> jax.Array:
    """rho = exp(:func:`log_importance_weights`), [N, T] (default: per-token exp(log pi_theta -
    log pi_old)); no gradient through ``old_logprobs``."""
    return jnp.exp(log_importance_weights(logprobs, old_logprobs, mask, level=level,
                                          log_ratio_clamp=log_ratio_clamp))


def clipped_surrogate(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, *,
                      eps_low: float = 0.2, eps_high: float = 0.2,
                      mask: Optional[jax.Array] = None,
                      importance_sampling_level: str = "token",
                      log_ratio_clamp: Optional[float] = None,
                      clip_ratio_c: Optional[float] = None,
                      delta: Optional[float] = None) -> jax.Array:
    """Per-token clipped surrogate loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), [N, T].

    Args:
      logprobs: [N, T] log pi_theta of the sampled tokens (differentiated).
      old_logprobs: [N, T] log pi_old (behaviour policy; treated as a constant).
      advantages: [N] per-sequence (broadcast over tokens) or [N, T]; treated as a constant.
      eps_low / eps_high: clip range (0.2 / 0.2 default; DAPO clip-higher uses eps_high = 0.28;
        GSPO's paper uses 3e-4 / 4e-4 with sequence-level ratios).
      mask: bool [N, T] valid tokens (needed by the sequence importance-sampling levels).
      importance_sampling_level, log_ratio_clamp: how rho is formed, see
        :func:`log_importance_weights` (default: per token, no clamp).
      clip_ratio_c: dual-clip (arXiv 1912.09729; verl ``clip_ratio_c``, 3.0 there, must be > 1):
        where A < 0 the loss is min(that loss, -clip_ratio_c A), as verl
        ``compute_policy_loss_vanilla``. None (default): off.
      delta: TRL's two-sided clipping (``GRPOConfig.delta``, INTELLECT-2 arXiv 2505.07291): the
        unclipped term uses min(rho, delta); recommended > 1 + eps_high. None (default): off.
    """
    rho = importance_ratio(logprobs, old_logprobs, mask, level=importance_sampling_level,
                           log_ratio_clamp=log_ratio_clamp)
    a = _broadcast_adv(advantages, rho.shape)
    clipped = jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high)
    unclipped = rho if delta is None else jnp.minimum(rho, delta)
    loss = -jnp.minimum(unclipped * a, clipped * a)
    if clip_ratio_c is not None:
        loss = jnp.where(a < 0, jnp.minimum(loss, -clip_ratio_c * a), loss)
    return loss


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
               clamp: Optional[float] = None,
               log_ratio_clamp: Optional[float] = None) -> jax.Array:
    """Per-token KL(pi_theta || pi_ref) estimate [N, T]; no gradient through ``ref_logprobs``.

    With d = log pi_theta - log pi_ref: k1 = d; k2 = d^2 / 2; k3 = exp(-d) + d - 1 (default; the
    DeepSeekMath / TRL choice). ``log_ratio_clamp`` optionally clips d to [-c, c] first and
    ``clamp`` the value to [-clamp, clamp] last; verl's ``low_var_kl`` uses 20 and 10
    (:data:`KL_CLAMP_PRESETS`); default None (no clamp, as TRL).
    """
    chex.assert_equal_shape([logprobs, ref_logprobs])
    d = logprobs.astype(jnp.float32) - jax.lax.stop_gradient(ref_logprobs).astype(jnp.float32)
    if log_ratio_clamp is not None:
        d = jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)
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
    num_micro_batches: Scalar = 1,
    generation_num_tokens: Optional[Scalar] = None,
) -> jax.Array:
    """Reduces a per-token loss [N, T] to a scalar with explicit global normalisers.

    Modes (m = mask, n_i = sum_t m_it, l = per_token):
      * ``"token-mean"`` (verl default, DAPO): sum_{i,t} m l / global_num_tokens;
      * ``"seq-mean-token-mean"`` (GRPO; TRL ``"grpo"``): sum_i [sum_t m l / max(n_i, 1)] /
        global_num_seqs;
      * ``"seq-mean-token-sum-norm"`` (Dr.GRPO, arXiv 2503.20783; TRL ``"dr_grpo"``):
        sum_{i,t} m l / (global_num_seqs * max_completion_length);
      * ``"bnpo"`` (TRL ``loss_type="bnpo"``): sum_{i,t} m l / (max(sum m, 1) *
        num_micro_batches) - each micro-batch is normalised by ITS OWN token count and the
        micro-batches of one optimiser step are averaged (TRL divides by the accumulation
        steps). TRL counts the tokens of each device's micro-batch; here the micro-batch is the
        global one (all data shards), the same thing on one device.
      * ``"dapo"`` (DAPO arXiv 2503.14476 token-level loss; TRL ``loss_type="dapo"``, its
        default): sum_{i,t} m l / generation_num_tokens, the valid-token count of the WHOLE
        generation batch (the rollout), also when that batch feeds several optimiser steps
        (``train.num_minibatches`` > 1 or ``train.num_iterations`` > 1; TRL
        ``steps_per_generation`` > ``gradient_accumulation_steps``). With one optimiser step per
        rollout it equals ``"token-mean"``.

    Pass the normalisers of the GLOBAL batch (all minibatch pieces, accumulation steps and
    shards of one optimiser step; for ``"dapo"`` the whole rollout); then summing the values of
    the pieces gives the full-batch value (``"bnpo"`` is by definition not split-invariant).
    Left None, they are taken from this call's arrays (correct only when this call sees the
    whole batch): number of valid tokens, N, and T. A sequence with no valid token adds 0 but
    still counts in global_num_seqs.
    """
    chex.assert_equal_shape([per_token, mask])
    if mode not in AGG_MODES:
        raise ValueError(f"aggregation mode must be one of {AGG_MODES}; got {mode!r}.")
    m = mask.astype(jnp.float32)
    x = jnp.where(mask, per_token.astype(jnp.float32), 0.0)

    def norm(v):
        return jnp.maximum(jnp.asarray(v, jnp.float32), 1.0)

    if mode == "token-mean":
        return jnp.sum(x) / norm(jnp.sum(m) if global_num_tokens is None else global_num_tokens)
    if mode == "bnpo":
        return jnp.sum(x) / (norm(jnp.sum(m)) * jnp.asarray(num_micro_batches, jnp.float32))
    if mode == "dapo":
        return jnp.sum(x) / norm(jnp.sum(m) if generation_num_tokens is None
                                 else generation_num_tokens)
    nseq = norm(per_token.shape[0] if global_num_seqs is None else global_num_seqs)
    if mode == "seq-mean-token-mean":
        per_seq = jnp.sum(x, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
        return jnp.sum(per_seq) / nseq
    lmax = per_token.shape[-1] if max_completion_length is None else max_completion_length
    return jnp.sum(x) / (nseq * jnp.asarray(lmax, jnp.float32))


class LossNorms(NamedTuple):
    """The global normalisers of :func:`aggregate_loss` for one call (None: from the call's own
    arrays); see there. Values may be traced scalars."""

    global_num_tokens: Optional[Scalar] = None
    global_num_seqs: Optional[Scalar] = None
    max_completion_length: Optional[Scalar] = None
    num_micro_batches: Scalar = 1
    generation_num_tokens: Optional[Scalar] = None


def off(v) -> Optional[float]:
    """A config number where 0 means "off" -> None, else float."""
    return None if not v else float(v)


def kl_clamps(cfg: LossConfig) -> Tuple[Optional[float], Optional[float]]:
    """``(value clamp, log-ratio clamp)`` of the KL estimate: the preset's
    (:data:`KL_CLAMP_PRESETS`) unless it is ``"none"``, else ``kl_clamp`` / ``kl_log_ratio_clamp``
    (0: off)."""
    if cfg.kl_clamp_preset != "none":
        return KL_CLAMP_PRESETS[cfg.kl_clamp_preset]
    return off(cfg.kl_clamp), off(cfg.kl_log_ratio_clamp)


def _check_inputs(logprobs, old_logprobs, mask, cfg: LossConfig, ref_logprobs) -> None:
    chex.assert_rank([logprobs, old_logprobs, mask], 2)
    chex.assert_equal_shape([logprobs, old_logprobs, mask])
    if cfg.beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs.")


def _per_token_surrogate(logprobs, old_logprobs, advantages, mask, anchor, is_anchor,
                         cfg: LossConfig, is_weights=None) -> jax.Array:
    """[N, T]: :func:`clipped_surrogate` on on-policy rows (times ``is_weights``, the sampler
    correction's constant weights, when given), :func:`anchor_surrogate` on anchor rows
    (``is_anchor`` given)."""
    surr = clipped_surrogate(logprobs, old_logprobs, advantages, eps_low=cfg.eps_low,
                             eps_high=cfg.eps_high, mask=mask,
                             importance_sampling_level=cfg.importance_sampling_level,
                             log_ratio_clamp=off(cfg.log_ratio_clamp),
                             clip_ratio_c=off(cfg.clip_ratio_c), delta=off(cfg.delta))
    if is_weights is not None:
        surr = surr * jax.lax.stop_gradient(is_weights).astype(surr.dtype)
    if is_anchor is not None:
        surr = jnp.where(anchor[:, None],
                         anchor_surrogate(logprobs, advantages, gamma=cfg.anchor_gamma), surr)
    return surr


def _kl_term(logprobs, ref_logprobs, mask, cfg: LossConfig, agg: Dict[str, Any]):
    """``(kl_loss, metrics)``: the aggregated KL estimate and its ``kl_mean`` (0 and no metric
    without ``ref_logprobs``)."""
    if ref_logprobs is None:
        return jnp.zeros((), jnp.float32), {}
    clamp, log_ratio_clamp = kl_clamps(cfg)
    kl = kl_penalty(logprobs, ref_logprobs, estimator=cfg.kl_estimator, clamp=clamp,
                    log_ratio_clamp=log_ratio_clamp)
    kl_mean = masked_stats(jax.lax.stop_gradient(kl), mask)["mean"]
    return aggregate_loss(kl, mask, **agg), {"kl_mean": kl_mean}


def _ratio_metrics(logprobs, rho, advantages, mask, anchor, cfg: LossConfig
                   ) -> Dict[str, jax.Array]:
    """Clip fractions and ratio statistics over on-policy tokens, anchor statistics."""
    anchor_tok = anchor[:, None] & mask
    onpol_tok = ~anchor[:, None] & mask
    a = _broadcast_adv(advantages, rho.shape)
    sg_rho = jax.lax.stop_gradient(rho)
    nvalid_on = jnp.maximum(jnp.sum(onpol_tok), 1)
    low = onpol_tok & (a < 0) & (sg_rho < 1.0 - cfg.eps_low)
    high = onpol_tok & (a > 0) & (sg_rho > 1.0 + cfg.eps_high)
    clip_ratio_c = off(cfg.clip_ratio_c)
    if clip_ratio_c is not None:
        dual = onpol_tok & (a < 0) & (sg_rho > clip_ratio_c)
    else:
        dual = jnp.zeros_like(onpol_tok)
    rstats = masked_stats(sg_rho, onpol_tok)
    p_anchor = jnp.exp(jax.lax.stop_gradient(logprobs).astype(jnp.float32))
    return {
        "clip_frac_low": jnp.sum(low) / nvalid_on,
        "clip_frac_high": jnp.sum(high) / nvalid_on,
        "clip_frac": jnp.sum(low | high) / nvalid_on,
        "dual_clip_frac": jnp.sum(dual) / nvalid_on,
        "ratio_min": rstats["min"],
        "ratio_mean": rstats["mean"],
        "ratio_max": rstats["max"],
        "anchor_token_frac": jnp.sum(anchor_tok) / jnp.maximum(jnp.sum(mask), 1),
        "anchor_prob_mean": masked_stats(p_anchor, anchor_tok)["mean"],
        "num_tokens": jnp.sum(mask).astype(jnp.float32),
    }


def policy_loss(
    logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array,
    config: LossConfig = LossConfig(),
    *,
    norms: LossNorms = LossNorms(),
    ref_logprobs: Optional[jax.Array] = None,
    is_anchor: Optional[jax.Array] = None,
    token_entropy: Optional[jax.Array] = None,
    is_weights: Optional[jax.Array] = None,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """GRPO-family policy loss on flat [N, T] arrays: (scalar loss, metrics).

    loss = aggregate(surrogate + beta * kl), where surrogate is :func:`clipped_surrogate` on
    on-policy rows and :func:`anchor_surrogate` on anchor rows (``is_anchor``).

    Args:
      logprobs: [N, T] log pi_theta (the only differentiated input).
      old_logprobs: [N, T] log pi_old (0 on anchor rows).
      advantages: [N] or [N, T].
      mask: bool [N, T], valid completion tokens.
      config: the options (:class:`LossConfig`; defaults: PPO's per-token ratio clipped at 0.2,
        ``"token-mean"`` aggregation, no KL term). norms: the aggregation's global normalisers.
      ref_logprobs: optional [N, T] log pi_ref; required when ``config.beta > 0``.
      is_anchor: optional bool [N], off-policy anchor rows.
      token_entropy: optional [N, T] per-token policy entropy, for the metric only.
      is_weights: optional [N, T] constant weights of the on-policy policy-gradient term (the
        sampler correction, ``jaxgrpo.mismatch``; not the KL term, as TRL and verl).

    Returns:
      ``(loss, metrics)``; metrics are jnp scalars computed over this call's tokens (no host
      sync): ``pg_loss``, ``kl_loss``, ``clip_frac_low`` (A < 0 and rho < 1 - eps_low),
      ``clip_frac_high`` (A > 0 and rho > 1 + eps_high), ``clip_frac``, ``dual_clip_frac`` (A < 0
      and the dual clip is active; 0 without it), ``ratio_{min,mean,max}`` (on-policy tokens;
      rho at the chosen importance-sampling level), ``kl_mean``, ``entropy_mean`` (if given),
      ``anchor_token_frac``, ``anchor_prob_mean``, ``num_tokens``.
    """
    cfg = config
    _check_inputs(logprobs, old_logprobs, mask, cfg, ref_logprobs)
    mask = mask.astype(bool)
    n = logprobs.shape[0]
    anchor = (jnp.zeros((n,), bool) if is_anchor is None
              else jnp.asarray(is_anchor).astype(bool).reshape(n))
    rho = importance_ratio(logprobs, old_logprobs, mask, level=cfg.importance_sampling_level,
                           log_ratio_clamp=off(cfg.log_ratio_clamp))
    surr = _per_token_surrogate(logprobs, old_logprobs, advantages, mask, anchor, is_anchor, cfg,
                                is_weights)
    agg = dict(mode=cfg.agg_mode, **norms._asdict())
    pg_loss = aggregate_loss(surr, mask, **agg)
    kl_loss, metrics = _kl_term(logprobs, ref_logprobs, mask, cfg, agg)
    loss = pg_loss + cfg.beta * kl_loss
    metrics.update({"pg_loss": jax.lax.stop_gradient(pg_loss),
                    "kl_loss": jax.lax.stop_gradient(kl_loss)})
    metrics.update(_ratio_metrics(logprobs, rho, advantages, mask, anchor, cfg))
    if token_entropy is not None:
        chex.assert_equal_shape([token_entropy, mask])
        metrics["entropy_mean"] = masked_stats(
            jax.lax.stop_gradient(token_entropy).astype(jnp.float32), mask)["mean"]
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return loss, metrics
