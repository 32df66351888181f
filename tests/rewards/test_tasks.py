"""Tests for jaxgrpo.rewards.tasks: reasoning-gym tasks and local prompt files."""
from __future__ import annotations

import itertools
import json
import time
from fractions import Fraction

import numpy as np
import pytest

from jaxgrpo.rewards import functions as fn
from jaxgrpo.rewards import tasks


@pytest.fixture(scope="module")
def small_tasks():
    return {name: tasks.make_task(name, seed=3, size=12) for name in tasks.SUPPORTED_TASKS}


@pytest.mark.parametrize("name", tasks.SUPPORTED_TASKS)
def test_rows_are_seeded_and_gold_scores_one(small_tasks, name):
    task = small_tasks[name]
    again = tasks.make_task(name, seed=3, size=12)
    other = tasks.make_task(name, seed=4, size=12)
    rows = task.rows()
    assert len(rows) == len(task) == 12
    assert [r["question"] for r in rows] == [r["question"] for r in again]
    assert [r["question"] for r in rows] != [r["question"] for r in other]
    for r in rows:
        assert set(r) == {"question", "answer", "metadata"}
        assert isinstance(r["question"], str) and isinstance(r["answer"], str)
        assert r["metadata"]["task"] == name
    golds = [f"<think>\nwork\n</think>\n<answer>{r['answer']}</answer>" for r in rows]
    np.testing.assert_array_equal(task.score(golds, rows), np.ones(12, np.float32))
    boxed = [f"so \\boxed{{{r['answer']}}}" for r in rows]
    np.testing.assert_array_equal(task.score(boxed, list(range(12))), np.ones(12))
    wrong = task.score(["<answer>-123456789</answer>", "no answer at all"], rows[:2])
    assert (wrong < 1).all()


def test_index_errors_and_bad_task():
    t = tasks.make_task("chain_sum", seed=0, size=3)
    assert t[-1] == t[2]
    with pytest.raises(IndexError):
        t[3]
    with pytest.raises(ValueError, match="no_such_task"):
        tasks.make_task("no_such_task", seed=0, size=3)
    with pytest.raises(ValueError):
        tasks.make_task("chain_sum", seed=0, size=0)


def test_task_kwargs_reach_the_generator():
    t = tasks.make_task("chain_sum", seed=0, size=20, min_terms=2, max_terms=2, min_digits=1,
                        max_digits=1)
    for r in t:
        assert r["metadata"]["num_terms"] == 2


def _other_countdown_solution(numbers, target, reference):
    """Brute force: a left-to-right expression over all numbers, different from the reference."""
    ops = "+-*/"
    for perm in itertools.permutations(numbers):
        for op in itertools.product(ops, repeat=len(numbers) - 1):
            val = Fraction(perm[0])
            expr = str(perm[0])
            ok = True
            for o, x in zip(op, perm[1:]):
                if o == "/" and x == 0:
                    ok = False
                    break
                val = {"+": val + x, "-": val - x, "*": val * x, "/": val / x if x else 0}[o]
                expr = f"({expr} {o} {x})"
            if ok and val == target and expr.replace(" ", "") != reference.replace(" ", ""):
                return expr
    return None


def test_countdown_accepts_any_valid_expression():
    task = tasks.make_task("countdown", seed=0, size=30, min_numbers=3, max_numbers=4)
    found = 0
    for r in task:
        m = r["metadata"]
        alt = _other_countdown_solution(m["numbers"], m["target"], r["answer"])
        if alt is None:
            continue
        found += 1
        s = task.score([f"<answer>{alt}</answer>", f"<answer>{r['answer']}</answer>"], [r, r])
        np.testing.assert_array_equal(s, [1.0, 1.0])
        if found >= 3:
            break
    assert found >= 1
    # A hand-made row: target 10 from [1, 2, 3, 4] has many solutions.
    row = dict(task[0])
    row = {"question": "q", "answer": "1+2+3+4",
           "metadata": {**row["metadata"], "numbers": [1, 2, 3, 4], "target": 10}}
    answers = ["1+2+3+4", "4*3-2*1", "4*(3-1)+2", "4*3-2/1", "4+3+2", "4*3-2", "1+2+3+4+0",
               "(4+1)*2*(3-2)"]  # the last three use a number that is not given / twice
    np.testing.assert_allclose(task.score_answers(answers, [row] * len(answers)),
                               [1, 1, 1, 1, 0.05, 0.05, 0.05, 0.05])


