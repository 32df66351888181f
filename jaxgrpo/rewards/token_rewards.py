"""A reward computed from token ids alone, inside ``jax.jit`` (no detokenisation, no host trip).

For digit-level arithmetic tasks (e.g. reasoning-gym ``chain_sum`` / ``basic_arithmetic`` with a
tokenizer that splits digits individually, as SmolLM2's and Qwen2's do) the answer is the
sequence of "answer tokens" (digits, optionally a minus sign) the completion emits before its
first EOS. :func:`digit_match_reward` compares that sequence with the target's:

* ``which="all"``: every answer token before EOS, in order (other tokens skipped);
  ``which="last_run"``: only the last contiguous run of answer tokens (the last number written).
* exact match: 1.0 iff the predicted sequence equals the target sequence (same length).
* partial credit: ``#{i : pred_i == target_i} / max(len_pred, len_target)`` with left-aligned
  positions (extra or missing digits cost credit; an empty prediction scores 0).

Everything is ``jnp`` on fixed shapes; ``which`` and ``partial_credit`` are static.
:func:`encode_digit_targets` builds the padded target ids on the host.
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["digit_match_reward", "encode_digit_targets"]


@partial(jax.jit, static_argnames=("eos_id", "which", "partial_credit"))
def digit_match_reward(completion_tokens, completion_mask, target_tokens, target_mask,
                       answer_token_ids, eos_id: int, which: str = "all",
                       partial_credit: bool = False):
    """Per-completion reward from token ids. float32 ``[N]`` in [0, 1].

    Args:
      completion_tokens: int ``[N, T]`` sampled ids (right-padded).
      completion_mask: bool ``[N, T]`` valid positions (EOS included, padding excluded).
      target_tokens: int ``[N, L]`` target answer-token ids, left-aligned.
      target_mask: bool ``[N, L]`` valid target positions (a prefix of each row).
      answer_token_ids: int ``[K]`` ids that count as answer tokens (the 10 digits, maybe "-").
      eos_id: tokens at and after the first EOS are ignored (static).
      which: ``"all"`` or ``"last_run"`` (static; see the module doc).
      partial_credit: positional partial credit instead of exact match (static).
    """
    if which not in ("all", "last_run"):
        raise ValueError(f"which must be 'all' or 'last_run', got {which!r}")
    toks = jnp.asarray(completion_tokens)
    n, t = toks.shape
    length = target_tokens.shape[1]
    valid = jnp.asarray(completion_mask, bool)
    is_eos = (toks == eos_id) & valid
    before_eos = jnp.cumsum(is_eos.astype(jnp.int32), axis=1) == 0
    valid = valid & before_eos
    is_ans = valid & jnp.any(toks[:, :, None] == jnp.asarray(answer_token_ids)[None, None, :],
                             axis=-1)
    if which == "last_run":
        pos = jnp.arange(t)[None, :]
        last_ans = jnp.max(jnp.where(is_ans, pos, -1), axis=1, keepdims=True)
        breaks = valid & ~is_ans & (pos < last_ans)
        last_break = jnp.max(jnp.where(breaks, pos, -1), axis=1, keepdims=True)
        is_ans = is_ans & (pos > last_break)
    # Compact the answer tokens to the left: rank = number of answer tokens before each one.
    rank = jnp.cumsum(is_ans.astype(jnp.int32), axis=1) - 1
    n_pred = jnp.sum(is_ans, axis=1)
    dest = jnp.where(is_ans & (rank < length), rank, length)  # `length` = a dropped slot
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, t))
    pred = jnp.full((n, length + 1), -1, toks.dtype).at[rows, dest].set(toks)[:, :length]
    tmask = jnp.asarray(target_mask, bool)
    n_tgt = jnp.sum(tmask, axis=1)
    hits = jnp.sum((pred == jnp.asarray(target_tokens)) & tmask, axis=1)
    if partial_credit:
        denom = jnp.maximum(jnp.maximum(n_pred, n_tgt), 1)
        return (hits / denom).astype(jnp.float32)
    return ((hits == n_tgt) & (n_pred == n_tgt)).astype(jnp.float32)


def encode_digit_targets(answers: Sequence[str], char_to_id: Mapping[str, int],
                         max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Host helper: answers like ``"-42"`` -> (int32 ``[N, max_len]`` ids, bool mask).

    Characters not in ``char_to_id`` (spaces, commas) are skipped; answers longer than
    ``max_len`` answer characters raise ValueError.
    """
    ids = np.zeros((len(answers), max_len), np.int32)
    mask = np.zeros((len(answers), max_len), bool)
    for i, a in enumerate(answers):
        seq = [char_to_id[ch] for ch in str(a) if ch in char_to_id]
        if len(seq) > max_len:
            raise ValueError(f"answer {a!r} has {len(seq)} answer tokens > max_len={max_len}")
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return ids, mask
