"""Jit-compiled autoregressive sampling: prefill once per prompt, G samples per prompt, KV cache.

One compiled function does: prefill the left-padded prompts [P, Tp] into a preallocated KV cache
of Tp + max_new_tokens slots, repeat the cache G times (row p*G + g is sample g of prompt p), then
a ``lax.while_loop`` decodes one token per step until every row has emitted one of the EOS ids or
``max_new_tokens`` is reached (early exit).

Sampling: greedy (argmax), or temperature with optional top-k and top-p (nucleus), applied in the
order of transformers' logits processors (temperature -> top-k -> top-p). The reported per-token
log-probs are those of the temperature-scaled distribution softmax(logits / T) BEFORE top-k/top-p
truncation: that is the policy the loss recomputes (``jaxgrpo.logprobs.completion_logprobs``), so
the importance ratio is 1 at the first update. (With truncation active the actual sampling
distribution differs; this is the usual convention of GRPO implementations.)

Randomness: the uniform draw of row r at step i is a function of (key, i) and r only, so results
do not depend on prompt padding, and a key gives the same samples on every call.

Usage::

    cfg = SamplingConfig(max_new_tokens=256, temperature=1.0, eos_token_ids=(2,), num_generations=8)
    out = sample(model, prompt_tokens, prompt_mask, key, cfg)       # model: nnx module
    # or, inside a training step with sharded params:
    sampler = make_sampler(graphdef, cfg)                            # jitted, cached
    out = sampler(params_state, prompt_tokens, prompt_mask, key)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxgrpo import config
from jaxgrpo.logprobs import _shift_prompt_scores
from jaxgrpo.models.decoder import init_cache, positions_from_mask

__all__ = ["SamplingConfig", "UNROLL_LAYERS", "SampleOutput", "allowed_tokens", "decode_unrolled",
           "sample", "make_sampler", "generate"]


# sampling.unroll_layers -> SamplingConfig.unroll_layers ("auto": decided by the backend when the
# sampler is traced, :func:`decode_unrolled`).
UNROLL_LAYERS = {"auto": None, "true": True, "false": False}
CACHE_DTYPES = ("", "float32", "bfloat16")  # sampling.cache_dtype; "" = the compute dtype


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig(config.Section):
    """Sampling (rollouts).

    The ``config.sampling`` section and the sampler's static settings in one (hashable: part of
    the compiled function's identity). The key fields are the ``sampling.*`` keys;
    ``SamplingConfig.from_config(c.sampling, eos_token_ids=..., pad_token_id=..., ...)`` adds the
    plain fields the program fills in. Built directly (evaluation, benchmarks, tests), the
    sampler's own guards below refuse what it cannot run (ValueError).

    Attributes:
      num_generations: G, completions per prompt (config ``sampling.num_generations``; the
        evaluation builds one with ``eval.num_samples``).
      max_new_tokens: completion length Tc (tokens generated per row, EOS included).
      temperature: logits are divided by it for sampling and for the reported log-probs (> 0).
      top_k: keep the k most likely tokens, and any tied with the k-th (0: off).
      top_p: keep the smallest set of most likely tokens with mass >= top_p (1.0: off). Ties at
        the threshold probability are all kept.
      cache_dtype: KV-cache dtype name ("bfloat16", "float32", ...); None (config ""): the
        model's compute dtype. bf16 halves the cache's bytes per decode step.
      ignore_eos: keep decoding after an EOS (as vLLM's ``ignore_eos``): every row runs
        ``max_new_tokens`` and the whole completion is masked in; for benchmarks that need
        full-length completions. EOS ids can still be sampled.
      unroll_layers: the decode loop runs the layers as a Python loop over per-layer weights and
        caches (``Decoder.decode_unrolled``; the weights are copied out of the stack once per
        call) instead of the scanned stack, whose every step slices each layer's weights and
        cache out of the stacks. Each unrolled layer writes its new key / value into its own
        cache and then attends over it (``layer_cache_attention``), so nothing is copied per
        step. The same tokens in the tests; log-probs equal up to float32 summation order. One
        more copy of the layer weights while sampling and a program that grows with depth.
        None (config "auto"): unrolled on the CPU backend, scanned elsewhere
        (:func:`decode_unrolled`).
      greedy: argmax decoding (ignores top_k / top_p; log-probs still use ``temperature``).
      eos_token_ids: a row stops after emitting any of these ids (the EOS is part of the
        completion and of its mask). Empty: rows always run ``max_new_tokens``.
      pad_token_id: written after a row has stopped.
      return_prompt_logprobs: compute ``prompt_logprobs`` (one [P, Tp, V] LM-head pass).
      prompt_logprobs_chunk: time-chunk size for that pass (memory); None: one pass.
    """

    NAME: ClassVar[str] = "sampling"
    num_generations: int = config.key(
        4, "G: completions per prompt (a group)", ge=2,
        why="G must be >= 2: group-relative advantages need at least two completions per "
            "prompt")
    max_new_tokens: int = config.key(48, "completion length limit", ge=1)
    temperature: float = config.key(1.0, "sampling temperature (> 0)", gt=0)
    top_p: float = config.key(1.0, "nucleus sampling mass; 1 = off", gt=0, le=1)
    top_k: int = config.key(0, "keep the k most likely tokens; 0 = off", ge=0)
    cache_dtype: Optional[str] = config.key(
        "", 'KV-cache dtype of the sampler; "" = the compute dtype', choices=CACHE_DTYPES,
        convert=lambda v: v or None)
    ignore_eos: bool = config.key(False, "always generate max_new_tokens (benchmarks only)")
    unroll_layers: Optional[bool] = config.key(
        "auto",
        "decode with the layers unrolled over per-layer weights and caches (no per-step slices of"
        ' the stacks, which XLA:CPU copies): "true", "false" (the scanned stack), or "auto": '
        "unrolled on the CPU backend, scanned on GPU / TPU (jaxgrpo.sampling.decode_unrolled)",
        choices=tuple(UNROLL_LAYERS), convert=UNROLL_LAYERS.__getitem__)
    # Plain fields: filled in by the program, not config keys.
    greedy: bool = False
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: int = 0
    return_prompt_logprobs: bool = True
    prompt_logprobs_chunk: int | None = None

    def __post_init__(self):
        if isinstance(self.eos_token_ids, int):
            object.__setattr__(self, "eos_token_ids", (self.eos_token_ids,))
        else:
            object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in self.eos_token_ids))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.cache_dtype is not None:
            try:
                ok = jnp.issubdtype(jnp.dtype(self.cache_dtype), jnp.floating)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"cache_dtype must be a float dtype name such as 'bfloat16' "
                                 f"or None, got {self.cache_dtype!r}")
            object.__setattr__(self, "cache_dtype", jnp.dtype(self.cache_dtype).name)


@struct.dataclass
class SampleOutput:
    """Sampler result. P prompts, G = num_generations, rows are prompt-major (row p*G + g).

    Attributes:
      prompt_tokens: int32 [P, Tp] the input prompts (not repeated; repeat G times for rows).
      prompt_mask: bool [P, Tp].
      completion_tokens: int32 [P*G, Tc] generated ids, ``pad_token_id`` after the stop.
      completion_mask: bool [P*G, Tc] True on generated tokens up to and including the EOS.
      lengths: int32 [P*G] number of valid completion tokens.
      truncated: bool [P*G] reached max_new_tokens without emitting an EOS.
      logprobs: float32 [P*G, Tc] log softmax(logits / T)[token] (before top-k/top-p), 0 on pad.
      prompt_logprobs: float32 [P, Tp] log softmax(logits / T)[q_t] given q_<t from the prefill;
        0 at the first real token and on padding (zeros if not requested).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    completion_tokens: jax.Array
    completion_mask: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    logprobs: jax.Array
    prompt_logprobs: jax.Array

    @property
    def group_size(self) -> int:
        return self.completion_tokens.shape[0] // self.prompt_tokens.shape[0]


# --------------------------------------------------------------------------- token selection

def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index i with cdf[i-1] <= u * total < cdf[i] for non-negative weights [B, N]; u [B].

    Two levels, blocks of ~sqrt(N) entries: pick the block from the block sums' cdf, then the
    entry from that block's cdf. Same distribution as one cdf over N, with two cumulative sums
    over ~sqrt(N) entries instead of one over the whole vocabulary.
    """
    b, n = weights.shape
    w = 1 << max(0, (n.bit_length() + 1) // 2)  # block width, a power of two >= sqrt(N)
    c = -(-n // w)
    blocks = jnp.pad(weights, ((0, 0), (0, c * w - n))).reshape(b, c, w)

    def pick(wts, x):
        """Index into the rows of wts [B, M] with cdf[i-1] <= x < cdf[i], clamped to the first /
        last positive weight (float round-off); also returns the mass before it."""
        cdf = jnp.cumsum(wts, axis=-1)
        idx = jnp.sum((cdf <= x[:, None]).astype(jnp.int32), axis=-1)
        pos = wts > 0
        first = jnp.argmax(pos, axis=-1)
        last = wts.shape[-1] - 1 - jnp.argmax(pos[:, ::-1], axis=-1)
        idx = jnp.clip(idx, first, last)
        before = jnp.take_along_axis(cdf - wts, idx[:, None], axis=-1)[:, 0]
        return idx, before

    bsum = jnp.sum(blocks, axis=-1)  # [B, C]
    x = u * jnp.sum(bsum, axis=-1)
    j, before = pick(bsum, x)
    blk = jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]  # [B, w]
    i, _ = pick(blk, x - before)
    return j * w + i


def _sortable(z: jax.Array) -> jax.Array:
    """float32 -> uint32 keys with the same order (and equal keys for equal floats)."""
    z = jnp.where(z == 0, jnp.float32(0), z)  # -0.0 == +0.0: one key
    i = jax.lax.bitcast_convert_type(z, jnp.uint32)
    return jnp.where(i >> 31 == 1, ~i, i | jnp.uint32(0x80000000))


def _nucleus_key(keys: jax.Array, e: jax.Array, top_p: float) -> jax.Array:
    """Smallest uint32 t with  sum(e[keys > t]) < top_p * sum(e)  per row: keys [B, V], e [B, V].

    The predicate is monotone in t, so 32 bisection steps over the key range find it exactly;
    each step is one fused masked sum over V (no sort of the vocabulary).
    """
    bound = top_p * jnp.sum(e, axis=-1)
    lo = jnp.min(keys, axis=-1) - jnp.uint32(1)  # predicate false (all mass is above it)
    hi = jnp.max(keys, axis=-1)  # predicate true (no mass above the maximum)

    def body(_, c):
        lo, hi = c
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(jnp.where(keys > mid[:, None], e, 0.0), axis=-1) < bound
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    return jax.lax.fori_loop(0, 32, body, (lo, hi))[1]


def allowed_tokens(z: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """bool [B, V]: the tokens top-k then top-p keep for scaled logits z [B, V].

    Sorted definition (that of transformers' TopK / TopP warpers, made order-independent):
    top-k keeps every token whose logit is >= the k-th largest (ties at it included); top-p
    then keeps token i iff the renormalised mass of the kept tokens with a strictly larger
    logit is < top_p (so ties at the threshold are all kept, and the most likely is always
    kept). Computed as a logit threshold, without sorting the vocabulary: top-k from
    ``lax.top_k`` (k entries), top-p from the k candidates' cumulative mass, or, without top-k,
    by bisection on the logits' bit patterns.
    """
    m = jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z - m)
    keep = jnp.ones(z.shape, bool)
    if top_k and top_k < z.shape[-1]:
        # Reduce, never slice, the values: slicing them stops XLA:CPU from using its TopK kernel
        # (it sorts the whole row instead).
        vals, _ = jax.lax.top_k(z, top_k)  # [B, k], descending
        keep = z >= jnp.min(vals, axis=-1, keepdims=True)
        if top_p < 1.0:
            w = jnp.exp(vals - m)
            bound = top_p * jnp.sum(jnp.where(keep, e, 0.0), axis=-1, keepdims=True)
            before = jnp.cumsum(w, axis=-1) - w  # mass strictly above the first of each tie run
            thresh = jnp.min(jnp.where(before < bound, vals, jnp.inf), axis=-1, keepdims=True)
            keep = z >= thresh
    elif top_p < 1.0:
        keys = _sortable(z)
        keep = keys >= _nucleus_key(keys, e, top_p)[:, None]
    return keep


def select_tokens(logits: jax.Array, u: jax.Array, cfg: SamplingConfig):
    """Pick next tokens and their log-probs from float32 logits [B, V] and uniforms u [B].

    Returns (tokens int32 [B], logprobs float32 [B]) with logprobs under softmax(logits / T).
    Sampling is from softmax(logits / T) restricted to ``allowed_tokens`` and renormalised.
    """
    z = logits if cfg.temperature == 1.0 else logits / jnp.float32(cfg.temperature)
    m = jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z - m)
    lse = jnp.log(jnp.sum(e, axis=-1)) + m[:, 0]
    if cfg.greedy:
        tok = jnp.argmax(z, axis=-1).astype(jnp.int32)
    else:
        if cfg.top_k or cfg.top_p < 1.0:
            e = jnp.where(allowed_tokens(z, cfg.top_k, cfg.top_p), e, 0.0)
        tok = _inverse_cdf(e, u).astype(jnp.int32)
    lp = jnp.take_along_axis(z, tok[:, None], axis=-1)[:, 0] - lse
    return tok, lp


# --------------------------------------------------------------------------- the sampler

def decode_unrolled(cfg: SamplingConfig) -> bool:
    """Whether the decode loop runs the layers unrolled: ``cfg.unroll_layers``, or where it is
    None, whether JAX's default backend is the CPU (read when the sampler is traced)."""
    if cfg.unroll_layers is not None:
        return bool(cfg.unroll_layers)
    return jax.default_backend() == "cpu"


def _prefill(model, prompt_tokens, pmask, cfg: SamplingConfig):
    """Prefill P prompts [P, Tp] once into a fresh cache of Tp + Tc slots: ``(cache, key mask
    [P, Tp + Tc], prompt log-probs [P, Tp] (zeros unless requested), last logits [P, V])``."""
    p, tp = prompt_tokens.shape
    tc = cfg.max_new_tokens
    cache = init_cache(model.config, p, tp + tc, model.dtype if cfg.cache_dtype is None
                       else jnp.dtype(cfg.cache_dtype))
    key_mask_p = jnp.concatenate([pmask, jnp.ones((p, tc), bool)], axis=1)
    pos_p = positions_from_mask(pmask)
    hidden, cache = model.hidden_states(prompt_tokens, attention_mask=key_mask_p, positions=pos_p,
                                        cache=cache, cache_index=0)
    if cfg.return_prompt_logprobs:
        plp = _shift_prompt_scores(model, hidden, prompt_tokens, pmask, cfg.temperature, False,
                                   cfg.prompt_logprobs_chunk)
    else:
        plp = jnp.zeros((p, tp), jnp.float32)
    return cache, key_mask_p, plp, model.logits_from_hidden(hidden[:, -1])


def _record(state, i, tok, lp, eos, pad_token_id: int):
    """Write token ``i`` (pad after a row's stop) and its log-prob (0 there) into ``(tokens
    [B, Tc], log-probs [B, Tc], done [B])``; a row is done after an EOS."""
    toks, lps, done = state
    tok = jnp.where(done, pad_token_id, tok)
    lp = jnp.where(done, 0.0, lp)
    toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
    lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, i))
    done = done | jnp.any(tok[:, None] == eos[None, :], axis=-1)
    return (toks, lps, done), tok


