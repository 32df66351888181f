"""Whole GRPO steps, side by side: jaxgrpo against TRL's GRPOTrainer (and Tunix when installed).

Same model directory (converted once, HF safetensors), same prompts, G = 8 completions of each of
4 prompts, 128 completion tokens forced in all (EOS ignored: jaxgrpo `sampling.ignore_eos`,
TRL `generation_kwargs={"min_new_tokens": 128}`, Tunix `RolloutConfig(eos_tokens=[-1])`, a stop
id that is never sampled: see experiments/race/_bench_tunix.py), temperature 1, beta = 0, AdamW at
lr 1e-6 (β2 0.99, grad-norm clip 1, constant schedule), fp32 on the CPU, the same reward rule
(last number of the completion equals the answer). Each framework runs in its own process, one after
the other (never together), so peak RSS is its own.

    bash experiments/bootstrap.sh bench        # a separate venv (.venv-bench) with torch + TRL
    python -m experiments.race --model tiny --steps 6
    python -m experiments.race --model smollm2 --steps 6
    python -m experiments.race --peers jaxgrpo,trl,tunix   # --tunix-python: google-tunix
    python -m experiments.race --model smollm2 --steps 5 \
        --peers jaxgrpo,trl,trl-accum4,tunix \
        --set model.remat=none --set train.grad_accum=4   # the 2026-12-07 135M race

Peers: ``jaxgrpo`` (with ``jaxgrpo.cpu``'s CPU settings, as every experiments command),
``jaxgrpo-untuned`` (without), ``jaxgrpo-cold`` (with them, but without ``jaxgrpo.cpu.warm_memory``:
``JAXGRPO_WARM_MEMORY=0``), ``jaxgrpo-scanned`` (``sampling.unroll_layers=false``: the decode
loop over the scanned layer stack, where the CPU default unrolls it), ``trl`` (TRL's defaults:
one 32-row batch, gradient checkpointing), ``trl-accum4`` (4 micro-batches of 8 rows, no
checkpointing: what ``train.grad_accum=4 model.remat=none`` does in jaxgrpo), ``tunix`` (with the
same XLA flag and malloc tunable as jaxgrpo, set in its environment: Tunix is XLA:CPU too) and
``tunix-untuned``.

Per framework it prints seconds per step (median of the steps after the first two: warm-up and
compilation), time to first step (process start to the end of step 1: imports, load, compile),
generation tokens/s (completion tokens / time in the sampler), training tokens/s (prompt +
completion tokens / (step - sampling) time), and peak RSS, then the ratios jaxgrpo / peer.
The peers are never jaxgrpo dependencies (experiments/race/requirements-bench.txt).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

T_START = time.perf_counter()

# The repository root: the children run from it (python -m experiments.race._bench_jaxgrpo).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "bench")

SHAPES = {
    # name: (layers, hidden, heads, kv heads, intermediate) with SmolLM2's tokenizer / vocab
    "tiny": (4, 256, 4, 2, 512),
    "smollm2": None,  # the real SmolLM2-135M-Instruct weights (GGUF -> HF directory)
}


def prepare_model(name: str) -> str:
    """An HF checkpoint directory (config.json + model.safetensors + tokenizer) for ``name``."""
    import dataclasses

    from flax import nnx

    from jaxgrpo.models import (Decoder, default_model_path, load_config, load_pretrained,
                                load_tokenizer, save_pretrained)

    out = os.path.join(CACHE, f"{name}-hf")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    src = default_model_path()
    if SHAPES[name] is None:
        model, tok = load_pretrained(src)
    else:
        layers, hidden, heads, kvh, inter = SHAPES[name]
        cfg = dataclasses.replace(load_config(src), num_hidden_layers=layers, hidden_size=hidden,
                                  num_attention_heads=heads, num_key_value_heads=kvh,
                                  head_dim=hidden // heads, intermediate_size=inter)
        model, tok = Decoder(cfg, rngs=nnx.Rngs(0)), load_tokenizer(src)
    save_pretrained(model, tok, out)
    return out


def prepare_prompts(n: int = 4) -> str:
    """The bench's prompts: single-digit additions from reasoning-gym (seed 0), as JSONL."""
    import reasoning_gym

    path = os.path.join(CACHE, "prompts.jsonl")
    if os.path.isfile(path):
        return path
    ds = reasoning_gym.create_dataset(
        "basic_arithmetic", size=n, seed=0, min_terms=2, max_terms=2, min_digits=1,
        max_digits=1, operators=["+"], allow_negation=False, allow_parentheses=False)
    os.makedirs(CACHE, exist_ok=True)
    with open(path, "w") as f:
        for row in ds:
            f.write(json.dumps({"question": row["question"], "answer": str(row["answer"])}) + "\n")
    return path


def summarise(rec: dict, warmup: int = 2) -> dict:
    steps = rec["step_s"][warmup:] or rec["step_s"][-1:]
    gens = rec["generate_s"][warmup:] or rec["generate_s"][-1:]
    step, gen = statistics.median(steps), statistics.median(gens)
    toks = rec["tokens_per_step"]
    train_toks = rec.get("train_tokens_per_step", toks)
    return dict(framework=rec["framework"], step_s=step, generate_s=gen,
                first_step_s=rec["first_step_end_s"], gen_tok_s=toks / gen,
                train_tok_s=train_toks / max(step - gen, 1e-9), peak_rss_gb=rec["peak_rss_gb"])


