"""Prompt sources with answers: procedural reasoning-gym tasks and local JSON / Parquet files.

reasoning-gym (github.com/open-thought/reasoning-gym; Stojanovski et al. 2025, arXiv 2505.24760)
generates seeded problems offline and ships each task's own verifier, ``score_answer(answer,
entry) -> float in [0, 1]``. :func:`make_task` wraps one dataset: rows are
``{"question", "answer", "metadata"}`` dicts (the metadata carries what the verifier needs, e.g.
countdown's numbers and target, so any valid expression scores 1, not only the reference one),
and :meth:`ReasoningGymTask.score` extracts each completion's final answer
(:func:`~jaxgrpo.rewards.extract.extract_answer`) and applies the task's verifier, verifying each
distinct (row, answer) pair once.

Safety deviation: reasoning-gym's countdown verifier evaluates the answer with sympy's
``parse_expr`` (``9**9**9**9`` or ``99999!`` would stall the trainer). Countdown answers that are
longer than ``max_answer_chars`` or contain anything but digits, ``+ - * / ( ) .`` and spaces, or
contain ``**``, get 0.01 - reasoning-gym's own score for a malformed expression - without being
evaluated. ``max_answer_chars`` also bounds every other task's answers (longer -> 0.0).

:func:`load_prompts` reads a local file of problems (no hub access) with
``datasets.load_dataset("json" | "parquet" | "csv", data_files=...)``.

:class:`SumTask` (``make_task("sum_to_target", ...)``) and :class:`RangeTask`
(``make_task("number_in_range", ...)``) are tasks of our own with many correct answers per prompt,
for measuring whether RL keeps distinct correct solutions (see their docstrings).
"""
from __future__ import annotations

import itertools
import os
import re
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from jaxgrpo.rewards.extract import SOURCES, extract_answer

__all__ = ["ReasoningGymTask", "SumTask", "RangeTask", "make_task", "load_prompts", "SUPPORTED_TASKS",
           "OWN_TASKS"]

SUPPORTED_TASKS = ("basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic",
                   "simple_equations")
"""Tasks tested here. Any other reasoning-gym dataset name also works through make_task."""

OWN_TASKS = ("sum_to_target", "number_in_range")
"""Tasks implemented in this module (not reasoning-gym); ``make_task`` dispatches on the name."""

_COUNTDOWN_OK = re.compile(r"[0-9+\-*/(). ]*")
_COUNTDOWN_MALFORMED = 0.01  # reasoning-gym countdown's score for an unparsable expression


