"""ProGRPO's Advantage Re-weighting Mechanism (ARM).

Li, Goncharova, Kuznetsov, Oseledets, "Back to Basics: Revisiting Exploration in Reinforcement
Learning for LLM Reasoning via Generative Probabilities", arXiv 2602.05281 (METHODS §4).

Per group, starting from an advantage A_i (normally GRPO's):

    all members wrong (sum_k r_k = 0):  A~_i = A_i
    otherwise:                          A~_i = A_i + alpha * (c(q) - c(o_i | q))

The correction is additive, not re-normalised, not clipped, carries no gradient, and is
per-sequence (broadcast to tokens by the loss). Confidences use the behaviour policy's
log-probs (``Rollout.logprobs`` / ``Rollout.prompt_logprobs``). The confidence definitions are
INTERPRETATIONS (only the abstract is public); each alternative is an option.
"""
from __future__ import annotations

import fractions
from typing import Dict, Optional, Tuple, Union

import chex
import jax
import jax.numpy as jnp

from jaxgrpo.advantages import _common

ANSWER_CONFIDENCES = ("low_fraction", "low_fraction_norm", "mean")
PROMPT_CONFIDENCES = ("mean", "low_fraction", "group_mean_answer")
PROMPT_TOKENS = ("all", "question")
GATES = ("reward_sum", "correct")


