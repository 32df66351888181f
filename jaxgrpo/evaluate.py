"""Evaluation: pass@k, accuracy, maj@k, entropy and diversity of correct answers; a benchmark runner.

Metrics (METHODS.md §5):

* ``accuracy``: mean of the per-sample correctness, i.e. pass@1 averaged over samples and prompts.
* ``pass@k``: the unbiased estimator 1 - C(n - c, k) / C(n, k) of Chen et al. 2021
  (arXiv 2107.03374), from n >= k samples with c correct, averaged over prompts
  (``jaxgrpo.metrics.pass_at_k``, re-exported here).
* ``maj@k``: majority vote over the normalised final answers of the first k samples
  (``jaxgrpo.metrics.maj_at_k``): None answers do not vote, ties go to the answer seen first, the
  vote is correct when the first sample carrying the winning answer is correct, a prompt with no
  answer at all among the first k scores 0.
* ``mean_length``: mean completion length in tokens; ``mean_entropy``: mean over samples of the
  per-sample mean token entropy of the policy over the generated tokens.
* Diversity of correct answers: ``distinct_correct_answers`` (number of distinct normalised final
  answers among a prompt's correct samples, mean over all prompts: unsolved prompts count 0;
  ``jaxgrpo.metrics.distinct_correct``), ``distinct_correct_solved`` (the same, mean over the
  ``num_solved`` prompts with >= 1 correct sample only, so it does not move with accuracy
  alone; 0.0 when none is solved), ``top_correct_share`` (mean over solved prompts of the share
  of correct samples carrying the prompt's most frequent correct answer: 1.0 = collapse onto one
  mode; ``jaxgrpo.metrics.top_correct_share``; 0.0 when none is solved) and
  ``pairwise_cosine_distance_correct`` (mean 1 - cos between embeddings of a prompt's correct
  completions, averaged over the ``pairwise_cosine_prompts`` prompts with >= 2 correct; 0.0 when
  there are none, so check the count).

Pieces:

* ``summarize``: the metrics from host arrays of one evaluation ([P, n] per prompt and sample).
* ``evaluate_policy``: sample n completions per prompt with the jitted sampler in fixed-shape
  prompt batches, decode, score with a user ``score_fn``, optionally compute entropies and
  sentence embeddings, then ``summarize``; also returns per-prompt records (``write_jsonl``).
* ``run_eval_settings`` / ``run_eval_kwargs``: the evaluation settings a run config implies
  (the trainer's periodic evaluation, ``experiments.evaluate --run_dir`` and
  ``experiments.diversity``'s final evaluation all use them, so they sample the same
  completions).
* ``load_benchmark``: rows ``{"question", "answer", "metadata"}`` from a local JSON / JSONL /
  Parquet benchmark file (MATH-500, AIME, AMC, ... shapes), with errors that name the file.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrpo import config
from jaxgrpo import sharding as shd
from jaxgrpo import executables
from jaxgrpo.data import decode_completions, encode_rows, split_names
from jaxgrpo.logprobs import completion_logprobs
from jaxgrpo.metrics import (distinct_correct, maj_at_k_mean, mean_pairwise_cosine_distance,
                             pass_at_k, top_correct_share)
from jaxgrpo.sampling import SamplingConfig, make_sampler

__all__ = ["EvalConfig", "pass_at_k", "normalize_answer", "default_ks", "summarize",
           "evaluate_policy", "write_jsonl", "load_benchmark"]

ScoreFn = Callable[[List[str], List[dict]], Tuple[np.ndarray, List[Optional[str]]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig(config.Section):
    """Held-out evaluation (pass@k, maj@k, accuracy) before, during and after training.

    The ``config.eval`` section (the trainer's evaluations; :func:`run_eval_settings`).
    """

    NAME: ClassVar[str] = "eval"
    every: int = config.key(
        0, 'held-out evaluation every this many steps; 0 = only before and after training', ge=0)
    before_training: bool = config.key(
        True,
        'Evaluate the initial policy (step 0) of a fresh run. False skips it, e.g. when runs that'
        ' share the model, data, seed and eval settings take their step-0 numbers from one of '
        'them (experiments/diversity/testbed.py).')
    num_prompts: int = config.key(
        32, 'held-out prompts evaluated (at most the held-out rows)', ge=1)
    num_samples: int = config.key(4, 'n per prompt (pass@k needs n >= k)', ge=1)
    temperature: float = config.key(1.0, 'sampling temperature of the evaluation', gt=0)
    ks: str = config.key(
        '1,4', 'comma-separated k of pass@k / maj@k, each in [1, eval.num_samples]')
    embed_correct: bool = config.key(
        False,
        'Embed the correct held-out completions with the sentence encoder '
        '(embedding.encoder_path) to report pairwise_cosine_distance_correct at every evaluation.')

    @property
    def parsed_ks(self) -> Tuple[int, ...]:
        """``ks`` as a tuple of ints; ConfigError naming the key for a bad entry."""
        out = []
        for k in split_names(self.ks):
            try:
                out.append(int(k))
            except ValueError:
                config.fail("eval.ks", self.ks, f"{k!r} is not an integer (write e.g. '1,4')")
        if not out:
            config.fail("eval.ks", self.ks, "needs at least one k, e.g. '1,4'")
        return tuple(out)

    def __post_init__(self):
        ks = self.parsed_ks
        if any(k < 1 or k > self.num_samples for k in ks):
            config.fail("eval.ks", self.ks, f"each k must be in [1, eval.num_samples="
                                            f"{self.num_samples}]")


# --------------------------------------------------------------------------- metrics

_WS_RE = re.compile(r"\s+")


def normalize_answer(answer: Optional[str]) -> Optional[str]:
    """A canonical string for comparing extracted final answers (maj@k, distinct answers).

    Strips surrounding ``$`` math delimiters, a trailing period, and all whitespace
    (``"x = 5"`` and ``"$x=5$."`` both become ``"x=5"``); case is kept. None, or a string that is
    empty after normalisation, gives None (no answer). Not a semantic equivalence check: ``0.5``
    and ``\\frac{1}{2}`` stay distinct.
    """
    if answer is None:
        return None
    s = _WS_RE.sub("", str(answer)).rstrip(".")
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].rstrip(".")
    return s or None


def default_ks(n: int) -> Tuple[int, ...]:
    """The k's reported by default for n samples: powers of two up to n, and n itself."""
    ks = [k for k in (2 ** i for i in range(n.bit_length())) if k <= n]
    return tuple(sorted(set(ks + [n])))


def _check_ks(ks: Sequence[int], n: int) -> Tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks is empty; give at least one k (e.g. ks=(1,)).")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"every k in ks must satisfy 1 <= k <= n = {n} samples per prompt; "
                         f"got {bad}.")
    return tuple(sorted(set(ks)))


