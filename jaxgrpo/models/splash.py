"""``attention(impl="splash")``: the Pallas TPU splash-attention kernel behind this project's
attention contract (``jaxgrpo.models.attention``).

The kernel (``jax.experimental.pallas.ops.tpu.splash_attention``, the one MaxText uses) is flash
attention with block-sparse masks: the forward and both backward kernels (dq, dk/dv) skip key
blocks the causal mask rules out, and nothing [T, S]-sized is ever materialised. It works per
example on [H, T, D] queries and [KVH, S, D] keys / values (GQA natively: query head h reads kv
head h // (H / KVH), as here), so this module

  * scales q by 1 / sqrt(D) (the kernel does not) and casts k, v to q's dtype;
  * maps the contract's masks onto the kernel's: causality at a STATIC query offset (query t at
    cache slot ``offset + t`` may read key slots <= ``offset + t``: ``CausalMask(offset=...)``),
    and the per-example key mask (left padding, unwritten cache slots) as segment ids: a key's
    segment is its mask bit, a query's is the mask bit of its own slot, so a valid query reads
    valid keys only and a padding query reads padding (never an empty row, never NaN; those rows
    are padding and reach no loss);
  * pads T and S up to the block sizes (extra queries are dropped, extra keys are padding);
  * under a mesh (``jax.set_mesh``) runs the kernel inside ``jax.shard_map`` with the batch over
    ('data', 'fsdp') and heads over 'tensor' where they divide (XLA cannot partition a Mosaic
    custom call itself, it would gather everything onto every device);
  * picks the compiled kernel when lowering for TPU and the same kernel in the Pallas interpreter
    elsewhere (``jax.lax.platform_dependent``): CPU tests run the real kernel code, slowly. An
    ahead-of-time compile for a TPU topology (``experiments.memory_plan --tpu``) gets the kernel.

The offset must be a Python int: training passes (offset 0, or the prompt length for the
completion pass) and the sampler's prefill qualify; a decode step (a traced slot) does not, and
``cached_attention`` routes it to the blockwise decode path.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgrpo.sharding import BATCH_AXES, active_spec

__all__ = ["splash_attention", "splash_blocks"]

_LANES = 128  # the kernel's key blocks are multiples of the TPU lane width


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def splash_blocks(n: int, block_size: int) -> int:
    """Block length for a sequence of ``n``: ``block_size`` rounded down to a multiple of 128 (at
    least 128), no longer than ``n`` rounded up to 128."""
    blk = max(_LANES, (int(block_size) // _LANES) * _LANES)
    return min(blk, _round_up(n, _LANES))


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, tq: int, tk: int, offset: int, bq: int, bk: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.CausalMask((tq, tk), offset=offset)] * heads)
    sizes = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                          block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    # The kernel object holds its block-mask tables as arrays: build them concretely (not as
    # tracers of whichever trace first asked) so the cached kernel serves every trace.
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _local(q, k, v, key_mask, *, offset: int, block_size: int):
    """One device's (or the whole) batch: q [B, T, H, D], k / v [B, KVH, S, D], key_mask [B, S]."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, t, h, d = q.shape
    s = k.shape[2]
    bq, bk = splash_blocks(t, block_size), splash_blocks(s, block_size)
    tq, tk = _round_up(t, bq), _round_up(s, bk)
    qt = (q.transpose(0, 2, 1, 3) * jnp.asarray(1.0 / np.sqrt(d), q.dtype))  # [B, H, T, D]
    qt = jnp.pad(qt, ((0, 0), (0, 0), (0, tq - t), (0, 0)))
    pad_kv = ((0, 0), (0, 0), (0, tk - s), (0, 0))
    kp = jnp.pad(k.astype(q.dtype), pad_kv)
    vp = jnp.pad(v.astype(q.dtype), pad_kv)
    kv_seg = jnp.pad(key_mask.astype(jnp.int32), ((0, 0), (0, tk - s)))  # [B, tk]
    slots = offset + np.arange(tq)
    q_seg = jnp.where(jnp.asarray(slots < s)[None], kv_seg[:, np.minimum(slots, tk - 1)], 0)

    def run(interpret):
        kern = _kernel(h, tq, tk, int(offset), bq, bk, interpret)
        one = lambda q_, k_, v_, qs, ks: kern(q_, k_, v_, segment_ids=sa.SegmentIds(q=qs, kv=ks))
        return lambda *a: jax.vmap(one)(*a)

    out = jax.lax.platform_dependent(qt, kp, vp, q_seg, kv_seg, tpu=run(False), default=run(True))
    return out[:, :, :t].transpose(0, 2, 1, 3)  # [B, T, H, D]


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, offset: int,
                     block_size: int) -> jax.Array:
    """``attention``'s contract with ``query_slots = offset + arange(T)``; see the module
    docstring. Returns [B, T, H, D] in q's dtype."""
    fn = functools.partial(_local, offset=int(offset), block_size=int(block_size))
    mesh = jax.sharding.get_abstract_mesh()
    qs = active_spec(q.shape, P(BATCH_AXES, None, "tensor", None))
    if qs is None or mesh.manual_axes:  # no mesh, one device, or already inside shard_map
        return fn(q, k, v, key_mask)
    ks = active_spec(k.shape, P(BATCH_AXES, "tensor", None, None))
    batch = qs[0]
    heads = qs[2] if qs[2] == ks[1] else None  # both head counts must split over 'tensor'
    qs, ks = P(batch, None, heads, None), P(batch, heads, None, None)
    return jax.shard_map(fn, in_specs=(qs, ks, ks, P(batch, None)), out_specs=qs,
                         check_vma=False)(q, k, v, key_mask)
