"""A decoder-only transformer covering the Qwen2 and Llama families, in Flax NNX.

Grouped-query attention, RoPE (with Llama-3 / linear scaling), RMSNorm, SwiGLU MLP, optional
q/k/v bias (Qwen2), tied or untied embeddings, any head_dim. Parameter names mirror Hugging Face
(``layers.self_attn.q_proj.kernel[i]`` is ``model.layers.i.self_attn.q_proj.weight`` transposed),
which keeps weight loading and partition rules readable.

The layers are ONE ``DecoderLayer`` whose parameters carry a leading layer axis L (built with
``nnx.vmap``) and run by ``jax.lax.scan``: the program holds one layer body whatever the depth, so
compile time and program size stay flat in L. ``Decoder.remat`` (one of ``REMAT_POLICIES``)
rematerialises that body in the backward pass. Under a mesh (``jax.set_mesh``) activations are
constrained to batch over ('data', 'fsdp') and heads / MLP units over 'tensor'
(``jaxgrpo.sharding.constrain``); without one the constraints are no-ops.

Two call modes, both pure functions of (params, inputs) once split with ``nnx.split``:
  * ``model(input_ids, attention_mask=, positions=)`` -> logits [B, T, V] (teacher forcing);
  * ``model(input_ids, attention_mask=key_mask, positions=, cache=, cache_index=)`` ->
    (logits, new_cache): writes T new keys/values at slots [cache_index, cache_index + T) of a
    preallocated cache and attends causally over the cache slots (prefill and decode).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxgrpo.models.attention import (CACHE_LAYER_NAME, DEFAULT_ATTENTION, DEFAULT_BLOCK,
                                      attention, cached_attention, check_impl,
                                      layer_cache_attention)
from jaxgrpo.models.config import ModelConfig, rope_inv_freq
from jaxgrpo.lora import LoraBranch, branch_supported, linear_with_branch
from jaxgrpo.sharding import constrain, ACT_HIDDEN, ACT_HEADS, ACT_MLP, ACT_LOGITS, ACT_CACHE

# Rematerialisation policies of the scanned layer body (``Decoder.remat``): "none" saves every
# intermediate the backward pass needs; "full" saves nothing (recomputes the layer); the others
# are ``jax.checkpoint_policies`` of the same name (save matmul outputs, or only those without
# batch dimensions, i.e. not the attention score / value products).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
# The layer's slice of a stacked KV cache is always saved under remat: recomputing it needs the
# whole stacked cache, which the scan would then save once per layer (L x the cache).
_KV_NAME = CACHE_LAYER_NAME


@struct.dataclass
class KVCache:
    """Stacked key/value cache: ``k``, ``v`` are [L, B, num_kv_heads, S, head_dim].

    One array per kind; scanned layer i reads ``k[i]``, and ``write`` adds all layers' new slots.
    Head-major so that decode-time attention is a batched (b, head) matmul that reads the cache in
    place: with [B, S, H, D] XLA transposed (copied) the whole cache of every layer at every step.
    """

    k: jax.Array
    v: jax.Array

    @property
    def max_length(self) -> int:
        return self.k.shape[3]

    def write(self, k_new: jax.Array, v_new: jax.Array, slot) -> "KVCache":
        """Every layer's new keys/values, [L, B, KVH, T, D], at slots [slot, slot + T)."""
        at = (0, 0, 0, slot, 0)
        return KVCache(k=jax.lax.dynamic_update_slice(self.k, k_new.astype(self.k.dtype), at),
                       v=jax.lax.dynamic_update_slice(self.v, v_new.astype(self.v.dtype), at))

    def unstack(self) -> list:
        """L per-layer ``(k, v)`` [B, KVH, S, D] (``Decoder.decode_unrolled``)."""
        return [(self.k[i], self.v[i]) for i in range(self.k.shape[0])]

    def repeat(self, g: int) -> "KVCache":
        """Each batch row repeated ``g`` times, prompt-major (row p*g + j is a copy of row p)."""
        if g == 1:
            return self
        return KVCache(k=jnp.repeat(self.k, g, axis=1), v=jnp.repeat(self.v, g, axis=1))


