r"""Final-answer extraction from a completion's text.

Three answer sources are recognised:

* ``"answer_tag"``: the last closed ``<answer> ... </answer>`` block (the R1 / Open-RS template,
  arXiv 2501.12948). If that block itself contains a ``\boxed{...}``, the box's content is
  returned (the Open-RS system prompt asks for both: ``<answer> \boxed{42} </answer>``).
* ``"boxed"``: the last ``\boxed{...}`` or ``\fbox{...}`` (nested braces handled; "last" = the
  box that closes last, i.e. the outermost box of the last boxed expression), plus the
  brace-less form ``\boxed 5``. A box that wraps nothing but another box is unwrapped
  (``\boxed{\boxed{5}}`` -> ``5``). Unclosed boxes (a truncated generation) are ignored.
* ``"hash"``: the last GSM8K-style ``#### <answer>`` line (Cobbe et al. 2021, arXiv 2110.14168).

Two lenient sources, never in the default precedence, serve small models that answer in prose:
``"last_number"`` and ``"first_number"``.

Precedence is the order of ``sources`` (default ``("answer_tag", "boxed", "hash")``): the first
source that yields a non-empty answer wins. Returns ``None`` when no source yields one.

Every scan is linear in the text length (a single tokenising regex pass over braces and
backslash escapes, ``str.rfind`` for tags), with no recursion, so 10 kB of nested braces or
thousands of unclosed ``\boxed{`` cost milliseconds.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

__all__ = ["extract_answer", "extract_boxed", "extract_answer_tag", "extract_hash", "SOURCES"]

SOURCES = ("answer_tag", "boxed", "hash")

# `\\.` consumes a backslash escape as one token (so `\{`, `\}` and `\\` are never structural);
# `{` / `}` are the structural braces; `\boxed` / `\fbox` (not `\boxedfoo`) mark a box start.
_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])|\\.|[{}]", re.S)
_BOX_CMD_LEN = {"\\boxed": 6, "\\fbox": 5}
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_WS = " \t\r\n"


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrinks [start, end) past surrounding whitespace without copying."""
    while start < end and text[start] in _WS:
        start += 1
    while end > start and text[end - 1] in _WS:
        end -= 1
    return start, end


def _box_spans(text: str) -> tuple[list[tuple[int, int, int]], dict[int, int]]:
    """Scans ``text`` once; returns boxes as (cmd_start, content_start, content_end) and a map
    open-brace position -> matching close-brace position (for closed braces only)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    boxes_open: list[tuple[int, int]] = []  # (cmd_start, open_brace_pos) for braced boxes
    bare_boxes: list[tuple[int, int, int]] = []
    pending_cmd = -1  # a box command waiting for its `{`
    pending_end = -1
    for m in _TOKEN_RE.finditer(text):
        tok = m.group()
        pos = m.start()
        if tok == "{":
            if pending_cmd >= 0 and text[pending_end:pos].strip(_WS) == "":
                boxes_open.append((pending_cmd, pos))
            pending_cmd = -1
            stack.append(pos)
        elif tok == "}":
            pending_cmd = -1
            if stack:
                match[stack.pop()] = pos
        elif tok in _BOX_CMD_LEN:
            if pending_cmd >= 0:
                _bare_box(text, pending_cmd, pending_end, pos, bare_boxes)
            pending_cmd, pending_end = pos, m.end()
        else:  # another escape, e.g. `\frac` starts with `\f`: treat as plain text
            if pending_cmd >= 0:
                _bare_box(text, pending_cmd, pending_end, pos, bare_boxes)
                pending_cmd = -1
    if pending_cmd >= 0:
        _bare_box(text, pending_cmd, pending_end, len(text), bare_boxes)
    boxes = [(c, o + 1, match[o]) for c, o in boxes_open if o in match]
    return boxes + bare_boxes, match


def _bare_box(text: str, cmd: int, after: int, limit: int, out: list) -> None:
    r"""Records ``\boxed 5`` (a brace-less box: whitespace then one run of non-space chars)."""
    if after >= len(text) or text[after] not in " \t":
        return
    start = after
    while start < limit and text[start] in " \t":
        start += 1
    end = start
    while end < limit and text[end] not in " \t\r\n$":
        end += 1
    if end > start:
        out.append((cmd, start, end))


def extract_boxed(text: str) -> Optional[str]:
    r"""Content of the last closed ``\boxed{}`` / ``\fbox{}`` in ``text`` (see module doc)."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    boxes, match = _box_spans(text)
    if not boxes:
        return None
    # The box that closes last; on a tie of ends (impossible for braced boxes) the earliest start.
    cmd, start, end = max(boxes, key=lambda b: (b[2], -b[0]))
    # Unwrap `\boxed{ \boxed{x} }` by index arithmetic (no substring copies: linear overall).
    by_cmd = {b[0]: b for b in boxes}
    while True:
        s, e = _strip_span(text, start, end)
        inner = by_cmd.get(s)
        if inner is None or inner[2] + 1 != e:  # inner box must end exactly at the content end
            break
        _, start, end = inner
    s, e = _strip_span(text, start, end)
    return text[s:e] if e > s else None


def extract_answer_tag(text: str) -> Optional[str]:
    """Content of the last closed ``<answer>...</answer>``, box-unwrapped, stripped; else None."""
    close = text.rfind("</answer>")
    if close < 0:
        return None
    open_ = text.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    inner = text[open_ + len("<answer>"):close]
    boxed = extract_boxed(inner)
    if boxed is not None:
        return boxed
    inner = inner.strip()
    return inner or None


def extract_hash(text: str) -> Optional[str]:
    """The rest of the last ``#### ...`` line, stripped of whitespace and a trailing period."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    # Scan from the last run of `####` (rfind lands inside a run like `#####`).
    while pos > 0 and text[pos - 1] == "#":
        pos -= 1
    m = _HASH_RE.match(text, pos)
    if m is None:
        return None
    ans = m.group(1).strip().lstrip("#").strip().rstrip(".").strip()
    return ans or None


_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def extract_last_number(text: str) -> Optional[str]:
    """The last number (optionally signed / decimal) in the text; a lenient fallback source for
    small models that answer in prose (not in the default precedence)."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return None if last is None else last.group(0)


def extract_first_number(text: str) -> Optional[str]:
    """The first number in the text ("12" in "12. Because 7 + 5 = 12")."""
    m = _NUMBER_RE.search(text)
    return None if m is None else m.group(0)


_EXTRACTORS = {"answer_tag": extract_answer_tag, "boxed": extract_boxed, "hash": extract_hash,
               "last_number": extract_last_number, "first_number": extract_first_number}


def extract_answer(text: Optional[str], sources: Sequence[str] = SOURCES) -> Optional[str]:
    """The final answer of a completion, or None.

    Args:
      text: the completion text (None or "" give None).
      sources: precedence order over ``"answer_tag"``, ``"boxed"``, ``"hash"``; the first that
        yields a non-empty answer wins.

    Raises:
      ValueError: a name in ``sources`` is not a known source.
    """
    unknown = [s for s in sources if s not in _EXTRACTORS]
    if unknown:
        raise ValueError(f"unknown answer sources {unknown}; known: {list(_EXTRACTORS)}")
    if not text:
        return None
    for s in sources:
        ans = _EXTRACTORS[s](text)
        if ans is not None:
            return ans
    return None
