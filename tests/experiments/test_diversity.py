"""Tests for experiments/diversity/testbed.py and experiments/configs/diversity.py: the t-interval
against a hand computation, the config, and the comparison end to end on a tiny random decoder
(table and plots written; finished runs reused, interrupted ones restarted)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from experiments.diversity import testbed as diversity


def test_t_interval_hand_computed():
    d = [0.1, 0.3, 0.2]
    m, lo, hi = diversity.t_interval(d)
    # mean 0.2, sd 0.1, t_{0.975, 2} = 4.302652729911275
    half = 4.302652729911275 * 0.1 / np.sqrt(3)
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - half)
    assert hi == pytest.approx(0.2 + half)
    m, lo, hi = diversity.t_interval([0.5])
    assert m == 0.5 and np.isnan(lo) and np.isnan(hi)
    assert diversity._fmt_diff([]) == "–"


@pytest.mark.parametrize("method", ["grpo", "dra_dr_grpo", "dagrpo", "progrpo"])
def test_config_keeps_the_method_chain_and_validates(method):
    import importlib

    from experiments.configs.diversity import get_config
    from jaxgrpo.experiment import validate

    c = validate(get_config(method))
    own = importlib.import_module(f"experiments.configs.{method}").get_config()
    assert (c.advantage.baseline, c.advantage.reward_transforms,
            c.advantage.advantage_transforms, c.loss.agg_mode) == (
        own.advantage.baseline, own.advantage.reward_transforms,
        own.advantage.advantage_transforms, own.loss.agg_mode)
    assert c.data.task == "number_in_range"
    assert c.eval.num_prompts >= 64 and c.eval.num_samples == 32
    assert c.eval.ks == "1,2,4,8,16,32"
    with pytest.raises(ValueError, match="unknown method"):
        get_config("nope")


def test_prefill_prompt_is_the_chat_template_with_the_answer_begun():
    """``diversity.py:<method>,prefill`` renders the packaged tokenizer's own chat-template prompt
    token for token, followed by "The number is", and keeps everything else of the method's
    config; the --prompt flag reaches the runs' configs; an unknown prompt fails naming it."""
    from experiments.configs.diversity import PROMPTS, get_config
    from jaxgrpo.experiment import validate
    from jaxgrpo.data import encode_prompts, render_prompt
    from jaxgrpo.models import default_model_path
    from jaxgrpo.models.loading import load_tokenizer

    tok = load_tokenizer(str(default_model_path()))
    q = "Write a whole number greater than 7 and less than 19."
    chat = tok.encode(render_prompt(tok, q, template="chat", prompt_format="{question}"),
                      add_special_tokens=False)
    c = validate(get_config("dagrpo,prefill"))
    ids, mask, _ = encode_prompts(tok, [{"question": q}], c.data, pad_id=0)
    ids = np.asarray(ids)[0][np.asarray(mask)[0]].tolist()
    assert ids[:len(chat)] == chat
    assert tok.decode(ids[len(chat):]) == "The number is"
    assert c.sampling.max_new_tokens == PROMPTS["prefill"][2] == 8
    plain = get_config("dagrpo")
    assert (c.advantage.advantage_transforms, c.loss.agg_mode, c.eval.num_samples) == (
        plain.advantage.advantage_transforms, plain.loss.agg_mode, plain.eval.num_samples)
    assert (plain.data.template, plain.sampling.max_new_tokens) == ("chat", 16)

    class Args:
        steps = eval_every = eval_prompts = num_samples = None
        random_init_layers, quiet, out, prompt = 0, True, "runs/x", "prefill"
    assert diversity.method_config("grpo", Args, 0).data.prompt_format == c.data.prompt_format
    with pytest.raises(ValueError, match="unknown prompt 'nope'"):
        get_config("grpo,nope")
    with pytest.raises(SystemExit, match="--prompt: unknown 'nope'"):
        diversity.main(["--prompt", "nope", "--report"])


