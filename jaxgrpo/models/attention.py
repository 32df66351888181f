"""Grouped-query causal attention over the KV-cache layout, with interchangeable implementations.

One computation, several ways to run it. Inputs (the decoder's, after RoPE and the cache write):

  * ``q`` [B, T, H, D] queries; ``k``, ``v`` [B, KVH, S, D] keys / values in the cache layout
    (head-major, see ``jaxgrpo.models.decoder.KVCache``); H is a multiple of KVH (GQA: query head
    h reads kv head h // (H // KVH));
  * ``key_mask`` [B, S] bool, key validity (False on left padding and on unwritten cache slots);
  * ``query_slots`` [T] int, the cache slot of each query: query t may attend key slot s iff
    ``s <= query_slots[t]`` (causality) and ``key_mask[b, s]``.

Output [B, T, H, D]: ``softmax(q k^T / sqrt(D) over the allowed slots) v`` per (b, head, t).

Implementations (``ATTENTION_IMPLS``, chosen by name):

  * ``"naive"``: materialises float32 scores [B, KVH, rep, T, S]; the reference, and fast for
    short sequences. A row with no allowed key gets the mean of v over all S slots.
  * ``"blockwise"``: online softmax (flash attention, Dao et al. 2022, arXiv:2205.14135, and the
    FlashAttention-2 backward, arXiv:2307.08691) over key blocks of ``block_size`` slots, in plain
    XLA. A ``jax.custom_vjp`` keeps only q, k, v, the output and the per-row log-sum-exp for the
    backward, which recomputes each block's scores: neither pass holds more than
    [B, H, T, block_size] scores. With ``kv_length`` (a traced scalar: the number of leading
    cache slots that can be attended, i.e. ``max(query_slots) + 1``) the loop runs over
    ceil(kv_length / block_size) blocks only, so a decode step reads the filled part of the
    cache, not all S preallocated slots. A row with no allowed key gets 0 (and zero gradients).
  * ``"dot_product"``: ``jax.nn.dot_product_attention`` with a boolean [B, 1, T, S] mask and
    native GQA, ``implementation=None`` (XLA picks; in jax 0.10 that is the XLA path, which
    materialises scores like "naive"). K/V are transposed to its [B, S, KVH, D] layout (a copy).
  * ``"cudnn"``: the same call with ``implementation="cudnn"``: cuDNN's fused flash attention
    (NVIDIA GPUs only; bf16 / fp16 inputs, head_dim <= 128, or <= 256 from Hopper on). Left
    padding cannot be said with cuDNN's sequence lengths (they mean right padding), so the
    allowed-slot mask goes in as cuDNN's additive [B, 1, T, S] bias (jax converts the boolean
    mask), and at a static query offset of 0 (every training pass and the prefill)
    ``is_causal=True`` lets the kernel skip the key blocks after the query block. A decode step
    (T == 1) runs "blockwise", which reads only the filled cache blocks. Not run in this
    project's CI (no GPU); ``tests/models/test_attention.py`` compares it with "naive" where a GPU is.
  * ``"splash"``: the Pallas TPU splash-attention kernel (``jaxgrpo.models.splash``): flash
    attention whose forward and backward kernels skip the key blocks causality rules out. Needs
    a static query offset (``query_offset``, or concrete ``query_slots``); with a cache, a traced
    offset (a decode step) runs "blockwise" instead. Compiled on TPU; elsewhere the same kernel
    runs in the Pallas interpreter (correct, slow: for tests). A row with no allowed key cannot
    occur (a query reads keys of its own mask bit, so a padding query reads padding).

Default: ``DEFAULT_ATTENTION = "blockwise"`` with ``DEFAULT_BLOCK = 512``. When S <= block_size
it is one block, the same arithmetic as "naive" (one score matrix, one softmax), so tiny and
short sequences lose nothing; at long T it is the memory-safe choice (the naive backward holds
[B, H, T, S] float32 scores and probabilities per layer), and with a cache it is the only
implementation whose decode cost follows the filled length instead of the cache size.
"""
from __future__ import annotations

import functools
from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

__all__ = ["ATTENTION_IMPLS", "CACHE_LAYER_NAME", "DEFAULT_ATTENTION", "DEFAULT_BLOCK", "attention",
           "cached_attention", "check_backend", "check_impl", "layer_cache_attention"]