def _pass_at_k_mean(correct: np.ndarray, k: int) -> float:
    """Unbiased pass@k averaged over prompts; correct bool [P, n]."""
    n = correct.shape[1]
    return float(np.mean(pass_at_k(n, correct.sum(axis=1), k)))


def _pairwise_distance_correct(embeddings: np.ndarray, correct: np.ndarray) -> Tuple[float, int]:
    """Mean pairwise cosine distance among correct completions, over prompts with >= 2 correct.

    embeddings [P, n, D], correct bool [P, n]. Returns (mean over used prompts or 0.0, count).
    """
    used = correct.sum(axis=1) >= 2
    if not used.any():
        return 0.0, 0
    d = np.asarray(mean_pairwise_cosine_distance(jnp.asarray(embeddings[used], jnp.float32),
                                                 jnp.asarray(correct[used])), np.float64)
    return float(d.mean()), int(used.sum())


def summarize(correct, answers: Sequence[Sequence[Optional[str]]], lengths, *,
              ks: Optional[Sequence[int]] = None, entropy=None, embeddings=None) -> Dict[str, float]:
    """Evaluation metrics of P prompts with n samples each.

    Args:
      correct: bool [P, n] per-sample correctness.
      answers: P lists of n extracted final answers (str or None), compared after
        ``normalize_answer``.
      lengths: [P, n] completion lengths in tokens.
      ks: the k's for pass@k and maj@k (each 1 <= k <= n); default ``default_ks(n)``.
      entropy: optional float [P, n] per-sample mean token entropy.
      embeddings: optional float [P, n, D] completion embeddings (need not be normalised).

    Returns:
      A dict of Python numbers: ``num_prompts``, ``num_samples`` (n), ``accuracy``,
      ``pass@k`` and ``maj@k`` for each k, ``mean_length``, ``num_solved`` (prompts with >= 1
      correct), ``distinct_correct_answers``, ``distinct_correct_solved`` and
      ``top_correct_share``; with ``entropy``: ``mean_entropy``; with
      ``embeddings``: ``pairwise_cosine_distance_correct`` and ``pairwise_cosine_prompts``. The
      metric definitions are in the module docstring.

    Raises:
      ValueError: inconsistent shapes, no prompts / samples, or a k outside [1, n].
    """
    correct = np.asarray(correct).astype(bool)
    if correct.ndim != 2 or correct.size == 0:
        raise ValueError(f"correct must be a non-empty [P, n] array; got shape {correct.shape}.")
    p, n = correct.shape
    if len(answers) != p or any(len(a) != n for a in answers):
        raise ValueError(f"answers must be {p} lists of {n} answers (matching correct [P, n]); got "
                         f"lengths {[len(a) for a in answers]}.")
    lengths = np.asarray(lengths)
    if lengths.shape != (p, n):
        raise ValueError(f"lengths must have shape {(p, n)}; got {lengths.shape}.")
    ks = default_ks(n) if ks is None else _check_ks(ks, n)
    norm = [[normalize_answer(a) for a in row] for row in answers]

    out: Dict[str, float] = {"num_prompts": p, "num_samples": n,
                             "accuracy": float(correct.mean())}
    for k in ks:
        out[f"pass@{k}"] = _pass_at_k_mean(correct, k)
    for k in ks:
        out[f"maj@{k}"] = maj_at_k_mean(norm, correct.tolist(), k)
    out["mean_length"] = float(lengths.astype(np.float64).mean())
    if entropy is not None:
        entropy = np.asarray(entropy, np.float64)
        if entropy.shape != (p, n):
            raise ValueError(f"entropy must have shape {(p, n)}; got {entropy.shape}.")
        out["mean_entropy"] = float(entropy.mean())
    out["num_solved"] = int(correct.any(axis=1).sum())
    distinct = distinct_correct(norm, correct)
    solved = correct.any(axis=1)
    out["distinct_correct_answers"] = float(distinct.mean())
    out["distinct_correct_solved"] = float(distinct[solved].mean()) if solved.any() else 0.0
    share = top_correct_share(norm, correct)
    out["top_correct_share"] = float(np.mean(share[solved])) if solved.any() else 0.0
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 3 or embeddings.shape[:2] != (p, n):
            raise ValueError(f"embeddings must have shape {(p, n)} + (D,); "
                             f"got {embeddings.shape}.")
        dist, used = _pairwise_distance_correct(embeddings, correct)
        out["pairwise_cosine_distance_correct"] = dist
        out["pairwise_cosine_prompts"] = used
    return out