class ReasoningGymTask:
    """A seeded reasoning-gym dataset as a prompt source and verifier.

    Attributes:
      name, seed, size: the dataset's identity; row ``i`` is the same for the same triple.
      dataset: the underlying ``reasoning_gym`` ProceduralDataset.
    """

    def __init__(self, name: str, seed: int, size: int, sources: Sequence[str] = SOURCES,
                 max_answer_chars: int = 512, **task_kwargs):
        import reasoning_gym

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        try:
            self.dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **task_kwargs)
        except Exception as e:  # unknown name or bad config: say which
            raise ValueError(f"reasoning-gym task {name!r} (seed={seed}, size={size}, "
                             f"kwargs={task_kwargs}) could not be created: {e}") from e
        self.name, self.seed, self.size = name, int(seed), int(size)
        self.sources = tuple(sources)
        extract_answer("", self.sources)  # validates the names
        self.max_answer_chars = int(max_answer_chars)
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        """Row ``i``: ``{"question": str, "answer": str, "metadata": dict}``; metadata also has
        ``task`` and ``index`` so rows from several tasks can be mixed and scored."""
        if not -self.size <= i < self.size:
            raise IndexError(f"row {i} out of range for {self.name} of size {self.size}")
        i %= self.size
        row = self._rows.get(i)
        if row is None:
            e = self.dataset[i]
            meta = dict(e.get("metadata", {}))
            meta.setdefault("task", self.name)
            meta.setdefault("index", i)
            row = {"question": e["question"], "answer": e["answer"], "metadata": meta}
            self._rows[i] = row
        return row

    def __iter__(self) -> Iterator[dict]:
        for i in range(self.size):
            yield self[i]

    def rows(self, start: int = 0, stop: Optional[int] = None) -> list[dict]:
        """Rows ``start:stop`` as a list."""
        return [self[i] for i in range(start, self.size if stop is None else stop)]

    def _row(self, r: Union[int, dict]) -> dict:
        return self[r] if isinstance(r, (int, np.integer)) else r

    def score_answers(self, answers: Sequence[Optional[str]],
                      rows: Sequence[Union[int, dict]]) -> np.ndarray:
        """reasoning-gym's score of already-extracted answers, float32 ``[N]`` in [0, 1].

        Args:
          answers: N answers (None = nothing extracted; the task decides its score).
          rows: N rows (dicts as yielded) or row indices into this task.
        """
        if len(answers) != len(rows):
            raise ValueError(f"{len(answers)} answers but {len(rows)} rows")
        out = np.zeros(len(answers), np.float32)
        cache: dict = {}
        for k, (a, r) in enumerate(zip(answers, rows)):
            row = self._row(r)
            key = (id(row), a)
            s = cache.get(key)
            if s is None:
                s = self._score_one(a, row)
                cache[key] = s
            out[k] = s
        return out

    def score(self, completions: Sequence[str], rows: Sequence[Union[int, dict]]) -> np.ndarray:
        """Extracts each completion's answer, then :meth:`score_answers`. float32 ``[N]``."""
        answers = [extract_answer(c, self.sources) for c in completions]
        return self.score_answers(answers, rows)

    def answers(self, completions: Sequence[str],
                rows: Sequence[Union[int, dict]]) -> list[Optional[str]]:
        """The extracted final answer of each completion (``extract_answer`` with this task's
        sources; None = none): what maj@k and distinct-answer counts compare."""
        return [extract_answer(c, self.sources) for c in completions]

    def _score_one(self, answer: Optional[str], row: dict) -> float:
        if answer is not None:
            answer = answer.strip()
            if len(answer) > self.max_answer_chars:
                return _COUNTDOWN_MALFORMED if self.name == "countdown" else 0.0
            if self.name == "countdown" and ("**" in answer
                                             or _COUNTDOWN_OK.fullmatch(answer) is None):
                return _COUNTDOWN_MALFORMED
        try:
            return float(self.dataset.score_answer(answer, row))
        except Exception:  # noqa: BLE001 - a verifier bug must not stop training
            return 0.0


# ----------------------------------------------------------------------------- our own tasks


class _OwnTask:
    """Rows, scoring and canonical answers shared by our own tasks.

    A subclass sets ``name``, ``seed``, ``size``, ``max_answer_chars`` and ``_rows = {}``, and
    defines ``_make_row(i)`` (row i from ``(seed, i)`` alone), ``parse(completion, row)`` (the
    completion's answer to ``row``, or None), ``check(parsed, row)`` and ``canonical(parsed)``
    (the string distinct solutions are compared by)."""

    name = ""

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[dict]:
        for i in range(self.size):
            yield self[i]

    def rows(self, start: int = 0, stop: Optional[int] = None) -> list[dict]:
        """Rows ``start:stop`` as a list."""
        return [self[i] for i in range(start, self.size if stop is None else stop)]

    def __getitem__(self, i: int) -> dict:
        if not -self.size <= i < self.size:
            raise IndexError(f"row {i} out of range for {self.name} of size {self.size}")
        i %= self.size
        row = self._rows.get(i)
        if row is None:
            row = self._make_row(i)
            self._rows[i] = row
        return row

    def _row(self, r: Union[int, dict]) -> dict:
        return self[r] if isinstance(r, (int, np.integer)) else r

    def _answer_text(self, completion: str) -> Optional[str]:
        """The text inside the last ``<answer>`` / ``\\boxed{}`` if there is one (None if it is
        longer than ``max_answer_chars``), else the whole completion."""
        text = extract_answer(completion, ("answer_tag", "boxed"))
        if text is None:
            return completion
        return None if len(text) > self.max_answer_chars else text

    def score(self, completions: Sequence[str], rows: Sequence[Union[int, dict]]) -> np.ndarray:
        """1.0 for a correct completion, else 0.0; float32 ``[N]``."""
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        rows = [self._row(r) for r in rows]
        return np.array([float(self.check(self.parse(c, r), r)) for c, r in zip(completions, rows)],
                        np.float32)

    def answers(self, completions: Sequence[str],
                rows: Sequence[Union[int, dict]]) -> list[Optional[str]]:
        """The canonical solution of each completion's answer (None = none found), right or
        wrong: distinct-solution counts take the correct ones."""
        out = []
        for c, r in zip(completions, rows):
            parsed = self.parse(c, self._row(r))
            out.append(None if parsed is None else self.canonical(parsed))
        return out


