"""Tests for jaxgrpo.rewards: extraction, the math-verify pool, reward functions, token reward."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgrpo.rewards import extract as ex
from jaxgrpo.rewards import functions as fn
from jaxgrpo.rewards import math_verify_pool as mvp

B = lambda s: "\\boxed{" + s + "}"  # noqa: E731


# ----------------------------------------------------------------------------------- import cost


def test_import_is_cheap_and_lazy():
    code = ("import sys, time; t = time.time(); import jaxgrpo.rewards as R; dt = time.time() - t;"
            "heavy = [m for m in ('jax', 'sympy', 'math_verify', 'reasoning_gym', 'datasets')"
            " if m in sys.modules]; print(dt, heavy); assert not heavy, heavy; assert dt < 0.5;"
            "R.extract_answer; assert 'sympy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("text,expected", [
    (r"so \boxed{\frac{1}{2}} and finally \boxed{3}", "3"),  # last box wins
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),  # nested braces
    (r"\boxed{\boxed{5}}", "5"),  # a box around a box is unwrapped
    (r"\boxed{ \{1,2\} }", r"\{1,2\}"),  # escaped braces are not structural
    (r"\boxed{\text{\{}}", r"\text{\{}"),
    (r"x \fbox{7}", "7"),
    (r"the answer is \boxed 5 here", "5"),
    (r"\boxed {12}", "12"),
    (r"\boxed{a}\boxed{b", "a"),  # an unclosed (truncated) box is ignored
    (r"\boxed{\frac{1}{", None),
    (r"\boxedx{3}", None),  # not a box command
    (r"\\boxed{3}", None),  # `\\` is a line break, then plain text
    ("<think>..\\boxed{2}</think><answer> \\boxed{4} </answer>", "4"),  # answer tag first
    ("<think>\\boxed{2}</think><answer> 12 </answer>", "12"),
    ("<answer>1</answer> then <answer> 2 </answer>", "2"),
    ("<answer>   </answer> \\boxed{9}", "9"),  # empty tag falls through to the box
    ("<answer> 3", None),  # unclosed tag
    ("Janet pays 5.\n#### 1,000.\n", "1,000"),
    ("#### 7\nmore\n#####  8", "8"),
    ("", None),
    ("nothing here", None),
    (None, None),
])
def test_extract_answer_table(text, expected):
    assert ex.extract_answer(text) == expected


def test_extract_precedence_is_configurable():
    t = "<answer>1</answer> \\boxed{2}\n#### 3"
    assert ex.extract_answer(t) == "1"
    assert ex.extract_answer(t, sources=("boxed", "answer_tag")) == "2"
    assert ex.extract_answer(t, sources=("hash",)) == "3"
    with pytest.raises(ValueError, match="bogus"):
        ex.extract_answer(t, sources=("boxed", "bogus"))


@pytest.mark.parametrize("text", [
    "\\boxed{" * 2000 + "x" + "}" * 2000,  # 14 kB of nested boxes
    "\\boxed{" * 5000,  # 35 kB of unclosed boxes
    "{" * 10000 + "\\boxed{9}" + "}" * 10000,  # 20 kB of nested braces
    "\\\\" * 20000 + "{",
    "<answer>" * 5000 + "</answer>" * 10,
    "#" * 20000,
])
def test_extract_is_linear_on_adversarial_input(text):
    t0 = time.perf_counter()
    ex.extract_answer(text)
    assert time.perf_counter() - t0 < 0.25


def test_extract_deep_nesting_value():
    assert ex.extract_answer("\\boxed{" * 2000 + "x" + "}" * 2000) == "x"
    assert ex.extract_answer("{" * 10000 + "\\boxed{9}" + "}" * 10000) == "9"


def _ref_last_box(text: str):
    """Independent O(n^2) reference for brace-only texts: the box whose closing brace is last."""
    best = None
    for m in re.finditer(r"\\boxed\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0 and (best is None or i > best[1]):
            best = (m.end(), i - 1)
    if best is None:
        return None
    s = text[best[0]:best[1]].strip()
    while s.startswith("\\boxed{"):  # unwrap a box that is all of the content
        depth, i = 1, len("\\boxed{")
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        if depth or i != len(s):
            break
        s = s[len("\\boxed{"):-1].strip()
    return s or None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "{", "}", "a", "1", " "]), max_size=40))
def test_extract_boxed_matches_reference(parts):
    text = "".join(parts)
    assert ex.extract_boxed(text) == _ref_last_box(text)


# ------------------------------------------------------------------------- math-verify pool


@pytest.fixture(scope="module")
def verifier():
    v = mvp.MathVerifier(num_workers=2, item_timeout_s=3.0, batch_timeout_s=60.0)
    yield v
    v.close()


EQUIVALENT = [
    (B("1/2"), "0.5"),
    (B(r"\frac{1}{2}"), "0.5"),
    (B("0.5"), r"\frac{1}{2}"),
    (B(r"\frac12"), "1/2"),
    (B(r"\dfrac{1}{2}"), r"\frac{1}{2}"),
    (B(r"\frac{1}{2}"), r"$\frac{1}{2}$"),  # a delimited LaTeX gold
    ("<answer>(1,2]</answer>", "(1,2]"),  # interval
    (B(r"[0, \infty)"), r"[0,\infty)"),
    (B(r"\{1,2\}"), r"\{2,1\}"),  # sets are unordered
    (B(r"5\text{ cm}"), "5"),  # units
    (B(r"50\%"), "0.5"),  # percent
    (B(r"50\%"), "50"),
    (B("x^2+2x+1"), "(x+1)^2"),  # symbolic
    (B(r"\sqrt{2}/2"), r"\frac{\sqrt2}{2}"),
    ("so\n#### 1,000", "1000"),  # GSM8K style, thousands separator
    (B("3.0"), "3"),
    (B("x=3"), "3"),  # equation vs value
]
NOT_EQUIVALENT = [
    (B("2"), "3"),
    (B("-4"), "4"),
    ("<answer>(1,2)</answer>", "(1,2]"),  # open vs half-open
    (B("0.33"), "1/3"),
    (B(r"\pi"), "3.14159"),
    (B(r"\frac{1}{}}"), "1"),  # malformed LaTeX
]


def test_equivalence_table(verifier):
    preds = [p for p, _ in EQUIVALENT + NOT_EQUIVALENT]
    golds = [g for _, g in EQUIVALENT + NOT_EQUIVALENT]
    scores, stats = verifier.verify_batch(preds, golds)
    expected = [1.0] * len(EQUIVALENT) + [0.0] * len(NOT_EQUIVALENT)
    assert scores.dtype == np.float32 and scores.shape == (len(preds),)
    for p, g, s, e in zip(preds, golds, scores, expected):
        assert s == e, (p, g, s)
    assert stats["n_timeouts"] == 0 and stats["n_errors"] == 0
    assert stats["n_ok"] == len(preds)


def test_no_answer_and_bad_gold(verifier):
    scores, stats = verifier.verify_batch(["", r"\boxed{\frac{1}{", B("x"), B("1")],
                                          ["1", "1", "", "1"])
    np.testing.assert_array_equal(scores, [0, 0, 0, 1])
    names = [mvp.STATUS_NAMES[s] for s in stats["status"]]
    assert names == ["no_answer", "no_answer", "gold_unparsed", "ok"]
    assert stats["n_no_answer"] == 2 and stats["n_gold_unparsed"] == 1


def test_dedupe_and_empty_batch(verifier):
    scores, stats = verifier.verify_batch([B("1/2")] * 6 + [B("3")] * 2, ["0.5"] * 8)
    np.testing.assert_array_equal(scores, [1] * 6 + [0] * 2)
    assert stats["n_unique"] == 2
    scores, stats = verifier.verify_batch([], [])
    assert scores.shape == (0,) and stats["n"] == 0
    with pytest.raises(ValueError):
        verifier.verify_batch(["a"], [])


FAST_PAIRS = [("12", "12"), ("-3", "3"), ("007", "7"), ("+5", "5"), ("10", "1"), ("$4$", "4"),
              ("123456789012345678901234567890", "123456789012345678901234567890"),
              ("123456789012345678901234567891", "123456789012345678901234567890"),
              (r"\frac{1}{2}", r"\frac{1}{2}"), ("x+1", "x+1"), ("-0", "0")]


def test_fast_path_agrees_with_math_verify(verifier):
    preds = [B(p) for p, _ in FAST_PAIRS]
    golds = [g for _, g in FAST_PAIRS]
    fast, st_fast = verifier.verify_batch(preds, golds)
    assert st_fast["n_fast"] == len(FAST_PAIRS) and st_fast["n_unique"] == 0
    with mvp.MathVerifier(num_workers=2, item_timeout_s=3.0, fast_path=False) as slow_v:
        slow, st_slow = slow_v.verify_batch(preds, golds)
    assert st_slow["n_fast"] == 0 and st_slow["n_ok"] == len(FAST_PAIRS)
    np.testing.assert_array_equal(fast, slow)


def test_open_r1_mode():
    with mvp.MathVerifier(num_workers=1, item_timeout_s=3.0, mode="open_r1") as v:
        scores, stats = v.verify_batch(
            ["<think>\nx\n</think>\n<answer>\\boxed{\\frac{1}{2}}</answer>",
             "The answer is $\\frac{1}{2}$", "\\boxed{3}", "\\boxed{3}"],
            ["$\\frac{1}{2}$", "$0.5$", "no math here", "$4$"])
    np.testing.assert_array_equal(scores, [1, 1, 0, 0])
    assert [mvp.STATUS_NAMES[s] for s in stats["status"]] == ["ok", "ok", "gold_unparsed", "ok"]


def test_math_equal():
    assert mvp.math_equal(r"\frac{1}{2}", "0.5")
    assert mvp.math_equal("50\\%", "1/2")
    assert not mvp.math_equal("3", "4")
    assert not mvp.math_equal("", "4")


def test_nested_braces_10kb_times_out_and_others_score():
    """A real input that sends sympy into a very long computation: it times out and scores 0,
    the other items still score correctly, and the batch takes about one item deadline."""
    nasty = B("{" * 5000 + "}" * 5000)
    with mvp.MathVerifier(num_workers=2, item_timeout_s=0.7, kill_grace_s=0.5) as v:
        t0 = time.monotonic()
        scores, stats = v.verify_batch([nasty, B("1/2"), B("2"), B("7")], ["1", "0.5", "3", "7"])
        dt = time.monotonic() - t0
    np.testing.assert_array_equal(scores, [0, 1, 0, 1])
    assert stats["status"][0] in (mvp.STATUS_TIMEOUT, mvp.STATUS_ERROR)
    assert stats["n_timeouts"] + stats["n_errors"] == 1
    assert dt < 5.0


def test_hang_crash_and_errors_are_contained():
    v = mvp.MathVerifier(num_workers=2, item_timeout_s=0.5, kill_grace_s=0.5, batch_timeout_s=30,
                         verify_fn=mvp._testing_verify_fn)
    try:
        v.start()
        v.verify_batch([B("1")], ["1"])  # warm: both workers ready
        pids0 = set(v.worker_pids)
        preds = [B("1/2"), B("1"), B("2"), B("3"), B("4"), B("5"), B("6")]
        golds = ["0.5", "__sleep__", "__hang__", "__crash__", "__raise__", "5", "7"]
        t0 = time.monotonic()
        scores, stats = v.verify_batch(preds, golds)
        dt = time.monotonic() - t0
        np.testing.assert_array_equal(scores, [1, 0, 0, 0, 0, 1, 0])
        names = [mvp.STATUS_NAMES[s] for s in stats["status"]]
        # sleep: soft deadline inside the worker; hang (SIGALRM blocked): hard kill by the parent.
        assert names == ["ok", "timeout", "timeout", "error", "error", "ok", "ok"]
        assert stats["n_timeouts"] == 2 and stats["n_errors"] == 2
        assert stats["n_restarts"] == 2  # the hung and the crashed worker were replaced
        assert dt < 5.0
        assert len(v.worker_pids) == 2 and set(v.worker_pids) != pids0
        # The pool keeps working after the failures.
        scores, stats = v.verify_batch([B("1/2"), B("3")], ["0.5", "3"])
        np.testing.assert_array_equal(scores, [1, 1])
        assert stats["n_restarts"] == 0
        assert v.totals["n_timeouts"] == 2 and v.totals["n_errors"] == 2
    finally:
        v.close()


def test_externally_killed_worker_is_replaced():
    with mvp.MathVerifier(num_workers=2, item_timeout_s=2.0, fast_path=False) as v:
        v.verify_batch([B("1")], ["1"])
        os.kill(v.worker_pids[0], signal.SIGKILL)
        time.sleep(0.1)
        scores, stats = v.verify_batch([B(str(i)) for i in range(6)], [str(i) for i in range(6)])
        assert stats["n_restarts"] >= 1
        # At most the one item that raced the dead pipe is lost; the rest verify.
        assert scores.sum() >= 5 and stats["n_timeouts"] == 0


def test_batch_deadline():
    with mvp.MathVerifier(num_workers=2, item_timeout_s=10.0, batch_timeout_s=1.0,
                          verify_fn=mvp._testing_verify_fn) as v:
        v.verify_batch([B("1")], ["1"])
        t0 = time.monotonic()
        scores, stats = v.verify_batch([B(str(i)) for i in range(5)], ["__sleep__"] * 5)
        dt = time.monotonic() - t0
        assert 0.9 < dt < 3.0
        np.testing.assert_array_equal(scores, np.zeros(5))
        assert stats["n_timeouts"] == 5
        scores, _ = v.verify_batch([B("2")], ["2"])  # replaced workers serve the next batch
        assert scores[0] == 1


def test_leftover_task_from_interrupted_call_is_harmless():
    """A call interrupted (e.g. KeyboardInterrupt) leaves a worker busy with a task nobody waits
    for; the next call must not crash on it and must still finish."""
    with mvp.MathVerifier(num_workers=2, item_timeout_s=0.5, kill_grace_s=0.3,
                          verify_fn=mvp._testing_verify_fn) as v:
        v.verify_batch([B("1")], ["1"])
        w = v._workers[0]
        w.conn.send((10**9, "x", "__hang__"))
        w.task, w.started = 10**9, time.monotonic()
        scores, stats = v.verify_batch([B(str(i)) for i in range(4)], [str(i) for i in range(4)])
        np.testing.assert_array_equal(scores, np.ones(4))
        scores, _ = v.verify_batch([B("1/2")] * 2 + [B("3")], ["0.5", "0.5", "3"])
        np.testing.assert_array_equal(scores, np.ones(3))


def test_closed_and_bad_args():
    v = mvp.MathVerifier(num_workers=1)
    v.close()
    v.close()  # idempotent
    with pytest.raises(RuntimeError):
        v.verify_batch([B("1")], ["1"])
    assert v.worker_pids == []
    for kw in ({"num_workers": 0}, {"item_timeout_s": 0}, {"mode": "x"},
               {"start_method": "fork"}, {"sources": ("nope",)}):
        with pytest.raises(ValueError):
            mvp.MathVerifier(**kw)


def test_spawn_start_method():
    with mvp.MathVerifier(num_workers=1, start_method="spawn", item_timeout_s=3.0) as v:
        scores, _ = v.verify_batch([B("1/2")], ["0.5"])
    assert scores[0] == 1


# --------------------------------------------------------------------------- reward functions


def _ref_cosine(correct, n, min_w=0.0, max_w=-0.5, min_c=0.5, max_c=1.0, max_len=1000):
    """Line-for-line port of Open-R1 / DRA-GRPO get_cosine_scaled_reward's inner formula."""
    progress = n / max_len
    cosine = math.cos(progress * math.pi)
    if correct:
        min_value, max_value = min_c, max_c
    else:
        min_value, max_value = max_w, min_w
    return min_value + 0.5 * (max_value - min_value) * (1.0 + cosine)