def test_countdown_rejects_dangerous_expressions_fast():
    task = tasks.make_task("countdown", seed=0, size=2)
    bad = ["9**9**9**9", "99999!", "2^3", "x", "1" * 10000, "__import__('os')"]
    t0 = time.perf_counter()
    s = task.score_answers(bad, [0] * len(bad))
    assert time.perf_counter() - t0 < 0.5
    assert (s <= 0.05).all()


def test_batched_scoring_throughput():
    task = tasks.make_task("chain_sum", seed=1, size=64)
    rows = task.rows()
    comps, rr = [], []
    for i, r in enumerate(rows):
        for k in range(32):  # 2,048 distinct completions
            comps.append(f"<think>\n{k}\n</think>\n<answer>{int(r['answer']) + (k % 3)}</answer>")
            rr.append(r)
    t0 = time.perf_counter()
    s = task.score(comps, rr)
    dt = time.perf_counter() - t0
    assert dt < 2.0, dt
    assert s.shape == (len(comps),) and s.dtype == np.float32
    np.testing.assert_allclose(s.reshape(64, 32)[:, 0::3].min(), 1.0)


def test_reward_fn_with_task():
    task = tasks.make_task("simple_equations", seed=0, size=4)
    rows = task.rows()
    comps = ["<think>\nok\n</think>\n<answer>" + rows[0]["answer"] + "</answer>",
             "<think>\nok\n</think>\n<answer>123456</answer>"]
    rf = fn.make_reward_fn([("format", 1.0), ("accuracy", 1.0), ("cosine", 2.0)], task=task)
    out = rf(comps, rows=rows[:2])
    np.testing.assert_array_equal(out.components["format"], [1, 1])
    assert out.components["accuracy"][0] == 1.0 and out.components["accuracy"][1] < 1.0
    assert out.components["cosine"][0] > 0.5 and out.components["cosine"][1] <= 0.0
    assert rf._verifier is None  # the task scored; no math-verify pool was started
    with pytest.raises(ValueError, match="rows"):
        rf(comps)


# ------------------------------------------------------------------------------ local files


def test_load_prompts_jsonl_and_parquet(tmp_path):
    recs = [{"problem": "1+1?", "answer": "2", "level": 1},
            {"problem": "2+2?", "answer": 4, "level": 2}]
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    rows = tasks.load_prompts(p)
    assert [r["question"] for r in rows] == ["1+1?", "2+2?"]
    assert [r["answer"] for r in rows] == ["2", "4"]
    assert rows[1]["metadata"]["level"] == 2 and rows[1]["metadata"]["index"] == 1
    assert rows[0]["metadata"]["source"] == str(p)

    import datasets

    q = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"question": "3*3?", "solution": "\\boxed{9}"}]).to_parquet(str(q))
    rows = tasks.load_prompts(q, question_field="question", answer_field="solution")
    assert rows == [{"question": "3*3?", "answer": "\\boxed{9}",
                     "metadata": {"source": str(q), "index": 0}}]


def test_load_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        tasks.load_prompts(tmp_path / "missing.jsonl")
    p = tmp_path / "cols.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"cols\.jsonl.*'problem'.*\['question', 'answer'\]"):
        tasks.load_prompts(p)
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "ok", "answer": "1"}, {"problem": "bad", "answer": None}]))
    with pytest.raises(ValueError, match=r"rows\.jsonl: row 1: field 'answer'"):
        tasks.load_prompts(p)
    p = tmp_path / "blank.jsonl"
    p.write_text(json.dumps({"problem": "  ", "answer": "1"}))
    with pytest.raises(ValueError, match=r"blank\.jsonl: row 0: field 'problem'"):
        tasks.load_prompts(p)
    p = tmp_path / "broken.json"
    p.write_text('{"problem": "x", "answer": ')
    with pytest.raises(ValueError, match=r"broken\.json"):
        tasks.load_prompts(p)
    p = tmp_path / "p.txt"
    p.write_text("x")
    with pytest.raises(ValueError, match=r"p\.txt"):
        tasks.load_prompts(p)


# ----------------------------------------------------------------------------- sum_to_target


def _seeded_own_task(name, size, kwargs):
    """Our task ``name`` of ``size`` rows at seed 5, after checking that row i depends on
    (seed, i) alone: the same in a bigger dataset, different at another seed."""
    t = tasks.make_task(name, seed=5, size=size, **kwargs)
    bigger = tasks.make_task(name, seed=5, size=2 * size + 5, **kwargs)
    other = tasks.make_task(name, seed=6, size=size, **kwargs)
    assert [r["question"] for r in t] == [r["question"] for r in bigger.rows(0, size)]
    assert [r["question"] for r in t] != [r["question"] for r in other]
    return t


