r"""Reward functions on completion texts and their weighted combination.

Each function maps a batch of N completions to float32 rewards ``[N]`` (host NumPy: rewards are
computed between sampling and the jitted advantage step, once per rollout).

* :func:`format_reward` - 1.0 when the completion has the expected format. Styles:
  ``"dra"`` (the DRA-GRPO / Open-RS reward: ``"\n</think>\n"`` occurs exactly once;
  github.com/xiwenc1/DRA-GRPO ``src/open_r1/rewards.py::format_reward``), ``"think_answer"``
  (Open-R1's original ``^<think>.*?</think>\s*<answer>.*?</answer>$``, checked in linear time),
  ``"boxed"`` (a closed ``\boxed{}``), ``"answer_tag"`` (a closed ``<answer>`` block) and
  ``"regex"`` (``re.search(pattern, text, re.DOTALL)``).
* :func:`tag_count_reward` - Open-RS ``tag_count_reward``: 0.5 for exactly one ``"<think>\n"``
  plus 0.5 for exactly one ``"\n</think>\n"``.
* :func:`accuracy_reward` - the correctness score itself.
* :func:`cosine_scaled_reward` - Open-R1's ``get_cosine_scaled_reward`` (after Yeo et al. 2025,
  "Demystifying Long Chain-of-Thought Reasoning", arXiv 2502.03373), with the defaults the DRA
  reference trains with (``grpo.py`` script defaults, arXiv 2505.09655):
  ``r = lo + 0.5 (hi - lo) (1 + cos(pi * len / max_len))`` with ``(lo, hi) = (0.5, 1.0)`` for a
  correct answer and ``(max_value_wrong, min_value_wrong) = (-0.5, 0.0)`` for a wrong one,
  ``max_len = 1000`` and ``len`` = characters of the completion. The reference does not clip
  ``len / max_len`` (the reward oscillates past ``max_len``); ``clip=True`` clips it at 1.
  With these defaults a short wrong answer gets 0 and a long one -0.5; a short correct one 1.0
  and a long one 0.5.

* :func:`soft_overlong_punishment` - DAPO's soft overlong punishment (Yu et al., arXiv
  2503.14476, eq. 13; TRL ``get_soft_overlong_punishment``; verl ``reward_model.overlong_buffer``
  with ``len`` / ``penalty_factor``), measured in TOKENS (Tunix's DAPO measures characters):
  0 up to ``max_len - buffer_len`` tokens, then falling linearly to -1 at ``max_len``, -1 beyond.

:func:`make_reward_fn` combines :class:`RewardSpec` s (name, weight, options) into one callable
returning the weighted sum and each unweighted component (for logging). The DRA recipe is
``[RewardSpec("format", 1.0), RewardSpec("cosine", 2.0)]`` (``recipes/dra_grpo.yaml``).

Correctness (for ``accuracy`` / ``cosine``) comes from a :class:`MathVerifier` (math-verify in a
process pool, created lazily if none is given) or, for procedural tasks, from a
:class:`~jaxgrpo.rewards.tasks.ReasoningGymTask` 's own ``score_answer``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from jaxgrpo.rewards.extract import extract_answer_tag, extract_boxed

__all__ = [
    "RewardSpec",
    "RewardOutput",
    "REWARD_REGISTRY",
    "register_reward",
    "make_reward_fn",
    "format_reward",
    "tag_count_reward",
    "accuracy_reward",
    "cosine_scaled_reward",
    "soft_overlong_punishment",
    "DRA_REWARDS",
]

FORMAT_STYLES = ("dra", "think_answer", "boxed", "answer_tag", "regex")
_THINK_ANSWER_JOIN = re.compile(r"</think>\s*<answer>")


def _think_answer_ok(text: str) -> bool:
    """Exactly ``re.match(r"^<think>.*?</think>\\s*<answer>.*?</answer>$", text, re.DOTALL)``
    (Open-R1's format reward) without regex backtracking."""
    if not text.startswith("<think>"):
        return False
    body = text[:-1] if text.endswith("\n") else text  # `$` also matches before a final "\n"
    if not body.endswith("</answer>"):
        return False
    end = len(body) - len("</answer>")
    for m in _THINK_ANSWER_JOIN.finditer(body, len("<think>"), end):
        return m.end() <= end  # the first join after <think> is the one the lazy regex takes
    return False


def format_reward(completions: Sequence[str], style: str = "dra",
                  pattern: Optional[str] = None) -> np.ndarray:
    """1.0 where a completion has the expected format, else 0.0. float32 ``[N]``.

    Args:
      completions: N completion texts.
      style: one of ``FORMAT_STYLES`` (see the module doc); ``"regex"`` needs ``pattern``.
      pattern: a regular expression searched with ``re.DOTALL`` (``style="regex"`` only).
    """
    if style not in FORMAT_STYLES:
        raise ValueError(f"format style must be one of {FORMAT_STYLES}, got {style!r}")
    if (style == "regex") != (pattern is not None):
        raise ValueError("format: give `pattern` exactly when style='regex'")
    if style == "dra":
        ok = [c.count("\n</think>\n") == 1 for c in completions]
    elif style == "think_answer":
        ok = [_think_answer_ok(c) for c in completions]
    elif style == "boxed":
        ok = [extract_boxed(c) is not None for c in completions]
    elif style == "answer_tag":
        ok = [extract_answer_tag(c) is not None for c in completions]
    else:
        rx = re.compile(pattern, re.DOTALL)
        ok = [rx.search(c) is not None for c in completions]
    return np.asarray(ok, np.float32).reshape(len(completions))


def tag_count_reward(completions: Sequence[str]) -> np.ndarray:
    """Open-RS ``tag_count_reward``: 0.5·[one "<think>\\n"] + 0.5·[one "\\n</think>\\n"]. ``[N]``."""
    return np.asarray([0.5 * (c.count("<think>\n") == 1) + 0.5 * (c.count("\n</think>\n") == 1)
                       for c in completions], np.float32).reshape(len(completions))


def accuracy_reward(correct: np.ndarray, gold_unparsed: Optional[np.ndarray] = None,
                    gold_unparsed_reward: Optional[float] = 1.0) -> np.ndarray:
    """The correctness score as a reward, float32 ``[N]``.

    ``gold_unparsed_reward`` replaces the score where the gold could not be parsed (Open-R1 /
    DRA-GRPO give 1.0 "to skip this example"; None keeps the verifier's 0).
    """
    r = np.asarray(correct, np.float32).copy()
    if gold_unparsed is not None and gold_unparsed_reward is not None:
        r[np.asarray(gold_unparsed, bool)] = gold_unparsed_reward
    return r


def cosine_scaled_reward(
    correct: np.ndarray,
    lengths: np.ndarray,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: float = 1000,
    clip: bool = False,
    gold_unparsed: Optional[np.ndarray] = None,
    gold_unparsed_reward: Optional[float] = 1.0,
) -> np.ndarray:
    """Open-R1 cosine length-scaled correctness reward, float32 ``[N]`` (module doc).

    Args:
      correct: bool / {0,1} ``[N]``.
      lengths: ``[N]`` completion lengths (characters in the reference).
      min_value_wrong, max_value_wrong, min_value_correct, max_value_correct, max_len: the
        reference's constants (defaults: DRA-GRPO's ``grpo.py`` script defaults).
      clip: clip ``len / max_len`` at 1 (the reference does not).
      gold_unparsed: bool ``[N]``, where the gold could not be parsed.
      gold_unparsed_reward: the reward there (reference: 1.0); None scores them as wrong.
    """
    if not max_len > 0:
        raise ValueError(f"cosine: max_len must be > 0, got {max_len}")
    correct = np.asarray(correct).astype(bool).reshape(-1)
    lengths = np.asarray(lengths, np.float64).reshape(-1)
    if correct.shape != lengths.shape:
        raise ValueError(f"cosine: correct {correct.shape} and lengths {lengths.shape} differ")
    progress = lengths / float(max_len)
    if clip:
        progress = np.minimum(progress, 1.0)
    cosine = np.cos(progress * math.pi)
    # The reference swaps min/max for wrong answers: lo = max_value_wrong, hi = min_value_wrong.
    lo = np.where(correct, min_value_correct, max_value_wrong)
    hi = np.where(correct, max_value_correct, min_value_wrong)
    r = lo + 0.5 * (hi - lo) * (1.0 + cosine)
    if gold_unparsed is not None and gold_unparsed_reward is not None:
        r = np.where(np.asarray(gold_unparsed, bool).reshape(-1), gold_unparsed_reward, r)
    return r.astype(np.float32)


def soft_overlong_punishment(lengths: np.ndarray, *, max_len: int,
                             buffer_len: int) -> np.ndarray:
    """DAPO soft overlong punishment (arXiv 2503.14476 eq. 13), float32 ``[N]`` in [-1, 0].

    With L = ``lengths`` (completion TOKENS, the EOS included), L_max = ``max_len`` (the
    generation limit, ``sampling.max_new_tokens``) and L_cache = ``buffer_len``::

        R = 0                                   if L <= L_max - L_cache
        R = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        R = -1                                  if L > L_max

    As TRL ``get_soft_overlong_punishment(max_completion_len, soft_punish_cache)``; verl's DAPO
    reward manager adds ``penalty_factor * R`` (the weight of this term here) and clips at 0
    from above, which the formula already satisfies.
    """
    if not 0 < buffer_len < max_len:
        raise ValueError(f"overlong: need 0 < buffer_len < max_len; got buffer_len={buffer_len}, "
                         f"max_len={max_len}")
    n = np.asarray(lengths, np.float64).reshape(-1)
    start = max_len - buffer_len
    r = np.where(n <= start, 0.0, (start - n) / buffer_len)
    return np.where(n > max_len, -1.0, r).astype(np.float32)


def _overlong_entry(inp: "RewardInputs", max_len: int = 0, buffer_len: int = 0) -> np.ndarray:
    if inp.lengths_tokens is None:
        raise ValueError("overlong: needs `lengths` (completion token counts)")
    return soft_overlong_punishment(inp.lengths_tokens, max_len=max_len, buffer_len=buffer_len)


# --------------------------------------------------------------------------------------------
# Registry and combination.


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One weighted term of the total reward.

    Attributes:
      name: a key of :data:`REWARD_REGISTRY` (``format``, ``tag_count``, ``accuracy``,
        ``cosine``, or one added with :func:`register_reward`).
      weight: multiplier in the weighted sum.
      options: keyword options of that reward (validated when the reward fn is built).
    """

    name: str
    weight: float = 1.0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RewardInputs:
    """What a registered reward sees. Shapes ``[N]``.

    ``correct`` / ``gold_unparsed`` are filled only when some spec needs correctness.
    ``lengths_chars`` is ``len(text)``; ``lengths_tokens`` is what the caller passed (or None).
    """

    completions: list
    golds: Optional[list]
    lengths_chars: np.ndarray
    lengths_tokens: Optional[np.ndarray]
    correct: Optional[np.ndarray] = None
    gold_unparsed: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Callable[..., np.ndarray]  # (inputs: RewardInputs, **options) -> [N]
    needs_correct: bool
    options: tuple


def _cosine_entry(inp: RewardInputs, length_unit: str = "chars", **kw) -> np.ndarray:
    if length_unit not in ("chars", "tokens"):
        raise ValueError(f"cosine: length_unit must be 'chars' or 'tokens', got {length_unit!r}")
    if length_unit == "tokens":
        if inp.lengths_tokens is None:
            raise ValueError("cosine: length_unit='tokens' needs `lengths` (token counts)")
        lengths = inp.lengths_tokens
    else:
        lengths = inp.lengths_chars
    return cosine_scaled_reward(inp.correct >= 0.5, lengths, gold_unparsed=inp.gold_unparsed,
                                **kw)


REWARD_REGISTRY: dict[str, _Entry] = {
    "format": _Entry(lambda inp, **o: format_reward(inp.completions, **o), False,
                     ("style", "pattern")),
    "tag_count": _Entry(lambda inp: tag_count_reward(inp.completions), False, ()),
    "accuracy": _Entry(lambda inp, **o: accuracy_reward(inp.correct, inp.gold_unparsed, **o),
                       True, ("gold_unparsed_reward",)),
    "cosine": _Entry(_cosine_entry, True,
                     ("min_value_wrong", "max_value_wrong", "min_value_correct",
                      "max_value_correct", "max_len", "clip", "gold_unparsed_reward",
                      "length_unit")),
    "overlong": _Entry(_overlong_entry, False, ("max_len", "buffer_len")),
}

DRA_REWARDS = (RewardSpec("format", 1.0), RewardSpec("cosine", 2.0))
"""The DRA-GRPO / DRA-DR.GRPO reward (recipes/dra_grpo.yaml): format x1.0 + cosine x2.0."""


def register_reward(name: str, fn: Callable[..., np.ndarray], needs_correct: bool = False,
                    options: Sequence[str] = ()) -> None:
    """Adds ``fn(inputs: RewardInputs, **options) -> float [N]`` to the registry under ``name``."""
    if name in REWARD_REGISTRY:
        raise ValueError(f"reward {name!r} is already registered")
    REWARD_REGISTRY[name] = _Entry(fn, needs_correct, tuple(options))


@dataclasses.dataclass
class RewardOutput:
    """Result of a reward fn. ``rewards``: float32 ``[N]`` weighted sum; ``components``: name ->
    unweighted float32 ``[N]``; ``correct``: float32 ``[N]`` correctness score (None if unused);
    ``stats``: verifier / task counters."""

    rewards: np.ndarray
    components: dict
    correct: Optional[np.ndarray]
    stats: dict


class RewardFn:
    """Weighted sum of registered rewards. Build with :func:`make_reward_fn`.

    Call: ``fn(completions, golds=None, *, lengths=None, rows=None) -> RewardOutput``.
      completions: N texts. golds: N gold answers (math-verify correctness). rows: N task rows
      (task correctness; used instead of golds when the fn has a task). lengths: optional ``[N]``
      token counts (for ``cosine`` with ``length_unit="tokens"``).
    """

    def __init__(self, specs, verifier=None, task=None, correct_threshold: float = 1.0,
                 verifier_kwargs: Optional[Mapping[str, Any]] = None):
        self.specs = tuple(specs)
        self.needs_correct = any(REWARD_REGISTRY[s.name].needs_correct for s in self.specs)
        self.task = task
        self.correct_threshold = float(correct_threshold)
        self._verifier = verifier
        self._owns_verifier = False
        self._verifier_kwargs = dict(verifier_kwargs or {})

    @property
    def verifier(self):
        if self._verifier is None:  # lazily: the pool starts only if math correctness is used
            from jaxgrpo.rewards.math_verify_pool import MathVerifier

            self._verifier = MathVerifier(**self._verifier_kwargs)
            self._owns_verifier = True
        return self._verifier

    def close(self) -> None:
        """Closes the verifier if this fn created it."""
        if self._owns_verifier and self._verifier is not None:
            self._verifier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(self, completions: Sequence[str], golds: Optional[Sequence[str]] = None, *,
                 lengths: Optional[Sequence[int]] = None,
                 rows: Optional[Sequence[Any]] = None) -> RewardOutput:
        completions = ["" if c is None else str(c) for c in completions]
        n = len(completions)
        toks = None
        if lengths is not None:
            toks = np.asarray(lengths, np.float64).reshape(-1)
            if toks.shape != (n,):
                raise ValueError(f"lengths has shape {toks.shape}, expected ({n},)")
        inp = RewardInputs(completions, None if golds is None else list(golds),
                           np.asarray([len(c) for c in completions], np.float64), toks)
        stats: dict = {}
        if self.needs_correct:
            if self.task is not None:
                if rows is None:
                    raise ValueError("this reward fn scores with a task: pass rows=")
                if len(rows) != n:
                    raise ValueError(f"{n} completions but {len(rows)} rows")
                score = self.task.score(completions, rows)
                # Accuracy keeps the task's own (possibly partial) score; "correct" for the
                # cosine reward is score >= correct_threshold.
                inp.correct = score
                stats["task_mean_score"] = float(score.mean()) if n else 0.0
                cos_correct = (score >= self.correct_threshold).astype(np.float32)
            else:
                if golds is None:
                    raise ValueError("this reward fn needs correctness: pass golds= (or build "
                                     "it with a task and pass rows=)")
                if len(golds) != n:
                    raise ValueError(f"{n} completions but {len(golds)} golds")
                from jaxgrpo.rewards.math_verify_pool import STATUS_GOLD_UNPARSED

                score, vstats = self.verifier.verify_batch(completions, list(golds))
                inp.correct = score
                inp.gold_unparsed = vstats["status"] == STATUS_GOLD_UNPARSED
                stats.update({k: v for k, v in vstats.items() if k != "status"})
                cos_correct = score
        total = np.zeros(n, np.float32)
        components = {}
        for spec in self.specs:
            entry = REWARD_REGISTRY[spec.name]
            if spec.name == "cosine" and self.needs_correct:
                inp_c = dataclasses.replace(inp, correct=cos_correct)
                r = entry.fn(inp_c, **spec.options)
            else:
                r = entry.fn(inp, **spec.options)
            r = np.asarray(r, np.float32).reshape(n)
            components[spec.name] = r
            total += np.float32(spec.weight) * r
        correct = None if inp.correct is None else np.asarray(inp.correct, np.float32)
        return RewardOutput(total, components, correct, stats)


def make_reward_fn(specs: Sequence[RewardSpec], *, verifier=None, task=None,
                   correct_threshold: float = 1.0,
                   verifier_kwargs: Optional[Mapping[str, Any]] = None) -> RewardFn:
    """Builds the weighted reward ``sum_k weight_k * r_k`` from ``specs``.

    Args:
      specs: :class:`RewardSpec` s, or ``(name, weight)`` / ``(name, weight, options)`` tuples.
      verifier: a :class:`MathVerifier` to share; if None and some spec needs correctness, one is
        created on first use with ``verifier_kwargs`` (and closed by ``RewardFn.close``).
      task: a :class:`ReasoningGymTask`: correctness comes from its ``score`` on ``rows``.
      correct_threshold: a task score at or above this counts as correct for ``cosine``.

    Raises:
      ValueError: unknown reward names (all listed), unknown or invalid options, duplicate
        names, or non-finite weights - at build time, not mid-training.
    """
    specs = [s if isinstance(s, RewardSpec) else RewardSpec(*s) for s in specs]
    if not specs:
        raise ValueError("make_reward_fn: no reward specs")
    unknown = [s.name for s in specs if s.name not in REWARD_REGISTRY]
    if unknown:
        raise ValueError(f"unknown reward functions {unknown}; known: {sorted(REWARD_REGISTRY)}")
    names = [s.name for s in specs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"duplicate reward functions {dups}")
    for s in specs:
        if not math.isfinite(float(s.weight)):
            raise ValueError(f"reward {s.name!r}: weight must be finite, got {s.weight}")
        bad = sorted(set(s.options) - set(REWARD_REGISTRY[s.name].options))
        if bad:
            raise ValueError(f"reward {s.name!r}: unknown options {bad}; known: "
                             f"{list(REWARD_REGISTRY[s.name].options)}")
        # Validate option values now with an empty batch (fails here, not mid-training).
        empty = RewardInputs([], [], np.zeros(0), np.zeros(0), np.zeros(0, np.float32),
                             np.zeros(0, bool))
        REWARD_REGISTRY[s.name].fn(empty, **s.options)
    return RewardFn(specs, verifier=verifier, task=task, correct_threshold=correct_threshold,
                    verifier_kwargs=verifier_kwargs)
