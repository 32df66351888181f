"""Does diversity survive GRPO? Base model vs GRPO, Dr.GRPO, DRA-GRPO, DRA-Dr.GRPO, DaGRPO and
ProGRPO on a task with many correct answers per prompt (issue 12).

    python -m experiments.diversity                                   # every method, seeds 0,1,2
    python -m experiments.diversity --methods GRPO --seeds 0          # one pilot run
    python -m experiments.diversity --report                          # table + plots, no training
    python -m experiments.diversity --quick                           # smoke: 2 steps, 1 seed
    python -m experiments.diversity --prompt prefill --out runs/diversity_prefill
                                      # the prompt with the assistant's turn begun (base pass@1 ~14%)

Each method trains from ``experiments/configs/diversity.py:<method>`` (the method's own advantage
chain and loss on the config's task -- ``number_in_range`` -- identical model, data, sizes and seeds) and is
evaluated on the same held-out prompts (per seed) every ``--eval_every`` steps with n samples
each: pass@k for k = 1, 2, 4, ..., n (unbiased estimator), distinct correct solutions per prompt,
the share of the most frequent correct solution, mean pairwise MiniLM cosine distance among
correct completions and mean token entropy. The base model row is every run's step-0 evaluation
(the same prompts and evaluation key as its trained policy, so method - base is paired); it is
evaluated once per seed, by the first method run, and shared: the runs of one seed agree on model,
data, sampling and evaluation settings (``BASE_EVAL_KEYS``), so the others would repeat it
exactly and skip it (``eval.before_training=False``).

Resumable: a run whose ``summary.json`` exists is reused; an interrupted one continues from its
last checkpoint (saved at every evaluation) or, without one, starts again
(``experiments.tables.compare_methods.run_or_reuse``). So the comparison can run in sittings.

Writes into ``--out``:
  ``diversity.md``  mean ± std over seeds per method, and method - GRPO differences (paired by
                    seed) with a 95% t-interval over seeds, on pass@1, pass@n and distinct correct;
  ``passk.png``     pass@k vs k (log x), base model included, at the final step;
  ``curves.png``    pass@1, distinct correct and entropy vs training step;
  ``diversity.json`` the per-run evaluation curves the table and plots are made from (and
                    ``_final``: the final evaluations).

``--final_eval`` (pass@k up to k = 32): every finished run's last checkpoint and each seed's base
model are evaluated once more at the config's full size (64 prompts x 32 samples; or
``--final_prompts`` x ``--final_samples``), with the trainer's own evaluation settings and key, so
the runs can train with a cheaper evaluation (e.g. 32 x 16) and still be compared at pass@32.
Stored as ``<run>/final_eval_<P>x<n>.json`` (+ ``.jsonl`` records) and
``base-seed<s>/final_eval_<P>x<n>.json``, reused by later sittings and by ``--report``; they add a
second table to ``diversity.md`` and ``passk_final.png``.

    python -m experiments.diversity --methods GRPO,ProGRPO --seeds 0 --steps 60 \
        --eval_every 10 --eval_prompts 32 --num_samples 16 --out runs/diversity_60 --final_eval
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np

from experiments.tables.compare_methods import parse_runs, run_or_reuse

METHODS = {
    "GRPO": "grpo",
    "Dr.GRPO": "dr_grpo",
    "DRA-GRPO": "dra_grpo",
    "DRA-Dr.GRPO": "dra_dr_grpo",
    "DaGRPO": "dagrpo",
    "ProGRPO": "progrpo",
}
BASE = "base model"
REFERENCE = "GRPO"


def method_config(module: str, args, seed: int):
    from experiments.configs.diversity import get_config
    from jaxgrpo.evaluate import default_ks

    c = get_config(f"{module},{getattr(args, 'prompt', None) or 'question'}")
    c.seed = seed
    if args.steps is not None:
        c.steps = args.steps
    if args.eval_every is not None:
        c.eval.every = args.eval_every
    if args.eval_prompts is not None:
        c.eval.num_prompts = args.eval_prompts
        c.data.eval_size = max(c.data.eval_size, args.eval_prompts)
    if args.num_samples is not None:
        c.eval.num_samples = args.num_samples
    c.eval.ks = ",".join(str(k) for k in default_ks(c.eval.num_samples))
    c.checkpoint.every = c.eval.every  # a checkpoint at every evaluation: resume loses no eval
    c.log.progress = not args.quiet
    c.run_dir = os.path.join(args.out, f"{module}-seed{seed}")
    if args.random_init_layers:
        c.model.random_init_layers = args.random_init_layers
        c.eval.embed_correct = False  # plumbing runs: skip loading the encoder
    return c


# What a run's step-0 evaluation depends on: runs of different methods that agree on these
# (the diversity config sets them identically) evaluate the same base model on the same prompts
# with the same key, so the base model is evaluated once per seed and shared.
BASE_EVAL_KEYS = ("seed", "model", "data", "sampling", "eval")


def _eval_settings(cfg: dict) -> dict:
    out = {k: cfg.get(k) for k in BASE_EVAL_KEYS}
    out["eval"] = {k: v for k, v in (out["eval"] or {}).items()
                   if k not in ("before_training", "every")}
    return json.loads(json.dumps(out))


def base_source(out: str, c) -> "str | None":
    """The run directory in ``out`` (another method, same seed) holding a step-0 evaluation that
    ``c``'s would repeat exactly (``BASE_EVAL_KEYS`` equal), or None."""
    mine = _eval_settings(json.loads(c.to_json_best_effort()))
    for module in METHODS.values():
        d = os.path.join(out, f"{module}-seed{c.seed}")
        cfg = os.path.join(d, "config.json")
        if os.path.abspath(d) == os.path.abspath(c.run_dir) or not os.path.isfile(cfg):
            continue
        with open(cfg) as f:
            saved = json.load(f)
        if _eval_settings(saved) == mine and 0 in read_evals(d):
            return d
    return None