@pytest.mark.slow
def test_comparison_end_to_end_tiny_model_with_resume(tmp_path, monkeypatch, capsys):
    import jaxgrpo.loop

    out = tmp_path / "div"
    argv = ["--methods", "GRPO,Dr.GRPO", "--seeds", "0,1", "--steps", "1", "--eval_every", "1",
            "--eval_prompts", "4", "--num_samples", "4", "--random_init_layers", "1",
            "--out", str(out), "--quiet"]
    trained = []
    real_run = jaxgrpo.loop.run

    def counting_run(c):
        trained.append(os.path.basename(c.run_dir))
        return real_run(c)

    monkeypatch.setattr(jaxgrpo.loop, "run", counting_run)
    res = diversity.main(argv)
    assert sorted(trained) == ["dr_grpo-seed0", "dr_grpo-seed1", "grpo-seed0", "grpo-seed1"]
    for name in ("diversity.md", "passk.png", "curves.png", "diversity.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "diversity.md").read_text()
    assert "| base model |" in table and "| GRPO |" in table and "| Dr.GRPO |" in table
    assert "Difference from GRPO" in table and "pass@4" in table
    # Evaluations at steps 0 and 1 for every run; base model = the step-0 evaluation.
    for seed in (0, 1):
        ev = res["curves"]["GRPO"][seed]
        assert sorted(ev) == [0, 1]
        assert res["results"]["base model"][seed]["pass@1"] == ev[0]["pass@1"]
        assert res["results"]["GRPO"][seed]["pass@4"] == ev[1]["pass@4"]
    # The base model is evaluated once per seed (by GRPO, the first method) and shared: the
    # Dr.GRPO runs skip their step-0 evaluation and report GRPO's.
    for seed in (0, 1):
        assert 0 in diversity.read_evals(str(out / f"grpo-seed{seed}"))
        assert 0 not in diversity.read_evals(str(out / f"dr_grpo-seed{seed}"))
        saved = json.loads((out / f"dr_grpo-seed{seed}" / "config.json").read_text())
        assert saved["eval"]["before_training"] is False
        assert res["curves"]["Dr.GRPO"][seed][0] == res["curves"]["GRPO"][seed][0]
        assert sorted(res["curves"]["Dr.GRPO"][seed]) == [0, 1]
    # A per-seed difference row computed from the runs' own final metrics.
    d = [res["results"]["Dr.GRPO"][s]["pass@1"] - res["results"]["GRPO"][s]["pass@1"]
         for s in (0, 1)]
    m, lo, hi = diversity.t_interval(d)
    assert f"| Dr.GRPO | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] |" in table

    # Second sitting: everything is reused, nothing trains.
    trained.clear()
    diversity.main(argv)
    assert trained == []
    assert "reused" in capsys.readouterr().out
    # An interrupted run (no summary.json, no checkpoint) is started again; the others reused.
    os.remove(out / "grpo-seed1" / "summary.json")
    for d in (out / "grpo-seed1" / "checkpoints").iterdir():
        if d.name.isdigit():
            shutil.rmtree(d)
    diversity.main(argv)
    assert trained == ["grpo-seed1"]
    assert json.loads((out / "grpo-seed1" / "wall.json").read_text())["seconds"] > 0
    # --report trains nothing and rebuilds the table.
    trained.clear()
    (out / "diversity.md").unlink()
    diversity.main(argv + ["--report"])
    assert trained == [] and (out / "diversity.md").exists()


def _ev(p1, p4, extra=()):
    e = {"pass@1": p1, "pass@4": p4, "distinct_correct_answers": 4 * p1, "mean_entropy": 1.0,
         "num_prompts": 8, "num_samples": 4}
    e.update(extra)
    return e


def test_merge_adds_missing_runs_only_and_plots_partial_records(tmp_path):
    """--merge: an earlier sitting's diversity.json (here a table's final-step values, no pass@2,
    no step 5) joins only where --out has no run; the table's means and paired t-intervals use
    the merged values; the plots use the k and steps every seed recorded."""
    curves = {"GRPO": {1: {0: _ev(0.1, 0.3, {"pass@2": 0.2}), 5: _ev(0.3, 0.6, {"pass@2": 0.4}),
                           10: _ev(0.5, 0.8, {"pass@2": 0.7})}},
              "Dr.GRPO": {1: {0: _ev(0.1, 0.3, {"pass@2": 0.2}), 10: _ev(0.6, 0.9, {"pass@2": 0.8})}}}
    old = {"_source": "a table", "GRPO": {"0": {"0": _ev(0.1, 0.3), "10": _ev(0.7, 0.9)},
                                          "1": {"0": _ev(9, 9), "10": _ev(9, 9)}},
           "Dr.GRPO": {"0": {"0": _ev(0.1, 0.3), "10": _ev(0.8, 1.0)}},
           "DaGRPO": {"0": {"0": _ev(0.1, 0.3), "10": _ev(0.2, 0.3)}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    taken = diversity.merge_results(curves, [str(path)], ["GRPO", "Dr.GRPO"], [0, 1])
    assert taken == {str(path): ["GRPO seed 0", "Dr.GRPO seed 0"]}  # not seed 1, not DaGRPO
    assert curves["GRPO"][1][10]["pass@1"] == 0.5 and curves["GRPO"][0][10]["pass@1"] == 0.7
    results = {diversity.BASE: {s: curves["GRPO"][s][0] for s in (0, 1)},
               **{m: {s: r[max(r)] for s, r in runs.items()} for m, runs in curves.items()}}

    class A:
        task, describe = "t", "d"
    table = diversity.build_table(results, {m: {0: 10, 1: 10} for m in curves}, [1, 2, 4], A,
                                  [0, 1])
    assert "| GRPO | 0.600 ± 0.141 |" in table  # mean of 0.7 (merged) and 0.5
    m, lo, hi = diversity.t_interval([0.8 - 0.7, 0.6 - 0.5])
    assert f"| Dr.GRPO | {m:+.3f} [{lo:+.3f}, {hi:+.3f}]" in table
    diversity.plot_passk(results, [1, 2, 4], str(tmp_path / "passk.png"))
    diversity.plot_curves(curves, str(tmp_path / "curves.png"))
    assert (tmp_path / "passk.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no such file"):
        diversity.merge_results({}, [str(tmp_path / "missing.json")], ["GRPO"], [0])


def test_report_from_merged_files_only(tmp_path):
    """--report with an empty --out and --merge files (the run directories stayed on another
    machine): the table comes from the merged runs and says the wall time is not recorded
    instead of claiming 0 s."""
    old = {m: {str(s): {"0": _ev(0.1, 0.3), "10": _ev(0.2 + 0.1 * s, 0.5)} for s in (0, 1)}
           for m in ("GRPO", "DaGRPO")}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    out = tmp_path / "out"
    out.mkdir()
    res = diversity.main(["--report", "--methods", "GRPO,DaGRPO", "--seeds", "0,1",
                          "--out", str(out), "--merge", str(path), "--quiet"])
    assert "| GRPO | 0.250 ± 0.071 |" in res["table"]
    assert "Wall time: not recorded" in res["table"] and "0 s over 0 runs" not in res["table"]
    assert (out / "diversity.md").read_text() == res["table"]


def test_base_source_needs_equal_eval_settings(tmp_path):
    """A run shares another's step-0 evaluation only when model, data, sampling, seed and eval
    settings agree (the method's own keys and eval.every / before_training may differ)."""
    from experiments.configs.diversity import get_config

    def make(module, seed=0, **changes):
        c = get_config(module)
        c.seed = seed
        c.run_dir = str(tmp_path / f"{module}-seed{seed}")
        for k, v in changes.items():
            node, *path = k.split(".")
            getattr(c, node)[path[0]] = v
        return c

    src = make("grpo")
    os.makedirs(src.run_dir)
    (tmp_path / "grpo-seed0" / "config.json").write_text(src.to_json_best_effort())
    metrics = tmp_path / "grpo-seed0" / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 0, "kind": "eval", "pass@1": 0.5}) + "\n")

    c = make("dagrpo", **{"eval.every": 7})
    assert diversity.share_base_eval(str(tmp_path), c) == src.run_dir
    assert c.eval.before_training is False
    for other in (make("dagrpo", seed=1), make("dagrpo", **{"eval.num_samples": 8}),
                  make("dagrpo", **{"sampling.max_new_tokens": 9}),
                  make("dagrpo", **{"data.prompt_format": "{question}!"})):
        assert diversity.share_base_eval(str(tmp_path), other) is None
        assert other.eval.before_training is True
    metrics.write_text(json.dumps({"step": 5, "kind": "eval", "pass@1": 0.5}) + "\n")
    assert diversity.base_source(str(tmp_path), make("dagrpo")) is None  # no step-0 eval there


