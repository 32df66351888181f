"""GRPO, Dr.GRPO and RLOO group-relative advantages.

* GRPO: Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
  Models", arXiv 2402.03300 (std over the group; TRL ``scale_rewards="batch"``: over the batch).
* Dr.GRPO: Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective",
  arXiv 2503.20783.
* RLOO: Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
  from Human Feedback in LLMs", arXiv 2402.14740 (leave-one-out baseline; Tunix and verl
  ``rloo``).

All functions take rewards laid out ``[P, G]`` (P prompts, G completions per prompt) and return
per-sequence advantages ``[P, G]`` in the rewards' dtype (with ``return_diagnostics=True``:
``(advantages, diagnostics)``, the form the registry calls). Statistics are computed in (at
least) float32, so a bf16 input is safe.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from jaxgrpo.advantages import _common


SCALE_REWARDS = ("group", "batch")


def _group_advantages(rewards, member_mask, *, center, scale, std_ddof, eps, zero_spread_tol,
                      nonfinite):
    """Shared core. center: "mean" (R - mean) or "loo" (R - mean of the others); scale: None,
    "group" or "batch" (divide by the std of the group / of all members of the batch)."""
    p, g = _common.check_group_rewards(rewards)
    # Value checks only for Python numbers: the options may also be traced (jit arguments).
    if isinstance(std_ddof, (int, float)) and std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1; got {std_ddof!r}.")
    for name, v in (("eps", eps), ("zero_spread_tol", zero_spread_tol)):
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError(f"{name} must be >= 0; got {v!r}.")
    if scale is not None and scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}; got {scale!r}.")
    member = _common.member_mask_or_ones(member_mask, (p, g))
    r, member = _common.handle_nonfinite(rewards, member, nonfinite)

    mean, n = _common.masked_group_mean(r, member)
    centred = jnp.where(member, r - mean, 0.0)
    # Spread = max - min over members. Exactly 0 for a constant group whatever the float
    # rounding of the mean, so the zero-spread test does not depend on the summation order.
    big = jnp.finfo(r.dtype).max
    r_max = jnp.max(jnp.where(member, r, -big), axis=1, keepdims=True)
    r_min = jnp.min(jnp.where(member, r, big), axis=1, keepdims=True)
    spread = jnp.where(n > 0, r_max - r_min, 0.0)
    zero_spread = spread <= zero_spread_tol  # [P, 1]
    if scale == "group":
        var = jnp.sum(centred**2, axis=1, keepdims=True) / jnp.maximum(n - std_ddof, 1.0)
        adv = centred / (jnp.sqrt(var) + eps)
    elif scale == "batch":
        # TRL scale_rewards="batch": the std of the raw rewards of every member of the batch.
        nb = jnp.sum(member).astype(r.dtype)
        mb = jnp.sum(jnp.where(member, r, 0.0)) / jnp.maximum(nb, 1.0)
        var = jnp.sum(jnp.where(member, (r - mb) ** 2, 0.0)) / jnp.maximum(nb - std_ddof, 1.0)
        adv = centred / (jnp.sqrt(var) + eps)
    else:
        adv = centred
    if center == "loo":
        # R_i - mean_{j != i} R_j = n/(n-1) (R_i - mean R); no baseline with fewer than 2.
        adv = jnp.where(n > 1, adv * n / jnp.maximum(n - 1.0, 1.0), 0.0)
    adv = jnp.where(zero_spread | ~member, 0.0, adv).astype(_common.out_dtype(rewards))
    return adv, zero_spread[:, 0], member


def _baseline_diagnostics(zero_spread: jax.Array, rewards: jax.Array) -> Dict[str, jax.Array]:
    """Scalar diagnostics shared by the baselines (the advantages' own statistics are reported
    once, by the chain: ``adv/*`` in ``registry.make_advantage_fn``)."""
    return {
        "frac_zero_spread_groups": _common.scalar(jnp.mean(zero_spread.astype(jnp.float32))),
        "frac_nonfinite_rewards": _common.scalar(
            jnp.mean((~jnp.isfinite(rewards)).astype(jnp.float32))),
    }


def _result(rewards, out, return_diagnostics):
    adv, zero_spread, member = out
    if not return_diagnostics:
        return adv
    return adv, _baseline_diagnostics(zero_spread, rewards)


def grpo(
    rewards: jax.Array,
    member_mask: Optional[jax.Array] = None,
    *,
    std_ddof: int = 1,
    eps: float = 1e-4,
    scale_rewards: str = "group",
    zero_spread_tol: float = 0.0,
    nonfinite: str = "mask",
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """GRPO advantage A_i = (R_i - mean_g R) / (std_g R + eps) (DeepSeekMath, arXiv 2402.03300).

    Args:
      rewards: float [P, G].
      member_mask: optional bool [P, G]; only True members enter the group mean / std, and
        non-members get advantage exactly 0 (e.g. an unused anchor slot).
      std_ddof: delta degrees of freedom of the std: 1 (unbiased; TRL, verl, the DRA code) or 0
        (EasyDeL).
      eps: added to the std: 1e-4 (TRL, the DRA code; default) or 1e-6 (verl, Tunix).
      scale_rewards: which std divides R_i - mean_g R: ``"group"`` (default; the group's, as
        DeepSeekMath) or ``"batch"`` (TRL ``scale_rewards="batch"``: the std of all member rewards
        of the batch, P * G of them). TRL's ``"none"`` is the ``dr_grpo`` baseline.
      zero_spread_tol: a group whose member spread (max R - min R) is <= this gets advantage
        exactly 0. With the default 0.0 only exactly constant groups are zeroed (the reference
        implementations give (R - mean)/eps there, i.e. 0 up to float rounding of the mean).
        Set a small positive value (e.g. 1e-6) when rewards come out of float arithmetic and a
        "constant" group can carry rounding noise, which eps alone would scale up to O(1)
        advantages once the noise exceeds ~eps.
      nonfinite: how NaN/inf rewards are handled: ``"mask"`` (default; the member is excluded
        from the statistics and gets advantage 0, as TRL's NaN-aware path), ``"propagate"``, or
        ``"check"`` (checkify check; functionalise with ``checkify.checkify`` under jit).
      return_diagnostics: also return the diagnostics dict (scalars).

    Returns:
      Advantages [P, G] in the dtype of ``rewards`` (float32 for integer/bool rewards); never NaN
      for finite inputs (also in bf16: statistics are computed in float32). With
      ``return_diagnostics``: ``(advantages, diag)``.
    """
    out = _group_advantages(rewards, member_mask, center="mean", scale=scale_rewards,
                            std_ddof=std_ddof, eps=eps, zero_spread_tol=zero_spread_tol,
                            nonfinite=nonfinite)
    return _result(rewards, out, return_diagnostics)


def dr_grpo(
    rewards: jax.Array,
    member_mask: Optional[jax.Array] = None,
    *,
    nonfinite: str = "mask",
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """Dr.GRPO advantage A_i = R_i - mean_g R, no std division (arXiv 2503.20783).

    Args:
      rewards: float [P, G].
      member_mask, nonfinite, return_diagnostics: as in :func:`grpo`.

    Returns:
      Advantages [P, G] in the dtype of ``rewards``; exactly 0 in a constant group.
    """
    out = _group_advantages(rewards, member_mask, center="mean", scale=None, std_ddof=1, eps=0.0,
                            zero_spread_tol=0.0, nonfinite=nonfinite)
    return _result(rewards, out, return_diagnostics)


def rloo(
    rewards: jax.Array,
    member_mask: Optional[jax.Array] = None,
    *,
    nonfinite: str = "mask",
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """RLOO advantage A_i = R_i - (1/(n-1)) sum_{j != i} R_j (arXiv 2402.14740), no std.

    The leave-one-out mean over the n members of the group (Tunix ``rloo``: G members; verl
    ``compute_rloo_outcome_advantage``); equal to n/(n-1) (R_i - mean R). A group with fewer
    than two members gets 0 (as verl).

    Args:
      rewards: float [P, G].
      member_mask, nonfinite, return_diagnostics: as in :func:`grpo`.

    Returns:
      Advantages [P, G] in the dtype of ``rewards``; exactly 0 in a constant group.
    """
    out = _group_advantages(rewards, member_mask, center="loo", scale=None, std_ddof=1, eps=0.0,
                            zero_spread_tol=0.0, nonfinite=nonfinite)
    return _result(rewards, out, return_diagnostics)