@struct.dataclass
class LayerKV:
    """Layer ``index`` of a stacked cache, as one scanned layer sees it: READ-ONLY.

    A layer's new keys/values are returned by the layer and written into the stack once, after
    the scan (``KVCache.write``). Writing them into the stack inside the scan made XLA copy the
    whole [L, ...] stack once per layer at every decode step.
    """

    k: jax.Array  # [L, B, KVH, S, D]
    v: jax.Array
    index: jax.Array  # int32 scalar: the layer


@struct.dataclass
class LayerCache:
    """One layer's own cache, ``k``, ``v`` [B, KVH, S, D] (not a slice of the stack): the layer
    writes its new keys/values into it and attends over the result
    (``jaxgrpo.models.attention.layer_cache_attention``); :meth:`Decoder.decode_unrolled`."""

    k: jax.Array
    v: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_length: int, dtype=jnp.float32) -> KVCache:
    """A zero cache of [L, batch, num_kv_heads, max_length, head_dim] keys and values."""
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_length, cfg.head_dim)
    return KVCache(k=constrain(jnp.zeros(shape, dtype), ACT_CACHE),
                   v=constrain(jnp.zeros(shape, dtype), ACT_CACHE))


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

    def __call__(self, x, cos, sin, key_mask, query_slots, cache_kv=None, cache_index=None,
                 lora: Optional[LoraBranch] = None):
        """x [B, T, E]; key_mask [B, S] bool; query_slots [T] int (slot index of each query).

        Without a cache S = T and keys are this call's own. With ``cache_kv`` (a ``LayerKV``: this
        layer of a stacked [L, B, KVH, S, D] cache, read-only) the queries attend over the cache
        slots before ``cache_index`` and over the T new keys, which count as written at
        ``cache_index`` (``jaxgrpo.models.attention.cached_attention``). With a ``LayerCache``
        (this layer's own [B, KVH, S, D] cache) the new keys are written into it first and the
        queries attend over the written cache (``layer_cache_attention``). ``lora``: this block's
        unmerged LoRA branch (``jaxgrpo.lora.linear_with_branch``). Returns (out [B, T, E], and
        for a ``LayerKV`` the new (k, v) [B, KVH, T, D] for the caller to write, for a
        ``LayerCache`` the written ``LayerCache``, without a cache None).
        """
        b, t, _ = x.shape
        proj = lambda name, inp: linear_with_branch(getattr(self, name), inp, lora, name)
        q = proj("q_proj", x).reshape(b, t, self.num_heads, self.head_dim)
        k = proj("k_proj", x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = proj("v_proj", x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k, v = (constrain(a, ACT_HEADS) for a in (q, k, v))  # heads over 'tensor'
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.transpose(0, 2, 1, 3)  # [B, KVH, T, D]: the cache layout
        v = v.transpose(0, 2, 1, 3)
        new_kv = None
        if cache_kv is None:
            out = attention(q, k, v, key_mask, query_slots, impl=self.attention,
                            block_size=self.attention_block, query_offset=0)
        elif isinstance(cache_kv, LayerCache):
            out, kc, vc = layer_cache_attention(q, k, v, cache_kv.k, cache_kv.v, key_mask,
                                                cache_index, impl=self.attention,
                                                block_size=self.attention_block)
            new_kv = LayerCache(k=kc, v=vc)
        else:
            out = cached_attention(q, k, v, cache_kv.k, cache_kv.v, cache_kv.index, key_mask,
                                   cache_index, impl=self.attention,
                                   block_size=self.attention_block)
            new_kv = (k, v)
        out = out.reshape(b, t, self.num_heads * self.head_dim).astype(x.dtype)
        return proj("o_proj", out), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x, lora: Optional[LoraBranch] = None):
        proj = lambda name, inp: linear_with_branch(getattr(self, name), inp, lora, name)
        h = constrain(jax.nn.silu(proj("gate_proj", x)) * proj("up_proj", x), ACT_MLP)
        return proj("down_proj", h)


class DecoderLayer(nnx.Module):
    """One pre-norm block. ``attn_kw`` (e.g. the attention implementation) go to ``Attention``."""

    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs, **attn_kw):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, rngs=rngs, **kw, **attn_kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, key_mask, query_slots, cache_kv=None, cache_index=None,
                 lora: Optional[LoraBranch] = None):
        sub = (lambda name: None) if lora is None else lora.sub
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, query_slots,
                                   cache_kv, cache_index, lora=sub("self_attn"))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x), lora=sub("mlp")), new_kv


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy for ``Decoder.remat = name``; None for "none"."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {name!r}")
    if name == "none":
        return None
    cp = jax.checkpoint_policies
    base = cp.nothing_saveable if name == "full" else getattr(cp, name)
    return cp.save_from_both_policies(base, cp.save_only_these_names(_KV_NAME))


