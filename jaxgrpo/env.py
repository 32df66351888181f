"""The RL environment of a run: prompt rows (train / held-out) and the verifier-backed reward.

``build_env(config)`` wires the config to ``jaxgrpo.rewards``: a reasoning-gym task (its own
seeded generator and verifier) or a local file of problems (math-verify in a process pool), and
the weighted reward functions of ``config.rewards``. The trainer and the evaluator only see
``Env.reward`` and ``Env.score``.

Two verifiers for the training reward (``config.rewards.verifier``):

* ``"text"`` (default): the completions are decoded and scored on the host (the task's verifier
  or math-verify, plus the format / cosine terms).
* ``"digits"``: :class:`DigitReward`, ``jaxgrpo.rewards.digit_match_reward`` on the token ids —
  the last run of digit tokens before EOS must equal the gold integer (partial credit with
  ``rewards.digits_partial_credit``). Pure ``jnp``, so the whole step can run as one jit
  (``config.train.fused``). Needs integer answers and a tokenizer with one token per digit.

Held-out evaluation (``Env.score``) always uses the text verifier, so accuracies are comparable
whichever verifier trains.
"""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from jaxgrpo import config
from jaxgrpo.data import DATA_SOURCES, split_names  # DATA_SOURCES: re-exported
from jaxgrpo.errors import ConfigError
from jaxgrpo.rewards.extract import _EXTRACTORS, extract_answer
from jaxgrpo.rewards.functions import FORMAT_STYLES, RewardSpec, make_reward_fn
from jaxgrpo.rewards.tasks import load_prompts, make_task

FINE_SCORES = ("logprob", "format", "none")  # config.rewards.fine_score
VERIFIERS = ("text", "digits")
# Every answer-extraction source extract_answer knows (its SOURCES is only the default order).
ANSWER_SOURCES = tuple(_EXTRACTORS)
# rewards.format_style: "regex" needs a pattern, which the config does not carry.
CONFIG_FORMAT_STYLES = tuple(s for s in FORMAT_STYLES if s != "regex")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardsConfig(config.Section):
    """Reward functions and weights; weight 0 disables one.

    The ``config.rewards`` section, read by :func:`build_env`.
    """

    NAME: ClassVar[str] = "rewards"
    accuracy: float = config.key(1.0, 'verifier correctness (task scorer or math-verify)', ge=0)
    format: float = config.key(0.0, 'completion has the expected answer format', ge=0)
    cosine: float = config.key(
        0.0, 'cosine length-scaled correctness (DRA / Open-RS reference)', ge=0)
    overlong: float = config.key(
        0.0,
        'DAPO soft overlong punishment (arXiv 2503.14476 eq. 13; verl '
        "reward_model.overlong_buffer), in tokens: weight = verl's penalty_factor; 0 - (len - "
        '(max_new_tokens - buffer)) / buffer over the last `overlong_buffer` tokens before '
        'sampling.max_new_tokens (-1 at the limit).',
        ge=0)
    overlong_buffer: int = config.key(0, 'L_cache tokens (DAPO: 4096 of 20480)', ge=0)
    answer_sources: str = config.key(
        'answer_tag,boxed,hash', 'extraction precedence (rewards/extract.py)')
    format_style: str = config.key(
        'boxed', 'see jaxgrpo.rewards.functions.FORMAT_STYLES', choices=CONFIG_FORMAT_STYLES)
    fine_score: str = config.key(
        'logprob',
        'DaGRPO\'s finer score s_i: "logprob" | "format" | "none"',
        choices=FINE_SCORES)
    verifier_workers: int = config.key(2, 'math-verify worker processes (source = file)', ge=1)
    item_timeout_s: float = config.key(5.0, 'math-verify deadline per completion (seconds)', gt=0)
    verifier: str = config.key(
        'text',
        '"text": decode and score on the host (task verifier / math-verify); "digits": the gold '
        'integer matched on token ids inside jit (jaxgrpo.env.DigitReward; needs rewards.format ='
        ' 0 and rewards.cosine = 0; allows train.fused).')
    digits_partial_credit: bool = config.key(
        False, 'digits: positional partial credit, not exact match')

    def __post_init__(self):
        sources = split_names(self.answer_sources)
        bad = [s for s in sources if s not in ANSWER_SOURCES]
        if bad or not sources:
            config.fail("rewards.answer_sources", self.answer_sources,
                        f"each entry must be one of {ANSWER_SOURCES} (comma-separated)")