@pytest.mark.parametrize("kwargs", [{}, {"terms": 3, "min_target": 6, "max_target": 30},
                                    {"distinct": True}, {"list_size": 6, "max_value": 30}])
def test_sum_task_rows_seeded_and_num_solutions_by_brute_force(kwargs):
    t = _seeded_own_task("sum_to_target", 10, kwargs)
    for r in t:
        m = r["metadata"]
        k, target, numbers = m["terms"], m["target"], m["numbers"]
        # Brute force over every sorted k-tuple of candidate numbers.
        pool = numbers if numbers is not None else range(1, target + 1)
        combos = (itertools.combinations(sorted(pool), k) if m["distinct"]
                  else itertools.combinations_with_replacement(sorted(pool), k))
        solutions = {c for c in combos if sum(c) == target}
        assert m["num_solutions"] == len(solutions)
        if numbers is not None:
            assert len(set(numbers)) == len(numbers) == 6 and len(solutions) >= 2
            assert str(numbers) in r["question"]
        ref = tuple(int(x) for x in r["answer"].split(" + "))
        assert tuple(sorted(ref)) in solutions
        # Every solution scores 1 in either order; answers are the sorted canonical form.
        sols = sorted(solutions)[:5]
        texts = [" + ".join(str(x) for x in reversed(s)) for s in sols]
        np.testing.assert_array_equal(t.score(texts, [r] * len(texts)), np.ones(len(texts)))
        assert t.answers(texts, [r] * len(texts)) == ["+".join(map(str, s)) for s in sols]


def test_sum_task_extraction_and_verification_by_hand():
    t = tasks.make_task("sum_to_target", seed=0, size=1)
    row = {"question": "q", "answer": "3 + 5", "metadata": {
        "task": "sum_to_target", "index": 0, "target": 8, "terms": 2, "numbers": None,
        "distinct": False, "num_solutions": 4}}
    cases = {
        "3 + 5 = 8": (1.0, "3+5"),
        "5+3": (1.0, "3+5"),
        "Sure! 4 + 4 = 8.": (1.0, "4+4"),
        "1 + 1 = 2, and then 2 + 6 = 8": (1.0, "2+6"),  # the last chain counts
        "<answer>7 + 1</answer> or 2 + 2": (1.0, "1+7"),  # the answer block wins
        "\\boxed{6 + 2}": (1.0, "2+6"),
        "007 + 1": (1.0, "1+7"),
        "Two numbers that add up to 8 are 1 and 7.": (1.0, "1+7"),
        "2 + 3 and 3": (0.0, "2+3+3"),  # three terms (sum 8) for a two-term task
        "0 + 8": (0.0, "0+8"),  # positive numbers only
        "8 + 0": (0.0, "0+8"),
        "2 + 2 + 4": (0.0, "2+2+4"),  # three terms for a two-term task
        "1 + 2 * 3.5": (0.0, None),  # not a sum chain
        "-2 + 10": (0.0, None),  # a negative first number is no chain
        "3.5 + 4.5": (0.0, None),
        "The answer is 8.": (0.0, None),
        "": (0.0, None),
    }
    texts = list(cases)
    np.testing.assert_array_equal(t.score(texts, [row] * len(texts)),
                                  [v[0] for v in cases.values()])
    assert t.answers(texts, [row] * len(texts)) == [v[1] for v in cases.values()]
    listed = {**row, "metadata": {**row["metadata"], "numbers": [1, 3, 5, 7], "distinct": True}}
    np.testing.assert_array_equal(t.score(["1 + 7", "3 + 5", "4 + 4", "2 + 6"], [listed] * 4),
                                  [1, 1, 0, 0])


def test_sum_task_errors_and_reward_fn():
    with pytest.raises(ValueError, match="terms"):
        tasks.make_task("sum_to_target", seed=0, size=2, terms=7)
    with pytest.raises(ValueError, match="list_size"):
        tasks.make_task("sum_to_target", seed=0, size=2, list_size=1)
    with pytest.raises(ValueError, match="min_target"):
        tasks.make_task("sum_to_target", seed=0, size=2, min_target=1)
    with pytest.raises(ValueError, match="no_such_option"):
        tasks.make_task("sum_to_target", seed=0, size=2, no_such_option=1)
    t = tasks.make_task("sum_to_target", seed=0, size=4)
    rows = t.rows()
    rf = fn.make_reward_fn([fn.RewardSpec("accuracy", 1.0)], task=t)
    out = rf([r["answer"] for r in rows] + ["no"], rows=rows + rows[:1])
    np.testing.assert_array_equal(out.rewards, [1, 1, 1, 1, 0])