def _decode(model, cache, key_mask, next_pos, logits0, key, eos, tp: int, cfg: SamplingConfig):
    """Sample token 0 from ``logits0`` [B, V], then decode one token per step (cache slot
    tp + i - 1 holds token i - 1) until every row is done or Tc tokens: ``(tokens [B, Tc],
    log-probs [B, Tc])``. Row r's uniform at step i is a function of (key, i, r) only."""
    b, tc = logits0.shape[0], cfg.max_new_tokens

    def draw(i):
        return jax.random.uniform(jax.random.fold_in(key, i), (b,), jnp.float32)

    toks = jnp.full((b, tc), cfg.pad_token_id, jnp.int32)
    lps = jnp.zeros((b, tc), jnp.float32)
    done = jnp.zeros((b,), bool)
    tok0, lp0 = select_tokens(logits0, draw(0), cfg)
    (toks, lps, done), tok0 = _record((toks, lps, done), 0, tok0, lp0, eos, cfg.pad_token_id)

    unroll = decode_unrolled(cfg)
    if unroll:  # per-layer weights and caches, each its own array: no slices per step
        layer_states, cache = model.unstack_layers(), cache.unstack()

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < tc) & ~jnp.all(done)

    def body(carry):
        i, tok, cache, (toks, lps), done, _ = carry
        # Feed token i-1 (already recorded) at cache slot tp + i - 1; sample token i.
        if unroll:
            logits, cache = model.decode_unrolled(
                tok[:, None], layer_states, cache, attention_mask=key_mask,
                positions=(next_pos + i - 1)[:, None], cache_index=tp + i - 1)
        else:
            logits, cache = model(tok[:, None], attention_mask=key_mask,
                                  positions=(next_pos + i - 1)[:, None], cache=cache,
                                  cache_index=tp + i - 1)
        t, lp = select_tokens(logits[:, 0], draw(i), cfg)
        (toks, lps, done), t = _record((toks, lps, done), i, t, lp, eos, cfg.pad_token_id)
        return i + 1, t, cache, (toks, lps), done, 0

    carry = (jnp.int32(1), tok0, cache, (toks, lps), done, 0)
    _, _, _, (toks, lps), _, _ = jax.lax.while_loop(cond, body, carry)
    return toks, lps


