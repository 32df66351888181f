"""Screen prompt / task variants of the diversity testbed on the base model (issue 12).

    python -m experiments.diversity.diversity_screen                    # every variant
    python -m experiments.diversity.diversity_screen --variants range,sum --prompts 32 --n 8

Each variant is a set of config overrides on ``experiments/configs/diversity.py:grpo``; the base
model (SmolLM2-135M-Instruct, packaged) is evaluated on the same held-out rows (generator seed
``seed + 1_000_003``) with n samples each, exactly as the trainer's step-0 evaluation does
(``jaxgrpo.evaluate.evaluate_policy``, the run's verifier, eval key ``seed + 1``). Prints a
Markdown table: pass@1, pass@n, solved prompts, distinct correct per prompt, truncated fraction,
prompt length in tokens (the update's cost grows with it) and wall time. The testbed wants a
base pass@1 between 10% and 50% with room for distinct correct solutions.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from experiments._entry import main_entry
from experiments.configs.diversity import RANGE_PREFILL

# The earlier testbed (sum_to_target, the config before 2026-12-02's screen): two positive whole
# numbers adding up to a target in [4, 20], 24 new tokens, a worked example "1 + 4 = 5".
SUM = {"data.task": "sum_to_target",
       "data.task_kwargs": '{"terms": 2, "min_target": 4, "max_target": 20}',
       "data.prompt_format": "{question}\nExample: 1 + 4 = 5.", "sampling.max_new_tokens": 24}
SUM_OUT_OF_RANGE = "{question}\nExample: 14 + 16 = 30."  # its target is outside [4, 20]
TERSE = "Answer with the two numbers only, as a + b."
# A worked example whose bounds lie outside every number_in_range row's (lower bound <= 50,
# width <= 20): copying it is never correct.
RANGE_EXAMPLE = ("{question}\nExample: a whole number greater than 120 and less than 130 is "
                 "124.")

# SmolLM2's chat template written out with the assistant's turn begun ("The number is"):
# the config's "prefill" prompt (experiments/configs/diversity.py).
PREFILL = {"data.template": "plain", "data.prompt_format": RANGE_PREFILL,
           "sampling.max_new_tokens": 16}

# name -> (description, config overrides of experiments/configs/diversity.py:grpo as
# {dotted key: value}); that config is number_in_range (divisor 1), "{question}", 16 new tokens.
VARIANTS = {
    "sum": ("sum_to_target, example 1 + 4 = 5, 24 tok", SUM),
    "sum_no_example": ("sum_to_target, no example, 24 tok",
                       {**SUM, "data.prompt_format": "{question}"}),
    "sum_example_out_of_range": ("sum_to_target, example 14 + 16 = 30, 24 tok",
                                 {**SUM, "data.prompt_format": SUM_OUT_OF_RANGE}),
    "sum_system_terse": ("sum_to_target, terse system prompt, no example, 24 tok",
                         {**SUM, "data.prompt_format": "{question}",
                          "data.system_prompt": TERSE}),
    "sum_system_terse_example": ("sum_to_target, terse system prompt, example 14 + 16 = 30",
                                 {**SUM, "data.prompt_format": SUM_OUT_OF_RANGE,
                                  "data.system_prompt": TERSE}),
    "sum_tokens48": ("sum_to_target, example 1 + 4 = 5, 48 tok",
                     {**SUM, "sampling.max_new_tokens": 48}),
    "sum_t07": ("sum_to_target, example 1 + 4 = 5, 24 tok, T 0.7",
                {**SUM, "eval.temperature": 0.7}),
    "range": ("number_in_range, divisor 1, 16 tok (the config)", {}),
    "range_only_number": ("number_in_range, 'Answer with the number only.', 16 tok",
                          {"data.prompt_format": "{question} Answer with the number only."}),
    "range_even": ("number_in_range, divisor 2, 16 tok",
                   {"data.task_kwargs": '{"divisors": [2]}'}),
    "range_div235": ("number_in_range, divisor 2, 3 or 5, width >= 10, 16 tok",
                     {"data.task_kwargs": '{"divisors": [2, 3, 5], "min_width": 10}'}),
    "range_t07": ("number_in_range, 16 tok, T 0.7", {"eval.temperature": 0.7}),
    "range_example": ("number_in_range, example 120 < 124 < 130, 16 tok",
                      {"data.prompt_format": RANGE_EXAMPLE}),
    "range_example_t07": ("number_in_range, example 120 < 124 < 130, 16 tok, T 0.7",
                          {"data.prompt_format": RANGE_EXAMPLE, "eval.temperature": 0.7}),
    "range_example_tokens24": ("number_in_range, example 120 < 124 < 130, 24 tok",
                               {"data.prompt_format": RANGE_EXAMPLE,
                                "sampling.max_new_tokens": 24}),
    "range_prefill": ("number_in_range, chat template + assistant prefill 'The number is', 16 tok",
                      PREFILL),
    "range_prefill_tokens8": ("number_in_range, assistant prefill 'The number is', 8 tok (the "
                              "config's prefill prompt)", {**PREFILL, "sampling.max_new_tokens": 8}),
    "range_plain_answer": ("number_in_range, no chat template, '{question}\\nAnswer:', 16 tok",
                           {"data.template": "plain",
                            "data.prompt_format": "{question}\nAnswer:"}),
}


def set_key(c, dotted: str, value):
    """``c.<dotted> = value`` for a key that exists (a typo raises, naming it)."""
    node = c
    *path, leaf = dotted.split(".")
    for p in path:
        node = node[p]
    if leaf not in node:
        raise KeyError(f"no config key {dotted!r}")
    node[leaf] = value


def variant_config(name: str, seed: int = 0, prompts: int = 32):
    """``experiments/configs/diversity.py:grpo`` with variant ``name``'s overrides."""
    from experiments.configs.diversity import get_config

    c = get_config("grpo")
    c.seed = seed
    c.data.eval_size = max(c.data.eval_size, prompts)
    for k, v in VARIANTS[name][1].items():
        set_key(c, k, v)
    return c


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.diversity.diversity_screen",
                                description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")

    from flax import nnx

    from jaxgrpo.data import encode_rows
    from jaxgrpo.env import build_env
    from jaxgrpo.evaluate import evaluate_policy, run_eval_kwargs
    from jaxgrpo.models.policy import eos_ids, load_policy, pad_id

    base = variant_config(names[0], args.seed, args.prompts)
    model, tok = load_policy(base)
    graphdef, state = nnx.split(model)
    eos, pad = eos_ids(model, tok), pad_id(tok)
    rows_out = []
    for name in names:
        desc = VARIANTS[name][0]
        c = variant_config(name, args.seed, args.prompts)
        env = build_env(c, tok, eos[0] if eos else pad)
        rows = env.eval_rows[: args.prompts]
        _, mask, _ = encode_rows(tok, rows, template=c.data.template,
                                 prompt_format=c.data.prompt_format,
                                 system_prompt=c.data.system_prompt,
                                 max_prompt_tokens=c.data.max_prompt_tokens, pad_id=pad)
        plen = float(np.asarray(mask).sum(-1).mean())
        t0 = time.perf_counter()
        res = evaluate_policy(graphdef, state, tok, rows, env.score, eos_token_ids=eos,
                              pad_token_id=pad, **run_eval_kwargs(c, num_samples=args.n))
        wall = time.perf_counter() - t0
        m = res["metrics"]
        rows_out.append((name, desc, m["pass@1"], m[f"pass@{args.n}"], m["num_solved"],
                         m["distinct_correct_answers"], m["truncated_frac"], plen, wall))
        print(f"{name}: pass@1 {m['pass@1']:.3f} pass@{args.n} {m[f'pass@{args.n}']:.3f} "
              f"solved {m['num_solved']}/{len(rows)} distinct {m['distinct_correct_answers']:.2f} "
              f"truncated {m['truncated_frac']:.2f} prompt {plen:.0f} tok, {wall:.0f} s",
              flush=True)
        for rec in res["records"][:2]:
            print(f"    {rec['question']!r}: {rec['samples'][:3]}", flush=True)
    print(f"\nBase model, {args.prompts} held-out prompts x {args.n} samples (seed {args.seed}):\n")
    print(f"| variant | what | pass@1 | pass@{args.n} | solved | distinct correct / prompt | "
          "truncated | prompt tokens | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, desc, p1, pn, solved, dist, trunc, plen, wall in rows_out:
        print(f"| {name} | {desc} | {p1:.3f} | {pn:.3f} | {solved}/{args.prompts} | {dist:.2f} | "
              f"{trunc:.2f} | {plen:.0f} | {wall:.0f} |")


if __name__ == "__main__":
    main_entry(main)
