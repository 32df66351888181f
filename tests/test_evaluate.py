"""Tests for jaxgrpo.evaluate: metrics against hand computations, the runner end to end on a tiny
random decoder, and benchmark-file loading with each error case."""
from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxgrpo import evaluate
from jaxgrpo.evaluate import (default_ks, evaluate_policy, load_benchmark, normalize_answer,
                              pass_at_k, summarize, write_jsonl)


# --------------------------------------------------------------------------- summarize


def _ref_pass_at_k(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_reexport_matches_comb():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (10, 0, 4), (10, 10, 10), (8, 5, 4), (5, 1, 5)]:
        assert float(pass_at_k(n, c, k)) == pytest.approx(_ref_pass_at_k(n, c, k), abs=1e-12)
    assert evaluate.pass_at_k is __import__("jaxgrpo.metrics").metrics.pass_at_k


def test_default_ks():
    assert default_ks(1) == (1,)
    assert default_ks(8) == (1, 2, 4, 8)
    assert default_ks(6) == (1, 2, 4, 6)


def test_normalize_answer():
    assert normalize_answer(" $x = 5$. ") == "x=5"
    assert normalize_answer("\\frac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("  ") is None
    assert normalize_answer(None) is None
    assert normalize_answer("A") != normalize_answer("a")


def test_summarize_hand_computed():
    # 3 prompts x 4 samples.
    correct = np.array([[1, 0, 1, 0],
                        [0, 0, 0, 0],
                        [1, 1, 1, 1]], bool)
    answers = [["5", "3", " 5 ", "3"],        # tie 2-2 among 4: "5" seen first -> correct
               ["7", None, "7", "8"],         # majority wrong
               ["x=1", "$x = 1$", "2/2", "1"]]  # all correct, three distinct normalised answers
    lengths = np.array([[10, 20, 30, 40], [1, 2, 3, 4], [5, 5, 5, 5]])
    entropy = np.array([[1.0, 2.0, 3.0, 4.0], [0.0] * 4, [0.5] * 4])
    m = summarize(correct, answers, lengths, ks=(1, 2, 4), entropy=entropy)

    assert m["num_prompts"] == 3 and m["num_samples"] == 4
    assert m["accuracy"] == pytest.approx(6 / 12)
    for k in (1, 2, 4):
        ref = np.mean([_ref_pass_at_k(4, c, k) for c in (2, 0, 4)])
        assert m[f"pass@{k}"] == pytest.approx(ref, abs=1e-12)
    # maj@1: first answers "5"(ok), "7"(wrong), "x=1"(ok)
    assert m["maj@1"] == pytest.approx(2 / 3)
    # maj@2: p0 {"5","3"} tie -> "5" first -> ok; p1 {"7"} (None skipped) wrong; p2 "x=1" x2 ok
    assert m["maj@2"] == pytest.approx(2 / 3)
    assert m["maj@4"] == pytest.approx(2 / 3)
    assert m["mean_length"] == pytest.approx(lengths.mean())
    assert m["mean_entropy"] == pytest.approx(entropy.mean())
    assert m["num_solved"] == 2
    # distinct correct: p0 {"5"} -> 1, p1 -> 0, p2 {"x=1","2/2","1"} -> 3
    assert m["distinct_correct_answers"] == pytest.approx((1 + 0 + 3) / 3)
    assert "pairwise_cosine_distance_correct" not in m


def test_distinct_correct_solved_and_top_share_hand_computed():
    from jaxgrpo.metrics import distinct_correct, top_correct_share

    correct = np.array([[1, 1, 1, 0, 1],     # correct answers a, a, b, (c wrong), a
                        [0, 0, 0, 0, 0],     # unsolved
                        [1, 1, 0, 1, 1],     # correct x, y, None, z -> x y z distinct
                        [0, 1, 0, 0, 0]], bool)
    answers = [["a", "a", "b", "c", "a"], ["a", "b", "c", "d", "e"],
               ["x", "y", "w", None, "z"], [None, "q", "q", "q", "q"]]
    np.testing.assert_array_equal(distinct_correct(answers, correct), [2, 0, 3, 1])
    share = top_correct_share(answers, correct)
    # p0: "a" 3 of 4 correct; p1: NaN; p2: one each of 4 correct (None counts below); p3: 1/1
    np.testing.assert_allclose(share[[0, 2, 3]], [3 / 4, 1 / 4, 1.0])
    assert np.isnan(share[1])
    m = summarize(correct, answers, np.ones((4, 5)), ks=(1,))
    assert m["distinct_correct_answers"] == pytest.approx((2 + 0 + 3 + 1) / 4)
    assert m["distinct_correct_solved"] == pytest.approx((2 + 3 + 1) / 3)
    assert m["top_correct_share"] == pytest.approx((3 / 4 + 1 / 4 + 1.0) / 3)
    none = summarize(np.zeros((2, 3), bool), [["a"] * 3] * 2, np.ones((2, 3)), ks=(1,))
    assert none["distinct_correct_solved"] == 0.0 and none["top_correct_share"] == 0.0
    with pytest.raises(ValueError, match="distinct_correct"):
        distinct_correct([["a"]], correct)
    with pytest.raises(ValueError, match="top_correct_share"):
        top_correct_share([["a"] * 5], correct)


def test_pairwise_cosine_distance_matches_numpy_loop_on_random_embeddings():
    rng = np.random.default_rng(0)
    p, n, d = 6, 7, 5
    emb = rng.normal(size=(p, n, d))
    correct = rng.random((p, n)) < 0.5
    correct[0] = True
    correct[1] = False
    correct[2, :] = False
    correct[2, 3] = True
    m = summarize(correct, [["a"] * n] * p, np.ones((p, n)), ks=(1,), embeddings=emb)
    per_prompt = []
    for i in range(p):
        idx = np.flatnonzero(correct[i])
        if len(idx) < 2:
            continue
        u = emb[i, idx] / np.linalg.norm(emb[i, idx], axis=-1, keepdims=True)
        per_prompt.append(np.mean([1.0 - u[a] @ u[b] for a in range(len(idx))
                                   for b in range(a + 1, len(idx))]))
    assert m["pairwise_cosine_prompts"] == len(per_prompt)
    assert m["pairwise_cosine_distance_correct"] == pytest.approx(np.mean(per_prompt), abs=1e-5)


def test_maj_at_k_tie_goes_to_first_seen_and_none_do_not_vote():
    correct = np.array([[0, 1, 1, 0]], bool)
    answers = [["3", "5", "5", "3"]]
    m = summarize(correct, answers, np.ones((1, 4)), ks=(1, 2, 3, 4))
    assert m["maj@1"] == 0.0          # "3"
    assert m["maj@2"] == 0.0          # tie "3" vs "5": "3" seen first
    assert m["maj@3"] == 1.0          # "5" twice
    assert m["maj@4"] == 0.0          # tie 2-2: "3" first
    m = summarize(np.array([[0, 0, 1]], bool), [[None, None, "4"]], np.ones((1, 3)), ks=(1, 2, 3))
    assert (m["maj@1"], m["maj@2"], m["maj@3"]) == (0.0, 0.0, 1.0)


def test_pairwise_cosine_distance_on_constructed_embeddings():
    e0, e1, e2 = np.eye(3)
    diag = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    emb = np.stack([
        np.stack([e0, e1, e0 * 3.0, e2]),   # correct 0,1,2: pairs (e0,e1)=1, (e0,e0)=0, (e1,e0)=1
        np.stack([e0, diag, e2, e2]),       # correct 0,1: 1 - 1/sqrt2
        np.stack([e0, e1, e2, e0]),         # one correct -> excluded
    ])
    correct = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]], bool)
    answers = [["a"] * 4] * 3
    m = summarize(correct, answers, np.ones((3, 4)), ks=(1,), embeddings=emb)
    ref = np.mean([2.0 / 3.0, 1.0 - 1.0 / np.sqrt(2)])
    assert m["pairwise_cosine_prompts"] == 2
    assert m["pairwise_cosine_distance_correct"] == pytest.approx(ref, abs=1e-6)
    # No prompt with two correct: count 0, value 0.0, no NaN.
    m = summarize(np.eye(3, 4, dtype=bool), answers, np.ones((3, 4)), ks=(1,), embeddings=emb)
    assert m["pairwise_cosine_prompts"] == 0
    assert m["pairwise_cosine_distance_correct"] == 0.0


