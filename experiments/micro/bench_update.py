"""Time the jitted policy update (advantages -> clipped loss -> AdamW) on a model shape, with the
group's prompt run once and its KV cache shared by the G completions ("shared prompt") against
the same update with the prompt repeated for every completion ("repeated prompt"), in one run.

    python -m experiments.micro.bench_update           # SmolLM2-135M shape, P=8, G=4
    python -m experiments.micro.bench_update --quick   # tiny shape

Prints a Markdown table (seconds per update, median of --repeats after a compile call) and the
ratio. Random weights and tokens; the numbers are the same computation either way (tested in
tests/test_logprobs.py), only the cost differs.
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
from jaxgrpo import train as train_lib
from jaxgrpo.experiment import base_config
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.rollout import Rollout

SHAPES = {
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, tie_word_embeddings=True),
}


def rollout(p, g, tp, tc, vocab, seed=0):
    r = np.random.default_rng(seed)
    cmask = np.arange(tc)[None, None, :] < r.integers(tc // 2, tc + 1, (p, g))[..., None]
    return Rollout(
        prompt_tokens=jnp.asarray(r.integers(0, vocab, (p, tp)), jnp.int32),
        prompt_mask=jnp.ones((p, tp), bool),
        completion_tokens=jnp.asarray(r.integers(0, vocab, (p, g, tc)), jnp.int32),
        completion_mask=jnp.asarray(cmask),
        logprobs=jnp.asarray(np.where(cmask, -r.uniform(0.5, 3, (p, g, tc)), 0), jnp.float32),
        prompt_logprobs=jnp.zeros((p, tp), jnp.float32),
        rewards=jnp.asarray(r.integers(0, 2, (p, g)), jnp.float32),
        correct=jnp.asarray(r.integers(0, 2, (p, g)).astype(bool)),
        member_mask=jnp.ones((p, g), bool), is_anchor=jnp.zeros((p, g), bool))


def time_update(shape, p, g, tp, tc, shared, repeats):
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = p, g
    model = Decoder(ModelConfig(model_type="llama", **SHAPES[shape]), rngs=nnx.Rngs(0))
    graphdef, params, rest = train_lib.split_model(model)
    tx = optax.adamw(1e-6)
    real = train_lib.make_loss_fn
    if not shared:  # force the repeated-prompt path
        train_lib.make_loss_fn = lambda c, gd, r, group=1: real(c, gd, r, 1)
    try:
        update = train_lib.make_update_fn(c, graphdef, rest, tx)
        ro = rollout(p, g, tp, tc, SHAPES[shape]["vocab_size"])
        state = train_lib.init_train_state(params, tx, 0)
        state, m = update(state, ro, None)  # compile
        jax.block_until_ready(m)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, m = update(state, ro, None)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    finally:
        train_lib.make_loss_fn = real
    return statistics.median(times), float(m["loss"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="smollm2-135m", choices=list(SHAPES))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompt_len", type=int, default=48)
    ap.add_argument("--completion_len", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.shape, a.repeats = "tiny", 2
    rows = []
    for shared in (False, True):
        sec, loss = time_update(a.shape, a.prompts, a.group, a.prompt_len, a.completion_len,
                                shared, a.repeats)
        rows.append((shared, sec, loss))
    print(f"\nupdate step, {a.shape}, P={a.prompts} x G={a.group}, prompt {a.prompt_len} + "
          f"completion {a.completion_len} tokens, fp32, {jax.devices()[0].platform}\n")
    print("| prompt pass | s / update | loss |\n|---|---|---|")
    for shared, sec, loss in rows:
        print(f"| {'shared (once per group)' if shared else 'repeated (per completion)'} | "
              f"{sec:.2f} | {loss:.6f} |")
    print(f"\nspeed-up: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main_entry(main)
