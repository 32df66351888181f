"""Tests for jaxgrpo.rewards.math_verify_pool: equivalence tables, the fast path, timeouts, crashes
and killed workers."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from jaxgrpo.rewards import math_verify_pool as mvp


B = lambda s: "\\boxed{" + s + "}"  # noqa: E731


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
