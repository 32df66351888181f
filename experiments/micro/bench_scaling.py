"""How a GRPO step's cost grows with the group size G, the completion length and the model size.

For each axis three points are measured with the other two held at the middle value: the jitted
sampler (temperature 1, every completion forced to its full length: no EOS) and the jitted
update (advantages -> clipped loss -> AdamW, the group's prompt run once), each the median of
``--repeats`` calls after a compiling one. Random weights and tokens: the cost does not depend on
the values. Per axis the exponent b of ``seconds = a * x ** b`` is fitted by least squares on
log-log axes (sample, update and their sum).

    python -m experiments.micro.bench_scaling         # P = 4; G 4/8/16, Tc 32/64/128, d 128/256/512
    python -m experiments.micro.bench_scaling --quick # one repeat, smaller points (a smoke check)

What to expect on paper, per optimiser step at P prompts: the update is matmul-bound,
~6 x params x tokens FLOPs with tokens = P * (Tp + G * Tc) (the prompt runs once per group), so
b ~ 1 in G and in Tc (attention adds a Tc^2 term that is small at these lengths) and b ~ 1-2 in
the width d (params ~ 12 L d^2 + V d: the vocabulary term is linear in d). The sampler makes Tc
decode steps over P * G rows; each step reads every weight once for the whole batch and the
cache up to the current position, so it is sub-linear in G while the rows are few (weight reads
are shared) and ~1-2 in Tc (the cache read grows with the position).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments._entry import main_entry
from experiments.micro.bench_update import rollout
from jaxgrpo import train as train_lib
from jaxgrpo.experiment import base_config
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.sampling import SamplingConfig, make_sampler


def shape(width: int, layers: int, vocab: int) -> dict:
    """A Llama shape of hidden ``width`` (heads of 64, 2 KV heads, SwiGLU ~2.7 x width)."""
    heads = max(width // 64, 2)
    return dict(vocab_size=vocab, hidden_size=width, intermediate_size=(width * 8 // 3 + 7) // 8 * 8,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                head_dim=width // heads, tie_word_embeddings=True)


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(width: int, layers: int, vocab: int, p: int, g: int, tp: int, tc: int,
            repeats: int) -> dict:
    model = Decoder(ModelConfig(model_type="llama", **shape(width, layers, vocab)),
                    rngs=nnx.Rngs(0))
    graphdef, params, rest = train_lib.split_model(model)
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))

    scfg = SamplingConfig(max_new_tokens=tc, temperature=1.0, eos_token_ids=(), num_generations=g,
                          return_prompt_logprobs=False)
    sampler = make_sampler(graphdef, scfg)
    full = nnx.merge_state(params, rest)
    r = np.random.default_rng(0)
    ids = jnp.asarray(r.integers(3, vocab, (p, tp)), jnp.int32)
    mask = jnp.ones((p, tp), bool)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))
    t_sample = _median_time(lambda: sampler(full, ids, mask, next(keys)).completion_tokens,
                            repeats)

    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = p, g
    c.sampling.max_new_tokens = tc
    tx = optax.adamw(1e-6)
    update = train_lib.make_update_fn(c, graphdef, rest, tx)
    box = {"state": train_lib.init_train_state(params, tx, 0)}
    ro = rollout(p, g, tp, tc, vocab)
    ro = ro.replace(completion_mask=jnp.ones_like(ro.completion_mask))  # forced full length

    def step():
        box["state"], m = update(box["state"], ro, None)
        return m

    t_update = _median_time(step, repeats)
    return dict(params=n_params, sample_s=t_sample, update_s=t_update)


def fit_exponent(xs, ys) -> float:
    """b of y = a * x ** b (least squares on log-log)."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="P")
    ap.add_argument("--prompt_len", type=int, default=32, help="Tp")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--groups", default="4,8,16", help="G values (middle one held elsewhere)")
    ap.add_argument("--lengths", default="32,64,128", help="completion lengths Tc")
    ap.add_argument("--widths", default="128,256,512", help="hidden sizes d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.groups, a.lengths, a.widths, a.repeats, a.vocab = "2,4,8", "8,16,32", "64,128,256", 1, 512
    axes = {"G": [int(x) for x in a.groups.split(",")],
            "Tc": [int(x) for x in a.lengths.split(",")],
            "d": [int(x) for x in a.widths.split(",")]}
    mid = {k: v[len(v) // 2] for k, v in axes.items()}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; P={a.prompts}, Tp={a.prompt_len}, "
          f"{a.layers} layers, vocab {a.vocab}; held at G={mid['G']}, Tc={mid['Tc']}, "
          f"d={mid['d']}; median of {a.repeats}", flush=True)
    print("| axis | value | params (M) | sample s | update s | step s |")
    print("|---|---|---|---|---|---|", flush=True)
    fits = []
    for axis, values in axes.items():
        rows = []
        for v in values:
            pt = dict(mid, **{axis: v})
            r = measure(pt["d"], a.layers, a.vocab, a.prompts, pt["G"], a.prompt_len, pt["Tc"],
                        a.repeats)
            rows.append(r)
            print(f"| {axis} | {v} | {r['params'] / 1e6:.2f} | {r['sample_s']:.3f} | "
                  f"{r['update_s']:.3f} | {r['sample_s'] + r['update_s']:.3f} |", flush=True)
        fits.append((axis, *(fit_exponent(values, [r[k] for r in rows])
                             for k in ("sample_s", "update_s")),
                     fit_exponent(values, [r["sample_s"] + r["update_s"] for r in rows])))
    print("\n| axis | exponent: sample | update | step |")
    print("|---|---|---|---|")
    for axis, bs, bu, bt in fits:
        print(f"| {axis} | {bs:.2f} | {bu:.2f} | {bt:.2f} |")


if __name__ == "__main__":
    main_entry(main)
