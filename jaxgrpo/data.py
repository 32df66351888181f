"""Prompt batches: rows {question, answer} -> templated, left-padded token arrays.

A ``PromptIterator`` walks a list of rows in a seeded order, one epoch after another; its whole
state is one integer (``position``: rows consumed), which is saved in checkpoints so a resumed run
sees exactly the prompts the uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np


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
