"""Teacher-forced per-token log-probabilities (and entropies) of a decoder policy.

``completion_logprobs`` is what the GRPO loss differentiates: log pi(o_t | q, o_<t) of each
completion token under the temperature-scaled policy ``softmax(logits / T)``. The sampler
(``jaxgrpo.sampling``) reports behaviour log-probs under the same distribution (before any top-k /
top-p truncation), so at the first update the importance ratio pi/pi_old is exactly 1 up to float
round-off. ``prompt_logprobs`` is log pi(q_t | q_<t) over a left-padded prompt (ProGRPO's prompt
perplexity, arXiv:2602.05281).

Memory: the LM head is applied only to the hidden states that predict the requested tokens (not the
whole prompt), optionally in time chunks (``chunk_size``) so that at most [B, chunk, V] logits are
live at once.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

from jaxgrpo.models.decoder import positions_from_mask

__all__ = ["completion_logprobs", "prompt_logprobs", "token_logprobs_from_hidden",
           "token_logprobs_from_logits"]


def token_logprobs_from_logits(logits: jax.Array, targets: jax.Array, temperature: float = 1.0,
                               return_entropy: bool = False):
    """log softmax(logits / T)[target] (and the entropy of softmax(logits / T)).

    logits [..., V] (any float dtype; computed in float32), targets [...] int.
    Returns logprobs [...] float32, or (logprobs, entropy) with ``return_entropy``.
    """
    z = logits.astype(jnp.float32)
    if temperature != 1.0:
        z = z / jnp.float32(temperature)
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    lp = picked - lse
    if not return_entropy:
        return lp
    logp = z - lse[..., None]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return lp, ent


def token_logprobs_from_hidden(model, hidden: jax.Array, targets: jax.Array, *,
                               temperature: float = 1.0, return_entropy: bool = False,
                               chunk_size: Optional[int] = None):
    """Apply the LM head to final-norm hidden states [B, T, E] and score targets [B, T].

    With ``chunk_size`` the time axis is processed in chunks under ``lax.map`` so only
    [B, chunk_size, V] logits exist at a time (the backward pass recomputes them per chunk).
    """
    def one(h, tgt):
        return token_logprobs_from_logits(model.logits_from_hidden(h), tgt, temperature,
                                          return_entropy)

    b, t = targets.shape
    if chunk_size is None or chunk_size >= t:
        return one(hidden, targets)
    n = -(-t // chunk_size)
    pad = n * chunk_size - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    tg = jnp.pad(targets, ((0, 0), (0, pad)))
    h = h.reshape(b, n, chunk_size, -1).swapaxes(0, 1)
    tg = tg.reshape(b, n, chunk_size).swapaxes(0, 1)
    out = jax.lax.map(jax.checkpoint(lambda xs: one(*xs)), (h, tg))
    unchunk = lambda a: a.swapaxes(0, 1).reshape(b, n * chunk_size)[:, :t]
    return jax.tree.map(unchunk, out)


def _shift_prompt_scores(model, hidden, prompt_tokens, prompt_mask, temperature, return_entropy,
                         chunk_size):
    """Scores of q_t given q_<t for t >= 1 from prompt hidden states; 0 where no prediction."""
    mask = prompt_mask.astype(bool)
    valid = jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, 1:] & mask[:, :-1]], axis=1)
    out = token_logprobs_from_hidden(model, hidden[:, :-1], prompt_tokens[:, 1:],
                                     temperature=temperature, return_entropy=return_entropy,
                                     chunk_size=chunk_size)
    pad0 = lambda a: jnp.where(valid, jnp.pad(a, ((0, 0), (1, 0))), 0.0)
    return jax.tree.map(pad0, out)


def prompt_logprobs(model, prompt_tokens: jax.Array, prompt_mask: jax.Array, *,
                    temperature: float = 1.0, return_entropy: bool = False,
                    chunk_size: Optional[int] = None):
    """log pi(q_t | q_<t) for a left-padded prompt batch.

    prompt_tokens/prompt_mask [P, Tp]. Returns float32 [P, Tp]: 0 at the first real token of each
    row (nothing predicts it) and on padding; optionally also the per-position entropy (same
    zeros). Matches ``SampleOutput.prompt_logprobs``.
    """
    hidden, _ = model.hidden_states(prompt_tokens, attention_mask=prompt_mask)
    return _shift_prompt_scores(model, hidden, prompt_tokens, prompt_mask, temperature,
                                return_entropy, chunk_size)


def _grouped_hidden(model, prompt_tokens, prompt_mask, completion_tokens, cmask, lora=None):
    """Hidden states [B, Tc, E] predicting each completion token, with the shared prompt of a
    group run ONCE (rows p*G + g share prompt p).

    The prompt pass fills a KV cache of Tp + Tc slots for the P prompts; the cache is repeated G
    times and the completions (minus their last token) attend to it. Same numbers as running
    every row's prompt + completion (causal masks and positions are identical), but the prompt
    part of the forward and backward passes costs P rows instead of P * G. With a ``lora``
    branch the two passes draw their dropout masks from its key folded with 0 and 1 (a prompt's
    mask is shared by its G completions).
    """
    from jaxgrpo.models.decoder import init_cache

    b, tc = completion_tokens.shape
    bp, tp = prompt_tokens.shape
    g = b // bp
    pmask = prompt_mask.astype(bool)
    cache = init_cache(model.config, bp, tp + tc, model.dtype)
    key_mask = jnp.concatenate([pmask, jnp.zeros((bp, tc), bool)], axis=1)
    h_prompt, cache = model.hidden_states(prompt_tokens, attention_mask=key_mask,
                                          positions=positions_from_mask(pmask), cache=cache,
                                          cache_index=0, lora=None if lora is None else lora.fold(0))
    first = jnp.repeat(h_prompt[:, -1:], g, axis=0)  # predicts completion token 0
    if tc == 1:
        return first
    cache = cache.repeat(g)
    key_mask = jnp.concatenate([jnp.repeat(pmask, g, axis=0), cmask], axis=1)
    n_prompt = jnp.repeat(jnp.sum(pmask, axis=1, dtype=jnp.int32), g)
    positions = n_prompt[:, None] + jnp.arange(tc - 1, dtype=jnp.int32)[None, :]
    h_rest, _ = model.hidden_states(completion_tokens[:, :-1].astype(prompt_tokens.dtype),
                                    attention_mask=key_mask, positions=positions, cache=cache,
                                    cache_index=tp, lora=None if lora is None else lora.fold(1))
    return jnp.concatenate([first, h_rest], axis=1)


def completion_logprobs(model, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        completion_tokens: jax.Array, completion_mask: jax.Array, *,
                        temperature: float = 1.0, return_entropy: bool = False,
                        chunk_size: Optional[int] = None, lora=None
                        ) -> Union[jax.Array, Tuple[jax.Array, jax.Array]]:
    """Teacher-forced log pi(o_t | q, o_<t) of each completion token.

    Args:
      model: a ``jaxgrpo.models.Decoder`` (an nnx module; merge (graphdef, state) first).
      prompt_tokens, prompt_mask: [Bp, Tp] left-padded prompts. Bp may be B (one prompt per row)
        or B / G (prompt-major groups: row p*G + g uses prompt p), in which case each prompt is
        run once and its KV cache shared by its G completions (same numbers, less compute).
      completion_tokens, completion_mask: [B, Tc] right-padded completions (mask True on valid
        tokens, EOS included).
      temperature: the policy is softmax(logits / temperature).
      return_entropy: also return the per-token entropy of that policy.
      chunk_size: optional time chunking of the LM head (memory).
      lora: an unmerged LoRA branch (``jaxgrpo.lora.LoraBranch``, e.g. with dropout) for the
        decoder's projections; None: the model's own parameters only.

    Returns:
      logprobs float32 [B, Tc], 0 where ``completion_mask`` is False; with ``return_entropy`` a
      tuple (logprobs, entropy) with entropy float32 [B, Tc], 0 on padding.
    """
    b, tc = completion_tokens.shape
    bp, tp = prompt_tokens.shape
    cmask = completion_mask.astype(bool)
    if bp != b:
        if b % bp:
            raise ValueError(f"prompt rows {bp} do not divide completion rows {b}")
        h = _grouped_hidden(model, prompt_tokens, prompt_mask, completion_tokens, cmask, lora)
    else:
        ids = jnp.concatenate([prompt_tokens, completion_tokens.astype(prompt_tokens.dtype)],
                              axis=1)
        mask = jnp.concatenate([prompt_mask.astype(bool), cmask], axis=1)
        hidden, _ = model.hidden_states(ids, attention_mask=mask,
                                        positions=positions_from_mask(mask), lora=lora)
        # Hidden state at position Tp-1+t predicts completion token t: only that slice meets
        # the head.
        h = jax.lax.dynamic_slice_in_dim(hidden, tp - 1, tc, axis=1)
    out = token_logprobs_from_hidden(model, h, completion_tokens, temperature=temperature,
                                     return_entropy=return_entropy, chunk_size=chunk_size)
    return jax.tree.map(lambda a: jnp.where(cmask, a, 0.0), out)