def sequence_probability(logprobs, mask):
    """DaGRPO's ``"logprob"`` finer score: exp(mean_t log pi_old) over valid tokens, in [0, 1].

    logprobs float [..., T], mask bool [..., T] -> float32 [...] (an empty row gives 1.0).
    Pure jnp: the host path and the fused step compute the same numbers."""
    mask = jnp.asarray(mask)
    n = jnp.maximum(jnp.sum(mask, axis=-1), 1)
    return jnp.exp(jnp.sum(jnp.where(mask, jnp.asarray(logprobs, jnp.float32), 0.0), axis=-1)
                   / n).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class DigitReward:
    """The training reward computed from token ids (``rewards.verifier='digits'``).

    ``weight * digit_match_reward(..., which="last_run")``: 1 when the last contiguous run of
    digit / minus-sign tokens before EOS spells the gold integer (or the positional partial
    credit), ``correct`` = an exact match. ``targets(rows)`` runs on the host (before
    sampling); ``__call__`` is pure jnp."""

    char_to_id: dict  # "0".."9", "-" -> the token id of that single character
    eos_id: int
    max_len: int  # answer characters of the longest gold
    weight: float = 1.0
    partial_credit: bool = False

    @classmethod
    def for_tokenizer(cls, tokenizer, rows, eos_id: int, **kw) -> "DigitReward":
        char_to_id = {}
        for ch in "0123456789-":
            ids = tokenizer.encode(ch, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"config.rewards.verifier='digits' needs one token per digit; "
                                  f"the tokenizer encodes {ch!r} as {ids}")
            char_to_id[ch] = int(ids[0])
        longest = 1
        for r in rows:
            a = str(r["answer"]).strip()
            if not a.lstrip("-").isdigit():
                raise ConfigError(f"config.rewards.verifier='digits' needs integer answers; "
                                  f"a row has answer {a!r} (use verifier='text')")
            longest = max(longest, len(a))
        return cls(char_to_id=char_to_id, eos_id=int(eos_id), max_len=longest, **kw)

    def targets(self, rows: Sequence[dict]):
        """Host: (int32 [N, L], bool [N, L]) gold answer-token ids of N rows."""
        from jaxgrpo.rewards.token_rewards import encode_digit_targets
        return encode_digit_targets([str(r["answer"]).strip() for r in rows], self.char_to_id,
                                    self.max_len)

    def __call__(self, tokens, mask, targets):
        """(rewards float32 [N], correct bool [N]) of N completions ``tokens`` [N, T]."""
        from jaxgrpo.rewards.token_rewards import digit_match_reward
        ids = jnp.asarray(sorted(self.char_to_id.values()), jnp.int32)
        score = digit_match_reward(tokens, mask, targets[0], targets[1], ids, self.eos_id,
                                   "last_run", self.partial_credit)
        exact = score if not self.partial_credit else digit_match_reward(
            tokens, mask, targets[0], targets[1], ids, self.eos_id, "last_run", False)
        return self.weight * score, exact >= 1.0


@dataclasses.dataclass
class Scored:
    """Host-side scores of N completions."""

    rewards: np.ndarray  # float32 [N], weighted sum of reward functions
    correct: np.ndarray  # bool [N], verifier correctness
    answers: List[Optional[str]]  # extracted final answers
    components: dict  # name -> float32 [N] unweighted reward components
    stats: dict  # verifier counters (timeouts, errors)
    fine_scores: Optional[np.ndarray] = None  # float32 [N] in [0, 1] (DaGRPO)


