"""The RL environment of a run: prompt rows (train / held-out) and the verifier-backed reward.

``build_env(config)`` wires the config to ``jaxgrpo.rewards``: a reasoning-gym task (its own
seeded generator and verifier) or a local file of problems (math-verify in a process pool), and
the weighted reward functions of ``config.rewards``. The trainer and the evaluator only see
``Env.reward`` and ``Env.score``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import List, Optional, Sequence

import numpy as np

from jaxgrpo.config import split_names
from jaxgrpo.rewards.extract import extract_answer
from jaxgrpo.rewards.functions import RewardSpec, make_reward_fn
from jaxgrpo.rewards.tasks import load_prompts, make_task

FINE_SCORES = ("logprob", "format", "none")


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
                 answer_sources=("answer_tag", "boxed", "hash")):
        self.answer_sources = tuple(answer_sources)
        self.train_rows: List[dict] = train_rows
        self.eval_rows: List[dict] = eval_rows
        self.reward_fn = reward_fn
        self.task = task
        if fine_score not in FINE_SCORES:
            raise ValueError(f"config.rewards.fine_score={fine_score!r} not in {FINE_SCORES}")
        self.fine_score = fine_score

    def _golds_rows(self, rows):
        if self.task is not None:
            return dict(rows=list(rows))
        return dict(golds=[str(r["answer"]) for r in rows])

    def reward(self, texts: Sequence[str], rows: Sequence[dict], *, lengths=None,
               logprobs: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None) -> Scored:
        """Rewards of N completions for their N rows (a row per completion)."""
        out = self.reward_fn(list(texts), lengths=lengths, **self._golds_rows(rows))
        correct = (np.zeros(len(texts), bool) if out.correct is None
                   else np.asarray(out.correct) >= 1.0)
        fine = None
        if self.fine_score == "format":
            fine = np.asarray(out.components.get("format", np.zeros(len(texts))), np.float32)
        elif self.fine_score == "logprob" and logprobs is not None:
            # Normalised sequence probability exp(mean_t log pi_old), in [0, 1].
            n = np.maximum(mask.sum(-1), 1)
            fine = np.exp((logprobs * mask).sum(-1) / n).astype(np.float32)
        return Scored(rewards=np.asarray(out.rewards, np.float32), correct=correct,
                      answers=self.answers(texts, rows), components=out.components,
                      stats=out.stats, fine_scores=fine)

    def answers(self, texts: Sequence[str], rows: Sequence[dict]) -> List[Optional[str]]:
        """Each completion's final answer as the task compares them (a task's own canonical
        solution, e.g. ``SumTask``'s sorted "3+5"; else ``extract_answer``; None = none)."""
        if self.task is not None:
            return self.task.answers(list(texts), list(rows))
        return [extract_answer(t, self.answer_sources) for t in texts]

    def score(self, texts: Sequence[str], rows: Sequence[dict]):
        """(correct bool [N], extracted answers) — what evaluation needs."""
        s = self.reward(texts, rows)
        return s.correct, s.answers

    @staticmethod
    def anchor_text(row: dict, fmt: str) -> str:
        """The off-policy anchor completion for a row: its solution if the data has one,
        else ``fmt`` filled with the gold answer."""
        sol = (row.get("metadata") or {}).get("solution")
        return sol if isinstance(sol, str) and sol.strip() else fmt.format(answer=row["answer"])

    def close(self):
        self.reward_fn.close()


def build_env(c) -> Env:
    specs = [RewardSpec("accuracy", float(c.rewards.accuracy))]
    if c.rewards.format:
        specs.append(RewardSpec("format", float(c.rewards.format),
                                {"style": c.rewards.format_style}))
    if c.rewards.cosine:
        specs.append(RewardSpec("cosine", float(c.rewards.cosine)))
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
    return Env(train_rows, eval_rows, reward_fn, task=task, fine_score=c.rewards.fine_score,
               answer_sources=sources)
