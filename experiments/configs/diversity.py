"""Diversity testbed (issue 12): one method on ``sum_to_target``, a task with many correct answers.

Command:
    python -m experiments.run --config experiments/configs/diversity.py:grpo
    python -m experiments.run --config experiments/configs/diversity.py:dra_grpo --config.seed=1
    python -m experiments.tables.diversity          # every method x seeds 0,1,2, table + plots

The argument after ``:`` is a method config module of ``experiments/configs`` (grpo, dr_grpo,
dra_grpo, dra_dr_grpo, dagrpo, progrpo): its advantage chain and loss aggregation are kept,
everything else is set here, identical for every method.

Task: ``jaxgrpo.rewards.tasks.SumTask`` -- TASK_KWARGS below; correct = a chain of TERMS
positive whole numbers summing to the target; distinct solutions are compared as sorted
canonical forms ("3+5" == "5+3"). Held-out rows come from generator seed ``seed + 1_000_003``
(``jaxgrpo.env.build_env``).

Hardware: one 2-core CPU (shared), SmolLM2-135M-Instruct (packaged), float32.

Expected (measured), base model only (SmolLM2-135M-Instruct, temperature 1, 24 new tokens, the first 16
held-out rows of seed 0 x 8 samples -- NOT the 64 x 32 of eval.*, which did not finish on the
shared CPU): pass@1 0.094, pass@2 0.167, pass@4 0.276, pass@8 0.438; 7 of 16 prompts solved,
distinct correct 0.44 per prompt (1.0 per solved prompt, top-solution share 1.0), token entropy
2.07 nats; 469 s wall at load ~16 on 2 cores.
Measured 2026-12-02 on 32 held-out prompts x 16 samples (seed 0), same settings: base pass@1
0.033, pass@16 0.188, 6 / 32 solved, 68% of completions cut at 24 tokens. GRPO pilot
(``python -m experiments.tables.diversity --methods GRPO --seeds 0 --steps 60 --eval_every 20
--eval_prompts 32 --num_samples 16``): step 20 pass@1 0.070, pass@16 0.250; step 40 pass@1 0.064,
pass@16 0.312, 10 / 32 solved, entropy 1.95 -> 1.30 nats; 51-68 s per step alone on the 2-core
CPU (README, "Does diversity survive GRPO?").
Trained comparison of the methods: not run (~74 CPU-hours here). steps = 200 is a choice, not
measured: GRPO's pass@16 was still rising at step 40 of the pilot (pass@1 flat since step 20).
"""
import importlib

from jaxgrpo.evaluate import default_ks

METHOD_MODULES = ("grpo", "dr_grpo", "dra_grpo", "dra_dr_grpo", "dagrpo", "progrpo")

# A whole number strictly between a lower bound in [1, 50] and an upper bound 6-20 above it:
# 5-19 correct answers per prompt, so distinct correct answers can grow well beyond 1. No worked
# example in the prompt: the base model copies one (sum_to_target's did, see the docstring).
TASK = "number_in_range"
TASK_KWARGS = '{"divisors": [1]}'
PROMPT_FORMAT = "{question}"


def get_config(method: str = "grpo"):
    if method not in METHOD_MODULES:
        raise ValueError(f"experiments/configs/diversity.py:{method}: unknown method; choose "
                         f"from {METHOD_MODULES}")
    c = importlib.import_module(f"experiments.configs.{method}").get_config()
    c.name = f"diversity_{method}"
    c.steps = 200
    c.data.source = "reasoning_gym"  # make_task also builds our own tasks by name
    c.data.task = TASK
    c.data.task_kwargs = TASK_KWARGS
    c.data.template = "chat"
    c.data.prompt_format = PROMPT_FORMAT
    c.data.train_size = 2000
    c.data.eval_size = 64
    c.sampling.num_generations = 8
    c.sampling.max_new_tokens = 16
    c.sampling.temperature = 1.0
    c.train.prompts_per_step = 8
    c.optim.lr = 1e-5
    c.eval.every = 25
    c.eval.num_prompts = 64
    c.eval.num_samples = 32
    c.eval.ks = ",".join(str(k) for k in default_ks(32))  # 1,2,4,8,16,32
    c.eval.temperature = 1.0
    c.eval.embed_correct = True
    c.checkpoint.every = 25
    return c
