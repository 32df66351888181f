"""Tests for jaxgrpo.env: the finer score, DigitReward on token ids, Env.reward / score /
answers / anchor_text, and build_env (reasoning-gym rows seeded, file rows split into train /
held-out, the digits verifier's checks), against hand-computed expectations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxgrpo import env as env_lib
from jaxgrpo.errors import ConfigError
from jaxgrpo.rewards.functions import RewardSpec, make_reward_fn
from jaxgrpo.experiment import validate

# A digit vocabulary for hand-written token ids: "d" -> 10 + d, "-" -> 20; 2 = EOS, 3 = other.
CHARS = {str(d): 10 + d for d in range(10)} | {"-": 20}
EOS, OTHER = 2, 3


def _config(**overrides):
    from jaxgrpo.experiment import base_config

    c = base_config()
    c.rewards.verifier_workers = 1
    c.update_from_flattened_dict(overrides)
    return c


# ----------------------------------------------------------------------------- finer score


def test_sequence_probability_by_hand():
    lp = np.array([[math.log(0.5), math.log(0.5), 99.0],  # masked 99 is ignored
                   [math.log(0.2), math.log(0.8), math.log(0.5)],
                   [5.0, 5.0, 5.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
    got = np.asarray(env_lib.sequence_probability(lp, mask))
    want = [0.5, (0.2 * 0.8 * 0.5) ** (1 / 3), 1.0]  # geometric mean; an empty row gives 1
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32
    # leading batch dims are kept
    got = np.asarray(env_lib.sequence_probability(lp.reshape(3, 1, 3), mask.reshape(3, 1, 3)))
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)


# ----------------------------------------------------------------------------- DigitReward


def _digit_reward(**kw):
    return env_lib.DigitReward(char_to_id=CHARS, eos_id=EOS, max_len=3, **kw)


ROWS = [{"answer": "42"}, {"answer": "-7"}, {"answer": "5"}, {"answer": "13"}]
TOKENS = np.array([
    [OTHER, 14, 12, EOS, 0],  # "x42": the last run is "42"        -> exact
    [13, OTHER, 20, 17, EOS],  # "3 -7": the last run is "-7"       -> exact
    [15, OTHER, 16, EOS, 0],  # "5 6": the last run "6" != "5"     -> 0
    [11, 14, EOS, 13, 0],  # "14" then EOS; the "3" after EOS is ignored: 1 of 2 digits right
], np.int32)
MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], bool)


def test_digit_reward_targets_and_scores_by_hand():
    r = _digit_reward(weight=2.0)
    tgt, tmask = r.targets(ROWS)
    np.testing.assert_array_equal(tgt, [[14, 12, 0], [20, 17, 0], [15, 0, 0], [11, 13, 0]])
    np.testing.assert_array_equal(tmask.sum(1), [2, 2, 1, 2])
    rewards, correct = r(TOKENS, MASK, (tgt, tmask))
    np.testing.assert_allclose(np.asarray(rewards), [2.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(correct), [True, True, False, False])
    # partial credit: positional hits / max(len pred, len gold); "correct" stays exact
    r = _digit_reward(weight=1.0, partial_credit=True)
    rewards, correct = r(TOKENS, MASK, r.targets(ROWS))
    np.testing.assert_allclose(np.asarray(rewards), [1.0, 1.0, 0.0, 0.5])
    np.testing.assert_array_equal(np.asarray(correct), [True, True, False, False])


def test_digit_reward_for_tokenizer(tiny_tokenizer):
    rows = [{"answer": "7"}, {"answer": " -42 "}, {"answer": 123}]
    r = env_lib.DigitReward.for_tokenizer(tiny_tokenizer, rows, tiny_tokenizer.eos_token_id,
                                          weight=0.5)
    assert sorted(r.char_to_id) == sorted("0123456789-")
    for ch, i in r.char_to_id.items():  # each id decodes to its character
        assert tiny_tokenizer.decode([i]) == ch
    assert r.max_len == 3 and r.weight == 0.5 and r.eos_id == tiny_tokenizer.eos_token_id
    with pytest.raises(ConfigError, match=r"needs integer answers; a row has answer '3\.5'"):
        env_lib.DigitReward.for_tokenizer(tiny_tokenizer, [{"answer": "3.5"}], 0)

    class TwoTokenDigits:
        def encode(self, s, add_special_tokens=False):
            return [1, 2] if s == "7" else [ord(s)]

    with pytest.raises(ConfigError, match=r"one token per digit; the tokenizer encodes '7'"):
        env_lib.DigitReward.for_tokenizer(TwoTokenDigits(), rows, 0)


# ----------------------------------------------------------------------------- Env


def test_env_reward_with_the_digits_verifier():
    rf = make_reward_fn([RewardSpec("accuracy", 1.0)])
    logprobs = np.log(np.full(TOKENS.shape, 0.25, np.float32))
    e = env_lib.Env([], [], rf, fine_score="logprob", token_reward=_digit_reward(weight=2.0))
    texts = ["x42", "3 -7", "\\boxed{5}", "14"]
    out = e.reward(texts, ROWS, tokens=TOKENS, mask=MASK, logprobs=logprobs)
    np.testing.assert_allclose(out.rewards, [2, 2, 0, 0])
    np.testing.assert_array_equal(out.correct, [True, True, False, False])
    np.testing.assert_allclose(out.components["digits"], [1, 1, 0, 0])  # unweighted
    np.testing.assert_allclose(out.fine_scores, [0.25] * 4, rtol=1e-6)
    assert out.answers == [None, None, "5", None]  # extract_answer on the texts
    assert rf._verifier is None  # the token path started no math-verify pool
    with pytest.raises(ValueError, match="pass tokens and mask"):
        e.reward(texts, ROWS)
    e_none = env_lib.Env([], [], rf, fine_score="none", token_reward=_digit_reward())
    assert e_none.reward(texts, ROWS, tokens=TOKENS, mask=MASK,
                         logprobs=logprobs).fine_scores is None


def test_env_reward_text_path_and_format_fine_score():
    rf = make_reward_fn([RewardSpec("format", 0.5, {"style": "boxed"})])  # no correctness
    e = env_lib.Env([], [], rf, fine_score="format")
    out = e.reward(["so \\boxed{12}", "twelve"], [{"answer": "12"}] * 2)
    np.testing.assert_allclose(out.components["format"], [1.0, 0.0])
    np.testing.assert_allclose(out.rewards, [0.5, 0.0])
    np.testing.assert_allclose(out.fine_scores, [1.0, 0.0])
    np.testing.assert_array_equal(out.correct, [False, False])  # no correctness reward
    assert out.answers == ["12", None]
    # "logprob" without log-probs: no finer score
    assert env_lib.Env([], [], rf).reward(["x"], [{"answer": "1"}]).fine_scores is None


def test_fine_scores_and_data_sources():
    assert env_lib.FINE_SCORES == ("logprob", "format", "none")
    assert env_lib.DATA_SOURCES == ("reasoning_gym", "file")
    rf = make_reward_fn([RewardSpec("format", 1.0)])
    with pytest.raises(ValueError, match=r"fine_score='dense' not in \('logprob', 'format'"):
        env_lib.Env([], [], rf, fine_score="dense")
    from jaxgrpo.experiment import validate

    c = _config(**{"data.source": "hub"})
    with pytest.raises(ValueError, match=r"data\.source"):
        validate(c)
    c = _config(**{"rewards.verifier": "regex"})
    with pytest.raises(ConfigError, match=r"rewards\.verifier='regex' is not one of "
                                          r"\('text', 'digits'\)"):
        env_lib.build_env(c)


def test_anchor_text():
    fmt = "<answer>{answer}</answer>"
    assert env_lib.Env.anchor_text({"answer": "4", "metadata": {"solution": "2+2=4"}}, fmt) \
        == "2+2=4"
    assert env_lib.Env.anchor_text({"answer": "4", "metadata": {"solution": "  "}}, fmt) \
        == "<answer>4</answer>"
    assert env_lib.Env.anchor_text({"answer": "4"}, fmt) == "<answer>4</answer>"


# ----------------------------------------------------------------------------- build_env


def test_build_env_reasoning_gym_rows_are_seeded():
    kw = {"data.task": "chain_sum", "data.train_size": 6, "data.eval_size": 3,
          "data.task_kwargs": json.dumps({"min_terms": 2, "max_terms": 2})}
    a = env_lib.build_env(_config(seed=5, **kw))
    b = env_lib.build_env(_config(seed=5, **kw))
    other = env_lib.build_env(_config(seed=6, **kw))
    try:
        assert len(a.train_rows) == 6 and len(a.eval_rows) == 3
        q = lambda rows: [r["question"] for r in rows]  # noqa: E731
        assert q(a.train_rows) == q(b.train_rows) and q(a.eval_rows) == q(b.eval_rows)
        assert q(a.train_rows) != q(other.train_rows)
        assert q(a.eval_rows) != q(a.train_rows[:3])  # held-out rows: another generator seed
        assert all(r["metadata"]["num_terms"] == 2 for r in a.train_rows + a.eval_rows)
        # scoring goes through the task's verifier (no math-verify pool)
        rows = a.eval_rows[:2]
        texts = [f"<answer>{rows[0]['answer']}</answer>", "<answer>-999999</answer>"]
        correct, answers = a.score(texts, rows)
        np.testing.assert_array_equal(correct, [True, False])
        assert answers[0] == rows[0]["answer"]
        assert a.reward_fn._verifier is None
    finally:
        for e in (a, b, other):
            e.close()


def test_build_env_bad_task_kwargs():
    with pytest.raises(ValueError, match=r"task_kwargs is not a JSON object"):
        env_lib.build_env(_config(**{"data.task_kwargs": "{max_terms: 2"}))
    with pytest.raises(ValueError, match=r"task_kwargs must be a JSON object, got '\[1, 2\]'"):
        env_lib.build_env(_config(**{"data.task_kwargs": "[1, 2]"}))


def test_build_env_file_rows_split_train_and_held_out(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps({"problem": f"q{i}", "answer": i}) for i in range(10)))
    e = env_lib.build_env(_config(**{"data.source": "file", "data.path": str(p),
                                     "data.eval_size": 3}))
    try:
        assert [r["question"] for r in e.train_rows] == [f"q{i}" for i in range(7)]
        assert [r["question"] for r in e.eval_rows] == ["q7", "q8", "q9"]  # the last rows
        assert [r["answer"] for r in e.eval_rows] == ["7", "8", "9"]
        assert e.task is None
    finally:
        e.close()
    ev = tmp_path / "held.csv"
    ev.write_text("problem,answer\nh0,5\nh1,6\n")
    e = env_lib.build_env(_config(**{"data.source": "file", "data.path": str(p),
                                     "data.eval_path": str(ev), "data.eval_size": 64}))
    try:
        assert len(e.train_rows) == 10  # all of data.path trains
        assert [(r["question"], r["answer"]) for r in e.eval_rows] == [("h0", "5"), ("h1", "6")]
    finally:
        e.close()
    with pytest.raises(ValueError, match=r"train\.jsonl: 10 rows, not more than "
                                         r"data\.eval_size=10"):
        env_lib.build_env(_config(**{"data.source": "file", "data.path": str(p),
                                     "data.eval_size": 10}))


def test_build_env_file_source_scores_with_math_verify(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)})
                           for i in range(4)))
    e = env_lib.build_env(_config(**{"data.source": "file", "data.path": str(p),
                                     "data.eval_size": 2}))
    try:
        rows = e.eval_rows  # answers "3", "4"
        correct, answers = e.score(["so \\boxed{3}", "\\boxed{5}"], rows)
        np.testing.assert_array_equal(correct, [True, False])
        assert answers == ["3", "5"]
    finally:
        e.close()


def test_build_env_digits_verifier(tiny_tokenizer):
    tok = tiny_tokenizer
    kw = {"data.task": "chain_sum", "data.train_size": 4, "data.eval_size": 2,
          "rewards.verifier": "digits", "rewards.accuracy": 1.5}
    e = env_lib.build_env(_config(**kw), tok, tok.eos_token_id)
    try:
        r = e.token_reward
        assert r is not None and r.weight == 1.5 and not r.partial_credit
        assert r.max_len == max(len(x["answer"]) for x in e.train_rows + e.eval_rows)
        rows = e.train_rows[:2]
        # completion 0 spells row 0's answer then EOS; completion 1 spells row 0's for row 1
        gold0 = [tok.convert_tokens_to_ids(ch) for ch in str(rows[0]["answer"])]
        seqs = [gold0 + [tok.eos_token_id] for _ in rows]
        width = max(map(len, seqs))
        tokens = np.full((2, width), tok.pad_token_id, np.int32)
        mask = np.zeros((2, width), bool)
        for i, s in enumerate(seqs):
            tokens[i, :len(s)], mask[i, :len(s)] = s, True
        out = e.reward(["", ""], rows, tokens=tokens, mask=mask)
        same = rows[0]["answer"] == rows[1]["answer"]
        np.testing.assert_allclose(out.rewards, [1.5, 1.5 if same else 0.0])
        np.testing.assert_array_equal(out.correct, [True, same])
    finally:
        e.close()
    for extra, match in [({"rewards.format": 1.0}, r"rewards\.format=1\.0 is a text reward"),
                         ({"rewards.cosine": 1.0}, r"rewards\.cosine=1\.0 is a text reward"),
                         ({"rewards.fine_score": "format"}, r"fine_score='format' reads the text")]:
        # the digit verifier's cross-section rules are the experiment's (checked by validate)
        with pytest.raises(ConfigError, match=match):
            validate(_config(**kw, **extra, **{"eval.num_prompts": 2}))
    with pytest.raises(ValueError, match=r"needs the tokenizer and eos_id"):
        env_lib.build_env(_config(**kw))