def run_child(cmd, env=None) -> dict:
    print("[bench] " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in p.stdout.splitlines():
        if line.startswith("BENCH "):
            # Printed at once: a later peer that fails or is killed does not lose this record.
            print(line, flush=True)
            return json.loads(line[len("BENCH "):])
    sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
    raise RuntimeError(f"benchmark child failed (exit {p.returncode}): {' '.join(cmd)}")


def need_python(flag: str, path: str, venv: str) -> None:
    """Exit with the set-up command when a peer's python (its own venv) is missing."""
    if not os.path.exists(path):
        raise SystemExit(f"{flag} {path} not found: run `bash experiments/bootstrap.sh {venv}` "
                         "first")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.race",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peers", default="jaxgrpo,trl",
                    help="comma-separated: jaxgrpo, jaxgrpo-untuned (JAXGRPO_CPU_TUNING=0: "
                         "without jaxgrpo.cpu's XLA flag and huge pages), jaxgrpo-cold "
                         "(JAXGRPO_WARM_MEMORY=0: without warm host memory), jaxgrpo-scanned "
                         "(sampling.unroll_layers=false: the scanned decode loop), trl, "
                         "trl-accum4 (4 micro-batches, no gradient checkpointing), tunix (with the "
                         "same XLA flag and huge pages as jaxgrpo), tunix-untuned")
    ap.add_argument("--bench-python", default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
                    help="the PyTorch/TRL venv's python (bash experiments/bootstrap.sh bench)")
    ap.add_argument("--tunix-python", default=os.path.join(ROOT, ".venv-tunix", "bin", "python"),
                    help="a python with google-tunix installed (bash experiments/bootstrap.sh "
                         "tunix; experiments/race/_bench_tunix.py)")
    ap.add_argument("--out", default="", help="also write the table and raw records here (.md)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a jaxgrpo config override for the jaxgrpo peer, e.g. model.remat=full "
                         "(repeatable)")
    a = ap.parse_args(argv)

    model_dir = prepare_model(a.model)
    prompts = prepare_prompts()
    common = ["--model-dir", model_dir, "--prompts", prompts, "--steps", str(a.steps),
              "--group", "8", "--prompts-per-step", "4", "--new-tokens", "128", "--lr", "1e-6"]
    recs = []
    for peer in [p.strip() for p in a.peers.split(",") if p.strip()]:
        if peer in ("jaxgrpo", "jaxgrpo-untuned", "jaxgrpo-cold", "jaxgrpo-scanned"):
            # untuned: without jaxgrpo.cpu's settings; cold: without jaxgrpo.cpu.warm_memory;
            # scanned: the decode loop over the scanned layer stack (the CPU default unrolls it)
            extra = [x for kv in a.set for x in ("--set", kv)]
            if peer == "jaxgrpo-scanned":
                extra += ["--set", "sampling.unroll_layers=false"]
            switch = {"jaxgrpo-untuned": {"JAXGRPO_CPU_TUNING": "0"},
                      "jaxgrpo-cold": {"JAXGRPO_WARM_MEMORY": "0"}}.get(peer)
            env = None if peer == "jaxgrpo" else dict(os.environ, JAXGRPO_BENCH_LABEL=peer,
                                                        **(switch or {}))
            recs.append(run_child([sys.executable, "-m", "experiments.race._bench_jaxgrpo", *common,
                                   *extra], env=env))
        elif peer in ("trl", "trl-accum4"):
            need_python("--bench-python", a.bench_python, "bench")
            # trl: TRL's defaults (one 32-row batch, gradient checkpointing); trl-accum4: 4
            # micro-batches of 8 rows without checkpointing (jaxgrpo's train.grad_accum=4
            # model.remat=none), one optimizer step per generation in both.
            extra = [] if peer == "trl" else ["--grad-accum", "4", "--no-gradient-checkpointing"]
            recs.append(run_child([a.bench_python, "experiments/race/_bench_trl.py", *common,
                                   *extra], env=dict(os.environ, JAXGRPO_BENCH_LABEL=peer)))
        elif peer in ("tunix", "tunix-untuned"):
            need_python("--tunix-python", a.tunix_python, "tunix")
            # Tunix is XLA:CPU too: "tunix" runs with the same process settings as jaxgrpo
            # (jaxgrpo.cpu's XLA flag and malloc tunable, set in its environment), so the
            # race compares the frameworks, not the settings; "tunix-untuned" without them.
            from jaxgrpo.cpu.process import tuned_environment
            env = dict(os.environ, JAXGRPO_BENCH_LABEL=peer,
                       **(tuned_environment() if peer == "tunix" else {}))
            recs.append(run_child([a.tunix_python, "experiments/race/_bench_tunix.py", *common],
                                  env=env))
        else:
            raise SystemExit(f"unknown peer {peer!r} (jaxgrpo, jaxgrpo-untuned, jaxgrpo-cold, "
                             "jaxgrpo-scanned, trl, trl-accum4, tunix, tunix-untuned)")
    rows = [summarise(r) for r in recs]
    ref = next((r for r in rows if r["framework"] == "jaxgrpo"), None)
    lines = [f"model {a.model}, 4 prompts x G=8 x 128 forced tokens, fp32 CPU, "
             f"median of steps 3-{a.steps}", "",
             "| framework | s/step | sample s | time to first step s | gen tok/s | "
             "train tok/s | peak RSS GB | speed vs jaxgrpo |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if ref is None else f"{r['step_s'] / ref['step_s']:.2f}x slower" \
            if r is not ref else "1.00x"
        lines.append(f"| {r['framework']} | {r['step_s']:.2f} | {r['generate_s']:.2f} | "
                     f"{r['first_step_s']:.1f} | {r['gen_tok_s']:.0f} | {r['train_tok_s']:.0f} | "
                     f"{r['peak_rss_gb']:.2f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n\n```json\n" + json.dumps(recs, indent=1) + "\n```\n")