# ----------------------------------------------------------------------------- number_in_range


@pytest.mark.parametrize("kwargs", [{}, {"divisors": [2, 3, 5], "min_width": 10},
                                    {"min_low": 0, "max_low": 3, "min_width": 2, "max_width": 4,
                                     "min_solutions": 1}])
def test_range_task_rows_seeded_and_num_solutions_by_brute_force(kwargs):
    t = _seeded_own_task("number_in_range", 12, kwargs)
    for r in t:
        m = r["metadata"]
        lo, hi, d = m["low"], m["high"], m["divisor"]
        assert d in kwargs.get("divisors", [1])
        assert f"greater than {lo} and less than {hi}" in r["question"]
        assert (f"divisible by {d}" in r["question"]) == (d != 1)
        solutions = [n for n in range(0, hi + 5) if lo < n < hi and n % d == 0]
        assert m["num_solutions"] == len(solutions) >= kwargs.get("min_solutions", 3)
        assert int(r["answer"]) in solutions
        outside = [n for n in (lo - 1, hi + 1) if n >= 0 and n not in (lo, hi)]
        texts = ([f"The number is {n}." for n in solutions]
                 + [f"The number is {n}." for n in outside]
                 + [f"{lo} < {n} < {hi}" for n in solutions])
        np.testing.assert_array_equal(  # bounds exclusive; repeating them is allowed
            t.score(texts, [r] * len(texts)),
            [1.0] * len(solutions) + [0.0] * len(outside) + [1.0] * len(solutions))
        assert t.answers(texts[:len(solutions)], [r] * len(solutions)) == [
            str(n) for n in solutions]


def test_range_task_extraction_by_hand():
    t = tasks.make_task("number_in_range", seed=0, size=1)
    row = {"question": "q", "answer": "14", "metadata": {
        "task": "number_in_range", "index": 0, "low": 10, "high": 20, "divisor": 2,
        "num_solutions": 4}}
    cases = {
        "14": (1.0, "14"),
        "A number greater than 10 and less than 20 is 16.": (1.0, "16"),  # bounds repeated
        "16 is between 10 and 20": (1.0, "16"),
        "16, and again 16": (1.0, "16"),  # one distinct number
        "018": (1.0, "18"),
        "12, 14, 16": (0.0, None),  # a list is no answer (GRPO learned to enumerate)
        "10, 11, 12, 13, 1": (0.0, None),
        "<answer>12</answer> or maybe 15": (1.0, "12"),  # the answer block wins
        "\\boxed{15}": (0.0, "15"),  # in range but odd
        "12.5": (0.0, None),  # a decimal is no candidate
        "14 or -16": (1.0, "14"),  # nor a negative number
        "10": (0.0, None),  # a bound alone is no answer
        "twelve": (0.0, None),
        "": (0.0, None),
    }
    texts = list(cases)
    np.testing.assert_array_equal(t.score(texts, [row] * len(texts)),
                                  [v[0] for v in cases.values()])
    assert t.answers(texts, [row] * len(texts)) == [v[1] for v in cases.values()]


def test_range_task_errors_and_reward_fn():
    for kwargs, match in [({"min_low": 5, "max_low": 4}, "min_low"),
                          ({"min_width": 1}, "min_width"), ({"divisors": [0]}, "divisors"),
                          ({"divisors": []}, "divisors"), ({"min_solutions": 0}, "min_solutions"),
                          ({"divisors": [7], "max_width": 10}, "too narrow"),
                          ({"no_such_option": 1}, "no_such_option")]:
        with pytest.raises(ValueError, match=match):
            tasks.make_task("number_in_range", seed=0, size=2, **kwargs)
    t = tasks.make_task("number_in_range", seed=0, size=4, divisors=[1, 3])
    rows = t.rows()
    rf = fn.make_reward_fn([fn.RewardSpec("accuracy", 1.0)], task=t)
    out = rf([r["answer"] for r in rows] + ["no"], rows=rows + rows[:1])
    np.testing.assert_array_equal(out.rewards, [1, 1, 1, 1, 0])
