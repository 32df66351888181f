"""Sampler throughput: jaxgrpo.sampling vs transformers' PyTorch ``generate`` (greedy, fp32, CPU).

    python -m experiments.micro.bench_sampler          # all rows (~10 min on the 2-core CPU)
    python -m experiments.micro.bench_sampler --quick  # tiny shape + SmolLM2 shape at batch 16

Both sides use the same random weights (copied from the torch model into ours), the same
left-padded prompt batch (lengths 24..32), greedy decoding and exactly ``--new-tokens`` new tokens
(no EOS stopping: ``min_new_tokens`` in torch, no EOS ids in ours). Throughput = generated tokens
of all rows / wall time of one whole call (prefill included), median of ``--repeats`` timed calls
after one warm-up call (which also compiles the JAX function; torch, being eager, warms up
with an 8-token call and is timed once by default, ``--torch-repeats``). torch uses 2 threads, as many as XLA
uses here. Notes on the optimisations and their measured effect: experiments/micro/README.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from experiments._entry import main_entry

ROWS = {
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0),
}


def build(shape: str, seed: int = 0):
    import torch
    import transformers

    from jaxgrpo.models.config import ModelConfig
    from jaxgrpo.models.decoder import Decoder
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
    from _torch_oracle import copy_torch_weights

    torch.manual_seed(seed)
    hc = transformers.LlamaConfig(max_position_embeddings=2048, **ROWS[shape])
    tm = transformers.LlamaForCausalLM(hc).eval()
    d = hc.to_dict()
    d["model_type"] = "llama"
    return tm, copy_torch_weights(Decoder(ModelConfig.from_hf_dict(d)), tm)


def prompts(batch: int, vocab: int, max_len: int = 32, seed: int = 0):
    rng = np.random.RandomState(seed)
    lengths = rng.randint(max_len - 8, max_len + 1, batch)
    lengths[0] = max_len
    ids = np.zeros((batch, max_len), np.int64)
    mask = np.zeros((batch, max_len), np.int64)
    for r, n in enumerate(lengths):
        ids[r, max_len - n:] = rng.randint(3, vocab, n)
        mask[r, max_len - n:] = 1
    return ids, mask


def timeit(fn, repeats, warmup=None):
    (warmup or fn)()  # warm-up (compiles the JAX function)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_torch(tm, ids, mask, new_tokens, repeats):
    import torch

    ti, tmk = torch.tensor(ids), torch.tensor(mask)

    def run(n=new_tokens):
        with torch.inference_mode():
            out = tm.generate(ti, attention_mask=tmk, do_sample=False, max_new_tokens=n,
                              min_new_tokens=n, eos_token_id=2, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + n
        return out

    out = []
    t = timeit(lambda: out.append(run()), repeats, warmup=lambda: run(8))  # eager: short warm-up
    return t, out[-1][:, ids.shape[1]:].numpy()


def bench_jax(model, ids, mask, new_tokens, repeats):
    import jax
    from flax import nnx

    from jaxgrpo.sampling import SamplingConfig, make_sampler

    cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, eos_token_ids=(),
                         num_generations=1, return_prompt_logprobs=False)
    graphdef, state = nnx.split(model)
    fn = make_sampler(graphdef, cfg)
    ji, jm, key = jax.numpy.asarray(ids, "int32"), jax.numpy.asarray(mask, bool), jax.random.key(0)

    def run():
        return jax.block_until_ready(fn(state, ji, jm, key))

    return timeit(run, repeats), np.asarray(run().completion_tokens)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny b16/b64 + smollm2 b16, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rows", default=None, help="e.g. tiny:16,smollm2-135m:64")
    ap.add_argument("--torch-repeats", type=int, default=1,
                    help="torch generate is slow here (MKL on this AMD CPU): 1 timed call")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args(argv)

    import jax
    import torch

    torch.set_num_threads(2)
    if args.rows:
        rows = [(r.split(":")[0], int(r.split(":")[1])) for r in args.rows.split(",")]
    elif args.quick:
        rows = [("tiny", 16), ("tiny", 64), ("smollm2-135m", 16)]
    else:
        rows = [("tiny", 16), ("tiny", 64), ("smollm2-135m", 16), ("smollm2-135m", 64)]
    repeats = 1 if args.quick else args.repeats
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"threads={torch.get_num_threads()}, cpus={os.cpu_count()}, new_tokens={args.new_tokens},"
          f" prompt_len={args.prompt_len}, repeats={repeats}", flush=True)
    results, built = [], {}
    for shape, batch in rows:
        if shape not in built:
            built = {shape: build(shape)}
        tm, model = built[shape]
        ids, mask = prompts(batch, ROWS[shape]["vocab_size"], args.prompt_len)
        n = batch * args.new_tokens
        tj, out_j = bench_jax(model, ids, mask, args.new_tokens, repeats)
        if args.skip_torch:
            tt, agree = float("nan"), float("nan")
        else:
            tt, out_t = bench_torch(tm, ids, mask, args.new_tokens, min(repeats, args.torch_repeats))
            agree = float(np.mean(out_j == out_t))
        results.append((shape, batch, n / tj, n / tt, agree))
        print(f"  {shape} b={batch}: jax {n / tj:.0f} tok/s, torch {n / tt:.0f} tok/s, "
              f"ratio {tt / tj:.2f}, token agreement {agree:.3f}", flush=True)
    print("\n| shape | batch | jaxgrpo tok/s | torch generate tok/s | ratio | greedy tokens equal |")
    print("|---|---|---|---|---|---|")
    for shape, batch, j, t, agree in results:
        print(f"| {shape} | {batch} | {j:.0f} | {t:.0f} | {j / t:.2f}x | {agree:.3f} |")


if __name__ == "__main__":
    main_entry(main)