def _sample_impl(model, prompt_tokens, prompt_mask, key, cfg: SamplingConfig) -> SampleOutput:
    p, tp = prompt_tokens.shape
    g = cfg.num_generations
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    pmask = prompt_mask.astype(bool)
    eos_ids = () if cfg.ignore_eos else cfg.eos_token_ids
    eos = jnp.asarray(eos_ids or (-1,), jnp.int32)
    cache, key_mask_p, plp, last_logits = _prefill(model, prompt_tokens, pmask, cfg)

    # Broadcast to G samples per prompt (prompt-major rows).
    rep = lambda a: jnp.repeat(a, g, axis=0) if g > 1 else a
    cache = cache.repeat(g)
    next_pos = rep(jnp.sum(pmask, axis=1).astype(jnp.int32))  # position of completion token 0
    toks, lps = _decode(model, cache, rep(key_mask_p), next_pos, rep(last_logits), key, eos, tp,
                        cfg)

    # Mask: tokens up to and including the first EOS.
    is_eos = jnp.any(toks[:, :, None] == eos[None, None, :], axis=-1)
    if not eos_ids:
        is_eos = jnp.zeros_like(is_eos)
    after_eos = jnp.cumsum(is_eos.astype(jnp.int32), axis=1) - is_eos.astype(jnp.int32) > 0
    cmask = ~after_eos
    lengths = jnp.sum(cmask, axis=1).astype(jnp.int32)
    truncated = ~jnp.any(is_eos, axis=1)
    return SampleOutput(prompt_tokens=prompt_tokens, prompt_mask=pmask, completion_tokens=toks,
                        completion_mask=cmask, lengths=lengths, truncated=truncated,
                        logprobs=jnp.where(cmask, lps, 0.0), prompt_logprobs=plp)