def test_cosine_hand_values():
    r = fn.cosine_scaled_reward([1, 1, 1, 0, 0, 0, 1], [0, 500, 1000, 0, 500, 1000, 2000])
    np.testing.assert_allclose(r, [1.0, 0.75, 0.5, 0.0, -0.25, -0.5, 1.0], atol=1e-7)
    r = fn.cosine_scaled_reward([1, 0], [2000, 2000], clip=True)
    np.testing.assert_allclose(r, [0.5, -0.5], atol=1e-7)
    r = fn.cosine_scaled_reward([0, 0], [10, 10], gold_unparsed=[True, False])
    assert r[0] == 1.0 and r[1] < 0
    assert r.dtype == np.float32


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), min_size=1, max_size=20),
       st.floats(-2, 0), st.floats(-2, 0), st.floats(0, 2), st.floats(0, 2),
       st.integers(1, 4000))
def test_cosine_matches_reference(items, a, b, c, d, max_len):
    correct = [x for x, _ in items]
    lengths = [n for _, n in items]
    got = fn.cosine_scaled_reward(correct, lengths, a, b, c, d, max_len)
    want = [_ref_cosine(x, n, a, b, c, d, max_len) for x, n in items]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


OPEN_R1_FORMAT = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x"]),
                max_size=12))
