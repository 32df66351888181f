"""DRA: Diversity-aware Reward Adjustment.

Chen et al., "DRA-GRPO: Exploring Diversity-Aware Reward Adjustment for R1-Zero-Like Training of
Large Language Models" (v3: "Your GRPO Needs to Know Diverse Reasoning Paths for Mathematical
Reasoning"), arXiv 2505.09655; reference code github.com/xiwenc1/DRA-GRPO (commit 0882661).

Within a group, with L2-normalised completion embeddings e_i and cosine similarities
S_ij = e_i . e_j (diagonal kept, S_ii = 1):

    w_i = 1 / (sum_j S_ij + eps) = 1 / (1 + SMI_i + eps),   SMI_i = sum_{j != i} S_ij
    R~_i = R_i * w_i

R~ replaces R *before* the group baseline (DRA-GRPO: GRPO advantage of R~; DRA-DR.GRPO: Dr.GRPO
advantage of R~). The weights carry no gradient (stop_gradient).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from jaxgrpo.advantages import _common

DRA_SCOPES = ("group", "microbatch")


def dra_weights(
    embeddings: jax.Array,
    *,
    eps: float = 1e-6,
    member_mask: Optional[jax.Array] = None,
    row_sum_floor: Optional[float] = 0.1,
    scope: str = "group",
    microbatch_size: Optional[int] = None,
) -> Tuple[jax.Array, jax.Array]:
    """DRA weights w [P, G] and the raw row sums sum_j S_ij [P, G] (arXiv 2505.09655).

    Args:
      embeddings: float [P, G, D], L2-normalised completion embeddings.
      eps: added to the row sum (1e-6 in the reference code).
      member_mask: optional bool [P, G]; non-members neither contribute to nor receive a
        similarity sum (their weight is 1).
      row_sum_floor: guard against the non-positive row-sum hazard. With negative cosines
        sum_j S_ij can be <= 0, which in the reference code gives a huge or sign-flipping weight.
        The row sum is clamped to at least this value before inverting, so w <= 1/floor
        (10 with the default 0.1). Rows with sum >= floor (every row whose similarities are
        non-negative, since S_ii = 1) are untouched, so the reference values are reproduced.
        ``None`` disables the guard (exactly the reference code, hazard included).
      scope: ``"group"`` (default; the paper's definition: S over the G completions of one prompt)
        or ``"microbatch"``: reproduces the reference code, which built S over each device's
        micro-batch of ``microbatch_size`` consecutive completions of the flattened [P*G] batch
        (a micro-batch can mix two prompts).
      microbatch_size: completions per micro-batch for ``scope="microbatch"`` (4 in the released
        recipes); must divide P*G.

    Returns:
      ``(w, row_sum)``, both float32 [P, G].
    """
    if jnp.ndim(embeddings) != 3:
        raise ValueError(f"embeddings must have shape [P, G, D]; got {jnp.shape(embeddings)}.")
    p, g, d = jnp.shape(embeddings)
    member = _common.member_mask_or_ones(member_mask, (p, g))
    e = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
    e = jnp.where(member[..., None], e, 0.0)
    if scope == "group":
        row_sum = jnp.einsum("pgd,phd->pg", e, e)
    elif scope == "microbatch":
        if microbatch_size is None or microbatch_size < 1 or (p * g) % microbatch_size:
            raise ValueError(
                f"scope='microbatch' needs a microbatch_size dividing P*G={p * g}; got "
                f"{microbatch_size!r}.")
        eb = e.reshape(p * g // microbatch_size, microbatch_size, d)
        row_sum = jnp.einsum("bmd,bnd->bm", eb, eb).reshape(p, g)
    else:
        raise ValueError(f"scope must be one of {DRA_SCOPES}; got {scope!r}.")
    guarded = row_sum if row_sum_floor is None else jnp.maximum(row_sum, row_sum_floor)
    w = jnp.where(member, 1.0 / (guarded + eps), 1.0)
    return w, row_sum


def dra_reweight(
    rewards: jax.Array,
    embeddings: jax.Array,
    member_mask: Optional[jax.Array] = None,
    *,
    eps: float = 1e-6,
    row_sum_floor: Optional[float] = 0.1,
    scope: str = "group",
    microbatch_size: Optional[int] = None,
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """DRA adjusted rewards R~_i = R_i / (sum_j S_ij + eps) (arXiv 2505.09655, METHODS §2).

    The registered reward transform ``"dra"`` (it needs ``rollout.embeddings``).

    Args:
      rewards: float [P, G] raw scalar rewards (weighted sum of the reward functions).
      embeddings: float [P, G, D], L2-normalised completion embeddings.
      member_mask, eps, row_sum_floor, scope, microbatch_size: see :func:`dra_weights`.
        ``scope="group"`` (default) is the paper's definition; ``scope="microbatch",
        microbatch_size=4`` reproduces the released code, which built S per device micro-batch
        of 4 completions.
      return_diagnostics: also return the diagnostics dict (weight mean / min / max, fraction
        of rows floored).

    Returns:
      R~ [P, G] in the dtype of ``rewards`` (with ``return_diagnostics``: ``(R~, diag)``).
      Non-members keep their raw reward. Orthogonal embeddings give w = 1/(1 + eps), i.e.
      R~ = R up to eps. Equal rewards with different texts give unequal R~ (intended: diversity
      alone then drives the advantage); negative rewards of redundant answers are softened
      toward 0 (as in the reference).
    """
    if embeddings is None:
        raise ValueError("DRA needs embeddings ([P, G, D], L2-normalised; rollout.embeddings); "
                         "got None.")
    _common.check_group_rewards(rewards)
    if jnp.shape(embeddings)[:2] != jnp.shape(rewards):
        raise ValueError(
            f"embeddings [P, G, D] must match rewards [P, G]; got {jnp.shape(embeddings)} vs "
            f"{jnp.shape(rewards)}.")
    member = _common.member_mask_or_ones(member_mask, jnp.shape(rewards))
    w, row_sum = dra_weights(embeddings, eps=eps, member_mask=member,
                             row_sum_floor=row_sum_floor, scope=scope,
                             microbatch_size=microbatch_size)
    tilde = (rewards.astype(jnp.float32) * w).astype(_common.out_dtype(rewards))
    if not return_diagnostics:
        return tilde
    m = member.astype(jnp.float32)
    nm = jnp.maximum(jnp.sum(m), 1.0)
    big = jnp.float32(3e38)
    floor = -big if row_sum_floor is None else row_sum_floor
    diag = {
        "weight_mean": _common.scalar(jnp.sum(w * m) / nm),
        "weight_min": _common.scalar(
            jnp.where(jnp.any(member), jnp.min(jnp.where(member, w, big)), 1.0)),
        "weight_max": _common.scalar(
            jnp.where(jnp.any(member), jnp.max(jnp.where(member, w, -big)), 1.0)),
        "frac_rows_floored": _common.scalar(jnp.sum((row_sum < floor) * m) / nm),
    }
    return tilde, diag