class Decoder(nnx.Module):
    """Causal LM: ``model(input_ids, ...)`` -> logits [B, T, vocab] (float32).

    ``dtype`` is the compute dtype, ``param_dtype`` (default: ``dtype``) the parameters' own.
    ``remat`` (one of ``REMAT_POLICIES``, default "none") is the rematerialisation policy of the
    scanned layer body; it is a plain attribute, so ``model.remat = "full"`` after loading (and
    before ``nnx.split``) takes effect. ``layer_kw`` are passed to every ``DecoderLayer`` (and on
    to ``Attention``).
    """

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=None,
                 rngs: Optional[nnx.Rngs] = None, remat: str = "none", **layer_kw):
        param_dtype = dtype if param_dtype is None else param_dtype
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        remat_policy(remat)  # validates the name
        self.config = cfg
        self.dtype = dtype
        self.remat = remat
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)

        # L layers as one module with stacked [L, ...] parameters, each layer its own init key.
        @nnx.split_rngs(splits=cfg.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_hidden_layers)
        def make_layers(r):
            return DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r, **layer_kw)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        else:
            self.lm_head = None
        self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(cfg), jnp.float32))

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def init_cache(self, batch: int, max_length: int, dtype=None) -> KVCache:
        """An empty cache; ``dtype`` defaults to the compute dtype (e.g. bf16 halves its bytes)."""
        return init_cache(self.config, batch, max_length, self.dtype if dtype is None else dtype)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """Final-norm hidden states [..., E] -> float32 logits [..., V]."""
        if self.lm_head is None:
            w = self.embed_tokens.embedding[...].astype(self.dtype)
            out = jnp.einsum("...e,ve->...v", h, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head.kernel[...].astype(self.dtype)
            out = jnp.einsum("...e,ev->...v", h, w, preferred_element_type=jnp.float32)
        return constrain(out, ACT_LOGITS) if out.ndim == 3 else out

    def _run_layers(self, x, cos, sin, key_mask, query_slots, cache, cache_index, lora=None):
        """x [B, T, E] through the L stacked layers (one ``lax.scan``); returns (x, cache).

        The stacked cache is a read-only constant of the scan; each layer returns its T new
        keys/values (scan outputs [L, B, KVH, T, D]), written into the stack in one update after
        the scan, in place when the cache buffer is donated or loop-carried. ``lora``'s stacked
        ``["layers"]`` adapters are scanned with the layer parameters; each layer's dropout key
        is the branch's folded with its index.
        """
        graphdef, layer_state = nnx.split(self.layers)
        if lora is not None and not branch_supported(lora.adapters):
            raise ValueError("the unmerged LoRA branch (lora dropout) takes adapters on the "
                             "decoder layers' projections only (layers/self_attn|mlp/<proj>)")
        layers_branch = None if lora is None else lora.sub("layers")

        def body(x, xs):
            state_i, i, adapters_i = xs
            layer = nnx.merge(graphdef, state_i)
            lkv = None if cache is None else LayerKV(k=cache.k, v=cache.v, index=i)
            lb = None if layers_branch is None else layers_branch.replace(
                adapters=adapters_i).fold(i)
            x, new_kv = layer(x, cos, sin, key_mask, query_slots, lkv, cache_index, lora=lb)
            return constrain(x, ACT_HIDDEN), new_kv

        policy = remat_policy(self.remat)
        if policy is not None:
            # prevent_cse is only needed outside scan (jax.checkpoint docs).
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        x, new_kv = jax.lax.scan(body, x, (layer_state, jnp.arange(self.num_layers, dtype=jnp.int32),
                                           None if lora is None else layers_branch.adapters))
        if cache is None:
            return x, None
        cache = cache.write(*new_kv, cache_index)
        return x, KVCache(k=constrain(cache.k, ACT_CACHE), v=constrain(cache.v, ACT_CACHE))

    def _embed(self, input_ids, positions):
        """Token embeddings [B, T, E] and the RoPE cos / sin at ``positions`` [B, T]."""
        freqs = positions[..., None].astype(jnp.float32) * self.inv_freq[...]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb).astype(self.dtype), jnp.sin(emb).astype(self.dtype)
        return constrain(self.embed_tokens(input_ids), ACT_HIDDEN), cos, sin

    def unstack_layers(self) -> list:
        """The stacked layer parameters as L per-layer ``nnx.State``s (slices of the stack: one
        copy). For :meth:`decode_unrolled`, which then reads them in place at every step."""
        _, state = nnx.split(self.layers)
        return [jax.tree.map(lambda a: a[i], state) for i in range(self.num_layers)]

    def decode_unrolled(self, input_ids, layer_states, caches, *, attention_mask, positions,
                        cache_index):
        """A decode step with the layers as a Python loop: logits [B, T, V] and the new caches.

        ``layer_states``: :meth:`unstack_layers`; ``caches``: L per-layer ``(k, v)`` of shape
        [B, KVH, S, D] (``KVCache.unstack``), written in place at slots [cache_index,
        cache_index + T) when they are loop-carried, before the layer attends over them
        (``LayerCache``). Same arguments as ``__call__`` with a stacked cache, and the same
        result up to float32 summation order. The sampler uses it with
        ``SamplingConfig.unroll_layers``: the scanned loop cuts every layer's weights and cache
        out of the stacks at every step (XLA:CPU copies those slices), while here each operand
        is an array of its own.
        """
        key_mask = attention_mask.astype(bool)
        query_slots = cache_index + jnp.arange(input_ids.shape[1])
        x, cos, sin = self._embed(input_ids, positions)
        graphdef, _ = nnx.split(self.layers)
        new_caches = []
        for state_i, (k, v) in zip(layer_states, caches):
            layer = nnx.merge(graphdef, state_i)
            x, written = layer(x, cos, sin, key_mask, query_slots, LayerCache(k=k, v=v),
                               cache_index)
            x = constrain(x, ACT_HIDDEN)
            new_caches.append((written.k, written.v))
        return self.logits_from_hidden(self.norm(x)), new_caches

    def hidden_states(self, input_ids, *, attention_mask=None, positions=None, cache=None,
                      cache_index=None, lora: Optional[LoraBranch] = None):
        """Final-norm hidden states [B, T, E] (and the new cache when one is given). ``lora``:
        an unmerged LoRA branch over the layers' projections (``jaxgrpo.lora.LoraBranch``)."""
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
        x, cos, sin = self._embed(input_ids, positions)
        x, new_cache = self._run_layers(x, cos, sin, key_mask, query_slots, cache, cache_index,
                                        lora)
        h = self.norm(x)
        return (h, None) if cache is None else (h, new_cache)

    def __call__(self, input_ids, *, attention_mask=None, positions=None, cache=None,
                 cache_index=None, lora: Optional[LoraBranch] = None):
        h, new_cache = self.hidden_states(input_ids, attention_mask=attention_mask,
                                          positions=positions, cache=cache, cache_index=cache_index,
                                          lora=lora)
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