ATTENTION_IMPLS = ("naive", "blockwise", "dot_product", "splash", "cudnn")
DEFAULT_ATTENTION = "blockwise"
DEFAULT_BLOCK = 512

# Finite "minus infinity": exp(NEG - m) underflows to 0 and NEG - NEG is 0, so no inf - inf NaN.
_NEG = float(np.finfo(np.float32).min)


def check_impl(impl: str, block_size: int) -> None:
    """Raise a one-line ValueError for an unknown implementation name or a bad block size."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"attention_block must be a positive int, got {block_size!r}")


def check_backend(impl: str) -> None:
    """Raise a one-line ValueError when ``impl`` cannot run on the default JAX backend ("cudnn"
    needs a CUDA GPU). Call it after ``jax.distributed.initialize()``: it starts the backend."""
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(f"attention 'cudnn' needs a CUDA GPU, but the JAX backend is "
                         f"{jax.default_backend()!r}: use 'blockwise' (or 'dot_product')")


def _group_queries(q: jax.Array, kvh: int) -> jax.Array:
    """[B, T, H, D] -> [B, KVH, rep, T, D]: GQA without materialising repeated K/V."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)


def _ungroup(o: jax.Array) -> jax.Array:
    """[B, KVH, rep, T, D] -> [B, T, H, D]."""
    b, g, r, t, d = o.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, g * r, d)


def _scores(qg: jax.Array, k: jax.Array) -> jax.Array:
    """float32 q.k for qg [B, G, R, T, D] and k [B, G, S, D] -> [B, G, R, T, S].

    One einsum for decode (T == 1) too: on XLA:CPU it reads a [3000-slot] cache block ~1.1-1.5x
    faster than a fused multiply-reduce over D (measured with ``bench_decode``).
    """
    return jnp.einsum("bgrtd,bgsd->bgrts", qg, k.astype(qg.dtype),
                      preferred_element_type=jnp.float32)


def _weighted_values(p: jax.Array, v: jax.Array) -> jax.Array:
    """p [B, G, R, T, S] times v [B, G, S, D] (same dtype) -> float32 [B, G, R, T, D]."""
    return jnp.einsum("bgrts,bgsd->bgrtd", p, v, preferred_element_type=jnp.float32)


def _allowed(key_mask: jax.Array, query_slots: jax.Array, slots: jax.Array) -> jax.Array:
    """[B, T, n] bool: key slot ``slots[j]`` is valid and not after query t's slot."""
    return (slots[None, :] <= query_slots[:, None])[None] & key_mask[:, None, :]


# --------------------------------------------------------------------------- naive

def _naive(q, k, v, key_mask, query_slots):
    b, t, h, d = q.shape
    s = k.shape[2]
    qg = _group_queries(q, k.shape[1])
    scores = _scores(qg, k) * (1.0 / np.sqrt(d))
    allowed = _allowed(key_mask, query_slots, jnp.arange(s))
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return _ungroup(jnp.einsum("bgrts,bgsd->bgrtd", probs, v))


# --------------------------------------------------------------------------- blockwise (flash)

def _block(k, v, key_mask, i, bs, layer=None):
    """Key block i: k/v [B, G, bs, D], mask [B, bs], slots [bs], and a [bs] "first time seen" flag.

    The start is clamped to S - bs so a partial last block needs no padded copy of the cache;
    the slots it shares with block i-1 are flagged off so they count once. With ``layer`` (an
    int scalar), k/v are a stacked [L, B, G, S, D] cache and the block is sliced from that layer
    directly, without a copy of the layer.
    """
    s = k.shape[-2]
    start = jnp.minimum(i * bs, s - bs)
    if layer is None:
        kb = jax.lax.dynamic_slice_in_dim(k, start, bs, axis=2)
        vb = jax.lax.dynamic_slice_in_dim(v, start, bs, axis=2)
    else:
        _, b, g, _, d = k.shape
        at = (layer, 0, 0, start, 0)
        kb = jax.lax.dynamic_slice(k, at, (1, b, g, bs, d))[0]
        vb = jax.lax.dynamic_slice(v, at, (1, b, g, bs, d))[0]
    mb = jax.lax.dynamic_slice_in_dim(key_mask, start, bs, axis=1)
    slots = start + jnp.arange(bs)
    return start, kb, vb, mb & (slots >= i * bs)[None, :], slots