# --------------------------------------------------------------------------- benchmark runner

@functools.lru_cache(maxsize=16)
def _make_entropy_fn(graphdef, temperature: float):
    """Jitted ``(state, prompt_tokens, prompt_mask, completion_tokens, completion_mask) ->
    float32 [B]``: mean token entropy of softmax(logits / T) over each row's valid tokens."""
    @jax.jit
    def fn(state, prompt_tokens, prompt_mask, completion_tokens, completion_mask):
        model = nnx.merge(graphdef, state)
        _, ent = completion_logprobs(model, prompt_tokens, prompt_mask, completion_tokens,
                                     completion_mask, temperature=temperature,
                                     return_entropy=True)
        count = jnp.sum(completion_mask, axis=1)
        return jnp.sum(ent, axis=1) / jnp.maximum(count, 1)

    return fn


def _batches(num_rows: int, batch: int):
    """(start, index array of length ``batch``) per batch; the last one is padded with row
    ``start`` repeated, so every batch has the same shape (one compilation)."""
    for start in range(0, num_rows, batch):
        idx = np.arange(start, min(start + batch, num_rows))
        yield start, np.concatenate([idx, np.full(batch - len(idx), start, idx.dtype)])


def _call_score_fn(score_fn: ScoreFn, texts: List[str], rows: List[dict], lengths=None):
    """Run and validate the user scorer: (bool [N], list of N answers). A scorer with a
    ``lengths`` parameter also gets the completion token counts [N] (rewards.overlong needs
    them)."""
    import inspect
    try:
        takes_lengths = "lengths" in inspect.signature(score_fn).parameters
    except (TypeError, ValueError):
        takes_lengths = False
    result = (score_fn(texts, rows, lengths=lengths) if takes_lengths and lengths is not None
              else score_fn(texts, rows))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError("score_fn must return a tuple (correct bool array [N], answers list[N]); "
                        f"got {type(result).__name__}.")
    correct, answers = np.asarray(result[0]), list(result[1])
    if correct.shape != (len(texts),) or len(answers) != len(texts):
        raise ValueError(f"score_fn returned correct of shape {correct.shape} and "
                         f"{len(answers)} answers for {len(texts)} completions.")
    return correct.astype(bool), [None if a is None else str(a) for a in answers]


