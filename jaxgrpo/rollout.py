"""The rollout batch: what sampling + verification hand to the advantage transforms and the loss.

Groups are a shape, not a dictionary: every per-completion array is laid out ``[P, G, ...]``
(P prompts, G completions per prompt), so group statistics are reductions over ``axis=1``.

Assembly (the training step's last collect stage, ``jaxgrpo.step``):

* :func:`rollout_from_sample`: a sampler output (rows ``p * G + g``) plus per-row rewards ->
  ``Rollout`` ``[P, G]``; pure ``jnp``, so it runs on the host path and inside the fused jit.
* :class:`Anchors` / :func:`encode_anchors`: DaGRPO's off-policy anchors (an expert solution
  per prompt; arXiv 2512.06337), which ``jaxgrpo.step.assemble`` adds to each group as member G
  (``jaxgrpo.advantages.add_anchors``).

This module imports no advantage code: the advantage transforms read the Rollout.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgrpo.data import bucket_length


@struct.dataclass
class Rollout:
    """One batch of sampled groups.

    Shapes: P prompts, G group members, Tp prompt length, Tc completion length, D embedding dim.

    Attributes:
      prompt_tokens: int32 [P, Tp], left-padded prompt ids (shared by the group).
      prompt_mask: bool [P, Tp], True on real prompt tokens.
      completion_tokens: int32 [P, G, Tc], right-padded completion ids.
      completion_mask: bool [P, G, Tc], True on valid completion tokens (EOS included).
      logprobs: float32 [P, G, Tc], behaviour-policy (pi_old) log-probs of the sampled tokens at
        the rollout temperature; 0 on padding. For off-policy anchor members this is 0 (the
        behaviour probability of an expert solution is taken as 1).
      prompt_logprobs: float32 [P, Tp], log pi_old(q_t | q_<t) from the prefill pass; 0 where no
        prediction exists (the first real token and padding).
      rewards: float32 [P, G], scalar reward of each member (weighted sum of reward functions).
      correct: bool [P, G], verifier correctness c_i (used by ProGRPO's all-wrong test and by
        DaGRPO's anchor trigger).
      member_mask: bool [P, G], False for a group slot that does not take part (an anchor slot
        whose trigger did not fire). Group statistics use only True members.
      is_anchor: bool [P, G], True for an off-policy anchor (expert solution) member.
      fine_scores: optional float32 [P, G] in [0, 1], DaGRPO's finer score s_i.
      embeddings: optional float32 [P, G, D], L2-normalised completion embeddings (DRA, DaGRPO).
      ref_logprobs: optional float32 [P, G, Tc], reference-policy log-probs (KL term, beta > 0).
      truncated: optional bool [P, G], True for a completion cut at max_new_tokens without an
        EOS (``SampleOutput.truncated``; False for anchors); used by
        :func:`mask_truncated_completions`.
      question_mask: optional bool [P, Tp], True on the prompt tokens of the question itself
        (not the chat template, system prompt or instructions); ProGRPO's
        ``prompt_tokens="question"`` prompt confidence reads it
        (``jaxgrpo.data.question_token_mask`` builds it).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    completion_tokens: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    prompt_logprobs: jax.Array
    rewards: jax.Array
    correct: jax.Array
    member_mask: jax.Array
    is_anchor: jax.Array
    fine_scores: Optional[jax.Array] = None
    embeddings: Optional[jax.Array] = None
    ref_logprobs: Optional[jax.Array] = None
    truncated: Optional[jax.Array] = None
    question_mask: Optional[jax.Array] = None

    @property
    def num_prompts(self) -> int:
        return self.rewards.shape[0]

    @property
    def group_size(self) -> int:
        return self.rewards.shape[1]


def mask_truncated_completions(rollout: Rollout) -> Rollout:
    """TRL's ``mask_truncated_completions``: completion_mask &= ~truncated.

    Apply AFTER the advantages (a truncated completion keeps its reward and its place in the
    group statistics, as in TRL): it then adds nothing to the loss and, having no valid token,
    nothing to the token and sequence normalisers of the aggregation.
    """
    if rollout.truncated is None:
        raise ValueError("config.loss.mask_truncated_completions=True needs rollout.truncated "
                         "[P, G] (SampleOutput.truncated); it is None.")
    keep = ~rollout.truncated.astype(bool)
    return rollout.replace(completion_mask=rollout.completion_mask & keep[..., None])


def completion_width(longest: int, max_new_tokens: int, buckets: int) -> int:
    """The completion width the update runs at: the smallest of ``buckets`` widths
    ceil(max_new_tokens * k / buckets) rounded up to a multiple of 8 (k = 1..buckets, the last is
    ``max_new_tokens`` itself) that holds the ``longest`` completion. ``buckets`` = 1: always
    ``max_new_tokens``. Few widths means few update compilations (one per width seen)."""
    if buckets <= 1 or longest >= max_new_tokens:
        return max_new_tokens
    widths = (min(bucket_length(-(-max_new_tokens * k // buckets), 8), max_new_tokens)
              for k in range(1, buckets + 1))
    return next(w for w in widths if w >= longest)  # k = buckets gives max_new_tokens


def trim_completions(rollout: Rollout, width: int) -> Rollout:
    """The rollout with its completion axis cut to ``width`` columns (completion tokens, mask,
    behaviour and reference log-probs). Exact when no completion is longer than ``width``:
    the dropped columns are padding the loss masks out (the Dr.GRPO-style constant normaliser
    reads ``sampling.max_new_tokens``, not the width; ``jaxgrpo.train.make_update_fn``)."""
    if width >= rollout.completion_tokens.shape[-1]:
        return rollout
    cut = lambda a: None if a is None else a[..., :width]
    return rollout.replace(completion_tokens=cut(rollout.completion_tokens),
                           completion_mask=cut(rollout.completion_mask),
                           logprobs=cut(rollout.logprobs), ref_logprobs=cut(rollout.ref_logprobs))


def rollout_from_sample(out, rewards, correct, *, fine_scores=None, embeddings=None) -> Rollout:
    """A ``[P, G]`` Rollout from a ``SampleOutput`` (rows p * G + g) and per-row rewards.

    Args:
      out: ``jaxgrpo.sampling.SampleOutput`` of P prompts x G samples.
      rewards: float [P*G]; correct: bool [P*G].
      fine_scores: optional float [P*G] (DaGRPO's s_i); embeddings: optional float [P*G, D].
    """
    p = out.prompt_tokens.shape[0]
    g = out.completion_tokens.shape[0] // p
    tc = out.completion_tokens.shape[1]

    def grp(x, dtype):
        return None if x is None else jnp.asarray(x, dtype).reshape(p, g, *jnp.shape(x)[1:])

    return Rollout(
        prompt_tokens=out.prompt_tokens, prompt_mask=out.prompt_mask,
        completion_tokens=out.completion_tokens.reshape(p, g, tc),
        completion_mask=out.completion_mask.reshape(p, g, tc),
        logprobs=out.logprobs.reshape(p, g, tc), prompt_logprobs=out.prompt_logprobs,
        rewards=grp(rewards, jnp.float32), correct=grp(correct, bool),
        member_mask=jnp.ones((p, g), bool), is_anchor=jnp.zeros((p, g), bool),
        truncated=grp(out.truncated, bool),
        fine_scores=grp(fine_scores, jnp.float32), embeddings=grp(embeddings, jnp.float32))


@struct.dataclass
class Anchors:
    """One off-policy anchor completion per prompt (DaGRPO / LUFFY-style).

    Attributes:
      tokens: int32 [P, Tc] the anchor's ids (right-padded, EOS appended, cut at Tc).
      mask: bool [P, Tc] valid anchor tokens.
      rewards: float32 [P] the anchor scored by the run's reward functions.
      fine_scores: float32 [P] its finer score (1.0 when the run has none).
      embeddings: optional float32 [P, D] its embedding (when the chain reads embeddings).
    """

    tokens: jax.Array
    mask: jax.Array
    rewards: jax.Array
    fine_scores: jax.Array
    embeddings: Optional[jax.Array] = None


def encode_anchors(tokenizer, texts: Sequence[str], width: int, eos_id: int,
                   pad_id: int) -> tuple:
    """Host: anchor texts -> (int32 tokens [P, width], bool mask [P, width]); each text's ids
    (no special tokens) followed by ``eos_id``, cut at ``width``."""
    toks = np.full((len(texts), width), pad_id, np.int32)
    mask = np.zeros((len(texts), width), bool)
    for i, t in enumerate(texts):
        ids = (tokenizer.encode(t, add_special_tokens=False) + [eos_id])[:width]
        toks[i, :len(ids)] = ids
        mask[i, :len(ids)] = True
    return toks, mask


# ----------------------------------------------------------------------------- group selection

PROMPT_AXIS_FIELDS = ("prompt_tokens", "prompt_mask", "prompt_logprobs", "question_mask")


def group_has_spread(rollout: Rollout) -> np.ndarray:
    """Host bool [P]: the group's on-policy members do not all share one reward (DAPO's dynamic
    sampling keeps only these, arXiv 2503.14476; verl ``filter_groups``, TRL's
    ``frac_reward_zero_std`` counts the others). Off-policy anchors do not count."""
    r = np.asarray(rollout.rewards, np.float64)
    m = np.asarray(rollout.member_mask, bool) & ~np.asarray(rollout.is_anchor, bool)
    hi = np.where(m, r, -np.inf).max(axis=1)
    lo = np.where(m, r, np.inf).min(axis=1)
    return hi > lo


def take_groups(rollout: Rollout, index) -> Rollout:
    """The groups ``index`` (int [K]) of a rollout, in that order: every field's prompt axis."""
    idx = np.asarray(index, np.int64)
    return jax.tree.map(lambda x: x[idx], rollout)


def concat_groups(rollouts: Sequence[Rollout]) -> Rollout:
    """Rollouts of the same G and Tc concatenated along the prompt axis. Prompt-axis fields of
    different widths Tp (prompts are padded per batch) are left-padded to the widest first
    (padding: token 0, mask False, log-prob 0), which the left-padded layout allows."""
    width = max(r.prompt_tokens.shape[1] for r in rollouts)

    def pad(r: Rollout) -> Rollout:
        extra = width - r.prompt_tokens.shape[1]
        if not extra:
            return r
        return r.replace(**{f: jnp.pad(getattr(r, f), ((0, 0), (extra, 0)))
                            for f in PROMPT_AXIS_FIELDS if getattr(r, f) is not None})

    padded = [pad(r) for r in rollouts]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *padded)
