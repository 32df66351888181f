"""Compile time of the jitted update and sampler against model depth (scan over layers or not).

Ahead-of-time (``jit(...).lower(...).compile()``) from abstract parameters: no weights are
allocated, so a 30-layer model costs only compile time and memory. For each depth it prints the
seconds to trace + lower and to compile ``jaxgrpo.train.make_update_fn``'s update and
``jaxgrpo.sampling.make_sampler``'s sampler, and the size of the optimised update program.

    python -m experiments.micro.bench_compile      # SmolLM2-135M widths, 2/8/30 layers
    python -m experiments.micro.bench_compile --width tiny --layers 2,4 --tp 8 --tc 8   # quick

It uses only public APIs that also exist on the base commit 5206358 (before the decoder was
scanned), so the same script gives the "before" column there; see experiments/micro/README.md.
"""
from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from experiments._entry import main_entry
from jaxgrpo import train as train_lib
from jaxgrpo.experiment import base_config
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.rollout import Rollout
from jaxgrpo.sampling import SamplingConfig, make_sampler

WIDTHS = {
    # SmolLM2-135M (hidden 576, 9 / 3 heads of 64, intermediate 1536, vocab 49152, tied).
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         tie_word_embeddings=True),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}


def abstract_rollout(p, g, tp, tc) -> Rollout:
    s = jax.ShapeDtypeStruct
    return Rollout(
        prompt_tokens=s((p, tp), jnp.int32), prompt_mask=s((p, tp), jnp.bool_),
        completion_tokens=s((p, g, tc), jnp.int32), completion_mask=s((p, g, tc), jnp.bool_),
        logprobs=s((p, g, tc), jnp.float32), prompt_logprobs=s((p, tp), jnp.float32),
        rewards=s((p, g), jnp.float32), correct=s((p, g), jnp.bool_),
        member_mask=s((p, g), jnp.bool_), is_anchor=s((p, g), jnp.bool_))


def _n_instructions(hlo_text: str) -> int:
    """Instructions of an optimised HLO module (lines of the form ``name = type op(...)``)."""
    return len(re.findall(r"^\s+(?:ROOT )?\S+ = ", hlo_text, flags=re.M))


def bench_depth(width: str, layers: int, p: int, g: int, tp: int, tc: int, remat: str):
    cfg = ModelConfig(model_type="llama", num_hidden_layers=layers, **WIDTHS[width])
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    if remat != "none":
        model.remat = remat  # the scanned decoder's remat policy (absent before it)
    graphdef, params, rest = train_lib.split_model(model)
    # The update closes over the non-trainable variables (RoPE frequencies): concrete values.
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), rest)
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = p, g
    c.sampling.max_new_tokens = tc
    tx = train_lib.build_optimizer(c)
    state = jax.eval_shape(lambda prm: train_lib.init_train_state(prm, tx, 0), params)
    update = train_lib.make_update_fn(c, graphdef, rest, tx)
    out = {}
    t0 = time.perf_counter()
    lowered = update.lower(state, abstract_rollout(p, g, tp, tc), None)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out["update_lower_s"], out["update_compile_s"] = t1 - t0, t2 - t1
    out["update_hlo_instructions"] = _n_instructions(compiled.as_text())

    # The scanned decode loop (what "auto" runs on a GPU / TPU; on the CPU it unrolls the layers).
    scfg = SamplingConfig(max_new_tokens=tc, temperature=1.0, eos_token_ids=(2,), num_generations=g,
                          unroll_layers=False)
    sampler = make_sampler(graphdef, scfg)
    full_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              nnx.merge_state(params, rest))
    t0 = time.perf_counter()
    lowered = sampler.lower(full_state, jax.ShapeDtypeStruct((p, tp), jnp.int32),
                            jax.ShapeDtypeStruct((p, tp), jnp.bool_), jax.random.key(0))
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    out["sampler_lower_s"], out["sampler_compile_s"] = t1 - t0, t2 - t1
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", choices=sorted(WIDTHS), default="smollm2-135m")
    ap.add_argument("--layers", default="2,8,30", help="comma-separated depths")
    ap.add_argument("--prompts", type=int, default=2, help="P")
    ap.add_argument("--group", type=int, default=4, help="G")
    ap.add_argument("--tp", type=int, default=32, help="prompt tokens")
    ap.add_argument("--tc", type=int, default=32, help="completion tokens")
    ap.add_argument("--remat", default="none", help="Decoder.remat (scanned decoder only)")
    a = ap.parse_args(argv)
    depths = [int(x) for x in a.layers.split(",")]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; width {a.width}, P={a.prompts}, "
          f"G={a.group}, Tp={a.tp}, Tc={a.tc}, remat={a.remat}")
    print("| layers | update lower s | update compile s | update HLO instructions | "
          "sampler lower s | sampler compile s |")
    print("|---|---|---|---|---|---|")
    for n in depths:
        r = bench_depth(a.width, n, a.prompts, a.group, a.tp, a.tc, a.remat)
        print(f"| {n} | {r['update_lower_s']:.1f} | {r['update_compile_s']:.1f} | "
              f"{r['update_hlo_instructions']} | {r['sampler_lower_s']:.1f} | "
              f"{r['sampler_compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main_entry(main)
