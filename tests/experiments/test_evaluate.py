"""experiments/evaluate.py and experiments/tables/dra_table.py, end to end on a tiny random model:
a 2-step training run's checkpoint evaluated through the CLI functions (in-process), benchmark
files scored with math-verify, and the error messages."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest


def _exit_message(fn, argv, capsys=None) -> str:
    with pytest.raises(SystemExit) as e:
        fn(argv)
    msg = str(e.value.code)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- evaluate CLI


def test_run_dir_eval_reproduces_the_trainers_final_evaluation(trained, capsys):
    """The CLI on the latest checkpoint, with the run's own eval settings, must give exactly the
    trainer's final in-memory evaluation (same samples, same metrics)."""
    from experiments.evaluate import main

    run_dir, _ = trained
    main(["--run_dir", run_dir])
    printed = capsys.readouterr().out
    out = os.path.join(run_dir, "eval", "step2.json")
    doc = json.load(open(out))
    assert doc["kind"] == "run" and doc["step"] == 2
    assert doc["settings"]["seed"] == 1 and doc["settings"]["num_samples"] == 2
    (name, metrics), = doc["benchmarks"].items()
    assert name == "basic_arithmetic"
    summary = json.load(open(os.path.join(run_dir, "summary.json")))["eval"]
    ref, before = summary["2"], summary["0"]
    for key in ("accuracy", "pass@1", "pass@2", "maj@2", "mean_length", "num_prompts"):
        assert metrics[key] == ref[key], key
    np.testing.assert_allclose(metrics["mean_entropy"], ref["mean_entropy"], rtol=1e-6)
    # the trained params, not the initial ones, were evaluated
    assert abs(before["mean_entropy"] - ref["mean_entropy"]) > 1e-4
    recs = _jsonl(os.path.join(run_dir, "eval", "step2.samples.jsonl"))
    trainer_recs = _jsonl(os.path.join(run_dir, "eval_step2.jsonl"))
    assert [r["samples"] for r in recs] == [r["samples"] for r in trainer_recs]
    assert all(r["benchmark"] == "basic_arithmetic" for r in recs)
    assert "| basic_arithmetic | 2 | 2 |" in printed and "pass@2" in printed
    assert open(os.path.join(run_dir, "eval", "step2.md")).read().startswith("| benchmark |")


def test_run_dir_on_a_benchmark_file(trained, tmp_path):
    """A run's checkpoint on a benchmark file: math-verify scoring, the run's prompt settings."""
    from experiments.evaluate import main

    run_dir, _ = trained
    bench = _write_jsonl(tmp_path / "b.jsonl", BENCH)
    res = main(["--run_dir", run_dir, "--step", "1", "--benchmark", f"tiny={bench}",
                "--limit", "2", "--out", str(tmp_path / "r.json")])
    doc = json.load(open(tmp_path / "r.json"))
    assert doc["step"] == 1 and doc["benchmark_files"] == {"tiny": bench}
    assert doc["benchmarks"]["tiny"]["num_prompts"] == 2
    assert doc["settings"]["template"] == "plain" and doc["settings"]["max_new_tokens"] == 8
    assert res["policy"].step == 1


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


BENCH = [{"problem": "What is 2 + 2?", "answer": "4"},
         {"problem": "What is half of 1?", "answer": "\\frac{1}{2}"},
         {"problem": "What is 3 * 3?", "answer": 9}]


def test_model_on_a_benchmark_file(tiny_llama_dir, tmp_path, capsys):
    from math_verify import parse, verify

    from experiments.evaluate import main
    from jaxgrpo.rewards.extract import extract_answer

    bench = _write_jsonl(tmp_path / "tiny.jsonl", BENCH)
    out = tmp_path / "res" / "results.json"
    main(["--model", tiny_llama_dir, "--benchmark", f"tiny={bench}", "--num_samples", "2",
          "--ks", "1,2", "--max_new_tokens", "6", "--temperature", "0.6", "--top_p", "0.95",
          "--template", "chat", "--no_entropy", "--out", str(out)])
    printed = capsys.readouterr().out
    doc = json.load(open(out))
    assert doc["kind"] == "model" and doc["settings"]["top_p"] == 0.95
    m = doc["benchmarks"]["tiny"]
    assert m["num_prompts"] == 3 and m["num_samples"] == 2
    assert {"accuracy", "pass@1", "pass@2", "maj@1", "maj@2", "mean_length"} <= set(m)
    recs = _jsonl(tmp_path / "res" / "results.samples.jsonl")
    assert [r["gold"] for r in recs] == ["4", "\\frac{1}{2}", "9"]
    # per-sample correctness against the reference library, run inline here
    flags = []
    for r in recs:
        for text, ok in zip(r["samples"], r["correct"]):
            ans = extract_answer(text)
            want = bool(ans) and bool(verify(parse("\\boxed{" + r["gold"] + "}"),
                                             parse("\\boxed{" + ans + "}")))
            assert ok == want, (text, r["gold"])
            flags.append(ok)
    assert m["accuracy"] == pytest.approx(np.mean(flags))
    assert max(max(r["lengths"]) for r in recs) <= 6
    assert "| tiny | 3 | 2 |" in printed
    assert (tmp_path / "res" / "results.md").read_text().count("\n") == 3


