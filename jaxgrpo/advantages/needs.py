"""What each advantage transform reads from the rollout beyond tokens, rewards and masks.

Sampling and verification always fill ``Rollout``'s tokens, masks, behaviour log-probs,
rewards and correctness. Three fields cost extra work and are computed only when the chain
reads them:

* ``"embeddings"``: completion embeddings (a sentence encoder or the policy's hidden states);
* ``"fine_scores"``: DaGRPO's finer score s_i (``config.rewards.fine_score``);
* ``"prompt_logprobs"``: the prefill's prompt log-probs (one LM-head pass over the prompts).

Each registered transform declares here, as a function of its options, which of them it reads;
:func:`required_inputs` takes the union over a chain. The training step asks it what to compute
(``jaxgrpo.step``), so a transform that reads a field cannot be handed a rollout without it.
A transform registered elsewhere declares its needs with :func:`declare_needs` (default: none).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Sequence

from jaxgrpo.advantages.registry import get_transform

__all__ = ["ROLLOUT_EXTRAS", "declare_needs", "required_inputs"]

ROLLOUT_EXTRAS = ("embeddings", "fine_scores", "prompt_logprobs")

# name -> fn(options with defaults filled in) -> the fields of ROLLOUT_EXTRAS the transform reads.
_NEEDS: Dict[str, Callable[[Mapping[str, Any]], FrozenSet[str]]] = {}


def declare_needs(name: str, fn: Callable[[Mapping[str, Any]], Sequence[str]]) -> None:
    """Declares what transform ``name`` reads: ``fn(options) -> field names`` (of
    ``ROLLOUT_EXTRAS``), called with the transform's options, defaults filled in."""

    def checked(opts):
        out = frozenset(fn(opts))
        unknown = sorted(out - set(ROLLOUT_EXTRAS))
        if unknown:
            raise ValueError(f"transform {name!r} declares unknown rollout fields {unknown}; "
                             f"known: {list(ROLLOUT_EXTRAS)}.")
        return out

    _NEEDS[name] = checked


declare_needs("grpo", lambda o: ())
declare_needs("dr_grpo", lambda o: ())
# DRA's similarity kernel is over completion embeddings, always.
declare_needs("dra", lambda o: ("embeddings",))
# DaGRPO: embeddings only for embedding distinctiveness; fine scores only when it ranks by them.
declare_needs("dagrpo", lambda o: (("embeddings",) if o["distinctiveness"] == "embedding" else ())
              + (("fine_scores",) if o["score"] == "fine" else ()))
# ProGRPO: the prompt confidence c(q) reads the prompt log-probs, except in the reading that
# replaces it by the group mean of the answer confidences.
declare_needs("progrpo", lambda o: (() if o["prompt_confidence_reading"] == "group_mean_answer"
                                    else ("prompt_logprobs",)))


def required_inputs(baseline: str, reward_transforms: Sequence[str] = (),
                    advantage_transforms: Sequence[str] = (),
                    options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> FrozenSet[str]:
    """The ``Rollout`` fields (of ``ROLLOUT_EXTRAS``) the chain reward transforms -> baseline ->
    advantage transforms reads, given ``options`` ``{transform: {option: value}}`` (omitted
    options take the transform's defaults). Unknown transform names raise ValueError."""
    options = options or {}
    need: FrozenSet[str] = frozenset()
    for name in (*reward_transforms, baseline, *advantage_transforms):
        opts = {**get_transform(name).defaults, **dict(options.get(name, {}))}
        need |= _NEEDS.get(name, lambda o: frozenset())(opts)
    return need
