"""Prompt batches: rows {question, answer} -> templated, left-padded token arrays.

A ``PromptIterator`` walks a list of rows in a seeded order, one epoch after another; its whole
state is one integer (``position``: rows consumed), which is saved in checkpoints so a resumed run
sees exactly the prompts the uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import ClassVar, List, Optional, Sequence, Tuple

import numpy as np

from jaxgrpo import config
from jaxgrpo.errors import ConfigError

TEMPLATES = ("chat", "plain")  # config.data.template: the tokenizer's chat template, or none
DATA_SOURCES = ("reasoning_gym", "file")  # config.data.source


def split_names(s: str) -> tuple:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: a comma-separated config value as names."""
    return tuple(x.strip() for x in s.split(",") if x.strip())


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(config.Section):
    """Prompts and gold answers.

    The ``config.data`` section, read by ``jaxgrpo.env.build_env`` and the prompt encoders here.
    """

    NAME: ClassVar[str] = "data"
    source: str = config.key(
        'reasoning_gym',
        '"reasoning_gym": a generated task; "file": data.path',
        choices=DATA_SOURCES)
    task: str = config.key('basic_arithmetic', 'reasoning-gym task name (source = reasoning_gym)')
    task_kwargs: str = config.key(
        '', 'JSON object of generator options, e.g. \'{"max_terms": 2}\'')
    path: str = config.key('', 'local JSON/JSONL/Parquet/CSV file of problems (source = file)')
    eval_path: str = config.key(
        '', 'held-out file; "" = the last data.eval_size rows of data.path')
    question_field: str = config.key('problem', 'column of the question in data files')
    answer_field: str = config.key('answer', 'column of the gold answer in data files')
    train_size: int = config.key(
        2000, 'generated training problems (source = reasoning_gym)', ge=1)
    eval_size: int = config.key(
        64, 'held-out problems: generated, or the last rows of data.path', ge=1)
    template: str = config.key(
        'chat',
        '"chat": the tokenizer\'s chat template; "plain": prompt_format only',
        choices=TEMPLATES)
    system_prompt: str = config.key('', 'system message of the chat template ("" = none)')
    prompt_format: str = config.key(
        '{question}\nGive only the final answer in \\boxed{{}}.',
        'The user message; {question} is replaced, {{ and }} are literal braces.')
    max_prompt_tokens: int = config.key(96, 'longer prompts keep their last tokens', ge=1)

    def __post_init__(self):
        config.check_template("data.prompt_format", self.prompt_format, ("question",),
                              ("question",))
        if self.task_kwargs:
            try:
                kw = json.loads(self.task_kwargs)
            except json.JSONDecodeError as e:
                config.fail("data.task_kwargs", self.task_kwargs, f"is not JSON ({e})")
            if not isinstance(kw, dict):
                config.fail("data.task_kwargs", self.task_kwargs, "must be a JSON object")
        if self.source == "file":
            if not self.path:
                raise ConfigError("config.data.path is required when config.data.source='file'")
            for name in ("question_field", "answer_field"):
                if not getattr(self, name):
                    config.fail(f"data.{name}", getattr(self, name),
                                "must name a column of the data file")


