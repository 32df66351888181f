r"""Evaluate a policy: a trained run's checkpoint or a pretrained model, on held-out rows or on
local benchmark files.

    # a trained checkpoint (latest, or --step N) on the run's own held-out rows, scored by the
    # run's Env (reasoning-gym verifier or math-verify), with the run's eval settings:
    python -m experiments.evaluate --run_dir runs/X [--step N]

    # a model (HF directory or .gguf) or a run on benchmark files, scored with math-verify:
    python -m experiments.evaluate --model /path/to/hf_dir_or.gguf \
        --benchmark math500=/data/math500.jsonl --benchmark aime24=/data/aime24.jsonl \
        --num_samples 4 --ks 1,4 --max_new_tokens 1024 --temperature 0.6 --top_p 0.95 \
        --template chat --out results.json

Benchmark files are JSON / JSONL / Parquet / CSV with a question and an answer column
(``--question_field`` / ``--answer_field``, or per benchmark ``--fields NAME=QFIELD,AFIELD``).
A gold that is a worked solution is reduced to its last ``\boxed{}`` before math-verify compares
it with the completion's extracted final answer (``jaxgrpo.rewards.MathVerifier``, ``"answer"``
mode, extraction precedence ``--answer_sources``). Nothing is downloaded.

Outputs: a Markdown table on stdout (benchmark x accuracy / pass@k / maj@k / mean length, in %
except lengths), ``--out`` JSON (settings + the metrics of every benchmark), ``<out>.md`` (the
table) and ``<out stem>.samples.jsonl`` (one record per prompt: its samples, extracted answers,
correctness, lengths, tagged with the benchmark). Default ``--out``: ``<run_dir>/eval/step<N>.json``
for a run, ``eval_results.json`` otherwise.

Defaults: with ``--run_dir`` every sampling / prompt setting comes from the run's config, as the
trainer's own evaluation uses it (eval.num_samples, eval.ks, eval.temperature,
sampling.max_new_tokens, data.template / prompt_format / system_prompt / max_prompt_tokens,
rewards.answer_sources, seed + 1; top_p 1), so a run's final evaluation is reproduced exactly;
flags override. With ``--model``: 1 sample, temperature 0.6, top_p 0.95, 1024 new tokens, the
chat template, prompt "{question}". Errors (missing run / file, bad --ks, ...) exit with one line
naming the problem.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from experiments._entry import main_entry


class EvalError(Exception):
    """A user error: reported as one line, no traceback."""


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass
class EvalSettings:
    """Sampling and prompt settings of one evaluation (all benchmarks share them)."""

    num_samples: int = 1
    ks: Tuple[int, ...] = (1,)
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    greedy: bool = False
    template: str = "chat"
    prompt_format: str = "{question}"
    system_prompt: str = ""
    max_prompt_tokens: int = 512
    batch_prompts: int = 16
    seed: int = 0
    compute_entropy: bool = True
    answer_sources: Tuple[str, ...] = ("answer_tag", "boxed", "hash")
    verifier_workers: int = 2
    item_timeout_s: float = 5.0


def check_sampling_flags(max_new_tokens: int, temperature: float, top_p: float,
                         top_k: int = 0) -> None:
    """EvalError naming the flag when ``jaxgrpo.sampling.SamplingConfig`` (the one place the
    sampling settings are checked) refuses these values."""
    from jaxgrpo.sampling import SamplingConfig
    try:
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       top_k=top_k)
    except ValueError as e:
        raise EvalError(f"--{e}") from None


def parse_ks(text: str, num_samples: int) -> Tuple[int, ...]:
    """``"1,4"`` -> (1, 4); every k an integer in [1, num_samples]."""
    try:
        ks = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise EvalError(f"--ks {text!r}: expected comma-separated integers, e.g. --ks 1,4") from None
    if not ks:
        raise EvalError(f"--ks {text!r}: give at least one k, e.g. --ks 1")
    bad = [k for k in ks if not 1 <= k <= num_samples]
    if bad:
        raise EvalError(f"--ks {text!r}: each k must be in [1, --num_samples={num_samples}]; "
                        f"bad: {bad}")
    return tuple(sorted(set(ks)))


def parse_benchmarks(specs: Sequence[str]) -> Dict[str, str]:
    """``["math500=/d/m.jsonl", ...]`` -> {name: path}; names unique, files must exist."""
    out: Dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise EvalError(f"--benchmark {spec!r}: expected NAME=PATH, e.g. "
                            "--benchmark math500=/data/math500.jsonl")
        if name in out:
            raise EvalError(f"--benchmark {name!r} given twice")
        if not os.path.isfile(path):
            raise EvalError(f"benchmark file not found: {path} (--benchmark {name})")
        out[name] = path
    return out


def parse_fields(specs: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """``["minerva=problem,solution"]`` -> {name: (question_field, answer_field)}."""
    out = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        parts = [p.strip() for p in rest.split(",")]
        if not sep or not name.strip() or len(parts) != 2 or not all(parts):
            raise EvalError(f"--fields {spec!r}: expected NAME=QUESTION_FIELD,ANSWER_FIELD")
        out[name.strip()] = (parts[0], parts[1])
    return out


# ----------------------------------------------------------------------------- the policy


@dataclasses.dataclass
class Policy:
    """A policy ready for ``jaxgrpo.evaluate.evaluate_policy``."""

    graphdef: Any
    state: Any
    tokenizer: Any
    eos_ids: Tuple[int, ...]
    pad_id: int
    source: str  # the model path or run directory
    step: Optional[int] = None  # the checkpoint step (runs only)
    config: Any = None  # the run's ConfigDict (runs only)


def _mesh_or_none():
    """FSDP over all devices when there are several (a 1.5B model on a GPU host), else None."""
    import jax

    if jax.device_count() == 1:
        return None
    from jaxgrpo import sharding as shd
    return shd.make_mesh(1, -1, 1)


def load_eval_policy(*, model: Optional[str] = None, run_dir: Optional[str] = None,
                     step: Optional[int] = None, dtype: str = "float32",
                     run_model_path: Optional[str] = None) -> Policy:
    """The policy of a run directory (checkpoint ``step``, default latest; ``run_model_path``
    replaces its config's model.path) or a model path."""
    from flax import nnx

    from jaxgrpo.models import eos_ids, pad_id

    mesh = _mesh_or_none()
    if run_dir is not None:
        from jaxgrpo.checkpoint import CheckpointError
        from jaxgrpo.policy_io import checkpoint_steps, load_run_policy
        try:
            m, tok, config = load_run_policy(run_dir, step, mesh=mesh, model_path=run_model_path)
        except (FileNotFoundError, CheckpointError, ValueError) as e:
            raise EvalError(str(e).splitlines()[0]) from e
        step = checkpoint_steps(run_dir)[-1] if step is None else int(step)
        source = os.path.abspath(run_dir)
    else:
        import jax.numpy as jnp

        from jaxgrpo.models import load_pretrained
        if not os.path.exists(model):
            raise EvalError(f"model not found: {model} (--model: an HF checkpoint directory or "
                            "a .gguf file)")
        try:
            m, tok = load_pretrained(model, dtype=jnp.bfloat16 if dtype == "bfloat16"
                                     else jnp.float32)
        except (OSError, ValueError) as e:
            raise EvalError(f"could not load --model {model}: {str(e).splitlines()[0]}") from e
        if mesh is not None:
            from jaxgrpo import sharding as shd
            m = shd.shard_model(m, mesh)
        config, source = None, os.path.abspath(model)
    graphdef, state = nnx.split(m)
    return Policy(graphdef, state, tok, eos_ids(m, tok), pad_id(tok), source, step, config)


def settings_for(policy: Policy, args) -> EvalSettings:
    """EvalSettings: the run's eval settings (runs) or the model defaults, then the flags."""
    from jaxgrpo.experiment import split_names

    s = EvalSettings()
    c = policy.config
    if c is not None:
        from jaxgrpo.evaluate import run_eval_settings
        s = EvalSettings(
            **run_eval_settings(c), top_p=1.0, top_k=0,
            answer_sources=split_names(c.rewards.answer_sources),
            verifier_workers=c.rewards.verifier_workers, item_timeout_s=c.rewards.item_timeout_s)
    for name in ("num_samples", "max_new_tokens", "temperature", "top_p", "top_k", "template",
                 "prompt_format", "system_prompt", "max_prompt_tokens", "batch_prompts", "seed",
                 "verifier_workers", "item_timeout_s"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    if args.greedy:
        s.greedy = True
    if args.no_entropy:
        s.compute_entropy = False
    if args.answer_sources is not None:
        s.answer_sources = split_names(args.answer_sources)
    if s.num_samples < 1:
        raise EvalError(f"--num_samples must be >= 1, got {s.num_samples}")
    check_sampling_flags(s.max_new_tokens, s.temperature, s.top_p, s.top_k)
    if s.template not in ("chat", "plain"):
        raise EvalError(f"--template must be 'chat' or 'plain', got {s.template!r}")
    if args.ks is not None:
        s.ks = parse_ks(args.ks, s.num_samples)
    elif c is None or any(k > s.num_samples for k in s.ks):
        from jaxgrpo.evaluate import default_ks
        s.ks = default_ks(s.num_samples)
    from jaxgrpo.rewards.extract import extract_answer
    try:
        extract_answer("", s.answer_sources)
    except ValueError as e:
        raise EvalError(f"--answer_sources: {e}") from None
    return s


# ----------------------------------------------------------------------------- scoring


def gold_answer(gold: str) -> str:
    r"""The answer to compare against: the last ``\boxed{}`` of a worked solution (MATH-500's or
    Minerva's ``solution``), else the gold as it is."""
    from jaxgrpo.rewards.extract import extract_boxed

    boxed = extract_boxed(gold) if "\\boxed" in gold or "\\fbox" in gold else None
    return boxed if boxed else gold


def math_score_fn(verifier, sources: Sequence[str]) -> Callable:
    """``score_fn(texts, rows) -> (correct bool [N], answers)`` with math-verify against each
    row's gold (``gold_answer(row["answer"])``)."""
    from jaxgrpo.rewards.extract import extract_answer

    def score(texts: List[str], rows: List[dict]):
        answers = [extract_answer(t, sources) for t in texts]
        golds = [gold_answer(str(r["answer"])) for r in rows]
        scores, _ = verifier.verify_batch(answers, golds, pre_extracted=True)
        return np.asarray(scores) >= 1.0, answers

    return score


def evaluate_rows(policy: Policy, rows: List[dict], score_fn: Callable, s: EvalSettings,
                  salt: int = 0) -> dict:
    """``jaxgrpo.evaluate.evaluate_policy`` with these settings; adds ``seconds``."""
    import jax

    from jaxgrpo.evaluate import evaluate_policy

    key = jax.random.key(s.seed)
    if salt:
        key = jax.random.fold_in(key, salt)
    t0 = time.perf_counter()
    res = evaluate_policy(
        policy.graphdef, policy.state, policy.tokenizer, rows, score_fn,
        num_samples=s.num_samples, key=key, ks=s.ks, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, greedy=s.greedy,
        eos_token_ids=policy.eos_ids, pad_token_id=policy.pad_id, template=s.template,
        prompt_format=s.prompt_format, system_prompt=s.system_prompt,
        max_prompt_tokens=s.max_prompt_tokens, batch_prompts=s.batch_prompts,
        compute_entropy=s.compute_entropy)
    res["metrics"]["seconds"] = time.perf_counter() - t0
    return res


def load_benchmark_files(benchmarks: Dict[str, str], *,
                         fields: Optional[Dict[str, Tuple[str, str]]] = None,
                         question_field: str = "problem", answer_field: str = "answer",
                         limit: Optional[int] = None) -> Dict[str, List[dict]]:
    """{name: rows} (``jaxgrpo.evaluate.load_benchmark``); ``fields[name]`` = (question, answer)
    columns of one benchmark, else the two defaults. A bad file raises EvalError (one line)."""
    from jaxgrpo.evaluate import load_benchmark

    fields = fields or {}
    loaded = {}
    for name, path in benchmarks.items():
        qf, af = fields.get(name, (question_field, answer_field))
        check_benchmark_file(name, path, qf, af)
        try:
            loaded[name] = load_benchmark(path, question_field=qf, answer_field=af, limit=limit)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(str(e).splitlines()[0]) from e
    return loaded


def check_benchmark_file(name: str, path: str, question_field: str, answer_field: str) -> None:
    """EvalError naming the benchmark, the file and the line of the first malformed row (the
    training data's own check, ``jaxgrpo.data.check_prompt_file``, in the flags' words)."""
    from jaxgrpo.data import check_prompt_file
    from jaxgrpo.errors import ConfigError

    try:
        check_prompt_file(path, question_field, answer_field, key="data.path")
    except ConfigError as e:
        msg = str(e).replace(f"config.data.path={path!r}", f"benchmark file {path} (--benchmark "
                             f"{name})")
        msg = msg.replace("set config.data.question_field", "use --question_field or --fields")
        msg = msg.replace("set config.data.answer_field", "use --answer_field or --fields")
        raise EvalError(msg) from None


def check_writable(out: str) -> None:
    """EvalError when the results cannot be written to ``out``'s directory -- checked before
    any model is loaded or evaluated (a read-only run directory would lose the evaluation)."""
    import tempfile

    d = os.path.dirname(os.path.abspath(out))
    probe = d
    while not os.path.isdir(probe):  # the nearest existing parent must let us create d
        probe = os.path.dirname(probe)
    try:
        os.makedirs(d, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".evaluate-probe-"):
            pass
    except OSError as e:
        raise EvalError(f"cannot write the results to {d} ({e.strerror or e}); pass a writable "
                        "--out") from None


def evaluate_benchmarks(policy: Policy, loaded: Dict[str, List[dict]], s: EvalSettings,
                        log=print) -> Dict[str, dict]:
    """{name: evaluate_rows result} for loaded benchmarks, scored with one math-verify pool.

    Benchmark i (0-based, in the given order) samples with the key ``fold_in(key(seed), i + 1)``:
    its samples depend on the seed and its position only.
    """
    from jaxgrpo.rewards.math_verify_pool import MathVerifier

    out = {}
    with MathVerifier(num_workers=s.verifier_workers, item_timeout_s=s.item_timeout_s,
                      sources=s.answer_sources) as verifier:
        score = math_score_fn(verifier, s.answer_sources)
        for i, (name, rows) in enumerate(loaded.items()):
            log(f"[evaluate] {name}: {len(rows)} problems x {s.num_samples} samples")
            out[name] = evaluate_rows(policy, rows, score, s, salt=i + 1)
    return out


def evaluate_held_out(policy: Policy, s: EvalSettings, limit: Optional[int] = None,
                      log=print) -> Dict[str, dict]:
    """The run's held-out rows (``Env.eval_rows[:eval.num_prompts]`` or ``[:limit]``), scored
    by the run's own ``Env`` (reasoning-gym verifier or math-verify); key ``key(seed)`` as the
    trainer's evaluation."""
    from jaxgrpo.env import build_env

    c = policy.config
    env = build_env(c)
    try:
        rows = env.eval_rows[: (limit or c.eval.num_prompts)]
        name = c.data.task if c.data.source == "reasoning_gym" else "held_out"
        log(f"[evaluate] {name} (held-out rows of the run): {len(rows)} problems x "
            f"{s.num_samples} samples")
        return {name: evaluate_rows(policy, rows, env.score, s)}
    finally:
        env.close()


# ----------------------------------------------------------------------------- reporting


def _pct(v) -> str:
    return "–" if v is None else f"{100.0 * v:.1f}"


def markdown_table(results: Dict[str, dict], ks: Sequence[int]) -> str:
    """benchmark x (prompts, accuracy, pass@k, maj@k, mean length, truncated) in %."""
    head = (["benchmark", "prompts", "samples", "accuracy"] + [f"pass@{k}" for k in ks]
            + [f"maj@{k}" for k in ks] + ["mean length", "truncated"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        m = res["metrics"]
        cells = ([name, str(m["num_prompts"]), str(m["num_samples"]), _pct(m["accuracy"])]
                 + [_pct(m.get(f"pass@{k}")) for k in ks] + [_pct(m.get(f"maj@{k}")) for k in ks]
                 + [f"{m['mean_length']:.1f}", _pct(m.get("truncated_frac"))])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _stem(path: str) -> str:
    return path[:-5] if path.endswith(".json") else path


def write_outputs(out: str, results: Dict[str, dict], header: dict, table: str) -> dict:
    """``out`` (JSON), ``<stem>.md`` (table), ``<stem>.samples.jsonl``; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = _stem(out)
    paths = {"json": out, "table": stem + ".md", "samples": stem + ".samples.jsonl"}
    doc = dict(header)
    doc["benchmarks"] = {name: res["metrics"] for name, res in results.items()}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    with open(paths["table"], "w", encoding="utf-8") as f:
        f.write(table)
    with open(paths["samples"], "w", encoding="utf-8") as f:
        for name, res in results.items():
            for rec in res["records"]:
                f.write(json.dumps({"benchmark": name, **rec}, ensure_ascii=False) + "\n")
    return paths


# ----------------------------------------------------------------------------- CLI


def add_policy_source_args(p: argparse.ArgumentParser) -> None:
    """--run_dir | --model, plus --step and --run_model_path (shared with the table scripts)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="a training run directory (config.json, checkpoints/)")
    src.add_argument("--model", help="an HF checkpoint directory or a .gguf file")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--run_model_path", default=None,
                   help="replace the run config's model.path (base weights / tokenizer moved)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate",
                                description="Evaluate a trained run or a model on benchmarks.")
    add_policy_source_args(p)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter dtype for --model (a run uses its config's)")
    p.add_argument("--benchmark", action="append", default=[], metavar="NAME=PATH",
                   help="a local benchmark file (repeatable); none with --run_dir = held-out rows")
    p.add_argument("--fields", action="append", default=[], metavar="NAME=QFIELD,AFIELD",
                   help="question / answer columns of one benchmark")
    p.add_argument("--question_field", default="problem")
    p.add_argument("--answer_field", default="answer")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--num_samples", type=int, default=None)
    p.add_argument("--ks", default=None, help="comma-separated k's for pass@k / maj@k")
    p.add_argument("--max_new_tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--template", default=None, help="chat | plain")
    p.add_argument("--prompt_format", default=None, help="e.g. '{question}\\nPut the answer in "
                   "\\\\boxed{{}}.'")
    p.add_argument("--system_prompt", default=None)
    p.add_argument("--max_prompt_tokens", type=int, default=None)
    p.add_argument("--batch_prompts", type=int, default=None)
    p.add_argument("--answer_sources", default=None, help="e.g. answer_tag,boxed,hash")
    p.add_argument("--verifier_workers", type=int, default=None)
    p.add_argument("--item_timeout_s", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no_entropy", action="store_true", help="skip the per-token entropy pass")
    p.add_argument("--out", default=None, help="results JSON path")
    return p


def run(args, log=print) -> dict:
    """Everything ``main`` does, raising EvalError; returns {"results", "table", "paths"}."""
    benchmarks = parse_benchmarks(args.benchmark)
    fields = parse_fields(args.fields)
    unknown = sorted(set(fields) - set(benchmarks))
    if unknown:
        raise EvalError(f"--fields for {unknown} but no --benchmark of that name")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    if args.step is not None and args.run_dir is None:
        raise EvalError("--step needs --run_dir")
    if args.run_dir is not None and not os.path.isdir(args.run_dir):
        raise EvalError(f"run directory not found: {args.run_dir}")
    if args.model is not None and not os.path.exists(args.model):
        raise EvalError(f"model not found: {args.model}")
    if args.ks is not None and args.num_samples is not None:
        parse_ks(args.ks, args.num_samples)  # fail before loading anything
    if args.model is not None and not benchmarks:
        raise EvalError("--model needs at least one --benchmark NAME=PATH")
    loaded = load_benchmark_files(benchmarks, fields=fields, question_field=args.question_field,
                                  answer_field=args.answer_field, limit=args.limit)

    if args.run_model_path is not None and args.run_dir is None:
        raise EvalError("--run_model_path needs --run_dir")
    out = args.out
    if out is None and not args.run_dir:
        out = "eval_results.json"
    if out is not None:
        check_writable(out)  # before anything is computed
    elif args.run_dir:
        check_writable(os.path.join(os.path.abspath(args.run_dir), "eval", "x.json"))
    policy = load_eval_policy(model=args.model, run_dir=args.run_dir, step=args.step,
                              dtype=args.dtype, run_model_path=args.run_model_path)
    s = settings_for(policy, args)
    if benchmarks:
        results = evaluate_benchmarks(policy, loaded, s, log=log)
    else:
        results = evaluate_held_out(policy, s, limit=args.limit, log=log)
    table = markdown_table(results, s.ks)
    if out is None:
        out = os.path.join(policy.source, "eval", f"step{policy.step}.json")
    header = {"source": policy.source, "kind": "run" if args.run_dir else "model",
              "step": policy.step, "settings": dataclasses.asdict(s),
              "benchmark_files": benchmarks}
    paths = write_outputs(out, results, header, table)
    return {"results": results, "table": table, "paths": paths, "settings": s, "policy": policy}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        res = run(args)
    except EvalError as e:
        sys.exit(f"evaluate: error: {e}")
    src = f"{res['policy'].source}" + (f" (step {res['policy'].step})"
                                       if res["policy"].step is not None else "")
    print(f"\n{src}\n\n{res['table']}")
    print(f"[evaluate] wrote {res['paths']['json']}, {res['paths']['table']}, "
          f"{res['paths']['samples']}")
    return res


EXIT_USAGE = 2  # a bad flag or input file, like experiments.run's config errors


def cli() -> int:
    """``main`` for the command line: a user error (EvalError) is one line on stderr and exit
    code 2, as ``python -m experiments.run`` does."""
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return EXIT_USAGE
        raise
    return 0


if __name__ == "__main__":
    main_entry(cli, exit_status=True)