def share_base_eval(out: str, c) -> "str | None":
    """Sets ``c.eval.before_training``: False when another run in ``out`` already evaluated this
    seed's base model (returned), True otherwise; a run already started keeps its own choice
    (so a resume does not change it)."""
    cfg = os.path.join(c.run_dir, "config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            c.eval.before_training = json.load(f).get("eval", {}).get("before_training", True)
        return None if c.eval.before_training else base_source(out, c)
    src = base_source(out, c)
    c.eval.before_training = src is None
    return src


def read_evals(run_dir: str) -> Dict[int, dict]:
    """step -> eval metrics from ``metrics.jsonl`` (a step evaluated twice, e.g. after a resume,
    keeps its last record)."""
    evals = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                evals[int(rec["step"])] = rec
    return evals


def _add_wall(run_dir: str, seconds: float) -> float:
    """Accumulates this sitting's wall time into ``<run_dir>/wall.json``; returns the total."""
    path = os.path.join(run_dir, "wall.json")
    total = seconds
    if os.path.exists(path):
        with open(path) as f:
            total += json.load(f)["seconds"]
    with open(path, "w") as f:
        json.dump({"seconds": total}, f)
    return total


def _wall(run_dir: str):
    path = os.path.join(run_dir, "wall.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["seconds"]


# ----------------------------------------------------------------------------- final evaluation
# The training curves use the evaluation size the runs were given (e.g. 32 prompts x 16
# samples, to keep evaluations cheap during training); the final evaluation measures each
# finished run's last checkpoint, and the base model, once at the config's full size (64 x 32:
# pass@k up to k = 32). Stored per run, so it is computed once and reused by every sitting.


def final_eval_path(run_dir: str, num_prompts: int, num_samples: int) -> str:
    return os.path.join(run_dir, f"final_eval_{num_prompts}x{num_samples}.json")


def base_eval_dir(out: str, seed: int) -> str:
    """Where the base model's final evaluation of ``seed`` is stored (one per seed)."""
    return os.path.join(out, f"base-seed{seed}")


def final_evaluation(run_dir: str, num_prompts: int, num_samples: int, *, base: bool = False,
                     log=print) -> dict:
    """Evaluates the finished run ``run_dir``'s last checkpoint (``base=True``: the base model
    of its config instead) exactly as the trainer's own evaluation does (the run's held-out
    rows, scorer, prompt rendering, temperature, ``max_new_tokens``, encoder and evaluation key
    ``key(seed + 1)``) on the first ``num_prompts`` held-out rows with ``num_samples`` samples,
    ks 1, 2, 4, ..., n. With the run's own evaluation size it reproduces the run's evaluation of
    that step (tests/experiments/test_diversity.py). Returns {"step", "seconds", "metrics", "records"}."""
    from flax import nnx

    from jaxgrpo.env import build_env
    from jaxgrpo.evaluate import evaluate_policy, run_eval_kwargs
    from jaxgrpo.models.policy import eos_ids, load_policy, pad_id
    from jaxgrpo.policy_io import checkpoint_steps, load_run_config, load_run_policy

    c = load_run_config(run_dir)
    if base:
        step = 0
        model, tok = load_policy(c)
    else:
        step = checkpoint_steps(run_dir)[-1]
        model, tok, c = load_run_policy(run_dir, step)
    eos = eos_ids(model, tok)
    env = build_env(c, tok, eos[0] if eos else pad_id(tok))  # as the trainer builds it
    try:
        rows = env.eval_rows[:num_prompts]
        if len(rows) < num_prompts:
            raise SystemExit(f"{run_dir}: --final_prompts {num_prompts} is more than the run's "
                             f"{len(env.eval_rows)} held-out rows (config.data.eval_size)")
        encoder = None
        if c.eval.embed_correct:
            from jaxgrpo.models.encoder import shared_encoder
            encoder = shared_encoder(c.embedding.encoder_path)
        log(f"[diversity] final evaluation of {'the base model of ' if base else ''}{run_dir}"
            f"{'' if base else f' step {step}'}: {num_prompts} prompts x {num_samples} samples")
        graphdef, state = nnx.split(model)
        t0 = time.time()
        res = evaluate_policy(graphdef, state, tok, rows, env.score, eos_token_ids=eos,
                              pad_token_id=pad_id(tok), encoder=encoder,
                              **run_eval_kwargs(c, num_samples=num_samples))
    finally:
        env.close()
    return {"step": step, "seconds": time.time() - t0, "metrics": res["metrics"],
            "records": res["records"]}


def final_eval_or_reuse(run_dir: str, num_prompts: int, num_samples: int, *, base_dir=None,
                        log=print) -> dict:
    """The stored final evaluation of ``run_dir`` (or, with ``base_dir``, of its base model,
    stored in ``base_dir``); computed and stored first when missing. Returns the stored dict
    ({"step", "seconds", "source", "metrics"}; the per-prompt records go to a .jsonl beside)."""
    dest = base_dir or run_dir
    stored = read_final(dest, num_prompts, num_samples)
    if stored is not None:
        return stored
    path = final_eval_path(dest, num_prompts, num_samples)
    res = final_evaluation(run_dir, num_prompts, num_samples, base=base_dir is not None, log=log)
    os.makedirs(dest, exist_ok=True)
    with open(path[:-len(".json")] + ".jsonl", "w") as f:
        for rec in res.pop("records"):
            f.write(json.dumps(rec) + "\n")
    res["source"] = os.path.abspath(run_dir)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, path)  # a file that exists is complete
    return res


def read_final(run_dir: str, num_prompts: int, num_samples: int):
    path = final_eval_path(run_dir, num_prompts, num_samples)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def fmt(values, digits: int = 3) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.{digits}f}"


