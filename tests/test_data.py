"""Tests for jaxgrpo.data: prompt rendering (chat / plain, prompt_format), left-padded and
truncated tokenization, bucketed widths, the resumable PromptIterator, the question-token mask
and the checks of local problem files (check_prompt_file), against hand-computed expectations.

Most tests use ``_CharTokenizer`` (one token per character, id = code point, offsets = the
character's span), so every expected id, width and mask is written down by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxgrpo import data
from jaxgrpo.errors import ConfigError

PAD = 0


class _CharTokenizer:
    """One token per character: id = ord(ch); no chat template."""

    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [ord(ch) for ch in text]

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"input_ids": self.encode(text),
                "offset_mapping": [(i, i + 1) for i in range(len(text))]}


def _ids(s):
    return [ord(ch) for ch in s]


class _DataCfg:
    def __init__(self, **kw):
        self.template = kw.get("template", "plain")
        self.prompt_format = kw.get("prompt_format", "{question}")
        self.system_prompt = kw.get("system_prompt", "")
        self.max_prompt_tokens = kw.get("max_prompt_tokens", 96)


# ----------------------------------------------------------------------------- names, templates


def test_split_names():
    assert data.split_names("a, b,,c") == ("a", "b", "c")
    assert data.split_names(" answer_tag ,boxed ") == ("answer_tag", "boxed")
    assert data.split_names("") == () and data.split_names(" , ") == ()


def test_render_prompt_plain_fills_the_prompt_format():
    fmt = "{question}\nGive only the final answer in \\boxed{{}}."  # the default's shape
    got = data.render_prompt(None, "What is 2+3?", template="plain", prompt_format=fmt)
    assert got == "What is 2+3?\nGive only the final answer in \\boxed{}."
    # plain ignores the system prompt and needs no tokenizer
    assert data.render_prompt(None, "q", template="plain", prompt_format="Q: {question} A:",
                              system_prompt="be brief") == "Q: q A:"


def test_render_prompt_chat_is_chatml_by_hand(tiny_tokenizer):
    got = data.render_prompt(tiny_tokenizer, "2+2?", template="chat",
                             prompt_format="Solve: {question}")
    assert got == ("<|im_start|>user\nSolve: 2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n")
    got = data.render_prompt(tiny_tokenizer, "2+2?", template="chat",
                             prompt_format="{question}", system_prompt="Be brief.")
    assert got == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                   "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_render_prompt_chat_without_a_template_says_use_plain():
    with pytest.raises(ValueError, match=r"no chat template.*data\.template=plain"):
        data.render_prompt(_CharTokenizer(), "q", template="chat", prompt_format="{question}")


# ----------------------------------------------------------------------------- tokenization


def test_tokenize_left_padded_keeps_the_last_tokens():
    tok = _CharTokenizer()
    ids, mask, n_trunc = data.tokenize_left_padded(tok, ["abcdef", "xy", "pqr"], 4, PAD)
    # "abcdef" keeps its last 4 characters; width = the longest kept prompt (4)
    np.testing.assert_array_equal(ids, [_ids("cdef"), [PAD, PAD] + _ids("xy"),
                                        [PAD] + _ids("pqr")])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    assert n_trunc == 1 and ids.dtype == np.int32 and mask.dtype == bool
    # no truncation: width is the longest prompt, not max_len
    ids, mask, n_trunc = data.tokenize_left_padded(tok, ["ab", "c"], 10, 7)
    np.testing.assert_array_equal(ids, [_ids("ab"), [7] + _ids("c")])
    assert n_trunc == 0
    # all-empty prompts still give one (masked) column
    ids, mask, _ = data.tokenize_left_padded(tok, ["", ""], 10, 7)
    assert ids.shape == (2, 1) and not mask.any() and (ids == 7).all()


def test_bucket_length_and_pad_left_to():
    assert [data.bucket_length(n) for n in (0, 1, 15, 16, 17, 33)] == [0, 16, 16, 16, 32, 48]
    assert data.bucket_length(9, multiple=8) == 16
    t = np.array([[5, 6], [0, 7]], np.int32)
    m = np.array([[True, True], [False, True]])
    t2, m2 = data.pad_left_to(t, m, 4, 9)
    np.testing.assert_array_equal(t2, [[9, 9, 5, 6], [9, 9, 0, 7]])
    np.testing.assert_array_equal(m2, [[0, 0, 1, 1], [0, 0, 0, 1]])
    t3, m3 = data.pad_left_to(t, m, 2, 9)  # already wide enough: unchanged
    assert t3 is t and m3 is m


def test_encode_rows_truncates_and_buckets_by_hand():
    tok = _CharTokenizer()
    rows = [{"question": "abcdefghijklmnopqrstuvwxyz"}, {"question": "xy"}]
    kw = dict(template="plain", prompt_format="Q:{question}", system_prompt="", pad_id=PAD)
    # prompts of 28 and 4 characters; max 20 keeps "ghij...z"; width min(bucket(20)=32, 20)
    ids, mask, n = data.encode_rows(tok, rows, max_prompt_tokens=20, **kw)
    assert ids.shape == (2, 20) and n == 1
    np.testing.assert_array_equal(ids[0], _ids("ghijklmnopqrstuvwxyz"))
    np.testing.assert_array_equal(ids[1], [PAD] * 16 + _ids("Q:xy"))
    np.testing.assert_array_equal(mask.sum(1), [20, 4])
    # max 40: nothing truncated; width = bucket(28) = 32 (below max_prompt_tokens)
    ids, mask, n = data.encode_rows(tok, rows, max_prompt_tokens=40, **kw)
    assert ids.shape == (2, 32) and n == 0
    np.testing.assert_array_equal(ids[0], [PAD] * 4 + _ids("Q:abcdefghijklmnopqrstuvwxyz"))
    # short prompts: width 16 even with max_prompt_tokens=96
    ids, mask, n = data.encode_rows(tok, [{"q": "ab"}], max_prompt_tokens=96,
                                    question_key="q", **kw)
    np.testing.assert_array_equal(ids, [[PAD] * 12 + _ids("Q:ab")])


def test_encode_prompts_reads_the_config_data_section(tiny_tokenizer):
    cfg = _DataCfg(template="chat", prompt_format="Q {question}", system_prompt="S",
                   max_prompt_tokens=64)
    ids, mask, n = data.encode_prompts(tiny_tokenizer, [{"question": "what is 12 + 30?"}], cfg,
                                       pad_id=tiny_tokenizer.pad_token_id)
    text = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ what is 12 + 30?<|im_end|>\n"
            "<|im_start|>assistant\n")
    want = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert n == 0 and ids.shape[1] == data.bucket_length(len(want)) and ids.shape[1] % 16 == 0
    np.testing.assert_array_equal(ids[0][mask[0]], want)
    assert tiny_tokenizer.decode(ids[0][mask[0]].tolist()) == text
    assert (ids[0][~mask[0]] == tiny_tokenizer.pad_token_id).all()
    assert mask[0, -1] and not mask[0, 0]  # left padded


def test_decode_completions_drops_padding_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    a = tok.encode("Answer: 42", add_special_tokens=False) + [tok.eos_token_id]
    b = tok.encode("Paris", add_special_tokens=False)
    width = len(a) + 2
    tokens = np.full((2, width), tok.pad_token_id, np.int32)
    mask = np.zeros((2, width), bool)
    tokens[0, :len(a)], mask[0, :len(a)] = a, True
    tokens[1, :len(b)], mask[1, :len(b)] = b, True
    tokens[1, len(b)] = tok.encode("!", add_special_tokens=False)[0]  # masked out: not decoded
    assert data.decode_completions(tok, tokens, mask) == ["Answer: 42", "Paris"]


# ----------------------------------------------------------------------------- question mask


def test_question_token_mask_by_hand():
    tok = _CharTokenizer()
    cfg = _DataCfg(prompt_format="Q:{question}?", max_prompt_tokens=96)
    rows = [{"question": "abc"}, {"question": "Q"}]  # "Q" also occurs in the format: last one
    ids, mask, _ = data.encode_prompts(tok, rows, cfg, PAD)
    qm = data.question_token_mask(tok, rows, cfg, ids.shape[1])
    assert qm.shape == ids.shape == (2, 16)
    want0 = [0] * 10 + [0, 0, 1, 1, 1, 0]  # "Q:abc?"
    want1 = [0] * 12 + [0, 0, 1, 0]  # "Q:Q?": the question's (last) occurrence
    np.testing.assert_array_equal(qm, np.array([want0, want1], bool))
    assert not (qm & ~mask).any()
    # truncation keeps the last max_prompt_tokens, as encode_prompts does
    cfg = _DataCfg(prompt_format="Q:{question}?", max_prompt_tokens=3)
    ids, mask, n = data.encode_prompts(tok, rows[:1], cfg, PAD)
    np.testing.assert_array_equal(ids, [_ids("bc?")])
    np.testing.assert_array_equal(data.question_token_mask(tok, rows[:1], cfg, 3), [[1, 1, 0]])
    with pytest.raises(ValueError, match=r"prompt 0 has 3 tokens, more than width=2"):
        data.question_token_mask(tok, rows[:1], cfg, 2)


# ----------------------------------------------------------------------------- PromptIterator


def test_prompt_iterator_epochs_are_permutations_and_resume_exactly():
    rows = [{"question": str(i)} for i in range(7)]
    it = data.PromptIterator(rows, seed=3)
    first = it.next_batch(5) + it.next_batch(9)  # crosses into epoch 2
    assert it.position == 14
    epoch1, epoch2 = first[:7], first[7:]
    assert sorted(r["question"] for r in epoch1) == [str(i) for i in range(7)]
    assert sorted(r["question"] for r in epoch2) == [str(i) for i in range(7)]
    assert epoch1 != epoch2  # reshuffled per epoch
    assert epoch1 != rows  # shuffled at all
    # the same seed gives the same stream; a resumed iterator continues it
    again = data.PromptIterator(rows, seed=3)
    assert again.next_batch(14) == first
    resumed = data.PromptIterator(rows, seed=3, position=5)
    assert resumed.next_batch(9) == first[5:]
    assert data.PromptIterator(rows, seed=4).next_batch(7) != epoch1
    with pytest.raises(ValueError, match="no rows"):
        data.PromptIterator([], seed=0)


# ----------------------------------------------------------------------------- check_prompt_file


def _write_jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return str(path)


def _one_line_error(match, fn, *args, **kw):
    with pytest.raises(ConfigError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_check_prompt_file_counts_rows_of_each_format(tmp_path):
    from jaxgrpo.rewards.tasks import load_prompts

    recs = [{"problem": f"{i}+1?", "answer": i + 1} for i in range(5)]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in recs[:2]) + "\n\n  \n"
                  + "\n".join(json.dumps(r) for r in recs[2:]) + "\n")  # blank lines skipped
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(recs, indent=1))
    lines_json = tmp_path / "lines.json"  # a .json file may hold JSON lines
    _write_jsonl(lines_json, recs)
    csv = tmp_path / "p.csv"
    csv.write_text("problem,answer\n" + "".join(f"\"{i}+1?\",{i + 1}\n" for i in range(5)))
    import datasets
    pq = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"problem": r["problem"], "answer": str(r["answer"])}
                                for r in recs]).to_parquet(str(pq))
    for p in (jl, arr, lines_json, csv, pq):
        assert data.check_prompt_file(str(p), "problem", "answer") == 5, p
        # what passes the check is what the reader (datasets) loads
        rows = load_prompts(p, question_field="problem", answer_field="answer")
        assert [r["question"] for r in rows] == [f"{i}+1?" for i in range(5)], p
        assert [r["answer"] for r in rows] == [str(i + 1) for i in range(5)], p
    # a CSV is read only up to max_rows: no count
    assert data.check_prompt_file(str(csv), "problem", "answer", max_rows=3) is None
    assert data.check_prompt_file(str(pq), "problem", "answer", max_rows=2) == 5


def test_check_prompt_file_checks_only_the_first_max_rows(tmp_path):
    recs = [{"q": "x", "a": "1"}] * 4 + [{"q": "x"}]
    p = _write_jsonl(tmp_path / "p.jsonl", recs)
    assert data.check_prompt_file(p, "q", "a", max_rows=4) == 5
    _one_line_error(r"line 5: no field 'a'", data.check_prompt_file, p, "q", "a", max_rows=5)


def test_check_prompt_file_errors_name_the_key_file_and_line(tmp_path):
    check = data.check_prompt_file
    missing = str(tmp_path / "missing.jsonl")
    _one_line_error(r"config\.data\.path='.*missing\.jsonl': file not found", check, missing,
                    "q", "a")
    _one_line_error(r"config\.data\.eval_path='.*missing\.jsonl': file not found", check,
                    missing, "q", "a", key="data.eval_path")
    txt = tmp_path / "p.txt"
    txt.write_text("x")
    _one_line_error(r"p\.txt'?: unknown extension '\.txt'", check, str(txt), "q", "a")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(r"empty\.jsonl'?: the file is empty", check, str(empty), "q", "a")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    _one_line_error(r"blank\.jsonl'?: the file has only blank lines", check, str(blank), "q", "a")

    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"q": "x", "a": "1"}\n{"q": "y", "a": \n')
    _one_line_error(r"bad\.jsonl'?: line 2: not valid JSON .*one object per line", check,
                    str(bad_line), "q", "a")
    no_field = _write_jsonl(tmp_path / "nofield.jsonl", [{"q": "x", "a": "1"}, {"q": "y"}])
    msg = _one_line_error(r"nofield\.jsonl'?: line 2: no field 'a' .*config\.data\.answer_field",
                          check, no_field, "q", "a")
    assert "['q']" in msg  # the fields it has
    _one_line_error(r"line 1: no field 'question' .*config\.data\.question_field", check,
                    no_field, "question", "a")
    for value in (None, "  ", True, {"x": 1}, []):
        p = _write_jsonl(tmp_path / "val.jsonl", [{"q": "x", "a": "1"}, {"q": "x", "a": value}])
        _one_line_error(r"line 2: field 'a' is .*non-empty string or a number", check, p, "q", "a")
    # numbers and lists of strings are accepted answers
    ok = _write_jsonl(tmp_path / "ok.jsonl", [{"q": "x", "a": 3.5}, {"q": "y", "a": ["1", "2"]}])
    assert check(ok, "q", "a") == 2
    not_obj = _write_jsonl(tmp_path / "list.jsonl", [{"q": "x", "a": "1"}, [1, 2]])
    _one_line_error(r"line 2: expected an object with fields 'q' and 'a', got list", check,
                    not_obj, "q", "a")

    arr_bad = tmp_path / "arr.json"
    arr_bad.write_text('[\n {"q": "x", "a": "1"},\n {"q": \n')
    _one_line_error(r"arr\.json'?: line \d+ column \d+: not valid JSON", check, str(arr_bad),
                    "q", "a")
    arr_empty = tmp_path / "arr_empty.json"
    arr_empty.write_text("[]")
    _one_line_error(r"the JSON array is empty", check, str(arr_empty), "q", "a")
    arr_ints = tmp_path / "ints.json"
    arr_ints.write_text("[1, 2]")
    _one_line_error(r"row 1 of the JSON array: expected an object", check, str(arr_ints),
                    "q", "a")
    neither = tmp_path / "neither.json"
    neither.write_text("not json at all\n")
    _one_line_error(r"neither JSON lines .* nor a JSON array: line 1", check, str(neither),
                    "q", "a")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"q": "caf\xe9", "a": "1"}\n')
    _one_line_error(r"latin\.jsonl'?: not UTF-8 text", check, str(latin), "q", "a")

    header_only = tmp_path / "h.csv"
    header_only.write_text("q,a\n")
    _one_line_error(r"h\.csv'?: the file has a header but no rows", check, str(header_only),
                    "q", "a")
    csv_gap = tmp_path / "gap.csv"
    csv_gap.write_text("q,a\nx,1\ny,\n")
    _one_line_error(r"gap\.csv'?: line 3: field 'a' is ''", check, str(csv_gap), "q", "a")
    csv_col = tmp_path / "col.csv"
    csv_col.write_text("question,a\nx,1\n")
    _one_line_error(r"line 2: no field 'q'", check, str(csv_col), "q", "a")


def test_check_prompt_file_parquet_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    check = data.check_prompt_file
    p = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"question": ["x"], "answer": ["1"]}), str(p))
    _one_line_error(r"cols\.parquet'?: no column 'problem' \(columns: \['question', 'answer'\]\)"
                    r"; set config\.data\.question_field", check, str(p), "problem", "answer")
    p = tmp_path / "null.parquet"
    pq.write_table(pa.table({"q": ["x", "y"], "a": ["1", None]}), str(p))
    _one_line_error(r"null\.parquet'?: row 2: field 'a' is None", check, str(p), "q", "a")
    p = tmp_path / "none.parquet"
    pq.write_table(pa.table({"q": pa.array([], pa.string()), "a": pa.array([], pa.string())}),
                   str(p))
    _one_line_error(r"none\.parquet'?: the file has no rows", check, str(p), "q", "a")
    p = tmp_path / "garbage.parquet"
    p.write_bytes(b"PAR1 this is not a parquet file")
    _one_line_error(r"garbage\.parquet'?: could not read as Parquet", check, str(p), "q", "a")


def test_question_token_mask_marks_the_question_in_the_templated_prompt(tiny_tokenizer):
    import ml_collections as mc

    from jaxgrpo.data import encode_prompts, question_token_mask

    rows = [{"question": "what is 12 + 30?"}, {"question": "The capital of France"}]
    cfg = mc.ConfigDict(dict(template="chat", prompt_format="{question}\nAnswer: ",
                             system_prompt="Let me think step by step.", max_prompt_tokens=64))
    pad = tiny_tokenizer.pad_token_id
    tokens, pmask, _ = encode_prompts(tiny_tokenizer, rows, cfg, pad)
    qm = question_token_mask(tiny_tokenizer, rows, cfg, tokens.shape[1])
    assert qm.shape == tokens.shape and not np.any(qm & ~pmask)
    for i, r in enumerate(rows):
        q_ids = tokens[i][qm[i]]
        assert tiny_tokenizer.decode(q_ids.tolist()).strip() == r["question"]
        assert qm[i].sum() < pmask[i].sum()  # template and instructions are not question tokens
    cfg.max_prompt_tokens = 6  # truncation keeps the end of the prompt: no question token left
    tokens, pmask, _ = encode_prompts(tiny_tokenizer, rows, cfg, pad)
    qm = question_token_mask(tiny_tokenizer, rows, cfg, tokens.shape[1])
    assert qm.shape == tokens.shape and not np.any(qm & ~pmask)