def test_screen_variants_are_valid_configs():
    """Every variant of experiments/diversity/diversity_screen.py overrides keys that exist and
    gives a config that validates with its task built (a typo'd key or task option fails)."""
    from experiments.diversity import diversity_screen as screen
    from jaxgrpo.experiment import validate

    for name in screen.VARIANTS:
        c = validate(screen.variant_config(name), inputs=True)
        for k, v in screen.VARIANTS[name][1].items():
            node = c
            for part in k.split("."):
                node = node[part]
            assert node == v, (name, k)
    assert screen.variant_config("range").data.task == "number_in_range"
    assert screen.variant_config("sum").data.task == "sum_to_target"
    with pytest.raises(KeyError, match="data.no_such_key"):
        screen.set_key(screen.variant_config("range"), "data.no_such_key", 1)
    with pytest.raises(SystemExit, match="unknown"):
        screen.main(["--variants", "nope"])


@pytest.mark.slow
def test_final_evaluation_reproduces_the_runs_own_and_is_stored(tmp_path, monkeypatch):
    """--final_eval: at the run's own evaluation size the final evaluation of the last
    checkpoint equals the trainer's evaluation of that step, and the base model's equals the
    step-0 evaluation (same rows, key and settings, weights restored from the checkpoint); at a
    larger size it is stored per run and per seed's base model, reported in a second table and
    plot, and reused by the next sitting."""
    out = tmp_path / "div"
    argv = ["--methods", "GRPO,Dr.GRPO", "--seeds", "0", "--steps", "1", "--eval_every", "1",
            "--eval_prompts", "4", "--num_samples", "4", "--random_init_layers", "1",
            "--out", str(out), "--quiet", "--final_eval"]
    res = diversity.main(argv + ["--final_prompts", "4", "--final_samples", "4"])
    keys = ("pass@1", "pass@2", "pass@4", "distinct_correct_answers", "mean_entropy",
            "mean_length", "top_correct_share")
    for m in ("GRPO", "Dr.GRPO"):
        own, fin = res["curves"][m][0][1], res["final"][m][0]
        assert fin["step"] == 1
        for k in keys:
            assert fin[k] == pytest.approx(own[k], rel=1e-6, abs=1e-9), (m, k)
    base = res["final"][diversity.BASE][0]
    for k in keys:
        assert base[k] == pytest.approx(res["curves"]["GRPO"][0][0][k], rel=1e-6, abs=1e-9), k
    assert (out / "base-seed0" / "final_eval_4x4.json").exists()
    assert (out / "grpo-seed0" / "final_eval_4x4.jsonl").read_text().count("\n") == 4

    # A larger final evaluation: a second table and plot; stored, so the next sitting reuses it.
    calls = []
    real = diversity.final_evaluation

    def counting(run_dir, *a, **kw):
        calls.append((os.path.basename(run_dir), kw.get("base", False)))
        return real(run_dir, *a, **kw)

    monkeypatch.setattr(diversity, "final_evaluation", counting)
    big = argv + ["--final_prompts", "6", "--final_samples", "8"]
    res = diversity.main(big)
    assert sorted(calls) == [("dr_grpo-seed0", False), ("grpo-seed0", False),
                             ("grpo-seed0", True)]  # the base once per seed
    table = (out / "diversity.md").read_text()
    assert "final evaluation of each run's last checkpoint: 6 prompts × 8 samples" in table
    assert table.count("| base model |") == 4 and "pass@8" in table  # 2 tables x (row, diff)
    assert res["final"]["GRPO"][0]["num_prompts"] == 6
    assert res["final"]["GRPO"][0]["num_samples"] == 8
    assert (out / "passk_final.png").stat().st_size > 0
    saved = json.loads((out / "diversity.json").read_text())["_final"]["6x8"]
    assert saved["GRPO"]["0"]["pass@8"] == res["final"]["GRPO"][0]["pass@8"]
    calls.clear()
    again = diversity.main(big)
    assert calls == [] and again["final"] == res["final"]
    # --report reads the stored final evaluations and computes none; a report from the
    # committed JSON alone (another machine) rebuilds the same second table.
    diversity.main(big + ["--report"])
    assert calls == []
    merged = tmp_path / "empty"
    merged.mkdir()
    rep = diversity.main(["--report", "--methods", "GRPO,Dr.GRPO", "--seeds", "0", "--out",
                          str(merged), "--merge", str(out / "diversity.json"), "--quiet",
                          "--final_prompts", "6", "--final_samples", "8"])
    assert rep["final"] == again["final"]  # as read back from the run directories
    assert "6 prompts × 8 samples" in rep["table"] and "Final evaluations merged from" in rep["table"]
    with pytest.raises(SystemExit, match="held-out rows"):
        diversity.final_evaluation(str(out / "grpo-seed0"), 1000, 2)
