"""GRPO and Dr.GRPO group-relative advantages.

* GRPO: Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
  Models", arXiv 2402.03300.
* Dr.GRPO: Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective",
  arXiv 2503.20783.

All functions take rewards laid out ``[P, G]`` (P prompts, G completions per prompt) and return
per-sequence advantages ``[P, G]`` in the rewards' dtype. Statistics are computed in (at least)
float32, so a bf16 input is safe.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxgrpo.advantages import _common


def _grpo_impl(rewards, *, std_ddof, eps, member_mask, zero_spread_tol, nonfinite, scale_by_std):
    p, g = _common.check_group_rewards(rewards)
    # Value checks only for Python numbers: the options may also be traced (jit arguments).
    if isinstance(std_ddof, (int, float)) and std_ddof not in (0, 1):
        raise ValueError(f"std_ddof must be 0 or 1; got {std_ddof!r}.")
    for name, v in (("eps", eps), ("zero_spread_tol", zero_spread_tol)):
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError(f"{name} must be >= 0; got {v!r}.")
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
    if scale_by_std:
        var = jnp.sum(centred**2, axis=1, keepdims=True) / jnp.maximum(n - std_ddof, 1.0)
        adv = centred / (jnp.sqrt(var) + eps)
    else:
        adv = centred
    adv = jnp.where(zero_spread | ~member, 0.0, adv)
    return adv.astype(_common.out_dtype(rewards)), zero_spread[:, 0], member


def grpo(
    rewards: jax.Array,
    *,
    std_ddof: int = 1,
    eps: float = 1e-4,
    member_mask: Optional[jax.Array] = None,
    zero_spread_tol: float = 0.0,
    nonfinite: str = "mask",
) -> jax.Array:
    """GRPO advantage A_i = (R_i - mean_g R) / (std_g R + eps) (DeepSeekMath, arXiv 2402.03300).

    Args:
      rewards: float [P, G].
      std_ddof: delta degrees of freedom of the group std: 1 (unbiased; TRL, verl, the DRA code)
        or 0 (EasyDeL).
      eps: added to the std: 1e-4 (TRL, the DRA code; default) or 1e-6 (verl).
      member_mask: optional bool [P, G]; only True members enter the group mean / std, and
        non-members get advantage exactly 0 (e.g. an unused anchor slot).
      zero_spread_tol: a group whose member spread (max R - min R) is <= this gets advantage
        exactly 0. With the default 0.0 only exactly constant groups are zeroed (the reference
        implementations give (R - mean)/eps there, i.e. 0 up to float rounding of the mean).
        Set a small positive value (e.g. 1e-6) when rewards come out of float arithmetic and a
        "constant" group can carry rounding noise, which eps alone would scale up to O(1)
        advantages once the noise exceeds ~eps.
      nonfinite: how NaN/inf rewards are handled: ``"mask"`` (default; the member is excluded
        from the statistics and gets advantage 0, as TRL's NaN-aware path), ``"propagate"``, or
        ``"check"`` (checkify check; functionalise with ``checkify.checkify`` under jit).

    Returns:
      Advantages [P, G] in the dtype of ``rewards`` (float32 for integer/bool rewards); never NaN
      for finite inputs (also in bf16: statistics are computed in float32).
    """
    adv, _, _ = _grpo_impl(rewards, std_ddof=std_ddof, eps=eps, member_mask=member_mask,
                           zero_spread_tol=zero_spread_tol, nonfinite=nonfinite, scale_by_std=True)
    return adv


def dr_grpo(
    rewards: jax.Array,
    *,
    member_mask: Optional[jax.Array] = None,
    nonfinite: str = "mask",
) -> jax.Array:
    """Dr.GRPO advantage A_i = R_i - mean_g R, no std division (arXiv 2503.20783).

    Args:
      rewards: float [P, G].
      member_mask: optional bool [P, G]; as in :func:`grpo`.
      nonfinite: as in :func:`grpo`.

    Returns:
      Advantages [P, G] in the dtype of ``rewards``; exactly 0 in a constant group.
    """
    adv, _, _ = _grpo_impl(rewards, std_ddof=1, eps=0.0, member_mask=member_mask,
                           zero_spread_tol=0.0, nonfinite=nonfinite, scale_by_std=False)
    return adv


def baseline_diagnostics(adv: jax.Array, member: jax.Array, zero_spread: jax.Array,
                         rewards: jax.Array) -> Dict[str, jax.Array]:
    """Scalar diagnostics shared by the baselines."""
    m = member.astype(jnp.float32)
    nm = jnp.maximum(jnp.sum(m), 1.0)
    a = adv.astype(jnp.float32)
    return {
        "frac_zero_spread_groups": _common.scalar(jnp.mean(zero_spread.astype(jnp.float32))),
        "adv_abs_mean": _common.scalar(jnp.sum(jnp.abs(a) * m) / nm),
        "adv_mean": _common.scalar(jnp.sum(a * m) / nm),
        "frac_nonfinite_rewards": _common.scalar(
            jnp.mean((~jnp.isfinite(rewards)).astype(jnp.float32))),
    }


def grpo_transform(rollout, *, std_ddof: int = 1, eps: float = 1e-4,
                   zero_spread_tol: float = 0.0,
                   nonfinite: str = "mask") -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """:func:`grpo` on ``rollout.rewards`` / ``rollout.member_mask``; returns (adv [P,G], diag)."""
    adv, zs, member = _grpo_impl(rollout.rewards, std_ddof=std_ddof, eps=eps,
                                 member_mask=rollout.member_mask, zero_spread_tol=zero_spread_tol,
                                 nonfinite=nonfinite, scale_by_std=True)
    return adv, baseline_diagnostics(adv, member, zs, rollout.rewards)


def dr_grpo_transform(rollout, *, nonfinite: str = "mask"
                      ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """:func:`dr_grpo` on ``rollout.rewards`` / ``rollout.member_mask``; returns (adv, diag)."""
    adv, zs, member = _grpo_impl(rollout.rewards, std_ddof=1, eps=0.0,
                                 member_mask=rollout.member_mask, zero_spread_tol=0.0,
                                 nonfinite=nonfinite, scale_by_std=False)
    return adv, baseline_diagnostics(adv, member, zs, rollout.rewards)