def render_prompt(tokenizer, question: str, *, template: str, prompt_format: str,
                  system_prompt: str = "") -> str:
    """The prompt text for one question: ``prompt_format`` filled in, then the tokenizer's chat
    template (``template='chat'``) or nothing more (``'plain'``)."""
    user = prompt_format.format(question=question)
    if template == "plain":
        return user
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("data.template='chat' but the tokenizer has no chat template; "
                         "use --config.data.template=plain")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_left_padded(tokenizer, texts: Sequence[str], max_len: int, pad_id: int,
                         ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Token ids [B, L] left-padded to the longest prompt (L <= max_len) and a bool mask.

    Prompts longer than ``max_len`` keep their last ``max_len`` tokens (the question's end and the
    generation prompt matter most); the number truncated is returned third.
    """
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    n_trunc = sum(len(x) > max_len for x in ids)
    ids = [x[-max_len:] for x in ids]
    width = max(1, max(len(x) for x in ids))
    tokens = np.full((len(ids), width), pad_id, np.int32)
    mask = np.zeros((len(ids), width), bool)
    for i, x in enumerate(ids):
        if x:
            tokens[i, width - len(x):] = x
            mask[i, width - len(x):] = True
    return tokens, mask, n_trunc


def bucket_length(n: int, multiple: int = 16) -> int:
    """Round a length up to a multiple, so jitted functions see few distinct shapes."""
    return -(-n // multiple) * multiple


def pad_left_to(tokens: np.ndarray, mask: np.ndarray, width: int, pad_id: int):
    extra = width - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    return (np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id),
            np.pad(mask, ((0, 0), (extra, 0)), constant_values=False))


@dataclasses.dataclass
class PromptIterator:
    """Deterministic, resumable iteration over rows in a seeded order (reshuffled each epoch)."""

    rows: List[dict]
    seed: int
    position: int = 0

    def __post_init__(self):
        if not self.rows:
            raise ValueError("the prompt source has no rows")

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_batch(self, n: int) -> List[dict]:
        out = []
        while len(out) < n:
            epoch, i = divmod(self.position, len(self.rows))
            out.append(self.rows[int(self._order(epoch)[i])])
            self.position += 1
        return out


def encode_prompts(tokenizer, rows: Sequence[dict], data_cfg, pad_id: int,
                   question_key: str = "question") -> Tuple[np.ndarray, np.ndarray, int]:
    """:func:`encode_rows` with the prompt settings of ``config.data``."""
    return encode_rows(tokenizer, rows, template=data_cfg.template,
                       prompt_format=data_cfg.prompt_format, system_prompt=data_cfg.system_prompt,
                       max_prompt_tokens=data_cfg.max_prompt_tokens, pad_id=pad_id,
                       question_key=question_key)


def encode_rows(tokenizer, rows: Sequence[dict], *, template: str, prompt_format: str,
                system_prompt: str, max_prompt_tokens: int, pad_id: int,
                question_key: str = "question") -> Tuple[np.ndarray, np.ndarray, int]:
    """Render (:func:`render_prompt`) and tokenize rows: (ids [P, W], mask [P, W], number of
    prompts truncated), left-padded to a bucketed width W (fewer recompiles)."""
    texts = [render_prompt(tokenizer, r[question_key], template=template,
                           prompt_format=prompt_format, system_prompt=system_prompt) for r in rows]
    tokens, mask, n_trunc = tokenize_left_padded(tokenizer, texts, max_prompt_tokens, pad_id)
    width = min(bucket_length(tokens.shape[1]), max(max_prompt_tokens, tokens.shape[1]))
    tokens, mask = pad_left_to(tokens, mask, width, pad_id)
    return tokens, mask, n_trunc


def decode_completions(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> List[str]:
    """Completion texts: valid tokens only, special tokens (EOS) dropped."""
    return [tokenizer.decode(t[m].tolist(), skip_special_tokens=True)
            for t, m in zip(np.asarray(tokens), np.asarray(mask))]


def question_token_mask(tokenizer, rows: Sequence[dict], data_cfg, width: int,
                        question_key: str = "question") -> np.ndarray:
    """bool [B, width]: True on the prompt tokens of each row's question, aligned with the
    left-padded ``encode_prompts`` output of the same rows (``width`` = its width).

    ProGRPO's question-only prompt confidence (arXiv 2602.05281, METHODS §4 option) reads
    ``Rollout.question_mask``. A token counts as a question token when its character span (the
    tokenizer's offset mapping) overlaps the question's span in the rendered prompt (its last
    occurrence, after any system prompt); template, system prompt and instructions are False.
    Truncation keeps the last ``max_prompt_tokens`` tokens, as ``tokenize_left_padded``.
    """
    out = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        q = r[question_key]
        text = render_prompt(tokenizer, q, template=data_cfg.template,
                             prompt_format=data_cfg.prompt_format,
                             system_prompt=data_cfg.system_prompt)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.rfind(q)
        end = start + len(q)
        flags = [start >= 0 and len(q) > 0 and a < end and b > start
                 for a, b in enc["offset_mapping"]]
        flags = flags[-data_cfg.max_prompt_tokens:]
        if len(flags) > width:
            raise ValueError(f"question_token_mask: prompt {i} has {len(flags)} tokens, more than "
                             f"width={width} (pass the width of encode_prompts' output)")
        if flags:
            out[i, width - len(flags):] = flags
    return out


# ----------------------------------------------------------------------------- checking files

_PROMPT_FORMATS = (".json", ".jsonl", ".parquet", ".csv")
_MAX_PARSED_LINES = 200_000  # JSON lines parsed one by one; beyond this they are only counted


def check_prompt_file(path: str, question_field: str, answer_field: str, *, key: str = "data.path",
                      max_rows: int = 1000) -> Optional[int]:
    """Opens a local problem file and checks it before any model is built; returns its row count
    (None where counting would mean reading a CSV to its end).

    JSON / JSONL: every line (up to 200k) is parsed, so a malformed line is reported with its
    line number; the first ``max_rows`` rows must have a non-empty ``question_field`` and
    ``answer_field`` (a string or a number). Parquet: the schema, the row count and the first
    rows. CSV: the header and the first rows. Raises ``ConfigError`` naming ``config.<key>``,
    the file and the line.
    """
    from jaxgrpo.rewards.tasks import _cell_text

    where = f"config.{key}={path!r}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: file not found")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _PROMPT_FORMATS:
        raise ConfigError(f"{where}: unknown extension {ext!r}; use one of {_PROMPT_FORMATS}")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{where}: the file is empty")

    def check_row(row, what: str):
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: {what}: expected an object with fields "
                              f"{question_field!r} and {answer_field!r}, got {type(row).__name__}")
        for field, fkey in ((question_field, "data.question_field"),
                            (answer_field, "data.answer_field")):
            if field not in row:
                raise ConfigError(f"{where}: {what}: no field {field!r} (fields: "
                                  f"{sorted(row)[:10]}); set config.{fkey}")
            if _cell_text(row[field]) is None:
                raise ConfigError(f"{where}: {what}: field {field!r} is {row[field]!r}; "
                                  "expected a non-empty string or a number")

    if ext == ".parquet":
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(path)
            n = pf.metadata.num_rows
            names = pf.schema_arrow.names
            for field, fkey in ((question_field, "data.question_field"),
                                (answer_field, "data.answer_field")):
                if field not in names:
                    raise ConfigError(f"{where}: no column {field!r} (columns: {names[:10]}); "
                                      f"set config.{fkey}")
            head = next(pf.iter_batches(batch_size=max_rows,
                                        columns=[question_field, answer_field]), None)
        except ConfigError:
            raise
        except Exception as e:  # not a Parquet file, truncated footer, ...
            raise ConfigError(f"{where}: could not read as Parquet: "
                              f"{' '.join(str(e).split())[:300]}") from None
        for i, row in enumerate(head.to_pylist() if head is not None else [], 1):
            check_row(row, f"row {i}")
        if n == 0:
            raise ConfigError(f"{where}: the file has no rows")
        return n
    if ext == ".csv":
        import csv
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            n = 0
            for n, row in enumerate(reader, 1):
                check_row(row, f"line {reader.line_num}")
                if n >= max_rows:
                    return None
        if n == 0:
            raise ConfigError(f"{where}: the file has a header but no rows")
        return n
    with open(path, encoding="utf-8") as f:
        try:
            text_start = f.read(4096).lstrip()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        f.seek(0)
        if text_start.startswith("["):  # one JSON array of row objects
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: line {e.lineno} column {e.colno}: not valid JSON "
                                  f"({e.msg})") from None
            if not rows:
                raise ConfigError(f"{where}: the JSON array is empty")
            for i, row in enumerate(rows[:max_rows], 1):
                check_row(row, f"row {i} of the JSON array")
            return len(rows)
        n = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if lineno > _MAX_PARSED_LINES:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if lineno == 1 and ext == ".json":
                    raise ConfigError(f"{where}: neither JSON lines (one object per line) nor a "
                                      f"JSON array: line 1: {e.msg} at column {e.colno}") from None
                raise ConfigError(f"{where}: line {lineno}: not valid JSON ({e.msg}, column "
                                  f"{e.colno}); expected one object per line") from None
            if n <= max_rows:
                check_row(row, f"line {lineno}")
    if n == 0:
        raise ConfigError(f"{where}: the file has only blank lines")
    return n