def test_think_answer_format_equals_open_r1_regex(parts):
    text = "".join(parts)
    want = float(OPEN_R1_FORMAT.match(text) is not None)
    assert fn.format_reward([text], style="think_answer")[0] == want


def test_format_styles():
    texts = ["<think>\nreason\n</think>\n<answer>\\boxed{3}</answer>",
             "<think>reason</think><answer>3</answer>",
             "no tags \\boxed{4}",
             "\n</think>\n twice \n</think>\n"]
    np.testing.assert_array_equal(fn.format_reward(texts), [1, 0, 0, 0])  # DRA default
    np.testing.assert_array_equal(fn.format_reward(texts, style="think_answer"), [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="boxed"), [1, 0, 1, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="answer_tag"), [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.format_reward(texts, style="regex", pattern=r"reason"),
                                  [1, 1, 0, 0])
    np.testing.assert_array_equal(fn.tag_count_reward(texts), [1, 0, 0, 0])
    long = "<think>" + "</think>" * 5000 + "<answer>"
    t0 = time.perf_counter()
    assert fn.format_reward([long], style="think_answer")[0] == 0
    assert time.perf_counter() - t0 < 0.2


def test_make_reward_fn_validation():
    with pytest.raises(ValueError, match=r"\['bogus', 'nope'\]"):
        fn.make_reward_fn([fn.RewardSpec("format"), fn.RewardSpec("bogus"),
                           fn.RewardSpec("nope")])
    with pytest.raises(ValueError, match="max_lenn"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"max_lenn": 3})])
    with pytest.raises(ValueError, match="format style"):
        fn.make_reward_fn([fn.RewardSpec("format", 1.0, {"style": "fancy"})])
    with pytest.raises(ValueError, match="max_len"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"max_len": 0})])
    with pytest.raises(ValueError, match="duplicate"):
        fn.make_reward_fn([("format", 1.0), ("format", 2.0)])
    with pytest.raises(ValueError, match="length_unit"):
        fn.make_reward_fn([fn.RewardSpec("cosine", 1.0, {"length_unit": "words"})])