def _n_blocks(kv_length, s, bs):
    """Blocks to visit: a Python int when the bound is static, else a traced int32 scalar.

    A cache of one block is one block whatever ``kv_length`` is (the mask excludes the unfilled
    slots): a static 1, so no loop is emitted."""
    if kv_length is None or -(-s // bs) == 1:
        return -(-s // bs)  # every block
    if isinstance(kv_length, (int, np.integer)):  # a Python bound stays static (a scan)
        return -(-min(max(int(kv_length), 1), s) // bs)
    return (jnp.clip(kv_length, 1, s).astype(jnp.int32) + bs - 1) // bs


def _online_init(qg):
    """Empty online-softmax state (running max m, normaliser l, unnormalised output acc)."""
    b, g, r, t, d = qg.shape
    return (jnp.full((b, g, r, t), _NEG, jnp.float32), jnp.zeros((b, g, r, t), jnp.float32),
            jnp.zeros((b, g, r, t, d), jnp.float32))


def _online_step(carry, qg, kb, vb, allowed, scale):
    """Fold one key block (kb, vb [B, G, n, D], allowed broadcastable to [B, G, R, T, n]) in."""
    m, l, acc = carry
    sc = jnp.where(allowed, _scores(qg, kb) * scale, _NEG)
    m_new = jnp.maximum(m, jnp.max(sc, axis=-1))
    p = jnp.where(allowed, jnp.exp(sc - m_new[..., None]), 0.0)
    alpha = jnp.exp(m - m_new)
    l = alpha * l + jnp.sum(p, axis=-1)
    # Matmul inputs in the compute dtype (q's): a bf16 cache under an f32 model stays exact.
    acc = alpha[..., None] * acc + _weighted_values(p.astype(qg.dtype), vb.astype(qg.dtype))
    return m_new, l, acc


def _online_finish(carry):
    """(out f32 [B, G, R, T, D], lse f32 [B, G, R, T]); rows with no allowed key get 0."""
    m, l, acc = carry
    has_key = l > 0  # rows with no allowed key: output 0, lse unused (p is masked to 0)
    out = acc / jnp.where(has_key, l, 1.0)[..., None]
    lse = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l, 1.0)), 0.0)
    return out, lse


def _fold_blocks(n, body, init):
    """``fori_loop(0, n, body, init)``, or ``body(0, init)`` for a static single block: a
    one-block cache (every short sequence) puts no loop in the program."""
    if isinstance(n, (int, np.integer)) and n == 1:
        return body(0, init)
    return jax.lax.fori_loop(0, n, body, init)


def _flash_forward(qg, k, v, key_mask, query_slots, n_blocks, bs, scale):
    """Online softmax over key blocks. Returns (out f32 [B,G,R,T,D], lse f32 [B,G,R,T])."""

    def body(i, carry):
        _, kb, vb, mb, slots = _block(k, v, key_mask, i, bs)
        allowed = _allowed(mb, query_slots, slots)[:, None, None]  # [B, 1, 1, T, bs]
        return _online_step(carry, qg, kb, vb, allowed, scale)

    return _online_finish(_fold_blocks(n_blocks, body, _online_init(qg)))


# n_traced: a traced block count (dynamic bound) or None; n_static: a Python int or None.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(qg, k, v, key_mask, query_slots, n_traced, n_static, bs, scale):
    n = n_traced if n_static is None else n_static
    out, _ = _flash_forward(qg, k, v, key_mask, query_slots, n, bs, scale)
    return out.astype(qg.dtype)


def _flash_fwd(qg, k, v, key_mask, query_slots, n_traced, n_static, bs, scale):
    n = n_traced if n_static is None else n_static
    out, lse = _flash_forward(qg, k, v, key_mask, query_slots, n, bs, scale)
    out = out.astype(qg.dtype)
    return out, (qg, k, v, key_mask, query_slots, n_traced, out, lse)


