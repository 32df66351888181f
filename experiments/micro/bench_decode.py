"""Decode-step time against the preallocated cache size: does a step cost follow the position?

    python -m experiments.micro.bench_decode           # 256 vs 4,096 slots, naive vs blockwise
    python -m experiments.micro.bench_decode --tiny    # a seconds-long smoke run

One jitted decode step of a small random Llama-shaped decoder (the sampler's step: one token per
row, written at ``--position`` of the KV cache, attention over the cache, logits), its cache
donated. It is timed with a cache of ``--short`` and of ``--long`` slots, for each attention
implementation: "naive" attends over every preallocated slot (the decoder before
``jaxgrpo.models.attention``), "blockwise" only over the blocks up to the position (a dynamic
loop bound). Prints the median step time of ``--repeats`` calls after a warm-up and the ratio
long / short; the target for "blockwise" is <= 1.3.
"""
from __future__ import annotations

import argparse
import statistics
import time

from experiments._entry import main_entry


def bench(impl: str, slots: int, args) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxgrpo.models import Decoder, ModelConfig, init_cache
    cfg = ModelConfig(model_type="llama", vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.hidden * 2, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      head_dim=args.hidden // args.heads)
    model = Decoder(cfg, attention=impl, attention_block=args.block, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    b, pos = args.batch, args.position
    dtype = jnp.dtype(args.cache_dtype)

    def fill(key):  # a cache whose first `pos` slots hold random keys / values, the rest zeros
        c = init_cache(cfg, b, slots, dtype)
        leaves, tree = jax.tree.flatten(c)
        live = (jnp.arange(slots) < pos)[None, None, :, None]
        leaves = [jnp.where(live, jax.random.normal(jax.random.fold_in(key, i), a.shape, a.dtype),
                            a) for i, a in enumerate(leaves)]
        return jax.tree.unflatten(tree, leaves)

    def step_fn(state, tok, cache, index):
        m = nnx.merge(graphdef, state)
        key_mask = jnp.ones((b, slots), bool)
        positions = jnp.full((b, 1), index, jnp.int32)
        logits, cache = m(tok[:, None], attention_mask=key_mask, positions=positions,
                          cache=cache, cache_index=index)
        return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache

    step = jax.jit(step_fn, donate_argnums=(2,))  # the cache is updated in place
    cache = jax.jit(fill)(jax.random.key(0))
    tok = jnp.zeros((b,), jnp.int32)
    index = jnp.int32(pos)
    tok, cache = step(state, tok, cache, index)  # compile + warm-up
    jax.block_until_ready(tok)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tok, cache = step(state, tok, cache, index)  # same slot each time: same work per call
        jax.block_until_ready(tok)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", type=int, default=256)
    ap.add_argument("--long", type=int, default=4096)
    ap.add_argument("--position", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--cache-dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--impls", default="naive,blockwise")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 2 layers, 3 repeats")
    args = ap.parse_args(argv)
    if args.tiny:
        args.layers, args.hidden, args.heads, args.kv_heads = 2, 64, 4, 2
        args.vocab, args.batch, args.repeats, args.long = 512, 2, 3, 1024
    if not args.position < args.short:
        ap.error(f"--position ({args.position}) must be < --short ({args.short})")
    print(f"decode step at position {args.position}, batch {args.batch}, {args.layers} layers, "
          f"hidden {args.hidden}, cache {args.cache_dtype}, block {args.block}")
    print(f"| attention | {args.short} slots (ms) | {args.long} slots (ms) | ratio |")
    print("|---|---|---|---|")
    for impl in args.impls.split(","):
        short = bench(impl, args.short, args)
        long = bench(impl, args.long, args)
        print(f"| {impl} | {short * 1e3:.2f} | {long * 1e3:.2f} | {long / short:.2f} |",
              flush=True)


if __name__ == "__main__":
    main_entry(main)