def test_dra_reward_combination(verifier):
    """format x1 + cosine x2 (DRA-GRPO), checked against an independent computation."""
    comps = [
        "<think>\nshort\n</think>\n<answer>\\boxed{\\frac{1}{2}}</answer>",  # right, formatted
        "<think>\n" + "long " * 300 + "\n</think>\n<answer>\\boxed{0.5}</answer>",  # right, long
        "<think>\nwrong\n</think>\n<answer>\\boxed{3}</answer>",  # wrong, formatted
        "no format, \\boxed{1/2}",  # right, unformatted
        "nothing",  # no answer
        "\\boxed{2}",  # unparsable gold
    ]
    golds = ["0.5", "1/2", "0.5", "0.5", "0.5", ""]
    rf = fn.make_reward_fn(fn.DRA_REWARDS, verifier=verifier)
    out = rf(comps, golds)
    correct = [1, 1, 0, 1, 0, 0]
    fmt = [1, 1, 1, 0, 0, 0]
    cos = [_ref_cosine(c, len(t)) for c, t in zip(correct, comps)]
    cos[5] = 1.0  # the reference gives 1.0 when the gold does not parse
    want = np.asarray(fmt) + 2 * np.asarray(cos)
    np.testing.assert_allclose(out.rewards, want, rtol=1e-6)
    np.testing.assert_allclose(out.components["cosine"], cos, rtol=1e-6)
    np.testing.assert_array_equal(out.components["format"], fmt)
    np.testing.assert_array_equal(out.correct, correct)
    assert out.rewards.dtype == np.float32 and out.stats["n_gold_unparsed"] == 1
    # Options: token lengths, clipping, gold-unparsed as wrong, accuracy term.
    rf2 = fn.make_reward_fn(
        [("accuracy", 0.5, {"gold_unparsed_reward": None}),
         ("cosine", 1.0, {"length_unit": "tokens", "max_len": 10, "clip": True,
                          "gold_unparsed_reward": None})], verifier=verifier)
    out2 = rf2(comps, golds, lengths=[5, 20, 5, 0, 3, 1])
    cos2 = [_ref_cosine(c, min(n, 10), max_len=10) for c, n in zip(correct, [5, 20, 5, 0, 3, 1])]
    np.testing.assert_allclose(out2.rewards, 0.5 * np.asarray(correct) + np.asarray(cos2),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="golds"):
        rf(comps)


