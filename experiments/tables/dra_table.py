r"""The DRA paper's Table 1 (arXiv 2505.09655; METHODS.md §2): pass@1 on AIME24, MATH-500, AMC23,
Minerva and OlympiadBench, our numbers beside the paper's.

Run on a GPU host after training with ``experiments/configs/dra_paper.py`` (its docstring has the
training command; the paper: DeepSeek-R1-Distill-Qwen-1.5B, 500 steps, 4x A100-40GB)::

    # 1. train DRA-DR.GRPO (the config's defaults) into a known run directory
    python -m experiments.run --config experiments/configs/dra_paper.py \
        --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B \
        --config.data.path=/data/open-rs.jsonl --config.run_dir=runs/dra_dr_grpo_paper

    # 2. the table for the final checkpoint (local benchmark files; nothing is downloaded)
    python -m experiments.tables.dra_table --run_dir runs/dra_dr_grpo_paper --step 500 \
        --aime24 /data/aime_2024.jsonl --math500 /data/math500.jsonl --amc23 /data/amc23.jsonl \
        --minerva /data/minerva.jsonl --olympiadbench /data/olympiadbench.jsonl \
        --batch_prompts 32 --out runs/dra_dr_grpo_paper/dra_table

    # the base-model row (paper: 48.9 average) from the same files
    python -m experiments.tables.dra_table --model /models/DeepSeek-R1-Distill-Qwen-1.5B \
        --aime24 ... --out runs/base_dra_table

The files are local copies of HuggingFaceH4/aime_2024, HuggingFaceH4/MATH-500, knoveleng/AMC-23,
knoveleng/Minerva-Math and knoveleng/OlympiadBench (JSON / JSONL / Parquet). Columns, as the
reference evaluation (Open-R1 / Open-RS ``src/open_r1/evaluate.py``) reads them: AIME24, AMC23
``problem`` / ``answer``; MATH-500, Minerva ``problem`` / ``solution`` (the gold is the
solution's last ``\boxed{}``); OlympiadBench ``question`` / ``answer``; override one with
``--fields NAME=QFIELD,AFIELD``. A benchmark whose flag is not given is reported as
"not provided", and the averages then cover the provided ones only (the paper's average is
recomputed over the same subset).

Evaluation settings, as the paper's (research/dra.md §3: lighteval + vLLM, zero-shot pass@1, one
sample, temperature 0.6, top_p 0.95, max_new_tokens 32768, the chat template, Open-R1's
MATH_QUERY_TEMPLATE as the user message, no system prompt, bf16). Scoring: math-verify on the
extracted final answer (answer tag, then the last ``\boxed{}``), not lighteval's extractive
match: small differences from the paper's scorer are possible. ``--num_samples n`` averages pass@1
over n samples (less noise on AIME's 30 problems).

Cost: our sampler decodes a batch until its longest completion ends (no continuous batching), and
R1-distilled models often use the full 32k budget on hard problems, so the 1,517 problems take
hours on one H100; ``--max_new_tokens 8192`` is a cheaper approximation (more truncations, lower
AIME / OlympiadBench numbers). KV cache: ~29 KB per token for the 1.5B model in bf16, i.e.
~1 GB per sequence at 33k tokens: ``--batch_prompts 32`` fits an 80 GB GPU.

Outputs in ``--out``: ``dra_table.md`` (the table), ``dra_table.json`` (settings + metrics),
``dra_table.samples.jsonl`` (every sample), ``dra_table.png`` (bars: ours / paper / base).
Not yet run at paper scale by us.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Dict, Optional

from experiments._entry import main_entry
from experiments.evaluate import (EvalError, EvalSettings, add_policy_source_args,
                                  check_sampling_flags,
                                  evaluate_benchmarks,
                                  load_benchmark_files, load_eval_policy, parse_fields,
                                  write_outputs)

# (key, display name, question field, answer field) in the paper's column order.
BENCHMARKS = (
    ("aime24", "AIME24", "problem", "answer"),
    ("math500", "MATH-500", "problem", "solution"),
    ("amc23", "AMC23", "problem", "answer"),
    ("minerva", "Minerva", "problem", "solution"),
    ("olympiadbench", "OlympiadBench", "question", "answer"),
)

# pass@1 (%), DeepSeek-R1-Distill-Qwen-1.5B, research/dra.md §4 and §6.
PAPER = {
    "DRA-DR.GRPO (paper)": {"aime24": 36.7, "math500": 85.2, "amc23": 85.0, "minerva": 30.5,
                            "olympiadbench": 53.8},
    "base R1-Distill-1.5B (paper)": {"aime24": 28.8, "math500": 82.8, "amc23": 62.9,
                                     "minerva": 26.5, "olympiadbench": 43.3},
    "DRA-DR.GRPO (issue #3 repro)": {"aime24": 26.7, "math500": 81.6, "amc23": 72.5,
                                     "minerva": 29.8, "olympiadbench": 50.1},
}
PAPER_AVERAGE = {"DRA-DR.GRPO (paper)": 58.2, "base R1-Distill-1.5B (paper)": 48.9}

# Open-R1 / Open-RS MATH_QUERY_TEMPLATE, with {question} (braces doubled for str.format).
MATH_QUERY_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response "
    "should be of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I "
    "hope it is correct' (without quotes) where ANSWER is just the final number or expression "
    "that solves the problem. Think step by step before answering.\n\n{question}")

NOT_PROVIDED = "not provided"


def paper_settings(args) -> EvalSettings:
    """The paper's evaluation settings, with the flags' overrides."""
    return EvalSettings(
        num_samples=args.num_samples, ks=(1,), max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=0, template=args.template,
        prompt_format=args.prompt_format, system_prompt=args.system_prompt,
        max_prompt_tokens=args.max_prompt_tokens, batch_prompts=args.batch_prompts,
        seed=args.seed, compute_entropy=False, answer_sources=("answer_tag", "boxed"),
        verifier_workers=args.verifier_workers, item_timeout_s=5.0)


def _avg(values):
    return sum(values) / len(values) if values else None


def _cell(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def build_table(ours: Dict[str, Optional[dict]], label: str, files: Dict[str, str]) -> tuple:
    """(Markdown, rows as dicts). ``ours[key]`` is a metrics dict or None (not provided)."""
    provided = [k for k, *_ in BENCHMARKS if ours.get(k) is not None]
    refs = list(PAPER)
    head = ["benchmark", "problems", f"{label} pass@1"] + refs + ["Δ vs paper", "mean length",
                                                                 "truncated %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for key, name, *_ in BENCHMARKS:
        m = ours.get(key)
        paper = PAPER[refs[0]][key]
        if m is None:
            cells = [name, "–", NOT_PROVIDED] + [_cell(PAPER[r][key]) for r in refs] + [
                "–", "–", "–"]
            rows.append({"benchmark": name, "status": NOT_PROVIDED})
        else:
            acc = 100.0 * m["pass@1"]
            cells = ([name, str(m["num_prompts"]), _cell(acc)]
                     + [_cell(PAPER[r][key]) for r in refs]
                     + [_cell(acc - paper, "{:+.1f}"), _cell(m["mean_length"], "{:.0f}"),
                        _cell(100.0 * m.get("truncated_frac", 0.0))])
            rows.append({"benchmark": name, "status": "evaluated", "file": files[key],
                         "pass@1": acc, "num_prompts": m["num_prompts"],
                         "num_samples": m["num_samples"], "mean_length": m["mean_length"],
                         "truncated_frac": m.get("truncated_frac"),
                         **{r: PAPER[r][key] for r in refs}})
        lines.append("| " + " | ".join(cells) + " |")
    # Averages over the provided benchmarks; the paper's own reported average when all five are.
    ours_avg = _avg([100.0 * ours[k]["pass@1"] for k in provided])
    ref_avgs = []
    for r in refs:
        if len(provided) == len(BENCHMARKS) and r in PAPER_AVERAGE:
            ref_avgs.append(PAPER_AVERAGE[r])
        else:
            ref_avgs.append(_avg([PAPER[r][k] for k in provided]))
    avg_name = ("Average" if len(provided) == len(BENCHMARKS)
                else f"Average ({len(provided)}/{len(BENCHMARKS)} provided)")
    delta = None if ours_avg is None else ours_avg - ref_avgs[0]
    lines.append("| " + " | ".join(
        [f"**{avg_name}**", "–", _cell(ours_avg)] + [_cell(a) for a in ref_avgs]
        + [_cell(delta, "{:+.1f}"), "–", "–"]) + " |")
    rows.append({"benchmark": avg_name, "status": "average", "pass@1": ours_avg,
                 "provided": [n for k, n, *_ in BENCHMARKS if k in provided],
                 **dict(zip(refs, ref_avgs))})
    return "\n".join(lines) + "\n", rows


def _plot(rows, label, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    names = [r["benchmark"] for r in rows if r["status"] != NOT_PROVIDED]
    series = [(label, [r.get("pass@1") for r in rows if r["status"] != NOT_PROVIDED])]
    series += [(ref, [r.get(ref) for r in rows if r["status"] != NOT_PROVIDED])
               for ref in list(PAPER)[:2]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names)), 3.6))
    w = 0.8 / len(series)
    for i, (lab, vals) in enumerate(series):
        ax.bar(x + i * w, [v or 0.0 for v in vals], w, label=lab)
    ax.set_xticks(x + w * (len(series) - 1) / 2, names, rotation=20)
    ax.set_ylabel("pass@1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def build_parser():
    p = argparse.ArgumentParser(prog="python -m experiments.tables.dra_table",
                                description="DRA Table 1 (pass@1 on five math benchmarks).")
    add_policy_source_args(p)  # --run_dir (e.g. trained with dra_paper.py) | --model (base)
    for key, name, qf, af in BENCHMARKS:
        p.add_argument(f"--{key}", default=None, metavar="FILE",
                       help=f"local {name} file (columns {qf!r}, {af!r})")
    p.add_argument("--fields", action="append", default=[], metavar="NAME=QFIELD,AFIELD")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each (smoke)")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=32768)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--template", default="chat", choices=("chat", "plain"))
    p.add_argument("--prompt_format", default=MATH_QUERY_TEMPLATE)
    p.add_argument("--system_prompt", default="")
    p.add_argument("--max_prompt_tokens", type=int, default=1024)
    p.add_argument("--batch_prompts", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"),
                   help="parameter dtype for --model (a run uses its config's)")
    p.add_argument("--verifier_workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="ours")
    p.add_argument("--out", default="runs/dra_table", help="output directory")
    return p


def run(args, log=print) -> dict:
    keys = [k for k, *_ in BENCHMARKS]
    files = {k: getattr(args, k) for k in keys if getattr(args, k)}
    fields = {k: (qf, af) for k, _, qf, af in BENCHMARKS}
    user_fields = parse_fields(args.fields)
    unknown = sorted(set(user_fields) - set(keys))
    if unknown:
        raise EvalError(f"--fields for unknown benchmarks {unknown}; known: {keys}")
    fields.update(user_fields)
    for k, path in files.items():
        if not os.path.isfile(path):
            raise EvalError(f"benchmark file not found: {path} (--{k})")
    if not files:
        raise EvalError("no benchmark files given; pass at least one of "
                        + ", ".join(f"--{k}" for k in keys))
    for name in ("num_samples", "max_new_tokens", "batch_prompts", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    check_sampling_flags(args.max_new_tokens, args.temperature, args.top_p)
    if args.run_dir is not None and not os.path.isdir(args.run_dir):
        raise EvalError(f"run directory not found: {args.run_dir}")
    if args.model is not None and not os.path.exists(args.model):
        raise EvalError(f"model not found: {args.model}")
    for k in keys:
        if k not in files:
            log(f"[dra_table] {k}: {NOT_PROVIDED} (pass --{k} FILE)")
    loaded = load_benchmark_files(files, fields=fields, limit=args.limit)

    policy = load_eval_policy(model=args.model, run_dir=args.run_dir, step=args.step,
                              dtype=args.dtype, run_model_path=args.run_model_path)
    s = paper_settings(args)
    results = evaluate_benchmarks(policy, loaded, s, log=log)
    source = (f"{policy.source} step {policy.step}" if policy.step is not None
              else policy.source)
    table, rows = build_table({k: results[k]["metrics"] if k in results else None
                               for k in keys}, args.label, files)
    intro = (f"DRA Table 1 reproduction: `{source}`, pass@1 (%) from {s.num_samples} sample(s) "
             f"per problem, temperature {s.temperature}, top_p {s.top_p}, max_new_tokens "
             f"{s.max_new_tokens}, template {s.template}; math-verify scoring. Paper rows: "
             "DeepSeek-R1-Distill-Qwen-1.5B (arXiv 2505.09655 Table 1; issue #3 of "
             "xiwenc1/DRA-GRPO for the reproduction row).\n\n")
    os.makedirs(args.out, exist_ok=True)
    out_json = os.path.join(args.out, "dra_table.json")
    header = {"source": policy.source, "step": policy.step, "label": args.label,
              "settings": dataclasses.asdict(s), "benchmark_files": files,
              "not_provided": [k for k in keys if k not in files], "table": rows}
    paths = write_outputs(out_json, results, header, intro + table)
    paths["plot"] = _plot(rows, args.label, os.path.join(args.out, "dra_table.png"))
    return {"table": intro + table, "rows": rows, "results": results, "paths": paths}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except EvalError as e:
        sys.exit(f"dra_table: error: {e}")
    print("\n" + res["table"])
    print(f"[dra_table] wrote {res['paths']['table']}, {res['paths']['json']}, "
          f"{res['paths']['samples']}")
    return res


if __name__ == "__main__":
    main_entry(main)
