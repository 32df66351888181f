"""Every menu option through the command line: one training step of a tiny model, the step-0
and final evaluations included (issue 38). The cases call ``experiments.run.main(argv)`` in this
process (the same code path as ``python -m experiments.run`` after the process start), so one
process runs them all and the compilation cache is shared. Three representative cases run by
default; the rest are ``slow``.
"""
from __future__ import annotations

import json
import os

import pytest

from jaxgrpo.errors import EXIT_OK

TINY = {"steps": 1, "data.template": "plain", "data.prompt_format": "{question}",
        "data.max_prompt_tokens": 48, "data.train_size": 16, "data.eval_size": 4,
        "sampling.num_generations": 4, "sampling.max_new_tokens": 8, "rewards.cosine": 1.0,
        "train.prompts_per_step": 2, "optim.lr": 1e-2, "eval.num_prompts": 2,
        "eval.num_samples": 2, "eval.ks": "1,2", "log.progress": False,
        "log.tensorboard": False, "checkpoint.every": 0}

CASES = {
    "lora": {"lora.rank": 4},
    "lora_dropout": {"lora.rank": 4, "lora.dropout": 0.1},
    "gspo_sequence": {"loss.importance_sampling_level": "sequence"},
    "gspo_token": {"loss.importance_sampling_level": "gspo-token"},
    "rloo": {"advantage.baseline": "rloo"},
    "dr_grpo": {"advantage.baseline": "dr_grpo"},
    "dual_clip": {"loss.clip_ratio_c": 3.0},
    "delta": {"loss.delta": 4.0},
    "clamps": {"loss.beta": 0.04, "loss.kl_clamp": 10.0, "loss.kl_log_ratio_clamp": 20.0,
               "loss.log_ratio_clamp": 20.0},
    **{f"agg_{m}": {"loss.agg_mode": m} for m in
       ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "bnpo", "dapo")},
    "dynamic_sampling": {"train.dynamic_sampling": True},
    "overlong": {"rewards.overlong": 1.0, "rewards.overlong_buffer": 4},
    "mask_truncated": {"loss.mask_truncated_completions": True},
    "fused_digits": {"train.fused": True, "rewards.verifier": "digits", "rewards.cosine": 0.0,
                     "data.task": "basic_arithmetic"},
    "dra_policy": {"advantage.reward_transforms": "dra", "embedding.model": "policy"},
    "dagrpo_anchors": {"advantage.baseline": "dagrpo", "anchors.enabled": True},
    "progrpo_question_tokens": {"advantage.advantage_transforms": "progrpo",
                                "advantage.options.progrpo.prompt_tokens": "question"},
}
FAST = ("overlong", "lora_dropout", "dagrpo_anchors")  # the rest: -m slow


def _argv(model_dir, run_dir, flat):
    args = {"model.path": model_dir, "run_dir": str(run_dir), **TINY, **flat}
    return ["experiments.run"] + [f"--config.{k}={v}" for k, v in args.items()]


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in CASES])
def test_option_runs_one_step_end_to_end(name, tiny_llama_dir, tmp_path, capsys, monkeypatch):
    import sys

    from experiments.run import main

    run = tmp_path / name
    argv = _argv(tiny_llama_dir, run, CASES[name])
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == EXIT_OK, (out.out[-2000:], out.err[-3000:])
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 1]
    summary = json.load(open(run / "summary.json"))["eval"]
    assert sorted(summary) == ["0", "1"] and "accuracy" in summary["1"]
    assert os.path.isdir(run / "checkpoints" / "1")