class Env:
    """Prompt rows plus the reward of a run."""

    def __init__(self, train_rows, eval_rows, reward_fn, task=None, fine_score="logprob",
                 answer_sources=("answer_tag", "boxed", "hash"),
                 token_reward: Optional[DigitReward] = None):
        self.answer_sources = tuple(answer_sources)
        self.train_rows: List[dict] = train_rows
        self.eval_rows: List[dict] = eval_rows
        self.reward_fn = reward_fn
        self.task = task
        if fine_score not in FINE_SCORES:
            raise ValueError(f"config.rewards.fine_score={fine_score!r} not in {FINE_SCORES}")
        self.fine_score = fine_score
        # Set: the training reward is computed from token ids (rewards.verifier='digits').
        self.token_reward = token_reward

    def _golds_rows(self, rows):
        if self.task is not None:
            return dict(rows=list(rows))
        return dict(golds=[str(r["answer"]) for r in rows])

    def reward(self, texts: Sequence[str], rows: Sequence[dict], *, lengths=None,
               logprobs: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
               tokens: Optional[np.ndarray] = None) -> Scored:
        """Training rewards of N completions for their N rows (a row per completion).

        ``tokens`` / ``mask`` [N, T] are required with the digits verifier; ``logprobs`` [N, T]
        gives the ``"logprob"`` fine score."""
        if self.token_reward is not None:
            if tokens is None or mask is None:
                raise ValueError("the digits verifier scores token ids: pass tokens and mask")
            r, ok = self.token_reward(jnp.asarray(tokens), jnp.asarray(mask),
                                      self.token_reward.targets(rows))
            rewards, correct = np.asarray(r, np.float32), np.asarray(ok, bool)
            w = self.token_reward.weight
            components, stats = {"digits": rewards / w if w else rewards}, {}
        else:
            out = self.reward_fn(list(texts), lengths=lengths, **self._golds_rows(rows))
            correct = (np.zeros(len(texts), bool) if out.correct is None
                       else np.asarray(out.correct) >= 1.0)
            rewards = np.asarray(out.rewards, np.float32)
            components, stats = out.components, out.stats
        fine = None
        if self.fine_score == "format":
            fine = np.asarray(components.get("format", np.zeros(len(texts))), np.float32)
        elif self.fine_score == "logprob" and logprobs is not None:
            fine = np.asarray(sequence_probability(logprobs, mask))
        return Scored(rewards=rewards, correct=correct, answers=self.answers(texts, rows),
                      components=components, stats=stats, fine_scores=fine)

    def answers(self, texts: Sequence[str], rows: Sequence[dict]) -> List[Optional[str]]:
        """Each completion's final answer as the task compares them (a task's own canonical
        solution, e.g. ``SumTask``'s sorted "3+5"; else ``extract_answer``; None = none)."""
        if self.task is not None:
            return self.task.answers(list(texts), list(rows))
        return [extract_answer(t, self.answer_sources) for t in texts]

    def score(self, texts: Sequence[str], rows: Sequence[dict], lengths=None):
        """(correct bool [N], extracted answers) — what evaluation needs (always the text
        verifier). ``lengths``: completion token counts [N], for rewards that need them
        (rewards.overlong)."""
        out = self.reward_fn(list(texts), lengths=lengths, **self._golds_rows(rows))
        correct = (np.zeros(len(texts), bool) if out.correct is None
                   else np.asarray(out.correct) >= 1.0)
        return correct, self.answers(texts, rows)

    @staticmethod
    def anchor_text(row: dict, fmt: str) -> str:
        """The off-policy anchor completion for a row: its solution if the data has one,
        else ``fmt`` filled with the gold answer."""
        sol = (row.get("metadata") or {}).get("solution")
        return sol if isinstance(sol, str) and sol.strip() else fmt.format(answer=row["answer"])

    def close(self):
        self.reward_fn.close()


