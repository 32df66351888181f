"""DaGRPO: Distinctiveness-aware Group Relative Policy Optimization.

Xie et al., "DaGRPO: Rectifying Gradient Conflict in Reasoning via Distinctiveness-Aware Group
Relative Policy Optimization", arXiv 2512.06337. Only the abstract is public: every formula
below is the INTERPRETATION written in METHODS.md §3, and each choice is a keyword option.

* Fine-grained score R_i = c_i + alpha * s_i (:func:`dagrpo_score`).
* Pairwise masked advantage (:func:`dagrpo`):
      A_i = (1 / Z_i) * sum_{j != i} m_ij (R_i - R_j),   m_ij = 1[d_ij >= tau]
  with distinctiveness d_ij = |R_i - R_j| (default) or 1 - cos(e_i, e_j), tau fixed or
  group-adaptive tau = kappa * max_jk d_jk (= kappa * (max R - min R) for score distinctiveness),
  and Z_i = G - 1 (default) or the number of unmasked partners. No std division.
* Off-policy anchors (:func:`add_anchors`), following LUFFY (Yan et al., arXiv 2504.14945): an
  expert solution is appended as group member G+1 when the trigger fires.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp

from jaxgrpo import config
from jaxgrpo.advantages import _common

TAU_MODES = ("fixed", "adaptive")
NORMALIZERS = ("group", "unmasked")
DISTINCTIVENESS = ("score", "embedding")
SCORE_SOURCES = ("fine", "reward")
ANCHOR_TRIGGERS = ("none_correct", "always", "at_most_one_correct")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnchorsConfig(config.Section):
    """DaGRPO off-policy anchors (LUFFY-style): an expert solution joins the group.

    The ``config.anchors`` section (:func:`add_anchors`).
    """

    NAME: ClassVar[str] = "anchors"
    enabled: bool = config.key(
        False, 'add an anchor completion to groups (needs baseline "dagrpo")')
    trigger: str = config.key(
        'none_correct',
        '"none_correct" | "always" | "at_most_one_correct"',
        choices=ANCHOR_TRIGGERS)
    format: str = config.key(
        '\\boxed{{{answer}}}', 'text of the anchor completion, from the gold answer')

    def __post_init__(self):
        config.check_template("anchors.format", self.format, ("answer",))


def dagrpo_score(correct: jax.Array, fine_scores: jax.Array, *, alpha: float = 0.5) -> jax.Array:
    """Fine-grained score R_i = c_i + alpha * s_i (INTERPRETATION, arXiv 2512.06337).

    Args:
      correct: bool/float [P, G] verifier correctness c_i.
      fine_scores: float [P, G] finer score s_i in [0, 1] (judge, process/format score, or
        normalised sequence log-prob).
      alpha: weight of the finer score (default 0.5: correctness dominates).

    Returns:
      float32 [P, G].
    """
    chex.assert_equal_shape([correct, fine_scores])
    return jnp.asarray(correct).astype(jnp.float32) + alpha * fine_scores.astype(jnp.float32)


def _dagrpo_impl(scores, *, tau, tau_mode, kappa, normalizer, distinctiveness, embeddings,
                 never_mask_cross_label, correct, member_mask, nonfinite):
    p, g = _common.check_group_rewards(scores, "scores")
    if tau_mode not in TAU_MODES:
        raise ValueError(f"tau_mode must be one of {TAU_MODES}; got {tau_mode!r}.")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}; got {normalizer!r}.")
    if distinctiveness not in DISTINCTIVENESS:
        raise ValueError(f"distinctiveness must be one of {DISTINCTIVENESS}; got "
                         f"{distinctiveness!r}.")
    member = _common.member_mask_or_ones(member_mask, (p, g))
    r, member = _common.handle_nonfinite(scores, member, nonfinite)

    diff = r[:, :, None] - r[:, None, :]  # [P, G, G]: R_i - R_j
    if distinctiveness == "score":
        dist = jnp.abs(diff)
    else:
        if embeddings is None:
            raise ValueError("distinctiveness='embedding' needs embeddings [P, G, D].")
        if jnp.shape(embeddings)[:2] != (p, g):
            raise ValueError(f"embeddings must be [P, G, D] = [{p}, {g}, D]; got "
                             f"{jnp.shape(embeddings)}.")
        e = jax.lax.stop_gradient(embeddings).astype(jnp.float32)
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        dist = 1.0 - jnp.einsum("pid,pjd->pij", e, e)
    pair = member[:, :, None] & member[:, None, :] & ~jnp.eye(g, dtype=bool)[None]
    if tau_mode == "fixed":
        thr = jnp.full((p, 1, 1), tau, jnp.float32)
    else:
        thr = kappa * jnp.max(jnp.where(pair, dist, 0.0), axis=(1, 2), keepdims=True)
    keep = pair & (dist >= thr)
    if never_mask_cross_label:
        if correct is None:
            raise ValueError("never_mask_cross_label=True needs `correct` [P, G].")
        c = jnp.asarray(correct).astype(bool)
        keep = keep | (pair & (c[:, :, None] != c[:, None, :]))
    total = jnp.sum(jnp.where(keep, diff, 0.0), axis=2)
    if normalizer == "group":
        z = jnp.sum(member, axis=1, keepdims=True).astype(jnp.float32) - 1.0
    else:
        z = jnp.sum(keep, axis=2).astype(jnp.float32)
    adv = jnp.where(member, total / jnp.maximum(z, 1.0), 0.0)
    return adv.astype(_common.out_dtype(scores)), keep, pair, member


def dagrpo(
    rewards: jax.Array,
    correct: Optional[jax.Array] = None,
    fine_scores: Optional[jax.Array] = None,
    embeddings: Optional[jax.Array] = None,
    member_mask: Optional[jax.Array] = None,
    is_anchor: Optional[jax.Array] = None,
    *,
    score: str = "fine",
    alpha: float = 0.5,
    tau: float = 0.1,
    tau_mode: str = "fixed",
    kappa: float = 0.1,
    normalizer: str = "group",
    distinctiveness: str = "score",
    never_mask_cross_label: bool = False,
    nonfinite: str = "mask",
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """DaGRPO pairwise masked advantage (INTERPRETATION of arXiv 2512.06337, METHODS §3).

    A_i = (1/Z_i) sum_{j != i, j member} m_ij (R_i - R_j),  m_ij = 1[d_ij >= tau], where the
    score R is ``correct + alpha * fine_scores`` (``score="fine"``, default; the registered
    baseline ``"dagrpo"``) or ``rewards`` itself (``score="reward"``, e.g. after DRA, or on a
    plain reward array in a notebook: ``dagrpo(rewards, score="reward")``).

    Args:
      rewards: float [P, G]; with ``score="fine"`` only its non-finite entries are used (they
        mark unscorable completions in the fine score too).
      correct: bool [P, G] verifier correctness (``score="fine"`` and
        ``never_mask_cross_label``).
      fine_scores: float [P, G] in [0, 1], the finer score s_i (``score="fine"``).
      embeddings: float [P, G, D] for ``distinctiveness="embedding"``.
      member_mask: optional bool [P, G]; non-members take no part and get 0.
      is_anchor: optional bool [P, G] off-policy anchors (for the diagnostics only).
      score: ``"fine"`` (default) or ``"reward"``, see above.
      alpha: weight of the finer score (:func:`dagrpo_score`; default 0.5).
      tau: fixed threshold on the distinctiveness d_ij (``tau_mode="fixed"``). Default 0.1:
        with alpha = 0.5 and a 0-10 judge, two judge points. tau = 0 masks nothing.
      tau_mode: ``"fixed"`` (default) or ``"adaptive"``: tau_q = kappa * max_{jk} d_jk per group
        (for score distinctiveness: kappa * (max R - min R)).
      kappa: the adaptive fraction (default 0.1).
      normalizer: Z_i: ``"group"`` (default; number of members - 1, i.e. G - 1; with tau = 0 the
        result is G/(G-1) * (R_i - mean R)) or ``"unmasked"`` (max(1, number of unmasked
        partners): the mean over kept pairs).
      distinctiveness: ``"score"`` (default; d_ij = |R_i - R_j|) or ``"embedding"``
        (d_ij = 1 - cos(e_i, e_j), needs ``embeddings``; the sign of A still comes from R).
      never_mask_cross_label: if True, pairs whose correctness differs are always kept (needs
        ``correct``). Default False (the METHODS §3 formula).
      nonfinite: non-finite score policy, as in :func:`jaxgrpo.advantages.grpo`.
      return_diagnostics: also return the diagnostics dict.

    Returns:
      Advantages [P, G] in the dtype of the score (with ``return_diagnostics``: ``(adv,
      diag)``). A completion whose pairs are all masked gets exactly 0;
      |A_i| <= max R - min R (no std blow-up).
    """
    if score == "fine":
        if fine_scores is None or correct is None:
            raise ValueError("DaGRPO score='fine' needs correct and fine_scores "
                             "(rollout.fine_scores); got None (use score='reward' to rank by the "
                             "rewards).")
        s = dagrpo_score(correct, fine_scores, alpha=alpha)
        # Non-finite rewards mark unscorable completions in the fine score too.
        s = jnp.where(jnp.isfinite(rewards), s, rewards.astype(jnp.float32))
    elif score == "reward":
        s = rewards
    else:
        raise ValueError(f"score must be one of {SCORE_SOURCES}; got {score!r}.")
    adv, keep, pair, member = _dagrpo_impl(
        s, tau=tau, tau_mode=tau_mode, kappa=kappa, normalizer=normalizer,
        distinctiveness=distinctiveness, embeddings=embeddings,
        never_mask_cross_label=never_mask_cross_label, correct=correct,
        member_mask=member_mask, nonfinite=nonfinite)
    if not return_diagnostics:
        return adv
    m = member.astype(jnp.float32)
    nm = jnp.maximum(jnp.sum(m), 1.0)
    npairs = jnp.sum(pair)
    kept_any = jnp.any(keep, axis=2)
    diag = {
        "frac_pairs_masked": _common.scalar(
            jnp.where(npairs > 0, 1.0 - jnp.sum(keep) / jnp.maximum(npairs, 1), 0.0)),
        "frac_members_all_masked": _common.scalar(jnp.sum(m * ~kept_any) / nm),
        "frac_anchor_members": _common.scalar(
            0.0 if is_anchor is None else jnp.sum(is_anchor.astype(bool) & member) / nm),
    }
    return adv, diag


def required_inputs(options) -> frozenset:
    """What :func:`dagrpo` needs from the rollout under ``options``: fine_scores iff
    ``score="fine"``, embeddings iff ``distinctiveness="embedding"``."""
    need = set()
    if options["score"] == "fine":
        need.add("fine_scores")
    if options["distinctiveness"] == "embedding":
        need.add("embeddings")
    return frozenset(need)


def _pad_last(x: jax.Array, length: int, value=0) -> jax.Array:
    pad = length - x.shape[-1]
    if pad == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, pad)]
    return jnp.pad(x, widths, constant_values=value)


def anchor_trigger(correct: jax.Array, member_mask: jax.Array, *,
                   trigger: str = "none_correct") -> jax.Array:
    """Which prompts get an anchor: bool [P] from on-policy correctness [P, G].

    ``"none_correct"`` (default): no member is correct; ``"at_most_one_correct"``; ``"always"``.
    """
    n_correct = jnp.sum(jnp.asarray(correct).astype(bool) & member_mask.astype(bool), axis=1)
    if trigger == "none_correct":
        return n_correct == 0
    if trigger == "at_most_one_correct":
        return n_correct <= 1
    if trigger == "always":
        return jnp.ones(n_correct.shape, bool)
    raise ValueError(f"trigger must be one of {ANCHOR_TRIGGERS}; got {trigger!r}.")


def add_anchors(
    rollout,
    anchor_tokens: jax.Array,
    anchor_mask: jax.Array,
    *,
    trigger: str = "none_correct",
    anchor_reward: Union[float, jax.Array] = 1.0,
    anchor_fine_score: Union[float, jax.Array] = 1.0,
    anchor_embeddings: Optional[jax.Array] = None,
    anchor_ref_logprobs: Optional[jax.Array] = None,
):
    """Appends one off-policy anchor (expert solution) per prompt as group member G+1.

    DaGRPO's off-policy data augmentation (arXiv 2512.06337, INTERPRETATION following LUFFY,
    arXiv 2504.14945). The anchor slot has ``is_anchor=True``, ``logprobs=0`` (behaviour
    probability taken as 1), ``correct=True`` and ``member_mask`` = the trigger, so when the
    trigger does not fire the slot takes no part in any group statistic and gets advantage 0.
    Its advantage is computed with the group by whichever baseline runs next.

    Args:
      rollout: a :class:`jaxgrpo.rollout.Rollout` with G on-policy members.
      anchor_tokens: int [P, Ta] expert-solution completion ids, right-padded.
      anchor_mask: bool [P, Ta], True on valid anchor tokens. The completion axis of the result is
        max(Tc, Ta); the shorter side is right-padded with 0 / False.
      trigger: ``"none_correct"`` (default), ``"at_most_one_correct"`` or ``"always"``
        (see :func:`anchor_trigger`), evaluated on the on-policy members.
      anchor_reward: scalar or [P] reward of the anchor (default 1.0, a correct answer).
      anchor_fine_score: scalar or [P] finer score s of the anchor, used when
        ``rollout.fine_scores`` is set (default 1.0).
      anchor_embeddings: [P, D]; required when ``rollout.embeddings`` is set.
      anchor_ref_logprobs: [P, Ta]; required when ``rollout.ref_logprobs`` is set.

    Returns:
      A Rollout with G+1 members.
    """
    p, g = _common.check_group_rewards(rollout.rewards)
    tc = rollout.completion_tokens.shape[-1]
    if jnp.ndim(anchor_tokens) != 2 or anchor_tokens.shape[0] != p:
        raise ValueError(f"anchor_tokens must be [P={p}, Ta]; got {jnp.shape(anchor_tokens)}.")
    chex.assert_equal_shape([anchor_tokens, anchor_mask])
    ta = anchor_tokens.shape[-1]
    t = max(tc, ta)
    fire = anchor_trigger(rollout.correct, rollout.member_mask, trigger=trigger)  # [P]

    def cat(on, anc):  # on [P, G, ...], anc [P, ...] -> [P, G+1, ...]
        return jnp.concatenate([on, anc[:, None].astype(on.dtype)], axis=1)

    def per_prompt(v, dtype):
        return jnp.broadcast_to(jnp.asarray(v, dtype), (p,))

    comp_tokens = cat(_pad_last(rollout.completion_tokens, t), _pad_last(anchor_tokens, t))
    comp_mask = cat(_pad_last(rollout.completion_mask, t, False), _pad_last(anchor_mask, t, False))
    logprobs = cat(_pad_last(rollout.logprobs, t), jnp.zeros((p, t), rollout.logprobs.dtype))
    new = dict(
        completion_tokens=comp_tokens,
        completion_mask=comp_mask,
        logprobs=logprobs,
        rewards=cat(rollout.rewards, per_prompt(anchor_reward, rollout.rewards.dtype)),
        correct=cat(rollout.correct, jnp.ones((p,), bool)),
        member_mask=cat(rollout.member_mask, fire),
        is_anchor=cat(rollout.is_anchor, jnp.ones((p,), bool)),
    )
    if rollout.truncated is not None:  # an expert solution is complete
        new["truncated"] = cat(rollout.truncated, jnp.zeros((p,), bool))
    if rollout.fine_scores is not None:
        new["fine_scores"] = cat(rollout.fine_scores,
                                 per_prompt(anchor_fine_score, rollout.fine_scores.dtype))
    if rollout.embeddings is not None:
        if anchor_embeddings is None:
            raise ValueError("rollout.embeddings is set, so add_anchors needs anchor_embeddings [P, D].")
        chex.assert_shape(anchor_embeddings, (p, rollout.embeddings.shape[-1]))
        new["embeddings"] = cat(rollout.embeddings, anchor_embeddings)
    if rollout.ref_logprobs is not None:
        if anchor_ref_logprobs is None:
            raise ValueError("rollout.ref_logprobs is set, so add_anchors needs anchor_ref_logprobs "
                             "[P, Ta] (the reference policy's log-probs of the anchor tokens).")
        chex.assert_equal_shape([anchor_ref_logprobs, anchor_tokens])
        new["ref_logprobs"] = cat(_pad_last(rollout.ref_logprobs, t),
                                  _pad_last(anchor_ref_logprobs, t))
    return rollout.replace(**new)