def test_summarize_validation():
    c = np.ones((2, 3), bool)
    a = [["1"] * 3] * 2
    with pytest.raises(ValueError, match="1 <= k <= n = 3"):
        summarize(c, a, np.ones((2, 3)), ks=(1, 4))
    with pytest.raises(ValueError, match="answers"):
        summarize(c, [["1"] * 3], np.ones((2, 3)))
    with pytest.raises(ValueError, match="lengths"):
        summarize(c, a, np.ones((2, 2)))
    with pytest.raises(ValueError, match="entropy"):
        summarize(c, a, np.ones((2, 3)), entropy=np.ones(6))
    with pytest.raises(ValueError, match="embeddings"):
        summarize(c, a, np.ones((2, 3)), embeddings=np.ones((2, 3)))


# --------------------------------------------------------------------------- evaluate_policy

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ?"
PAD, EOS = 0, 1
VOCAB = 2 + len(_ALPHABET)


class CharTokenizer:
    """One token per character; ids 0 (pad) and 1 (EOS) are special."""

    pad_token_id = PAD
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [2 + _ALPHABET.index(ch) for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(_ALPHABET[i - 2] for i in ids if i >= 2)


class CountingEncoder:
    """A stand-in sentence encoder: unit vectors from letter counts."""

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        v = np.array([[t.count(ch) for ch in "aeiou"] + [1.0] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _toy_score_fn(texts, rows):
    """Correct iff the completion contains the gold letter; the answer is its first letter."""
    correct = np.array([r["answer"] in t for t, r in zip(texts, rows)], bool)
    answers = [t[0] if t else None for t in texts]
    return correct, answers


def _tiny_model(seed=0):
    from jaxgrpo.models.config import ModelConfig
    from jaxgrpo.models.decoder import Decoder
    cfg = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


ROWS = [{"question": q, "answer": a} for q, a in
        [("what is two plus two", "e"), ("name a vowel", "a"), ("spell cat", "t"),
         ("count to 3", "3"), ("why?", "o")]]
KW = dict(num_samples=4, ks=(1, 2, 4), max_new_tokens=12, temperature=1.0,
          eos_token_ids=(EOS,), batch_prompts=2, prompt_format="q {question} a")


@pytest.fixture(scope="module")
def policy():
    return nnx.split(_tiny_model())


@pytest.fixture(scope="module")
def result(policy):
    graphdef, state = policy
    return evaluate_policy(graphdef, state, CharTokenizer(), ROWS, _toy_score_fn,
                           key=jax.random.key(0), encoder=CountingEncoder(), **KW)


def test_evaluate_policy_shapes_and_records(result, tmp_path):
    m, recs = result["metrics"], result["records"]
    assert m["num_prompts"] == 5 and m["num_samples"] == 4
    assert len(recs) == 5
    for i, (rec, row) in enumerate(zip(recs, ROWS)):
        assert rec["index"] == i and rec["question"] == row["question"]
        assert rec["gold"] == row["answer"]
        for f in ("samples", "answers", "correct", "lengths", "truncated", "entropy"):
            assert len(rec[f]) == 4, f
        assert all(1 <= n <= 12 for n in rec["lengths"])
        # A sample stops at EOS or at max_new_tokens; its text has at most one char per non-EOS
        # token (the random policy may also emit the pad id, which decodes to nothing).
        for text, n, tr in zip(rec["samples"], rec["lengths"], rec["truncated"]):
            assert len(text) <= (n if tr else n - 1)
    for k in (1, 2, 4):
        assert 0.0 <= m[f"pass@{k}"] <= 1.0 and 0.0 <= m[f"maj@{k}"] <= 1.0
    assert 0.0 < m["mean_entropy"] <= math.log(VOCAB) + 1e-5
    assert 0.0 <= m["truncated_frac"] <= 1.0
    assert m["mean_length"] == pytest.approx(np.mean([r["lengths"] for r in recs]))
    path = tmp_path / "records.jsonl"
    write_jsonl(path, recs)
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back == recs


def test_evaluate_policy_accuracy_equals_score_fn_mean(result):
    m, recs = result["metrics"], result["records"]
    texts = [t for r in recs for t in r["samples"]]
    rows = [row for row in ROWS for _ in range(4)]
    correct, answers = _toy_score_fn(texts, rows)
    assert m["accuracy"] == pytest.approx(correct.mean())
    assert [c for r in recs for c in r["correct"]] == correct.tolist()
    assert [a for r in recs for a in r["answers"]] == answers
    c = correct.reshape(5, 4).sum(axis=1)
    assert m["pass@2"] == pytest.approx(np.mean([_ref_pass_at_k(4, ci, 2) for ci in c]))
    assert m["pairwise_cosine_prompts"] == int((c >= 2).sum())


def test_evaluate_policy_one_compile_and_encoder_sees_correct_only(policy):
    # 5 prompts in batches of 2: the last batch is padded, so the sampler compiles once.
    from jaxgrpo.sampling import SamplingConfig, make_sampler
    graphdef, state = policy
    enc = CountingEncoder()
    kw = {**KW, "max_new_tokens": 9}  # a config no other test uses: a fresh sampler cache
    out = evaluate_policy(graphdef, state, CharTokenizer(), ROWS, _toy_score_fn,
                          key=jax.random.key(5), encoder=enc, compute_entropy=False, **kw)
    cfg = SamplingConfig(max_new_tokens=9, temperature=1.0, eos_token_ids=(EOS,),
                         pad_token_id=PAD, num_generations=4, return_prompt_logprobs=False)
    assert make_sampler(graphdef, cfg)._cache_size() == 1
    correct_texts = [t for r in out["records"] for t, ok in zip(r["samples"], r["correct"]) if ok]
    assert [t for call in enc.calls for t in call] == correct_texts


def test_evaluate_policy_deterministic_for_a_key(policy, result):
    graphdef, state = policy
    again = evaluate_policy(graphdef, state, CharTokenizer(), ROWS, _toy_score_fn,
                            key=jax.random.key(0), encoder=CountingEncoder(), **KW)
    assert again["records"] == result["records"]
    assert again["metrics"] == result["metrics"]
    other = evaluate_policy(graphdef, state, CharTokenizer(), ROWS, _toy_score_fn,
                            key=jax.random.key(1), compute_entropy=False, **KW)
    assert [r["samples"] for r in other["records"]] != [r["samples"] for r in result["records"]]
    assert "mean_entropy" not in other["metrics"] and "entropy" not in other["records"][0]


def test_evaluate_policy_uniform_policy_entropy_is_log_vocab():
    # A zero final-norm scale makes every logit 0: the policy is uniform, entropy = log V exactly.
    model = _tiny_model(1)
    model.norm.weight[...] = np.zeros_like(model.norm.weight[...])
    graphdef, state = nnx.split(model)
    out = evaluate_policy(graphdef, state, CharTokenizer(), ROWS[:3], _toy_score_fn,
                          key=jax.random.key(3), **{**KW, "temperature": 0.7})
    assert out["metrics"]["mean_entropy"] == pytest.approx(math.log(VOCAB), rel=1e-5)


def test_evaluate_policy_validation(policy):
    graphdef, state = policy
    with pytest.raises(ValueError, match="1 <= k <= n = 4"):
        evaluate_policy(graphdef, state, CharTokenizer(), ROWS, _toy_score_fn,
                        key=jax.random.key(0), **{**KW, "ks": (8,)})
    with pytest.raises(ValueError, match="no rows"):
        evaluate_policy(graphdef, state, CharTokenizer(), [], _toy_score_fn,
                        key=jax.random.key(0), **KW)
    bad = lambda texts, rows: (np.zeros(len(texts) - 1, bool), [None] * len(texts))
    with pytest.raises(ValueError, match="score_fn returned"):
        evaluate_policy(graphdef, state, CharTokenizer(), ROWS, bad, key=jax.random.key(0),
                        **KW)


# --------------------------------------------------------------------------- load_benchmark

BENCH = [{"problem": "1+1?", "answer": "2", "level": 1},
         {"problem": "2+2?", "answer": "4", "level": 2},
         {"problem": "3+3?", "answer": "6", "level": 3}]


def _write(path, rows, fmt):
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pandas as pd
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_load_benchmark_formats(tmp_path, fmt):
    path = _write(tmp_path / f"bench.{fmt}", BENCH, fmt)
    rows = load_benchmark(path)
    assert [r["question"] for r in rows] == ["1+1?", "2+2?", "3+3?"]
    assert [r["answer"] for r in rows] == ["2", "4", "6"]
    assert rows[1]["metadata"] == {"level": 2, "source": str(path), "index": 1}
    assert len(load_benchmark(path, limit=2)) == 2


def test_load_benchmark_custom_fields_and_int_answers(tmp_path):
    path = _write(tmp_path / "aime.jsonl", [{"Problem": "p", "Answer": 204}], "jsonl")
    rows = load_benchmark(path, question_field="Problem", answer_field="Answer")
    assert rows[0]["question"] == "p" and rows[0]["answer"] == "204"


def test_load_benchmark_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_benchmark(tmp_path / "nope.jsonl")
    txt = tmp_path / "bench.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match=r"bench\.txt.*unknown benchmark file extension"):
        load_benchmark(txt)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl.*empty"):
        load_benchmark(empty)
    path = _write(tmp_path / "cols.jsonl", BENCH, "jsonl")
    with pytest.raises(ValueError, match=r"cols\.jsonl.*'question'.*\['problem', 'answer', "
                                         r"'level'\]"):
        load_benchmark(path, question_field="question")
    for i, bad in enumerate([None, "", "   "]):
        rows = [dict(r) for r in BENCH]
        rows[1]["answer"] = bad
        path = _write(tmp_path / f"null{i}.jsonl", rows, "jsonl")
        with pytest.raises(ValueError, match=rf"null{i}\.jsonl: row 1 .*'answer'"):
            load_benchmark(path)
    rows = [dict(r) for r in BENCH]
    rows[2]["answer"] = None
    path = _write(tmp_path / "null.parquet", rows, "parquet")
    with pytest.raises(ValueError, match=r"null\.parquet: row 2 "):
        load_benchmark(path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_benchmark(broken)


def test_run_eval_settings_read_the_run_config_and_take_overrides():
    from experiments.configs.diversity import get_config

    from jaxgrpo.experiment import split_names
    c = get_config("grpo")
    s = evaluate.run_eval_settings(c)
    assert s == dict(num_samples=c.eval.num_samples,
                     ks=tuple(int(k) for k in split_names(c.eval.ks)),
                     max_new_tokens=c.sampling.max_new_tokens, temperature=c.eval.temperature,
                     template=c.data.template, prompt_format=c.data.prompt_format,
                     system_prompt=c.data.system_prompt,
                     max_prompt_tokens=c.data.max_prompt_tokens, seed=c.seed + 1)
    o = evaluate.run_eval_settings(c, num_samples=4, ks=(1, 4))
    assert (o["num_samples"], o["ks"]) == (4, (1, 4))
    o = evaluate.run_eval_settings(c, num_samples=8)  # the config's ks are for its own n
    assert (o["num_samples"], o["ks"]) == (8, default_ks(8))
    kw = evaluate.run_eval_kwargs(c, num_samples=4, ks=(1, 4))
    assert "seed" not in kw and kw["num_samples"] == 4 and kw["ks"] == (1, 4)
    np.testing.assert_array_equal(jax.random.key_data(kw["key"]),
                                  jax.random.key_data(jax.random.key(c.seed + 1)))