def low_fraction_count(n_valid: jax.Array, rho: float) -> jax.Array:
    """k = max(1, ceil(rho * n)) in exact integer arithmetic (int32, same shape as ``n_valid``).

    rho (a Python float, static under jit) is replaced by its closest fraction a/b with
    b <= 1000 (0.2 -> 1/5), so that e.g. 0.2 * 15 gives k = 3, not the k = 4 that float rounding
    (3.0000000000000004) would give.
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1]; got {rho!r}.")
    frac = fractions.Fraction(rho).limit_denominator(1000)
    a, b = frac.numerator, frac.denominator
    n = n_valid.astype(jnp.int32)
    return jnp.maximum(1, (a * n + b - 1) // b)


def low_fraction_mean(values: jax.Array, mask: jax.Array, *, rho: float = 0.2) -> jax.Array:
    """Mean of the k = max(1, ceil(rho * n)) smallest valid entries along the last axis.

    Args:
      values: float [..., T]; mask: bool [..., T] (n = number of True entries).

    Returns:
      float32 [...]; 0 where n = 0 (no valid entry).
    """
    chex.assert_equal_shape([values, mask])
    v = jnp.where(mask, values.astype(jnp.float32), jnp.inf)
    srt = jnp.sort(v, axis=-1)
    n = jnp.sum(mask, axis=-1)
    k = low_fraction_count(n, rho)
    t = values.shape[-1]
    take = jnp.arange(t) < k[..., None]
    s = jnp.sum(jnp.where(take & jnp.isfinite(srt), srt, 0.0), axis=-1)
    return jnp.where(n > 0, s / k.astype(jnp.float32), 0.0)


def answer_confidence(logprobs: jax.Array, completion_mask: jax.Array, *,
                      reading: str = "low_fraction", rho: float = 0.2) -> jax.Array:
    """Answer confidence c(o|q) [P, G] from token log-probs [P, G, T] (INTERPRETATION).

    Readings (``reading``), with l_t the log-probs of the valid tokens (EOS included):
      * ``"low_fraction"`` (A, default): exp(mean of the k = max(1, ceil(rho |o|)) smallest l_t);
      * ``"low_fraction_norm"`` (B): exp(sum_t l_t / (rho |o|));
      * ``"mean"`` (C): exp(mean_t l_t) (plain geometric-mean probability).
    An empty completion (no valid token) gets confidence 1 (log-confidence 0); the ARM correction
    of an empty completion is set to 0 separately.
    """
    if reading not in ANSWER_CONFIDENCES:
        raise ValueError(f"answer_confidence must be one of {ANSWER_CONFIDENCES}; got {reading!r}.")
    lp = jax.lax.stop_gradient(logprobs).astype(jnp.float32)
    m = completion_mask.astype(bool)
    n = jnp.sum(m, axis=-1).astype(jnp.float32)
    if reading == "low_fraction":
        log_c = low_fraction_mean(lp, m, rho=rho)
    elif reading == "low_fraction_norm":
        log_c = jnp.sum(jnp.where(m, lp, 0.0), axis=-1) / jnp.maximum(rho * n, 1e-12)
    else:
        log_c = jnp.sum(jnp.where(m, lp, 0.0), axis=-1) / jnp.maximum(n, 1.0)
    return jnp.exp(jnp.where(n > 0, log_c, 0.0))


def predicted_prompt_mask(prompt_mask: jax.Array) -> jax.Array:
    """Prompt positions that carry a prediction log pi(q_t | q_<t): real tokens after the first."""
    pm = prompt_mask.astype(bool)
    return pm & (jnp.cumsum(pm, axis=-1) > 1)


def prompt_confidence(prompt_logprobs: jax.Array, prompt_mask: jax.Array, *,
                      reading: str = "mean", rho: float = 0.2,
                      token_mask: Optional[jax.Array] = None) -> jax.Array:
    """Prompt confidence c(q) [P] (INTERPRETATION): 1 / perplexity of the prompt.

    Args:
      prompt_logprobs: float [P, Tp], log pi_old(q_t | q_<t) (0 where no prediction exists).
      prompt_mask: bool [P, Tp] real prompt tokens.
      reading: ``"mean"`` (A, default): exp(mean over predicted tokens t >= 2); or
        ``"low_fraction"``: exp(mean of the lowest-rho fraction of them).
      token_mask: optional bool [P, Tp] restricting the tokens used (e.g. question tokens only,
        excluding the chat template); default: every predicted prompt token.

    Returns:
      float32 [P]; 1 for a prompt with no predicted token.
    """
    chex.assert_equal_shape([prompt_logprobs, prompt_mask])
    valid = predicted_prompt_mask(prompt_mask)
    if token_mask is not None:
        chex.assert_equal_shape([token_mask, prompt_mask])
        valid = valid & token_mask.astype(bool)
    lp = jax.lax.stop_gradient(prompt_logprobs).astype(jnp.float32)
    n = jnp.sum(valid, axis=-1).astype(jnp.float32)
    if reading == "mean":
        log_c = jnp.sum(jnp.where(valid, lp, 0.0), axis=-1) / jnp.maximum(n, 1.0)
    elif reading == "low_fraction":
        log_c = low_fraction_mean(lp, valid, rho=rho)
    else:
        raise ValueError(f"prompt reading must be 'mean' or 'low_fraction'; got {reading!r}.")
    return jnp.exp(jnp.where(n > 0, log_c, 0.0))


def _arm_correction(advantages, active, answer_conf, prompt_conf, apply, alpha):
    """A + alpha (c(q) - c(o|q)) where active & apply; returns (adjusted, correction float32)."""
    cq = prompt_conf if jnp.ndim(prompt_conf) == 2 else prompt_conf[:, None]
    corr = alpha * (cq.astype(jnp.float32) - answer_conf.astype(jnp.float32))
    corr = jax.lax.stop_gradient(jnp.where(active & apply, corr, 0.0))
    return (advantages.astype(jnp.float32) + corr).astype(advantages.dtype), corr


def arm_reweight(
    advantages: jax.Array,
    rewards: jax.Array,
    correct: jax.Array,
    logprobs: jax.Array,
    completion_mask: jax.Array,
    prompt_logprobs: Optional[jax.Array] = None,
    prompt_mask: Optional[jax.Array] = None,
    member_mask: Optional[jax.Array] = None,
    is_anchor: Optional[jax.Array] = None,
    question_mask: Optional[jax.Array] = None,
    *,
    alpha: float = 1.0,
    answer_confidence_reading: str = "low_fraction",
    prompt_confidence_reading: str = "mean",
    rho: float = 0.2,
    prompt_rho: float = 0.2,
    prompt_tokens: str = "all",
    gate: str = "reward_sum",
    gate_all_correct: bool = False,
    apply_to_anchors: bool = False,
    return_diagnostics: bool = False,
) -> Union[jax.Array, Tuple[jax.Array, Dict[str, jax.Array]]]:
    """ProGRPO ARM (arXiv 2602.05281, METHODS §4): A~ = A + alpha (c(q) - c(o|q)) outside
    all-wrong groups. The registered advantage transform ``"progrpo"``.

    Args:
      advantages: [P, G] baseline advantages (normally GRPO's).
      rewards: [P, G] rewards (the gate ``"reward_sum"``); correct: bool [P, G] verifier
        correctness (the gate ``"correct"`` and the ``gate_all_correct`` ablation).
      logprobs, completion_mask: [P, G, Tc] behaviour log-probs and valid tokens (answer
        confidence c(o|q), :func:`answer_confidence`).
      prompt_logprobs, prompt_mask: [P, Tp] prompt log-probs from the prefill and real prompt
        tokens (prompt confidence c(q), :func:`prompt_confidence`); unused with
        ``prompt_confidence_reading="group_mean_answer"``.
      member_mask: optional bool [P, G]; non-members are unchanged (their advantage stays 0).
      is_anchor: optional bool [P, G] off-policy anchors: they take no part in the gates (an
        expert solution does not switch ARM on for a group whose own samples are all wrong)
        and, unless ``apply_to_anchors``, get no correction (their logprobs are 0, which is not
        a behaviour-policy confidence).
      question_mask: optional bool [P, Tp], the question's own prompt tokens; required by
        ``prompt_tokens="question"``.
      alpha: correction strength (not public; default 1.0).
      answer_confidence_reading: see :func:`answer_confidence` (default ``"low_fraction"``).
      prompt_confidence_reading: ``"mean"`` (default), ``"low_fraction"`` (see
        :func:`prompt_confidence`) or ``"group_mean_answer"`` (c(q) := mean of the members'
        answer confidences; zero-mean correction within a group, not the paper's definition).
      rho: the low-probability fraction for answers (0.2); prompt_rho: for prompts.
      prompt_tokens: the prompt tokens c(q) reads: ``"all"`` (default; the whole templated
        prompt) or ``"question"`` (question tokens only, METHODS §4's option; needs
        ``question_mask``).
      gate: when a group counts as all-wrong (no correction): ``"reward_sum"`` (default;
        METHODS §4: sum_k r_k = 0 over the on-policy members, non-finite rewards counted as
        0) or ``"correct"`` (no member has its correctness flag set; with a 0/1 accuracy reward
        the two agree).
      gate_all_correct: ablation; if True all-correct groups (every on-policy member's
        correctness flag set) are also left unchanged.
      apply_to_anchors: see ``is_anchor``.
      return_diagnostics: also return the diagnostics dict.

    Returns:
      Adjusted advantages [P, G] in the dtype of ``advantages`` (with ``return_diagnostics``:
      ``(adv, diag)``). The correction carries no gradient; an empty completion (no valid token)
      gets none.
    """
    if prompt_confidence_reading not in PROMPT_CONFIDENCES:
        raise ValueError(f"prompt_confidence_reading must be one of {PROMPT_CONFIDENCES}; got "
                         f"{prompt_confidence_reading!r}.")
    if prompt_tokens not in PROMPT_TOKENS:
        raise ValueError(f"prompt_tokens must be one of {PROMPT_TOKENS}; got {prompt_tokens!r}.")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}; got {gate!r}.")
    chex.assert_equal_shape([advantages, rewards, correct])
    p, g = advantages.shape
    member = _common.member_mask_or_ones(member_mask, (p, g))
    anchor = jnp.zeros((p, g), bool) if is_anchor is None else is_anchor.astype(bool)
    ca = answer_confidence(logprobs, completion_mask, reading=answer_confidence_reading, rho=rho)
    nonempty = jnp.any(completion_mask, axis=-1)
    apply = member & (nonempty if apply_to_anchors else nonempty & ~anchor)
    if prompt_confidence_reading == "group_mean_answer":
        w = apply.astype(jnp.float32)
        cq = jnp.sum(ca * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    else:
        if prompt_logprobs is None or prompt_mask is None:
            raise ValueError("ProGRPO's prompt confidence needs prompt_logprobs and prompt_mask "
                             "[P, Tp]; got None.")
        token_mask = None
        if prompt_tokens == "question":
            if question_mask is None:
                raise ValueError("ProGRPO prompt_tokens='question' needs question_mask [P, Tp] "
                                 "(rollout.question_mask); it is None.")
            token_mask = question_mask
        cq = prompt_confidence(prompt_logprobs, prompt_mask, reading=prompt_confidence_reading,
                               rho=prompt_rho, token_mask=token_mask)
    gm = member & ~anchor  # the on-policy members decide the gates
    c = jnp.asarray(correct).astype(bool) & gm
    n_correct = jnp.sum(c, axis=1, keepdims=True)
    if gate == "correct":
        active = n_correct > 0
    else:
        r = rewards.astype(jnp.float32)
        r_sum = jnp.sum(jnp.where(gm & jnp.isfinite(r), r, 0.0), axis=1, keepdims=True)
        active = r_sum != 0.0
    if gate_all_correct:
        active = active & (n_correct < jnp.sum(gm, axis=1, keepdims=True))
    adv, corr = _arm_correction(advantages, active, ca, cq, apply, alpha)
    if not return_diagnostics:
        return adv
    touched = (corr != 0.0).astype(jnp.float32)
    wm = apply.astype(jnp.float32)
    nw = jnp.maximum(jnp.sum(wm), 1.0)
    diag = {
        "correction_mean": _common.scalar(jnp.sum(corr * wm) / nw),
        "correction_abs_mean": _common.scalar(jnp.sum(jnp.abs(corr) * wm) / nw),
        "frac_corrected": _common.scalar(jnp.sum(touched * wm) / nw),
        "answer_confidence_mean": _common.scalar(jnp.sum(ca * wm) / nw),
        "prompt_confidence_mean": _common.scalar(jnp.mean(cq)),
    }
    return adv, diag


def required_inputs(options) -> frozenset:
    """What :func:`arm_reweight` needs from the rollout under ``options``: prompt_logprobs
    unless ``prompt_confidence_reading="group_mean_answer"``; question_mask iff
    ``prompt_tokens="question"`` (and the prompt confidence is read from prompt tokens)."""
    if options["prompt_confidence_reading"] == "group_mean_answer":
        return frozenset()
    need = {"prompt_logprobs"}
    if options["prompt_tokens"] == "question":
        need.add("question_mask")
    return frozenset(need)