def t_interval(diffs, level: float = 0.95):
    """(mean, lo, hi) of the mean of paired differences, Student t over seeds; NaN bounds
    with fewer than two seeds."""
    from scipy import stats

    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        return np.nan, np.nan, np.nan
    m = float(d.mean())
    if d.size < 2:
        return m, np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return m, m - half, m + half


def _fmt_diff(diffs) -> str:
    m, lo, hi = t_interval(diffs)
    if not np.isfinite(m):
        return "–"
    if not np.isfinite(lo):
        return f"{m:+.3f} (1 seed)"
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def build_table(results: Dict[str, Dict[int, dict]], final_step: Dict[str, Dict[int, int]],
                ks: List[int], args, seeds: List[int]) -> str:
    """Markdown: mean ± std over seeds, then method - GRPO differences with t-intervals.

    ``results[method][seed]`` is that run's final eval dict (``BASE``: step-0 evals)."""
    kmax = max(ks)
    cols = ([f"pass@{k}" for k in ks if k in (1, 4, kmax)]
            + ["distinct_correct_answers", "distinct_correct_solved", "top_correct_share",
               "pairwise_cosine_distance_correct", "mean_entropy"])
    names = {"distinct_correct_answers": "distinct correct",
             "distinct_correct_solved": "distinct correct (solved)",
             "top_correct_share": "top solution share",
             "pairwise_cosine_distance_correct": "pairwise cos. dist.",
             "mean_entropy": "entropy (nats)"}
    steps = sorted({s for per in final_step.values() for s in per.values()})
    n_runs = {m: len(r) for m, r in results.items() if m != BASE}
    lines = [f"Held-out evaluation on `{args.task}` ({args.describe}); final step "
             f"{steps}; mean ± std over seeds {seeds}; finished runs per method: {n_runs}.", "",
             "| method | " + " | ".join(names.get(c, c) for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for m, runs in results.items():
        lines.append(f"| {m} | " + " | ".join(fmt([r.get(c) for r in runs.values()])
                                              for c in cols) + " |")
    diff_cols = ["pass@1", f"pass@{kmax}", "distinct_correct_answers"]
    lines += ["", f"Difference from {REFERENCE} (method - {REFERENCE}, paired by seed: same "
              "held-out prompts and evaluation key), mean and 95% t-interval over seeds:", "",
              "| method | " + " | ".join(names.get(c, c) for c in diff_cols) + " |",
              "|---" * (len(diff_cols) + 1) + "|"]
    ref = results.get(REFERENCE, {})
    for m, runs in results.items():
        if m == REFERENCE:
            continue
        common = sorted(set(runs) & set(ref))
        cells = [_fmt_diff([runs[s][c] - ref[s][c] for s in common
                            if runs[s].get(c) is not None and ref[s].get(c) is not None])
                 for c in diff_cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_results(curves, paths, methods, seeds) -> Dict[str, List[str]]:
    """Adds to ``curves`` (method -> seed -> step -> eval, in place) the runs of earlier
    ``diversity.json`` files that ``curves`` lacks, among ``methods`` x ``seeds``; returns
    {path: ["method seed N", ...]} of what was taken. A merged file may hold only some steps or
    metrics (e.g. a table's final-step values): what is missing is left out of the means."""
    taken: Dict[str, List[str]] = {}
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"--merge: no such file {path}")
        with open(path) as f:
            data = json.load(f)
        for m, runs in data.items():
            if m.startswith("_") or m not in methods:
                continue
            for s, ev in runs.items():
                if int(s) in seeds and int(s) not in curves.get(m, {}):
                    curves.setdefault(m, {})[int(s)] = {int(st): e for st, e in ev.items()}
                    taken.setdefault(path, []).append(f"{m} seed {s}")
    return taken


def collect_final(out: str, finished: Dict[tuple, str], size, compute: bool):
    """method -> seed -> final-evaluation metrics (plus ``step``) of the finished runs, and
    ``BASE`` -> seed -> the base model's; ``compute``: evaluate (and store) what is missing,
    else only read what is stored."""
    final: Dict[str, Dict[int, dict]] = {}
    for (name, seed), run_dir in finished.items():
        base_dir = base_eval_dir(out, seed)
        for key, kw in ((name, {}), (BASE, {"base_dir": base_dir})):
            if seed in final.get(key, {}):
                continue
            res = (final_eval_or_reuse(run_dir, *size, **kw) if compute
                   else read_final(kw.get("base_dir", run_dir), *size))
            if res is not None:
                final.setdefault(key, {})[seed] = {"step": res["step"], **res["metrics"]}
    return final


def merge_final(final, paths, size, methods, seeds) -> Dict[str, List[str]]:
    """As ``merge_results`` for the final evaluations of this size (``diversity.json``'s
    ``_final``) in ``paths``: added where ``final`` has none."""
    taken: Dict[str, List[str]] = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f).get("_final", {}).get("%dx%d" % tuple(size), {})
        for m, runs in data.items():
            if m != BASE and m not in methods:
                continue
            for s, e in runs.items():
                if int(s) in seeds and int(s) not in final.get(m, {}):
                    final.setdefault(m, {})[int(s)] = e
                    taken.setdefault(path, []).append(f"{m} seed {s}")
    return taken


def _final_ks(final) -> List[int]:
    return sorted({int(k.split("@")[1]) for runs in final.values() for e in runs.values()
                   for k in e if k.startswith("pass@")})


def final_table(final, size, args, seeds) -> str:
    """``build_table`` of the final evaluations (``BASE`` first)."""
    class _A:
        task = args.task
        describe = (f"final evaluation of each run's last checkpoint: {size[0]} prompts × "
                    f"{size[1]} samples at temperature 1")
    ordered = {BASE: final[BASE], **{m: r for m, r in final.items() if m != BASE}}
    steps = {m: {s: e["step"] for s, e in r.items()} for m, r in ordered.items() if m != BASE}
    return build_table(ordered, steps, _final_ks(final), _A, seeds)


def plot_passk(results, ks, path, title="pass@k on the held-out prompts (mean ± std over seeds)"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, runs in results.items():
        curves = np.array([[r.get(f"pass@{k}", np.nan) for k in ks] for r in runs.values()])
        # the k every seed recorded (a merged table's run may lack some): the mean is over the
        # same seeds at every plotted k
        ok = np.isfinite(curves).all(0)
        mean = np.where(ok, curves, 0.0).mean(0)
        sd = np.where(ok, curves, 0.0).std(0, ddof=1) if len(curves) > 1 else None
        x = np.asarray(ks)[ok]
        (line,) = ax.plot(x, mean[ok], marker="o", label=m, linestyle="--" if m == BASE else "-",
                          color="black" if m == BASE else None)
        if sd is not None:  # the band in its line's colour
            band = sd[ok]
            ax.fill_between(x, mean[ok] - band, mean[ok] + band, alpha=0.12,
                            color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: Dict[str, Dict[int, Dict[int, dict]]], path):
    """pass@1, distinct correct and entropy vs step; ``curves[method][seed][step]``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("pass@1", "pass@1"), ("distinct_correct_answers", "distinct correct / prompt"),
            ("mean_entropy", "token entropy (nats)"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for m, runs in curves.items():
        # the mean over the steps every seed evaluated (a merged table's run may have its final
        # step only); each seed's own curve, all its steps, thin in the same colour
        steps = sorted(set.intersection(*(set(r) for r in runs.values())))
        for ax, (key, title) in zip(axes, keys):
            vals = np.array([[runs[s][st].get(key, np.nan) for st in steps] for s in runs])
            (line,) = ax.plot(steps, vals.mean(0), marker=".", label=m)
            if len(runs) > 1:
                for r in runs.values():
                    own = sorted(st for st in r if key in r[st])
                    ax.plot(own, [r[st][key] for st in own], color=line.get_color(),
                            alpha=0.3, linewidth=0.8)
            ax.set_title(title)
            ax.set_xlabel("training step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.diversity",
                                description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="default: the config's")
    p.add_argument("--eval_every", type=int, default=None, help="default: the config's")
    p.add_argument("--eval_prompts", type=int, default=None, help="default: the config's (64)")
    p.add_argument("--num_samples", type=int, default=None, help="n per prompt (default 32)")
    p.add_argument("--random_init_layers", type=int, default=0,
                   help="a small random decoder (tests / plumbing only)")
    p.add_argument("--prompt", default="question",
                   help="the testbed prompt (experiments/configs/diversity.py PROMPTS): "
                        "'question' (the question alone) or 'prefill' (the assistant's turn "
                        "begun with 'The number is', 8 new tokens)")
    p.add_argument("--out", default="runs/diversity")
    p.add_argument("--quick", action="store_true",
                   help="smoke: 2 steps, eval every step, 1 seed, 8 prompts x 4 samples")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="no training: table and plots from the finished runs in --out")
    p.add_argument("--merge", default="",
                   help="comma-separated diversity.json files of earlier sittings (another "
                        "machine's --out): their (method, seed) runs join the table where --out "
                        "has none; --methods and --seeds select among them too")
    p.add_argument("--final_eval", action="store_true",
                   help="evaluate every finished run's last checkpoint and each seed's base "
                        "model once more at the full size (--final_prompts x --final_samples; "
                        "stored in the run, reused): a second table and passk_final.png")
    p.add_argument("--final_prompts", type=int, default=None,
                   help="held-out prompts of the final evaluation (default: the config's, 64)")
    p.add_argument("--final_samples", type=int, default=None,
                   help="samples per prompt of the final evaluation (default: the config's, 32)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.seeds = 2, 1, "0"
        args.eval_prompts, args.num_samples = 8, 4
    methods, seeds = parse_runs(p, args, METHODS)
    from experiments.configs.diversity import PROMPTS, get_config
    if args.prompt not in PROMPTS:
        raise SystemExit(f"--prompt: unknown {args.prompt!r}; choose from {tuple(PROMPTS)}")
    full = get_config(METHODS[REFERENCE]).eval
    final_size = (args.final_prompts or full.num_prompts, args.final_samples or full.num_samples)
    if min(final_size) < 1:
        raise SystemExit(f"--final_prompts / --final_samples must be >= 1, got {final_size}")

    curves: Dict[str, Dict[int, Dict[int, dict]]] = {}  # method -> seed -> step -> eval
    walls = {}
    finished: Dict[tuple, str] = {}  # (method, seed) -> run directory
    t_all = time.time()
    for name in methods:
        for seed in seeds:
            c = method_config(METHODS[name], args, seed)
            base_dir = share_base_eval(args.out, c)
            t0 = time.time()
            trained = not os.path.exists(os.path.join(c.run_dir, "summary.json"))
            if run_or_reuse(c, report=args.report, resume=True,
                            label=f"{name} seed {seed}") is None:
                continue
            walls[(name, seed)] = (_add_wall(c.run_dir, time.time() - t0) if trained
                                   else _wall(c.run_dir))
            ev = read_evals(c.run_dir)
            if 0 not in ev:  # its base model was evaluated by another method's run
                if base_dir is None:
                    raise SystemExit(f"{c.run_dir}: no step-0 evaluation, and no other run of "
                                     f"seed {seed} in {args.out} with the same settings has one")
                ev = {0: read_evals(base_dir)[0], **ev}
            curves.setdefault(name, {})[seed] = ev
            finished[(name, seed)] = c.run_dir
            last = max(ev)
            print(f"{name} seed {seed}: pass@1 {ev[0]['pass@1']:.3f} -> {ev[last]['pass@1']:.3f}"
                  f", distinct correct {ev[0]['distinct_correct_answers']:.2f} -> "
                  f"{ev[last]['distinct_correct_answers']:.2f} (step {last})")
    merge_files = [f for f in args.merge.split(",") if f]
    merged = merge_results(curves, merge_files, methods, seeds)
    final = collect_final(args.out, finished, final_size, compute=args.final_eval and not args.report)
    merged_final = merge_final(final, merge_files, final_size, methods, seeds)
    if not curves:
        print("no finished runs: nothing to report")
        return None

    results: Dict[str, Dict[int, dict]] = {BASE: {}}
    final_step: Dict[str, Dict[int, int]] = {}
    for name, runs in curves.items():
        results[name] = {}
        for seed, ev in runs.items():
            results[name][seed] = ev[max(ev)]
            final_step.setdefault(name, {})[seed] = max(ev)
            results[BASE].setdefault(seed, ev[0])  # step 0 is the base model, any method
    any_eval = next(iter(results[BASE].values()))
    ks = sorted({int(k.split("@")[1]) for e in results[BASE].values() for k in e
                 if k.startswith("pass@")})
    args.task = c.data.task + ("" if args.prompt == "question" else f"`, prompt `{args.prompt}")
    args.describe = (f"{any_eval['num_prompts']} prompts × {any_eval['num_samples']} samples "
                     f"at temperature 1")
    table = build_table(results, final_step, ks, args,
                        sorted({s for runs in curves.values() for s in runs}))
    known = [w for w in walls.values() if w is not None]
    if known:
        table += (f"\nWall time: {sum(known):.0f} s over {len(known)} runs (training + "
                  f"evaluations, summed over sittings); this invocation "
                  f"{time.time() - t_all:.0f} s.\n")
    else:  # every run came from --merge: their run directories (and wall times) are elsewhere
        table += "\nWall time: not recorded here (no run directory in --out).\n"
    for path, runs in merged.items():
        table += f"Merged from {path}: {runs}.\n"
    has_final = bool(final.get(BASE)) and len(final) > 1  # the base and >= 1 method
    if has_final:
        table += "\n" + final_table(final, final_size, args, sorted(final[BASE]))
        for path, runs in merged_final.items():
            table += f"Final evaluations merged from {path}: {runs}.\n"
    with open(os.path.join(args.out, "diversity.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "diversity.json"), "w") as f:
        data = {m: {str(s): {str(st): e for st, e in ev.items()} for s, ev in runs.items()}
                for m, runs in curves.items()}
        if final:
            data["_final"] = {"%dx%d" % final_size: {
                m: {str(s): e for s, e in runs.items()} for m, runs in final.items()}}
        json.dump(data, f)
    print(table)
    plot_passk(results, ks, os.path.join(args.out, "passk.png"))
    plot_curves(curves, os.path.join(args.out, "curves.png"))
    if has_final:
        plot_passk(final, _final_ks(final), os.path.join(args.out, "passk_final.png"),
                   title=f"pass@k, final checkpoints, {final_size[0]} prompts x {final_size[1]} "
                         "samples")
    return {"table": table, "results": results, "curves": curves, "final": final}