def test_reward_fn_without_correctness_needs_no_pool():
    rf = fn.make_reward_fn([("format", 1.0, {"style": "boxed"}), ("tag_count", 0.5)])
    out = rf(["\\boxed{1}", "<think>\nx\n</think>\n"])
    np.testing.assert_allclose(out.rewards, [1.0, 0.5])
    assert rf._verifier is None and out.correct is None


def test_register_custom_reward():
    name = "length_penalty_test"
    fn.register_reward(name, lambda inp, scale=1.0: -scale * inp.lengths_chars, options=("scale",))
    try:
        rf = fn.make_reward_fn([(name, 2.0, {"scale": 0.5})])
        np.testing.assert_allclose(rf(["ab", "abcd"]).rewards, [-2.0, -4.0])
        with pytest.raises(ValueError, match="already"):
            fn.register_reward(name, lambda inp: inp.lengths_chars)
    finally:
        del fn.REWARD_REGISTRY[name]


# ------------------------------------------------------------------------------ token reward


def _ref_digit_reward(toks, mask, tgt, tmask, ans_ids, eos, which, partial):
    """Plain-Python reference for one row."""
    seq = []
    for t, m in zip(toks, mask):
        if not m:
            continue
        if t == eos:
            break
        seq.append(t)
    ans = set(ans_ids)
    if which == "all":
        pred = [t for t in seq if t in ans]
    else:
        pred = []
        for t in reversed(seq):
            if t in ans:
                pred.append(t)
            elif pred:
                break
        pred = pred[::-1]
    target = [t for t, m in zip(tgt, tmask) if m]
    if partial:
        hits = sum(1 for i in range(min(len(pred), len(target))) if pred[i] == target[i])
        return hits / max(len(pred), len(target), 1)
    return float(pred == target)