# ----------------------------------------------------------------------------- sum_to_target

_NUM_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_FORM = {2: "a + b", 3: "a + b + c", 4: "a + b + c + d", 5: "a + b + c + d + e"}
# A maximal chain "n1 + n2 + ..." of unsigned integers. The atomic group stops the regex from
# backing off to a shorter chain when the lookahead fails ("1 + 2 * 3" is no chain at all, not
# "1 + 2" with a tail), and the lookarounds refuse chains that continue as other arithmetic or
# as a decimal / negative number.
# "and" joins terms too: the base model often answers in prose ("1 and 4").
_CHAIN = re.compile(r"(?<![\d.\-\u2212*/\u00d7^])(?>\d+(?:(?:[ \t]*\+[ \t]*|[ \t]+and[ \t]+)\d+)+)"
                    r"(?![ \t]*[*/\u00d7^\d-]|\.\d)")
_PLUS = re.compile(r"[ \t]*\+[ \t]*|[ \t]+and[ \t]+")


def _count_partitions(n: int, k: int, lo: int, distinct: bool) -> int:
    """Number of non-decreasing (strictly increasing if ``distinct``) k-tuples of integers
    >= ``lo`` that sum to n."""
    if k == 0:
        return int(n == 0)
    total = 0
    a = lo
    # The first (smallest) part a leaves n - a for k - 1 parts, each >= a (> a if distinct).
    while a * k + (k * (k - 1) // 2 if distinct else 0) <= n:
        total += _count_partitions(n - a, k - 1, a + 1 if distinct else a, distinct)
        a += 1
    return total


class SumTask(_OwnTask):
    """Write ``terms`` positive whole numbers that add up to a target: many correct answers.

    A task of our own (not reasoning-gym) for measuring the diversity of correct solutions.
    Two modes, each row seeded by ``(seed, index)`` alone (row i does not depend on ``size``):

    * free (``list_size=0``): target T uniform in ``[min_target, max_target]``; "Write two
      positive whole numbers that add up to 37. Give your answer in the form a + b."
      With ``distinct=True`` the numbers must be different ("two different positive ...").
    * list (``list_size=L >= terms``): L distinct integers in ``[1, max_value]``; T is the sum of
      a random ``terms``-subset, redrawn until at least ``min_solutions`` subsets of the list sum
      to T; "Pick two different numbers from the list [12, 5, 30, 7, 18, 25] that add up to 37.
      Give your answer in the form a + b."

    Extraction: the text inside the last ``<answer>...</answer>`` or ``\\boxed{}`` if the
    completion has one, else the whole completion; in it, the last maximal chain
    ``n1 + n2 + ...`` of unsigned integers joined by ``+`` or the word ``and`` ("1 and 4": the
    base model often answers in prose); a chain that continues as ``*``, ``/``, ``^``, a
    decimal or a negative number is not one. Correct (score 1.0, else 0.0) iff that chain has
    exactly ``terms`` numbers, each >= 1, summing to T, all different when ``distinct`` (always
    in list mode) and, in list mode, every number in the list.

    Canonical solution (what ``answers`` returns and distinct-solution counts compare): the
    numbers sorted ascending, joined by ``+`` ("3+5" for both "5 + 3" and "3+5"): addition is
    commutative, so an order is a way of writing a solution, not another solution; leading zeros
    are dropped ("03" is 3). ``metadata["num_solutions"]`` is the number of canonical solutions
    that exist (the ceiling of distinct correct answers for the prompt).

    Rows: ``{"question", "answer" (one reference solution, e.g. "12 + 25"), "metadata": {task,
    index, target, terms, numbers (list mode; else None), distinct, num_solutions}}``.
    """

    name = "sum_to_target"

    def __init__(self, seed: int, size: int, *, terms: int = 2, min_target: int = 10,
                 max_target: int = 99, list_size: int = 0, max_value: int = 50,
                 min_solutions: int = 2, distinct: bool = False,
                 sources: Sequence[str] = SOURCES, max_answer_chars: int = 512):
        # ``sources`` is accepted for make_task's common signature (build_env passes it) and
        # validated; this task reads its own answer form (see the class docstring).
        extract_answer("", tuple(sources))
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if terms not in _FORM:
            raise ValueError(f"sum_to_target: terms must be in {sorted(_FORM)}, got {terms}")
        if list_size:
            if list_size < terms:
                raise ValueError(f"sum_to_target: list_size={list_size} must be 0 (free mode) "
                                 f"or >= terms={terms}")
            if max_value < list_size:
                raise ValueError(f"sum_to_target: max_value={max_value} must be >= "
                                 f"list_size={list_size} (the list has distinct numbers)")
            if min_solutions < 1:
                raise ValueError(f"sum_to_target: min_solutions must be >= 1, got "
                                 f"{min_solutions}")
        else:
            least = terms * (terms + 1) // 2 if distinct else terms
            if not least <= min_target <= max_target:
                raise ValueError(f"sum_to_target: need {least} <= min_target <= max_target; got "
                                 f"min_target={min_target}, max_target={max_target}")
        self.seed, self.size, self.terms = int(seed), int(size), int(terms)
        self.min_target, self.max_target = int(min_target), int(max_target)
        self.list_size, self.max_value = int(list_size), int(max_value)
        self.min_solutions, self.distinct = int(min_solutions), bool(distinct or list_size)
        self.max_answer_chars = int(max_answer_chars)
        self._rows: dict[int, dict] = {}

    def _make_row(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        k, word, form = self.terms, _NUM_WORDS[self.terms], _FORM[self.terms]
        if self.list_size:
            for _ in range(1000):
                numbers = rng.choice(np.arange(1, self.max_value + 1), self.list_size,
                                     replace=False).tolist()
                ref = sorted(rng.choice(numbers, k, replace=False).tolist())
                target = int(sum(ref))
                n_sol = sum(sum(c) == target for c in itertools.combinations(numbers, k))
                if n_sol >= self.min_solutions:
                    break
            else:
                raise ValueError(f"sum_to_target: no list of {self.list_size} numbers in "
                                 f"[1, {self.max_value}] with >= {self.min_solutions} "
                                 f"solutions found for row {i}; lower min_solutions")
            question = (f"Pick {word} different numbers from the list {numbers} that add up to "
                        f"{target}. Give your answer in the form {form}.")
        else:
            numbers = None
            target = int(rng.integers(self.min_target, self.max_target + 1))
            # A reference solution: k - 1 distinct cut points of 1..target-1 (distinct parts
            # are re-drawn until they differ).
            while True:
                cuts = np.sort(rng.choice(np.arange(1, target), k - 1, replace=False))
                ref = sorted(np.diff(np.concatenate([[0], cuts, [target]])).tolist())
                if not self.distinct or len(set(ref)) == k:
                    break
            n_sol = _count_partitions(target, k, 1, self.distinct)
            adj = "different positive" if self.distinct else "positive"
            question = (f"Write {word} {adj} whole numbers that add up to {target}. "
                        f"Give your answer in the form {form}.")
        meta = {"task": self.name, "index": i, "target": target, "terms": k,
                "numbers": numbers, "distinct": self.distinct, "num_solutions": int(n_sol)}
        return {"question": question, "answer": " + ".join(str(x) for x in ref),
                "metadata": meta}

    def parse(self, completion: Optional[str], row: Optional[dict] = None) -> Optional[tuple]:
        """The numbers of the completion's answer chain, sorted ascending, or None (none found;
        a longer-than-``max_answer_chars`` answer container also gives None). ``row`` is not
        needed (the common signature of our tasks)."""
        if completion is None:
            return None
        text = self._answer_text(completion)
        if text is None:
            return None
        last = None
        for last in _CHAIN.finditer(text):
            pass
        if last is None:
            return None
        return tuple(sorted(int(x) for x in _PLUS.split(last.group())))

    def check(self, nums: Optional[tuple], row: dict) -> bool:
        """Whether sorted numbers ``nums`` solve ``row``."""
        meta = row["metadata"]
        if nums is None or len(nums) != meta["terms"] or min(nums) < 1:
            return False
        if sum(nums) != meta["target"]:
            return False
        if meta["distinct"] and len(set(nums)) != len(nums):
            return False
        if meta["numbers"] is not None and not set(nums) <= set(meta["numbers"]):
            return False
        return True

    @staticmethod
    def canonical(nums: tuple) -> str:
        """The canonical solution "3+5" of sorted numbers."""
        return "+".join(str(x) for x in nums)


# ----------------------------------------------------------------------------- number_in_range

# An unsigned whole number that is not part of a decimal ("15.5", "3.") or a negative number.
_INTEGER = re.compile(r"(?<![\d.\-\u2212])\d+(?![\d]|\.\d)")


class RangeTask(_OwnTask):
    """Write a whole number strictly between two bounds, optionally divisible by k: many
    correct answers, each a single number.

    A task of our own (not reasoning-gym) for measuring the diversity of correct answers with a
    policy too small for arithmetic (SmolLM2-135M cannot add: ``sum_to_target``'s base-model
    successes came from copying its prompt's worked example). Row i is seeded by
    ``(seed, i)`` alone: the lower bound ``low`` uniform in ``[min_low, max_low]``, the width
    uniform in ``[min_width, max_width]`` (``high = low + width``), the divisor uniform in
    ``divisors``; redrawn until at least ``min_solutions`` numbers qualify. Question: "Write a
    whole number greater than 12 and less than 25." (divisor 1) or "... less than 25 that is
    divisible by 3." Bounds are exclusive, so repeating the question's numbers is not an answer.

    Extraction: the text inside the last ``<answer>...</answer>`` or ``\\boxed{}`` if the
    completion has one, else the whole completion; in it, the unsigned whole numbers that are not
    part of a decimal or a negative number ("15.5" and "-3" are none) and are not one of the
    question's two bounds (repeating the question is allowed: "A number greater than 5 and less
    than 20 is 12."). The answer is that number if exactly one distinct one is left, else there
    is none: a list ("6, 7, 8") is not an answer. (A last-number rule was tried first: GRPO
    learned within 20 steps to enumerate from the lower bound, "5, 6, 7, 8, 9, 1", and let
    the token limit cut the list inside the range.) Correct (score 1.0, else 0.0) iff
    ``low < n < high`` and ``n % divisor == 0``.

    Canonical answer (what ``answers`` returns and distinct-answer counts compare): the number
    without leading zeros ("015" is "15"). ``metadata["num_solutions"]`` is the number of
    qualifying numbers (the ceiling of distinct correct answers for the prompt).

    Rows: ``{"question", "answer" (one qualifying number), "metadata": {task, index, low, high,
    divisor, num_solutions}}``.
    """

    name = "number_in_range"

    def __init__(self, seed: int, size: int, *, min_low: int = 1, max_low: int = 50,
                 min_width: int = 6, max_width: int = 20, divisors: Sequence[int] = (1,),
                 min_solutions: int = 3, sources: Sequence[str] = SOURCES,
                 max_answer_chars: int = 512):
        extract_answer("", tuple(sources))  # validated, as SumTask does
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 <= min_low <= max_low:
            raise ValueError(f"number_in_range: need 0 <= min_low <= max_low; got "
                             f"min_low={min_low}, max_low={max_low}")
        if not 2 <= min_width <= max_width:
            raise ValueError(f"number_in_range: need 2 <= min_width <= max_width; got "
                             f"min_width={min_width}, max_width={max_width}")
        divisors = tuple(int(d) for d in divisors)
        if not divisors or min(divisors) < 1:
            raise ValueError(f"number_in_range: divisors must be positive whole numbers; got "
                             f"{list(divisors)}")
        if min_solutions < 1:
            raise ValueError(f"number_in_range: min_solutions must be >= 1, got {min_solutions}")
        # The widest interval must hold min_solutions multiples of the largest divisor for the
        # redraw below to end: (max_width - 1) // d multiples at least.
        if (max_width - 1) // max(divisors) < min_solutions:
            raise ValueError(f"number_in_range: max_width={max_width} is too narrow for "
                             f"min_solutions={min_solutions} multiples of {max(divisors)}")
        self.seed, self.size = int(seed), int(size)
        self.min_low, self.max_low = int(min_low), int(max_low)
        self.min_width, self.max_width = int(min_width), int(max_width)
        self.divisors, self.min_solutions = divisors, int(min_solutions)
        self.max_answer_chars = int(max_answer_chars)
        self._rows: dict[int, dict] = {}

    def _make_row(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        while True:
            low = int(rng.integers(self.min_low, self.max_low + 1))
            high = low + int(rng.integers(self.min_width, self.max_width + 1))
            d = int(self.divisors[rng.integers(len(self.divisors))])
            solutions = [n for n in range(low + 1, high) if n % d == 0]
            if len(solutions) >= self.min_solutions:
                break
        ref = int(solutions[rng.integers(len(solutions))])
        tail = "" if d == 1 else f" that is divisible by {d}"
        question = f"Write a whole number greater than {low} and less than {high}{tail}."
        meta = {"task": self.name, "index": i, "low": low, "high": high, "divisor": d,
                "num_solutions": len(solutions)}
        return {"question": question, "answer": str(ref), "metadata": meta}

    def parse(self, completion: Optional[str], row: Optional[dict] = None) -> Optional[int]:
        """The one whole number of the completion's answer besides ``row``'s bounds, or None
        (none, or several)."""
        if completion is None:
            return None
        text = self._answer_text(completion)
        if text is None:
            return None
        bounds = () if row is None else (row["metadata"]["low"], row["metadata"]["high"])
        found = {int(m.group()) for m in _INTEGER.finditer(text)} - set(bounds)
        return found.pop() if len(found) == 1 else None

    def check(self, n: Optional[int], row: dict) -> bool:
        """Whether ``n`` answers ``row``."""
        meta = row["metadata"]
        return n is not None and meta["low"] < n < meta["high"] and n % meta["divisor"] == 0

    @staticmethod
    def canonical(n: int) -> str:
        return str(n)


_OWN = {SumTask.name: SumTask, RangeTask.name: RangeTask}


def make_task(name: str, seed: int, size: int, **task_kwargs):
    """A task by name: one of ours (``"sum_to_target"``: :class:`SumTask`;
    ``"number_in_range"``: :class:`RangeTask`) or any reasoning-gym task, e.g.
    ``make_task("countdown", seed=0, size=1000, min_numbers=3)``.

    For reasoning-gym, ``task_kwargs`` go to the dataset's config
    (``reasoning_gym.create_dataset``); ``sources`` (answer-extraction precedence) and
    ``max_answer_chars`` are taken by the wrapper. For ours they are the class's keyword
    arguments (an unknown one raises, naming it).
    """
    if name in _OWN:
        try:
            return _OWN[name](seed, size, **task_kwargs)
        except TypeError as e:  # an unknown keyword
            raise ValueError(f"task {name!r}: {e}") from None
    return ReasoningGymTask(name, seed, size, **task_kwargs)


_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _cell_text(v) -> Optional[str]:
    """A question / answer cell as a string, or None when it is missing, blank or not text-like.

    Strings and numbers (not bools) are accepted (AIME's integer answers become ``"204"``); a
    list of them (OlympiadBench's ``final_answer``) is joined with ``", "``; NaN (a Parquet /
    CSV null) and whitespace-only strings count as missing."""
    if isinstance(v, (list, tuple)) and v and all(_cell_text(x) is not None for x in v):
        return ", ".join(_cell_text(x) for x in v)
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    s = str(v)
    return s if s.strip() else None


def load_prompts(path: Union[str, os.PathLike], question_field: str = "problem",
                 answer_field: str = "answer", split: str = "train", *,
                 limit: Optional[int] = None, kind: str = "prompt") -> list[dict]:
    """Rows ``{"question", "answer", "metadata"}`` from a local JSON / JSONL / Parquet / CSV file.

    The one reader of local problem files: training prompts (``jaxgrpo.env``) and evaluation
    benchmarks (``jaxgrpo.evaluate.load_benchmark`` is this with ``kind="benchmark"``). Uses
    ``datasets.load_dataset(<format>, data_files=path)`` (no hub access). ``question`` and
    ``answer`` are strings (numbers are converted, a list of answers is joined with ``", "``);
    ``metadata`` holds the other columns plus ``source`` (the path) and ``index`` (the row
    number). ``limit`` keeps the first ``limit`` rows (file order). ``kind`` only words the error
    messages ("prompt file ..." / "benchmark file ...").

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError (each message names the file): unknown extension; the file is empty or has no
        rows; it cannot be parsed; a missing column (the message names the column and the
        columns found); a row whose question / answer is missing, null, blank or not a string or
        number (the message names the row); ``limit`` < 1.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise ValueError(f"{path}: unknown {kind} file extension {ext!r}; "
                         f"use one of {sorted(_FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"{path}: limit must be >= 1 or None; got {limit}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the {kind} file is empty")
    import datasets  # deferred: heavy import, only needed here

    try:
        ds = datasets.load_dataset(fmt, data_files=path, split=split)
    except Exception as e:  # malformed JSON, broken Parquet, ...
        raise ValueError(f"{path}: could not read as {fmt}: {type(e).__name__}: {e}") from e
    if len(ds) == 0:
        raise ValueError(f"{path}: the {kind} file has no rows")
    cols = list(ds.column_names)
    for field in (question_field, answer_field):
        if field not in cols:
            raise ValueError(f"{path}: missing column {field!r}; columns found: {cols}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = []
    for i, rec in enumerate(ds):
        text = {}
        for field in (question_field, answer_field):
            text[field] = _cell_text(rec[field])
            if text[field] is None:
                what = (f"row {i} has a null or empty {field!r} ({rec[field]!r})"
                        if kind == "benchmark" else f"row {i}: field {field!r} is {rec[field]!r}")
                raise ValueError(f"{path}: {what}; expected a non-empty string or a number")
        meta = {k: v for k, v in rec.items() if k not in (question_field, answer_field)}
        meta.update(source=path, index=i)
        rows.append({"question": text[question_field], "answer": text[answer_field],
                     "metadata": meta})
    return rows