@functools.lru_cache(maxsize=64)
def make_sampler(graphdef, cfg: SamplingConfig):
    """A jitted pure function ``(state, prompt_tokens, prompt_mask, key) -> SampleOutput``.

    ``graphdef, state = nnx.split(model)``. Cached per (graphdef, cfg); recompiles only for new
    input shapes. Pass sharded ``state`` to run under a mesh.
    """
    @jax.jit
    def sampler(state, prompt_tokens, prompt_mask, key):
        model = nnx.merge(graphdef, state)
        return _sample_impl(model, prompt_tokens, prompt_mask, key, cfg)

    return sampler


def sample(model, prompt_tokens, prompt_mask, key, cfg: SamplingConfig) -> SampleOutput:
    """Sample ``cfg.num_generations`` completions for each left-padded prompt.

    Args:
      model: an nnx ``Decoder`` or a ``(graphdef, state)`` pair.
      prompt_tokens: int [P, Tp], left-padded. prompt_mask: [P, Tp] True/1 on real tokens.
      key: a PRNG key; the same key gives the same output.
      cfg: SamplingConfig.
    Returns:
      SampleOutput (rows prompt-major: row p*G + g).
    """
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
    else:
        graphdef, state = model
    return make_sampler(graphdef, cfg)(state, jnp.asarray(prompt_tokens),
                                       jnp.asarray(prompt_mask), key)


generate = sample