@pytest.mark.parametrize("which", ["all", "last_run"])
@pytest.mark.parametrize("partial", [False, True])
def test_digit_match_reward_matches_reference(which, partial):
    import jax

    from jaxgrpo.rewards import token_rewards as tr

    rng = np.random.default_rng(0)
    n, t, length = 64, 12, 4
    ans_ids = np.arange(3, 8)  # five "digit" ids; 0 = pad, 1 = eos, 2 = other
    eos = 1
    toks = rng.integers(0, 9, size=(n, t)).astype(np.int32)
    mask = np.ones((n, t), bool)
    lens = rng.integers(0, t + 1, size=n)
    for i, L in enumerate(lens):
        mask[i, L:] = False
    tlens = rng.integers(0, length + 1, size=n)
    tgt = rng.integers(3, 8, size=(n, length)).astype(np.int32)
    tmask = np.arange(length)[None, :] < tlens[:, None]
    # Make some rows exact hits so both outcomes are exercised.
    for i in range(0, n, 4):
        k = tlens[i]
        toks[i, :k] = tgt[i, :k]
        toks[i, k] = eos
        mask[i, :k + 1] = True
    got = jax.jit(tr.digit_match_reward, static_argnames=("eos_id", "which", "partial_credit"))(
        toks, mask, tgt, tmask, ans_ids, eos_id=eos, which=which, partial_credit=partial)
    want = [_ref_digit_reward(toks[i], mask[i], tgt[i], tmask[i], ans_ids, eos, which, partial)
            for i in range(n)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert got.shape == (n,) and got.dtype == np.float32
    if not partial:
        assert 0 < np.asarray(got).sum() < n


def test_encode_digit_targets_and_arithmetic_example():
    from jaxgrpo.rewards import token_rewards as tr

    vocab = {str(d): 10 + d for d in range(10)} | {"-": 20}
    tgt, tmask = tr.encode_digit_targets(["-42", "7", "1,000"], vocab, max_len=5)
    np.testing.assert_array_equal(tgt[0, :3], [20, 14, 12])
    np.testing.assert_array_equal(tmask.sum(1), [3, 1, 4])
    eos, space = 2, 3
    comps = np.array([[20, 14, 12, eos, 0, 0],  # "-42<eos>": exact
                      [11, space, 17, eos, 0, 0],  # "1 7<eos>": all-digits "17" != "7"
                      [10 + 1, 10, 10, 10, 14, eos]], np.int32)  # "10004": 4 of 5 positions
    cmask = comps != 0
    ids = np.array(list(vocab.values()))
    exact = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos)
    np.testing.assert_array_equal(np.asarray(exact), [1, 0, 0])
    last = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos, which="last_run")
    np.testing.assert_array_equal(np.asarray(last), [1, 1, 0])
    part = tr.digit_match_reward(comps, cmask, tgt, tmask, ids, eos_id=eos, partial_credit=True)
    np.testing.assert_allclose(np.asarray(part), [1.0, 0.0, 4 / 5])
    with pytest.raises(ValueError):
        tr.encode_digit_targets(["123456"], vocab, max_len=5)