def evaluate_policy(graphdef, state, tokenizer, rows: Sequence[dict], score_fn: ScoreFn, *,
                    num_samples: int, key: jax.Array, ks: Optional[Sequence[int]] = None,
                    max_new_tokens: int = 1024, temperature: float = 1.0, top_p: float = 1.0,
                    top_k: int = 0, greedy: bool = False, eos_token_ids: Sequence[int] = (),
                    pad_token_id: Optional[int] = None, template: str = "plain",
                    prompt_format: str = "{question}", system_prompt: str = "",
                    max_prompt_tokens: int = 512, batch_prompts: int = 16, encoder=None,
                    compute_entropy: bool = True, question_key: str = "question",
                    answer_key: str = "answer", unroll_layers: Optional[bool] = None) -> dict:
    """Sample ``num_samples`` completions per row, score them, and summarise.

    Args:
      graphdef, state: the policy, ``graphdef, state = nnx.split(model)`` (``state`` may be
        sharded; the sampler is ``jaxgrpo.sampling.make_sampler``).
      tokenizer: has ``encode(text, add_special_tokens=False)`` and ``decode(ids,
        skip_special_tokens=True)`` (and ``apply_chat_template`` for ``template='chat'``).
      rows: dicts with ``question_key`` (rendered into the prompt) and ``answer_key`` (the gold,
        reported in the records); e.g. ``load_benchmark`` output.
      score_fn: ``score_fn(texts, rows) -> (correct bool [N], answers list[str | None])`` for
        N = len(texts) completions, ``rows`` repeated per sample (row p*n + g is sample g of
        prompt p); ``answers`` are the extracted final answers (for maj@k and diversity).
      num_samples: n completions per prompt. key: PRNG key; batch b uses ``fold_in(key, b)``,
        so a key and ``batch_prompts`` give the same samples on every call.
      ks: k's for pass@k / maj@k (default ``default_ks(num_samples)``).
      max_new_tokens, temperature, top_p, top_k, greedy, eos_token_ids, pad_token_id,
        unroll_layers: the ``SamplingConfig`` (pad id default: ``tokenizer.pad_token_id``, else
        0; ``unroll_layers`` None: unrolled decode on the CPU, scanned elsewhere).
      template, prompt_format, system_prompt, max_prompt_tokens: prompt rendering, as
        ``jaxgrpo.data.render_prompt`` / ``tokenize_left_padded``.
      batch_prompts: prompts per sampler call (the last batch is padded to this size, capped at
        the number of rows, so every call has one shape).
      encoder: optional sentence encoder with ``encode(texts) -> [N, D]``
        (``jaxgrpo.models.encoder.load_encoder()``); only correct completions are embedded.
      compute_entropy: also compute each sample's mean token entropy under softmax(logits / T)
        (one teacher-forced pass per batch).

    Returns:
      ``{"metrics": summarize(...) + {"truncated_frac", "prompts_truncated"},
      "records": [one dict per row: index, question, gold, samples (texts), answers, correct,
      lengths, truncated, and entropy when computed]}``; records are JSON-serialisable
      (``write_jsonl``).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("evaluate_policy: no rows to evaluate.")
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1; got {batch_prompts}.")
    ks = default_ks(num_samples) if ks is None else _check_ks(ks, num_samples)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
        pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, greedy=greedy, eos_token_ids=tuple(eos_token_ids),
                         pad_token_id=pad_token_id, num_generations=num_samples,
                         return_prompt_logprobs=False, unroll_layers=unroll_layers)
    sampler = executables.wrap(make_sampler(graphdef, cfg))  # the entry point's hook, if any
    entropy_fn = _make_entropy_fn(graphdef, float(temperature)) if compute_entropy else None

    tokens, mask, n_trunc = encode_rows(
        tokenizer, rows, template=template, prompt_format=prompt_format,
        system_prompt=system_prompt, max_prompt_tokens=max_prompt_tokens, pad_id=pad_token_id,
        question_key=question_key)
    p, n = len(rows), num_samples
    batch = min(batch_prompts, p)
    comp_tok = np.zeros((p, n, max_new_tokens), np.int32)
    comp_mask = np.zeros((p, n, max_new_tokens), bool)
    truncated = np.zeros((p, n), bool)
    entropy = np.zeros((p, n), np.float32) if compute_entropy else None
    for b, (start, idx) in enumerate(_batches(p, batch)):
        keep = min(batch, p - start)
        pt, pm = jnp.asarray(tokens[idx]), jnp.asarray(mask[idx])
        out = sampler(state, pt, pm, jax.random.fold_in(key, b))
        sl = slice(start, start + keep)
        # to_host: a plain copy on one host; gathers the other hosts' rows on several.
        toks, cmask, trunc = shd.to_host((out.completion_tokens, out.completion_mask,
                                          out.truncated))
        comp_tok[sl] = toks.reshape(batch, n, -1)[:keep]
        comp_mask[sl] = cmask.reshape(batch, n, -1)[:keep]
        truncated[sl] = trunc.reshape(batch, n)[:keep]
        if entropy_fn is not None:
            ent = entropy_fn(state, pt, pm, out.completion_tokens, out.completion_mask)
            entropy[sl] = shd.to_host(ent).reshape(batch, n)[:keep]

    lengths = comp_mask.sum(axis=-1)
    texts = decode_completions(tokenizer, comp_tok.reshape(p * n, -1),
                               comp_mask.reshape(p * n, -1))
    rep_rows = [r for r in rows for _ in range(n)]
    correct_flat, answers_flat = _call_score_fn(score_fn, texts, rep_rows,
                                                lengths=lengths.reshape(p * n))
    correct = correct_flat.reshape(p, n)
    answers = [answers_flat[i * n:(i + 1) * n] for i in range(p)]

    embeddings = None
    if encoder is not None:
        embeddings = np.zeros((p * n, 1), np.float32)
        sel = np.flatnonzero(correct_flat)
        if sel.size:
            emb = np.asarray(encoder.encode([texts[i] for i in sel]), np.float32)
            embeddings = np.zeros((p * n, emb.shape[-1]), np.float32)
            embeddings[sel] = emb
        embeddings = embeddings.reshape(p, n, -1)

    metrics = summarize(correct, answers, lengths, ks=ks, entropy=entropy, embeddings=embeddings)
    metrics["truncated_frac"] = float(truncated.mean())
    metrics["prompts_truncated"] = int(n_trunc)
    records = []
    for i, r in enumerate(rows):
        rec = {"index": i, "question": r[question_key], "gold": r.get(answer_key),
               "samples": texts[i * n:(i + 1) * n], "answers": answers[i],
               "correct": correct[i].tolist(), "lengths": lengths[i].tolist(),
               "truncated": truncated[i].tolist()}
        if entropy is not None:
            rec["entropy"] = [float(x) for x in entropy[i]]
        records.append(rec)
    return {"metrics": metrics, "records": records}


def run_eval_settings(c, *, num_samples: Optional[int] = None,
                      ks: Optional[Sequence[int]] = None) -> dict:
    """The evaluation settings of a run config ``c`` (``jaxgrpo.config``): its completion
    length, evaluation temperature, prompt rendering, and ``seed`` = ``c.seed + 1`` (the
    evaluation key, the same every time so the evaluations of one run are comparable).
    ``num_samples`` (default ``c.eval.num_samples``) and ``ks`` override the config's; ``ks``
    defaults to ``c.eval.ks``, or to ``default_ks(num_samples)`` when ``num_samples`` is given
    (the config's ks belong to its own n). The policy, tokenizer, rows, scorer, EOS / pad ids
    and encoder are the caller's."""
    if ks is None:
        ks = (default_ks(num_samples) if num_samples is not None
              else [int(k) for k in split_names(c.eval.ks)])
    return dict(
        num_samples=c.eval.num_samples if num_samples is None else num_samples, ks=tuple(ks),
        max_new_tokens=c.sampling.max_new_tokens, temperature=c.eval.temperature,
        template=c.data.template, prompt_format=c.data.prompt_format,
        system_prompt=c.data.system_prompt, max_prompt_tokens=c.data.max_prompt_tokens,
        seed=c.seed + 1)


def run_eval_kwargs(c, **overrides) -> dict:
    """``run_eval_settings`` as ``evaluate_policy`` keyword arguments (``seed`` -> ``key``)."""
    kw = run_eval_settings(c, **overrides)
    kw["key"] = jax.random.key(kw.pop("seed"))
    # how the decode loop runs the layers (speed only)
    kw["unroll_layers"] = SamplingConfig.from_config(c.sampling).unroll_layers
    return kw


def write_jsonl(path, records: Sequence[dict]) -> None:
    """Write one JSON object per line (e.g. ``evaluate_policy(...)["records"]``)."""
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- benchmark files


def load_benchmark(path, *, question_field: str = "problem", answer_field: str = "answer",
                   limit: Optional[int] = None) -> List[dict]:
    """Rows ``{"question", "answer", "metadata"}`` of a local JSON / JSONL / Parquet benchmark.

    ``jaxgrpo.rewards.tasks.load_prompts`` (the one reader of local problem files) with
    benchmark wording in its errors. Read with ``datasets.load_dataset('json' | 'parquet' |
    'csv', data_files=path, split='train')`` (no hub access). ``answer`` is a string (AIME's
    integer answers become ``"204"``); ``metadata`` holds the other columns plus ``source`` (the
    path) and ``index`` (the row number in the file). ``limit`` keeps the first ``limit`` rows.

    Raises:
      FileNotFoundError: no such file.
      ValueError (each message names the file): unknown extension; the file is empty or has no
        rows; it cannot be parsed; ``question_field`` or ``answer_field`` is missing (the columns
        that exist are listed); a row's question or answer is null or empty (the row index is
        named); ``limit`` < 1.
    """
    from jaxgrpo.rewards.tasks import load_prompts

    return load_prompts(path, question_field=question_field, answer_field=answer_field,
                        limit=limit, kind="benchmark")
