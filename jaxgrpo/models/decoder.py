"""A decoder-only transformer covering the Qwen2 and Llama families, in Flax NNX.

Grouped-query attention, RoPE (with Llama-3 / linear scaling), RMSNorm, SwiGLU MLP, optional
q/k/v bias (Qwen2), tied or untied embeddings, any head_dim. Parameter names mirror Hugging Face
(``layers[i].self_attn.q_proj.kernel`` is ``model.layers.i.self_attn.q_proj.weight`` transposed),
which keeps weight loading and partition rules readable.

Two call modes, both pure functions of (params, inputs) once split with ``nnx.split``:
  * ``model(input_ids, attention_mask=, positions=)`` -> logits [B, T, V] (teacher forcing);
  * ``model(input_ids, attention_mask=key_mask, positions=, cache=, cache_index=)`` ->
    (logits, new_cache): writes T new keys/values at slots [cache_index, cache_index + T) of a
    preallocated cache and attends causally over the cache slots (prefill and decode).
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxgrpo.models.attention import DEFAULT_ATTENTION, DEFAULT_BLOCK, attention, check_impl
from jaxgrpo.models.config import ModelConfig, rope_inv_freq


@struct.dataclass
class KVCache:
    """Per-layer key/value cache; ``k[i]``, ``v[i]`` are [B, num_kv_heads, S, head_dim].

    Head-major so that decode-time attention is a batched (b, head) matmul that reads the cache in
    place: with [B, S, H, D] XLA transposed (copied) the whole cache of every layer at every step.
    """

    k: Tuple[jax.Array, ...]
    v: Tuple[jax.Array, ...]

    @property
    def max_length(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, max_length: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, cfg.num_key_value_heads, max_length, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
    return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)))


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions for a left-padded batch: 0 at the first real token, counting up; 0 on padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        # As in transformers: normalise in float32, cast back, then scale.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * xf.astype(self.dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, D]; cos/sin [B, T, D]. The rotate-half convention of transformers."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
                 attention: str = DEFAULT_ATTENTION, attention_block: int = DEFAULT_BLOCK):
        check_impl(attention, attention_block)
        # Plain attributes (static, part of the graphdef): changing them means a new compile.
        self.attention, self.attention_block = attention, int(attention_block)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h, d = cfg.num_attention_heads, cfg.head_dim
        kvh = cfg.num_key_value_heads
        self.q_proj = nnx.Linear(cfg.hidden_size, h * d, use_bias=cfg.qkv_bias, **kw)
        self.k_proj = nnx.Linear(cfg.hidden_size, kvh * d, use_bias=cfg.qkv_bias, **kw)
        self.v_proj = nnx.Linear(cfg.hidden_size, kvh * d, use_bias=cfg.qkv_bias, **kw)
        self.o_proj = nnx.Linear(h * d, cfg.hidden_size, use_bias=cfg.o_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kvh, d

    def __call__(self, x, cos, sin, key_mask, query_slots, cache_kv=None, cache_index=None):
        """x [B, T, E]; key_mask [B, S] bool; query_slots [T] int (slot index of each query).

        Without a cache S = T and keys are this call's own. With ``cache_kv=(k, v)`` of
        [B, KVH, S, D] the new keys are written at ``cache_index`` and the cache slots are
        attended (masked by ``key_mask`` and causality) by ``jaxgrpo.models.attention`` with
        this module's ``attention`` implementation. Returns (out [B, T, E], (k, v) or None).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.transpose(0, 2, 1, 3)  # [B, KVH, T, D]: the cache layout
        v = v.transpose(0, 2, 1, 3)
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, 0, cache_index, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, 0, cache_index, 0))
            new_kv = (k, v)
        # With a cache only slots < cache_index + T can be attended: "blockwise" stops there.
        kv_length = None if cache_kv is None else cache_index + t
        out = attention(q, k, v, key_mask, query_slots, impl=self.attention,
                        block_size=self.attention_block, kv_length=kv_length)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim).astype(x.dtype)), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
                 attention: str = DEFAULT_ATTENTION, attention_block: int = DEFAULT_BLOCK):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, rngs=rngs, attention=attention,
                                   attention_block=attention_block, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, key_mask, query_slots, cache_kv=None, cache_index=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, query_slots,
                                   cache_kv, cache_index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class Decoder(nnx.Module):
    """Causal LM: ``model(input_ids, ...)`` -> logits [B, T, vocab] (float32)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=None,
                 rngs: Optional[nnx.Rngs] = None, attention: str = DEFAULT_ATTENTION,
                 attention_block: int = DEFAULT_BLOCK):
        param_dtype = dtype if param_dtype is None else param_dtype
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                             attention=attention, attention_block=attention_block)
                                for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        else:
            self.lm_head = None
        self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(cfg), jnp.float32))

    def init_cache(self, batch: int, max_length: int) -> KVCache:
        return init_cache(self.config, batch, max_length, self.dtype)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., E] -> float32 logits [..., V]."""
        if self.lm_head is None:
            w = self.embed_tokens.embedding[...].astype(self.dtype)
            return jnp.einsum("...e,ve->...v", h, w, preferred_element_type=jnp.float32)
        w = self.lm_head.kernel[...].astype(self.dtype)
        return jnp.einsum("...e,ev->...v", h, w, preferred_element_type=jnp.float32)

    def hidden_states(self, input_ids, *, attention_mask=None, positions=None, cache=None,
                      cache_index=None):
        """Final-norm hidden states [B, T, E] (and the new cache when one is given)."""
        b, t = input_ids.shape
        if cache is None:
            key_mask = (jnp.ones((b, t), bool) if attention_mask is None
                        else attention_mask.astype(bool))
            query_slots = jnp.arange(t)
            if positions is None:
                positions = positions_from_mask(key_mask)
        else:
            if attention_mask is None or positions is None:
                raise ValueError("with a cache, pass attention_mask (key validity over all "
                                 "cache slots, [B, S]) and positions ([B, T])")
            key_mask = attention_mask.astype(bool)
            query_slots = cache_index + jnp.arange(t)
        freqs = positions[..., None].astype(jnp.float32) * self.inv_freq[...]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb).astype(self.dtype), jnp.sin(emb).astype(self.dtype)
        x = self.embed_tokens(input_ids)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, nkv = layer(x, cos, sin, key_mask, query_slots, kv, cache_index)
            if nkv is not None:
                new_k.append(nkv[0])
                new_v.append(nkv[1])
        h = self.norm(x)
        return (h, None) if cache is None else (h, KVCache(k=tuple(new_k), v=tuple(new_v)))

    def __call__(self, input_ids, *, attention_mask=None, positions=None, cache=None,
                 cache_index=None):
        h, new_cache = self.hidden_states(input_ids, attention_mask=attention_mask,
                                          positions=positions, cache=cache, cache_index=cache_index)
        logits = self.logits_from_hidden(h)
        return logits if cache is None else (logits, new_cache)


def set_attention(model: nnx.Module, impl: str, block_size: int = DEFAULT_BLOCK) -> nnx.Module:
    """Switch every ``Attention`` of a built model to implementation ``impl`` (in place).

    Loading builds models with the default; this changes them afterwards, e.g.
    ``set_attention(load_pretrained(path)[0], "naive")``. Returns the model. The choice is part
    of the graphdef, so jitted functions keyed on it recompile once.
    """
    check_impl(impl, block_size)
    for _, module in model.iter_modules():
        if isinstance(module, Attention):
            module.attention, module.attention_block = impl, int(block_size)
    return model