def _flash_bwd(n_static, bs, scale, res, d_out):
    """FlashAttention-2 backward: per key block, recompute P = exp(s - lse) and accumulate
    dQ (carried), dK and dV (written into their block); D_i = sum_d dO * O."""
    qg, k, v, key_mask, query_slots, n_traced, out, lse = res
    n = n_traced if n_static is None else n_static
    d_out = d_out.astype(jnp.float32)
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)  # [B, G, R, T]
    qf = qg.astype(jnp.float32)

    def body(i, carry):
        dq, dk, dv = carry
        start, kb, vb, mb, slots = _block(k, v, key_mask, i, bs)
        allowed = _allowed(mb, query_slots, slots)[:, None, None]
        sc = _scores(qg, kb) * scale
        p = jnp.exp(jnp.where(allowed, sc - lse[..., None], _NEG))  # exactly 0 where masked
        dv_b = jnp.einsum("bgrts,bgrtd->bgsd", p, d_out)
        dp = jnp.einsum("bgrtd,bgsd->bgrts", d_out, vb.astype(jnp.float32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bgrts,bgsd->bgrtd", ds, kb.astype(jnp.float32))
        dk_b = jnp.einsum("bgrts,bgrtd->bgsd", ds, qf)
        # Overlapping slots of a clamped last block have p = 0 there, so adding is exact.
        add = lambda acc, blk: jax.lax.dynamic_update_slice_in_dim(
            acc, jax.lax.dynamic_slice_in_dim(acc, start, bs, axis=2) + blk, start, axis=2)
        return dq, add(dk, dk_b), add(dv, dv_b)

    init = (jnp.zeros(qg.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
            jnp.zeros(v.shape, jnp.float32))
    dq, dk, dv = _fold_blocks(n, body, init)
    return (dq.astype(qg.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _blockwise(q, k, v, key_mask, query_slots, block_size, kv_length):
    s = k.shape[2]
    bs = min(int(block_size), s)
    qg = _group_queries(q, k.shape[1])
    scale = float(1.0 / np.sqrt(q.shape[-1]))
    n = _n_blocks(kv_length, s, bs)
    n_static = n if isinstance(n, int) else None
    n_traced = None if isinstance(n, int) else n
    return _ungroup(_flash(qg, k, v, key_mask, query_slots, n_traced, n_static, bs, scale))


# --------------------------------------------------------------------------- jax.nn

def _dot_product(q, k, v, key_mask, query_slots, implementation=None, is_causal=False):
    """``jax.nn.dot_product_attention`` with the allowed-slot mask. ``is_causal`` only when the
    queries sit at slots 0 .. T-1 (offset 0): the mask already holds causality, so the flag
    changes nothing but lets a fused kernel skip the blocks above the diagonal."""
    s = k.shape[2]
    mask = _allowed(key_mask, query_slots, jnp.arange(s))[:, None]  # [B, 1, T, S]
    kt = k.transpose(0, 2, 1, 3).astype(q.dtype)
    vt = v.transpose(0, 2, 1, 3).astype(q.dtype)
    return jax.nn.dot_product_attention(q, kt, vt, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


# --------------------------------------------------------------------------- entry point

def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
              query_slots: jax.Array, *, impl: str = DEFAULT_ATTENTION,
              block_size: int = DEFAULT_BLOCK, kv_length: Optional[jax.Array] = None,
              query_offset: Optional[int] = None) -> jax.Array:
    """Causal GQA attention; see the module docstring for the shapes and the implementations.

    Args:
      q: [B, T, H, D]. k, v: [B, KVH, S, D] (any float dtype, e.g. a bf16 cache).
      key_mask: [B, S] bool. query_slots: [T] int, slot index of each query.
      impl: one of ``ATTENTION_IMPLS``.
      block_size: key-block length of "blockwise" (clipped to S).
      kv_length: optional int scalar (traced is fine): slots >= kv_length are never attended
        (the caller guarantees they are masked, e.g. ``cache_index + T`` with a cache).
        "blockwise" then loops over the filled blocks only; the others ignore it.
      query_offset: optional Python int, the promise ``query_slots == query_offset + arange(T)``
        ("splash" needs it static; without it "splash" reads concrete ``query_slots``).
    Returns:
      [B, T, H, D] in q's dtype ("naive": in v's dtype, as the decoder always computed it).
    """
    check_impl(impl, block_size)
    chex.assert_rank([q, k, v, key_mask, query_slots], [4, 4, 4, 2, 1])
    chex.assert_equal_shape([k, v])
    b, t, h, d = q.shape
    _, kvh, s, _ = k.shape
    chex.assert_shape(k, (b, kvh, s, d))
    chex.assert_shape(key_mask, (b, s))
    chex.assert_shape(query_slots, (t,))
    if h % kvh:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({kvh})")
    key_mask = key_mask.astype(bool)
    if impl == "naive":
        return _naive(q, k, v, key_mask, query_slots)
    if impl == "blockwise":
        return _blockwise(q, k, v, key_mask, query_slots, block_size, kv_length)
    if impl == "splash":
        from jaxgrpo.models.splash import splash_attention

        offset = _static_offset(query_slots) if query_offset is None else int(query_offset)
        return splash_attention(q, k, v, key_mask, offset, block_size)
    if impl == "cudnn":
        check_backend(impl)
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attention 'cudnn' needs bfloat16 or float16 queries, got "
                             f"{q.dtype}: set model.dtype=bfloat16")
        return _dot_product(q, k, v, key_mask, query_slots, "cudnn",
                            is_causal=query_offset == 0)
    return _dot_product(q, k, v, key_mask, query_slots)


def _static_offset(query_slots) -> int:
    """The offset of concrete, contiguous query slots; a one-line error otherwise."""
    try:
        slots = np.asarray(query_slots)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise ValueError("attention 'splash' needs a static query offset: pass query_offset= "
                         "(query_slots is traced)") from None
    if slots.size and not np.array_equal(slots, slots[0] + np.arange(slots.size)):
        raise ValueError(f"attention 'splash' needs contiguous query slots, got {slots.tolist()}")
    return int(slots[0]) if slots.size else 0


# --------------------------------------------------------------------------- a stacked KV cache

def _impl_with_cache(impl: str, t: int, static_index: bool) -> str:
    """The implementation that runs ``impl`` against a cache written at ``cache_index``."""
    if impl == "splash" and not static_index:
        return "blockwise"  # a traced slot (a decode step): splash needs a static offset
    if impl == "cudnn" and t == 1:
        return "blockwise"  # a decode step: read the filled cache blocks, not all S slots
    return impl


# Name of a layer's [B, KVH, S, D] cache slice (``jax.ad_checkpoint.checkpoint_name``): a remat
# policy can save it instead of saving the whole stacked cache once per layer.
CACHE_LAYER_NAME = "decoder_layer_kv"


def _decode_step_flash(qg, k_new, v_new, cache_k, cache_v, layer, key_mask, cache_index, bs,
                       scale):
    """One query per row: online softmax over the cache blocks before ``cache_index`` (read
    straight from the stacked cache, so nothing but those blocks is touched), then the new key."""
    s = cache_k.shape[3]
    # One block holds every slot: visit it whatever cache_index is (its mask does the rest).
    n = 1 if s <= bs else (jnp.clip(cache_index, 0, s).astype(jnp.int32) + bs - 1) // bs

    def body(i, carry):
        _, kb, vb, mb, slots = _block(cache_k, cache_v, key_mask, i, bs, layer)
        # Every query sits at cache_index or later, so causality is "slot < cache_index".
        ok = mb & (slots < cache_index)[None, :]
        return _online_step(carry, qg, kb, vb, ok[:, None, None, None, :], scale)

    carry = _fold_blocks(n, body, _online_init(qg))
    # The new key at slot cache_index, rounded to the cache dtype as if written and read back.
    kn, vn = k_new.astype(cache_k.dtype), v_new.astype(cache_v.dtype)
    ok = jax.lax.dynamic_slice_in_dim(key_mask, cache_index, 1, axis=1)  # [B, 1]
    carry = _online_step(carry, qg, kn, vn, ok[:, None, None, None, :], scale)
    return _online_finish(carry)[0]


def cached_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, cache_k: jax.Array,
                     cache_v: jax.Array, layer: jax.Array, key_mask: jax.Array,
                     cache_index, *, impl: str = DEFAULT_ATTENTION,
                     block_size: int = DEFAULT_BLOCK) -> jax.Array:
    """T new queries attending over layer ``layer`` of a stacked cache plus their own new keys.

    Equal to ``attention(q, K, V, key_mask, cache_index + arange(T))`` where K (V) is
    ``cache_k[layer]`` (``cache_v[layer]``) with slots [cache_index, cache_index + T) replaced by
    ``k_new`` (``v_new``) in the cache dtype. The stacked cache is only READ: the caller writes
    the new keys/values once after its layer loop (``jaxgrpo.models.decoder``). Writing them into
    the stack inside the scanned layer loop made XLA copy the whole [L, ...] stack once per layer
    per decode step (decode cost quadratic in depth).

    Args:
      q: [B, T, H, D]. k_new, v_new: [B, KVH, T, D]. cache_k, cache_v: [L, B, KVH, S, D].
      layer: int scalar (traced is fine). key_mask: [B, S] bool over the cache slots (including
        the T new ones). cache_index: int scalar, the slot of the first new key.
      impl, block_size: as ``attention``.

    "splash" needs a Python-int ``cache_index``; a traced one runs "blockwise".
    A decode step (T == 1) under "blockwise" reads only the cache blocks before ``cache_index``
    from the stack (forward only: a traced loop bound is not reverse-differentiable). Every other
    case builds the layer's [B, KVH, S, D] keys/values (one copy) and runs
    ``layer_cache_attention`` on them (``attention`` after the write), which keeps "blockwise"'s
    custom gradient for the training passes that run through a cache.
    """
    check_impl(impl, block_size)
    chex.assert_rank([q, k_new, v_new, cache_k, cache_v, key_mask], [4, 4, 4, 5, 5, 2])
    b, t, h, d = q.shape
    s = cache_k.shape[3]
    static_index = isinstance(cache_index, (int, np.integer))
    impl = _impl_with_cache(impl, t, static_index)
    if impl == "blockwise" and t == 1:
        chex.assert_shape([k_new, v_new], (b, cache_k.shape[2], 1, d))
        qg = _group_queries(q, cache_k.shape[2])
        out = _decode_step_flash(qg, k_new, v_new, cache_k, cache_v, layer, key_mask.astype(bool),
                                 cache_index, min(int(block_size), s), float(1.0 / np.sqrt(d)))
        return _ungroup(out.astype(q.dtype))
    k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)
    v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
    k, v = checkpoint_name(k, CACHE_LAYER_NAME), checkpoint_name(v, CACHE_LAYER_NAME)
    return layer_cache_attention(q, k_new, v_new, k, v, key_mask, cache_index, impl=impl,
                                 block_size=block_size)[0]


def layer_cache_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k: jax.Array,
                          v: jax.Array, key_mask: jax.Array, cache_index, *,
                          impl: str = DEFAULT_ATTENTION, block_size: int = DEFAULT_BLOCK):
    """T new queries over ONE layer's own cache: write the new keys/values, then attend.

    ``k``, ``v`` [B, KVH, S, D] are a layer's cache as an array of its own (the unrolled decode,
    ``jaxgrpo.models.decoder.Decoder.decode_unrolled``), not a slice of the stack, so the write
    comes first and the attention reads the written cache: loop-carried, the write is in place and
    nothing is copied. (Reading first and writing after, as ``cached_attention`` must do with
    the stack, made XLA:CPU copy every layer's cache twice per decode step.) Same result as
    ``cached_attention`` up to float32 summation order (the new key joins the last block).

    Args: as ``cached_attention``, with ``k``, ``v`` in place of the stack and its ``layer``.
    Returns:
      (out [B, T, H, D] in q's dtype, the written k, the written v).
    """
    check_impl(impl, block_size)
    chex.assert_rank([q, k_new, v_new, k, v, key_mask], [4, 4, 4, 4, 4, 2])
    chex.assert_equal_shape([k, v])
    chex.assert_equal_shape([k_new, v_new])
    t = q.shape[1]
    static_index = isinstance(cache_index, (int, np.integer))
    k = jax.lax.dynamic_update_slice_in_dim(k, k_new.astype(k.dtype), cache_index, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(v, v_new.astype(v.dtype), cache_index, axis=2)
    out = attention(q, k, v, key_mask, cache_index + jnp.arange(t),
                    impl=_impl_with_cache(impl, t, static_index), block_size=block_size,
                    kv_length=cache_index + t,
                    query_offset=int(cache_index) if static_index else None)
    return out, k, v
