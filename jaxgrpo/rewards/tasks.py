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
"""
from __future__ import annotations

import os
import re
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from jaxgrpo.rewards.extract import SOURCES, extract_answer

__all__ = ["ReasoningGymTask", "make_task", "load_prompts", "SUPPORTED_TASKS"]

SUPPORTED_TASKS = ("basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic",
                   "simple_equations")
"""Tasks tested here. Any other reasoning-gym dataset name also works through make_task."""

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


def make_task(name: str, seed: int, size: int, **task_kwargs) -> ReasoningGymTask:
    """A reasoning-gym task, e.g. ``make_task("countdown", seed=0, size=1000, min_numbers=3)``.

    ``task_kwargs`` go to the dataset's config (``reasoning_gym.create_dataset``); ``sources``
    (answer-extraction precedence) and ``max_answer_chars`` are taken by the wrapper.
    """
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