def build_env(c, tokenizer=None, eos_id: Optional[int] = None) -> Env:
    """The Env of config ``c``; ``tokenizer`` and ``eos_id`` are needed by the digits verifier
    (``rewards.verifier='digits'``)."""
    if c.rewards.verifier not in VERIFIERS:
        raise ConfigError(f"config.rewards.verifier={c.rewards.verifier!r} is not one of "
                          f"{VERIFIERS}")
    specs = [RewardSpec("accuracy", float(c.rewards.accuracy))]
    if c.rewards.format:
        specs.append(RewardSpec("format", float(c.rewards.format),
                                {"style": c.rewards.format_style}))
    if c.rewards.cosine:
        specs.append(RewardSpec("cosine", float(c.rewards.cosine)))
    if c.rewards.overlong:  # DAPO soft overlong punishment, in tokens (weight = penalty factor)
        specs.append(RewardSpec("overlong", float(c.rewards.overlong),
                                {"max_len": c.sampling.max_new_tokens,
                                 "buffer_len": c.rewards.overlong_buffer}))
    sources = split_names(c.rewards.answer_sources)
    extract_answer("", sources)  # fails at start on an unknown source name
    verifier_kwargs = dict(num_workers=c.rewards.verifier_workers,
                           item_timeout_s=c.rewards.item_timeout_s, sources=sources)
    d = c.data
    if d.source == "reasoning_gym":
        try:
            kwargs = json.loads(d.task_kwargs) if d.task_kwargs else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"config.data.task_kwargs is not a JSON object: {e}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"config.data.task_kwargs must be a JSON object, got {d.task_kwargs!r}")
        train_task = make_task(d.task, seed=c.seed, size=d.train_size, sources=sources, **kwargs)
        # Held-out rows come from a different generator seed.
        eval_task = make_task(d.task, seed=c.seed + 1_000_003, size=d.eval_size, sources=sources,
                              **kwargs)
        train_rows, eval_rows = train_task.rows(), eval_task.rows()
        task = train_task
    else:
        rows = load_prompts(d.path, question_field=d.question_field, answer_field=d.answer_field)
        if d.eval_path:
            eval_rows = load_prompts(d.eval_path, question_field=d.question_field,
                                     answer_field=d.answer_field)
            train_rows = rows
        else:
            if len(rows) <= d.eval_size:
                raise ValueError(f"{d.path}: {len(rows)} rows, not more than data.eval_size="
                                 f"{d.eval_size}; set data.eval_path or a smaller eval_size")
            train_rows, eval_rows = rows[:-d.eval_size], rows[-d.eval_size:]
        task = None
    reward_fn = make_reward_fn(specs, task=task, verifier_kwargs=verifier_kwargs)
    token_reward = None
    if c.rewards.verifier == "digits":
        # rewards.format / cosine / fine_score against the digits verifier: jaxgrpo.experiment
        if tokenizer is None or eos_id is None:
            raise ValueError("build_env: rewards.verifier='digits' needs the tokenizer and eos_id")
        token_reward = DigitReward.for_tokenizer(
            tokenizer, list(train_rows) + list(eval_rows), eos_id,
            weight=float(c.rewards.accuracy), partial_credit=bool(c.rewards.digits_partial_credit))
    return Env(train_rows, eval_rows, reward_fn, task=task, fine_score=c.rewards.fine_score,
               answer_sources=sources, token_reward=token_reward)


# ----------------------------------------------------------------------------- preflight


def check_rewards(c) -> None:
    """Preflight (before the model loads): the reward the config names can run the way it is
    asked to. ``train.fused`` needs a reward computed from token ids (the digits verifier); the
    digits verifier takes no text rewards, and every gold of the data must be an integer (the
    first bad one is named with its row number: ``data.path`` row N, 1-based, or the task's
    train / held-out row N). ConfigError naming the key."""
    if c.train.fused and c.rewards.verifier != "digits":
        raise ConfigError(f"config.train.fused=True runs the whole step as one jit, which needs a "
                          f"reward computed from token ids: set config.rewards.verifier='digits' "
                          f"(it is {c.rewards.verifier!r}) or config.train.fused=False")
    if c.rewards.verifier != "digits":
        return
    for key in ("format", "cosine"):
        if c.rewards[key]:
            raise ConfigError(f"config.rewards.{key}={c.rewards[key]} is a text reward; the "
                              "digits verifier (rewards.verifier='digits') scores token ids "
                              f"only: set rewards.{key}=0")
    if c.rewards.fine_score == "format":
        raise ConfigError("config.rewards.fine_score='format' reads the text format reward; "
                          "with rewards.verifier='digits' use 'logprob' or 'none'")
    d = c.data
    if d.source == "reasoning_gym":
        kwargs = json.loads(d.task_kwargs) if d.task_kwargs else {}
        sources = split_names(c.rewards.answer_sources)
        parts = [("train row", make_task(d.task, seed=c.seed, size=d.train_size,
                                         sources=sources, **kwargs).rows()),
                 ("held-out row", make_task(d.task, seed=c.seed + 1_000_003, size=d.eval_size,
                                            sources=sources, **kwargs).rows())]
        where = f"config.data.task={d.task!r}"
    else:
        parts = [("row", load_prompts(d.path, question_field=d.question_field,
                                      answer_field=d.answer_field))]
        where = f"config.data.path={d.path!r}"
        if d.eval_path:
            parts.append(("config.data.eval_path row", load_prompts(
                d.eval_path, question_field=d.question_field, answer_field=d.answer_field)))
    for what, rows in parts:
        for i, r in enumerate(rows, 1):
            a = str(r["answer"]).strip()
            if not a.lstrip("-").isdigit():
                raise ConfigError(f"config.rewards.verifier='digits' needs integer answers; "
                                  f"{where}: {what} {i} has answer {a!r} (use "
                                  "rewards.verifier='text')")