# ------------------------------------------------------------------------------ overlong


def _trl_soft_overlong(completion_ids, max_completion_len, soft_punish_cache):
    """trl/rewards/other_rewards.py get_soft_overlong_punishment, verbatim logic."""
    rewards = []
    for ids in completion_ids:
        completion_length = len(ids)
        if completion_length <= max_completion_len - soft_punish_cache:
            rewards.append(0.0)
        elif max_completion_len - soft_punish_cache < completion_length <= max_completion_len:
            rewards.append((max_completion_len - soft_punish_cache - completion_length)
                           / soft_punish_cache)
        else:
            rewards.append(-1.0)
    return rewards


def test_soft_overlong_punishment_matches_trl():
    lengths = np.arange(0, 40)
    want = _trl_soft_overlong([[0] * n for n in lengths], 32, 8)
    got = fn.soft_overlong_punishment(lengths, max_len=32, buffer_len=8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[24] == 0.0 and got[28] == -0.5 and got[32] == -1.0 and got[39] == -1.0
    # verl's DAPO manager: penalty_factor * min(-(L - (L_max - buffer)) / buffer, 0)
    verl = np.minimum(-(lengths - (32 - 8)) / 8 * 1.0, 0.0)
    np.testing.assert_allclose(got[:33], verl[:33], rtol=1e-6)
    with pytest.raises(ValueError, match="buffer_len"):
        fn.soft_overlong_punishment(lengths, max_len=8, buffer_len=8)


def test_overlong_reward_in_tokens_through_make_reward_fn():
    r = fn.make_reward_fn([("format", 1.0, {"style": "boxed"}),
                           ("overlong", 0.5, {"max_len": 10, "buffer_len": 4})])
    out = r(["\\boxed{1}", "\\boxed{2}", "x"], lengths=[3, 8, 10])
    np.testing.assert_allclose(out.components["overlong"], [0.0, -0.5, -1.0])
    np.testing.assert_allclose(out.rewards, [1.0, 1.0 - 0.25, -0.5])
    with pytest.raises(ValueError, match="lengths"):
        r(["a"])
    with pytest.raises(ValueError, match="buffer_len"):
        fn.make_reward_fn([("overlong", 1.0)])


def test_overlong_config_checks():
    from jaxgrpo.experiment import base_config, validate

    c = base_config()
    c.rewards.overlong = 1.0
    with pytest.raises(ValueError, match="rewards.overlong_buffer"):
        validate(c)
    c.rewards.overlong_buffer = c.sampling.max_new_tokens
    with pytest.raises(ValueError, match="sampling.max_new_tokens"):
        validate(c)
    c.rewards.overlong_buffer = 8
    validate(c)
    c.rewards.overlong = -1.0
    with pytest.raises(ValueError, match="rewards.overlong"):
        validate(c)
