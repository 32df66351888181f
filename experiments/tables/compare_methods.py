"""CPU-scale comparison of GRPO, Dr.GRPO, DRA-GRPO, DaGRPO and ProGRPO on a reasoning-gym task.

    python -m experiments.tables.compare_methods                       # defaults below
    python -m experiments.tables.compare_methods --seeds 0,1,2 --steps 15 --task basic_arithmetic
    python -m experiments.tables.compare_methods --report            # table from finished runs

Finished runs found in --out are reused (so an interrupted comparison continues); --report only
reads them.
    python -m experiments.tables.compare_methods --quick               # 2 steps, 1 seed (smoke)

Trains each method from its config in ``experiments/configs`` (same model, data, sizes and
seeds; only the advantage chain differs), evaluates the final policy on held-out prompts, and
writes ``<out>/table.md`` (mean ± std over seeds: accuracy, pass@1, pass@k, distinct correct
answers, entropy, plus the before-training row) and ``<out>/table.png``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import time

import numpy as np

from experiments._entry import main_entry

METHODS = {
    "GRPO": "grpo",
    "Dr.GRPO": "dr_grpo",
    "DRA-GRPO": "dra_grpo",
    "DaGRPO": "dagrpo",
    "ProGRPO": "progrpo",
}
COLUMNS = ("accuracy", "pass@1", "pass@{k}", "maj@{k}", "distinct_correct_answers", "mean_entropy")


def method_config(module: str, args, seed: int, out: str):
    c = importlib.import_module(f"experiments.configs.{module}").get_config()
    c.seed = seed
    c.steps = args.steps
    c.data.task = args.task
    if args.task_kwargs is not None:
        c.data.task_kwargs = args.task_kwargs
    c.eval.num_prompts = args.eval_prompts
    c.eval.num_samples = args.k
    c.eval.ks = f"1,{args.k}"
    c.checkpoint.every = 0
    c.log.progress = not args.quiet
    c.run_dir = os.path.join(out, f"{module}-seed{seed}")
    if args.random_init_layers:
        c.model.random_init_layers = args.random_init_layers
    return c


def parse_runs(parser, args, known) -> tuple:
    """(methods, seeds) from ``--methods`` / ``--seeds`` (an unknown method is a parser error
    listing ``known``); ``--report`` implies ``--quiet``; creates ``--out``."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(known)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.report:
        args.quiet = True
    os.makedirs(args.out, exist_ok=True)
    return methods, seeds


def run_or_reuse(c, report: bool = False, resume: bool = False, label: str = ""):
    """The finished run of config ``c`` in ``c.run_dir``: reused if its ``summary.json``
    exists, else trained now (``report=True``: not trained, None returned). A run directory
    without a summary is an interrupted run: it is started again from scratch, or, with
    ``resume=True`` and a checkpoint in it, continued from the checkpoint (the trainer's own
    resume). Returns the run directory, or None."""
    from jaxgrpo.loop import run

    summary = os.path.join(c.run_dir, "summary.json")
    if os.path.exists(summary):
        print(f"{label}: finished run found in {c.run_dir}, reused")
        return c.run_dir
    if report:
        print(f"{label}: no finished run in {c.run_dir}, skipped")
        return None
    has_ckpt = os.path.isdir(os.path.join(c.run_dir, "checkpoints")) and any(
        name.isdigit() for name in os.listdir(os.path.join(c.run_dir, "checkpoints")))
    if os.path.isdir(c.run_dir) and not (resume and has_ckpt):
        print(f"{label}: interrupted run in {c.run_dir}, started again")
        shutil.rmtree(c.run_dir)
    elif os.path.isdir(c.run_dir):
        print(f"{label}: interrupted run in {c.run_dir}, resumed from its checkpoint")
    run(c)
    return c.run_dir


def fmt(values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--task", default="basic_arithmetic")
    p.add_argument("--task_kwargs", default=None, help="JSON object for the task generator")
    p.add_argument("--k", type=int, default=4, help="samples per held-out prompt (pass@k)")
    p.add_argument("--eval_prompts", type=int, default=32)
    p.add_argument("--random_init_layers", type=int, default=0,
                   help="use a small random decoder (tests / plumbing only)")
    p.add_argument("--out", default="runs/compare_methods")
    p.add_argument("--quick", action="store_true", help="2 steps, 1 seed, 8 eval prompts")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="no training: rebuild the table from the run directories already in --out")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.eval_prompts = 2, "0", 8

    methods, seeds = parse_runs(p, args, METHODS)
    results = {}  # method -> list of (before, after) eval dicts
    for name in methods:
        for seed in seeds:
            c = method_config(METHODS[name], args, seed, args.out)
            t0 = time.time()
            if run_or_reuse(c, report=args.report, label=f"{name} seed {seed}") is None:
                continue
            with open(os.path.join(c.run_dir, "summary.json")) as f:
                ev = json.load(f)["eval"]
            steps = sorted(ev, key=int)
            results.setdefault(name, []).append((ev[steps[0]], ev[steps[-1]]))
            print(f"{name} seed {seed}: {time.time() - t0:.0f}s, accuracy "
                  f"{ev[steps[0]]['accuracy']:.3f} -> {ev[steps[-1]]['accuracy']:.3f}")

    cols = [col.format(k=args.k) for col in COLUMNS]
    n_runs = {name: len(runs) for name, runs in results.items()}
    lines = [f"Held-out evaluation after {args.steps} steps on reasoning-gym `{args.task}` "
             f"({args.eval_prompts} prompts × {args.k} samples; mean ± std over seeds {seeds}; "
             f"finished runs per method: {n_runs}).",
             "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    before = [b for runs in results.values() for b, _ in runs]
    lines.append("| before training | " + " | ".join(fmt([b.get(c) for b in before])
                                                    for c in cols) + " |")
    for name, runs in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt([a.get(c) for _, a in runs])
                                                 for c in cols) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    _plot(results, cols, os.path.join(args.out, "table.png"))


def _plot(results, cols, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, col in zip(axes, (cols[0], cols[2], cols[5])):  # accuracy, pass@k, entropy
        means = [np.mean([a.get(col) or 0.0 for _, a in results[n]]) for n in names]
        stds = [np.std([a.get(col) or 0.0 for _, a in results[n]]) for n in names]
        ax.bar(names, means, yerr=stds, capsize=3)
        ax.set_title(col)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main_entry(main)
