"""The rollout batch: what sampling + verification hand to the advantage transforms and the loss.

Groups are a shape, not a dictionary: every per-completion array is laid out ``[P, G, ...]``
(P prompts, G completions per prompt), so group statistics are reductions over ``axis=1``.
"""
from __future__ import annotations

from typing import Optional

import jax
from flax import struct


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