def test_math_score_fn_hand_checked():
    from experiments.evaluate import gold_answer, math_score_fn
    from jaxgrpo.rewards.math_verify_pool import MathVerifier

    assert gold_answer("so the result is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer("204") == "204"
    texts = ["\\boxed{4}", "the answer is \\boxed{0.5}", "\\boxed{5}", "<answer>9</answer>",
             "no final answer", "\\boxed{\\dfrac{1}{2}}"]
    golds = ["4", "\\frac{1}{2}", "4", "9", "4", "Half: \\boxed{\\frac12}"]
    with MathVerifier(num_workers=1) as v:
        correct, answers = math_score_fn(v, ("answer_tag", "boxed"))(
            texts, [{"answer": g} for g in golds])
    assert correct.tolist() == [True, True, False, True, False, True]
    assert answers[:5] == ["4", "0.5", "5", "9", None]


def test_dra_table_with_two_files(tiny_llama_dir, tmp_path, capsys):
    from experiments.tables.dra_table import main

    aime = _write_jsonl(tmp_path / "aime.jsonl", [{"problem": "1 + 1?", "answer": 2},
                                                  {"problem": "7 - 3?", "answer": "4"}])
    math500 = _write_jsonl(tmp_path / "math500.jsonl",
                           [{"problem": "2 * 3?", "solution": "It is \\boxed{6}.", "answer": "6"}])
    out = tmp_path / "table"
    res = main(["--model", tiny_llama_dir, "--aime24", aime, "--math500", math500,
                "--max_new_tokens", "4", "--max_prompt_tokens", "160", "--dtype", "float32",
                "--out", str(out)])
    printed = capsys.readouterr().out
    table = (out / "dra_table.md").read_text()
    assert table in printed
    rows = {r["benchmark"]: r for r in res["rows"]}
    for name in ("AMC23", "Minerva", "OlympiadBench"):
        assert rows[name]["status"] == "not provided"
        assert f"| {name} | – | not provided |" in table
    assert rows["AIME24"]["num_prompts"] == 2 and rows["MATH-500"]["num_prompts"] == 1
    assert rows["AIME24"]["DRA-DR.GRPO (paper)"] == 36.7
    assert "| AIME24 | 2 |" in table and "36.7" in table and "85.2" in table
    avg = rows["Average (2/5 provided)"]
    assert avg["provided"] == ["AIME24", "MATH-500"]
    assert avg["DRA-DR.GRPO (paper)"] == pytest.approx((36.7 + 85.2) / 2)
    assert avg["base R1-Distill-1.5B (paper)"] == pytest.approx((28.8 + 82.8) / 2)
    assert avg["pass@1"] == pytest.approx((rows["AIME24"]["pass@1"] + rows["MATH-500"]["pass@1"]) / 2)
    doc = json.load(open(out / "dra_table.json"))
    assert doc["not_provided"] == ["amc23", "minerva", "olympiadbench"]
    s = doc["settings"]
    assert (s["temperature"], s["top_p"], s["num_samples"], s["template"]) == (0.6, 0.95, 1, "chat")
    recs = _jsonl(out / "dra_table.samples.jsonl")
    assert [r["gold"] for r in recs] == ["2", "4", "It is \\boxed{6}."]
    assert (out / "dra_table.png").exists()


# ----------------------------------------------------------------------------- error messages


def test_cli_errors_are_one_line(trained, tiny_llama_dir, tmp_path):
    from experiments.evaluate import main
    from experiments.tables import dra_table

    run_dir, _ = trained
    bench = _write_jsonl(tmp_path / "b.jsonl", BENCH)
    msg = _exit_message(main, ["--run_dir", str(tmp_path / "missing_run")])
    assert msg == f"evaluate: error: run directory not found: {tmp_path / 'missing_run'}"
    msg = _exit_message(main, ["--model", tiny_llama_dir, "--benchmark",
                               f"x={tmp_path / 'nope.jsonl'}"])
    assert "benchmark file not found" in msg and "nope.jsonl" in msg
    msg = _exit_message(main, ["--model", tiny_llama_dir, "--benchmark", f"x={bench}",
                               "--num_samples", "2", "--ks", "1,4"])
    assert "--ks '1,4'" in msg and "[4]" in msg
    msg = _exit_message(main, ["--model", tiny_llama_dir, "--benchmark", f"x={bench}",
                               "--num_samples", "2", "--ks", "1,two"])
    assert "--ks '1,two'" in msg and "integers" in msg
    msg = _exit_message(main, ["--model", tiny_llama_dir, "--benchmark", bench])
    assert "expected NAME=PATH" in msg
    msg = _exit_message(main, ["--run_dir", run_dir, "--step", "7"])
    assert "checkpoint step 7 not found" in msg and "[1, 2]" in msg
    msg = _exit_message(main, ["--model", str(tmp_path / "no_model")])
    assert msg.startswith("evaluate: error: model not found") and "no_model" in msg
    cols = _write_jsonl(tmp_path / "cols.jsonl", [{"question": "q", "answer": "1"}])
    msg = _exit_message(main, ["--model", tiny_llama_dir, "--benchmark", f"x={cols}"])
    assert "cols.jsonl" in msg and "'problem'" in msg
    msg = _exit_message(dra_table.main, ["--model", tiny_llama_dir, "--amc23",
                                         str(tmp_path / "amc.jsonl")])
    assert msg == f"dra_table: error: benchmark file not found: {tmp_path / 'amc.jsonl'} (--amc23)"
    msg = _exit_message(dra_table.main, ["--model", tiny_llama_dir])
    assert "no benchmark files given" in msg
    msg = _exit_message(dra_table.main, ["--model", tiny_llama_dir, "--olympiadbench", bench])
    assert "b.jsonl" in msg and "'question'" in msg  # OlympiadBench's column is 'question'
    msg = _exit_message(dra_table.main, ["--model", tiny_llama_dir, "--aime24", bench,
                                         "--fields", "aime=problem,answer"])
    assert "unknown benchmarks ['aime']" in msg
