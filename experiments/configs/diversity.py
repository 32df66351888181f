"""Diversity testbed (issue 12): one method on ``number_in_range``, a task with many correct
answers.

Command:
    python -m experiments.run --config experiments/configs/diversity.py:grpo
    python -m experiments.run --config experiments/configs/diversity.py:dra_grpo --config.seed=1
    python -m experiments.tables.diversity          # every method x seeds 0,1,2, table + plots
    python -m experiments.tables.diversity_screen   # base-model screen of task / prompt variants

The argument after ``:`` is a method config module of ``experiments/configs`` (grpo, dr_grpo,
dra_grpo, dra_dr_grpo, dagrpo, progrpo): its advantage chain and loss aggregation are kept,
everything else is set here, identical for every method.

Task: ``jaxgrpo.rewards.tasks.RangeTask`` -- "Write a whole number greater than L and less than
H." with L in [1, 50] and H - L in [6, 20] (5-19 correct answers); the answer is the one number
of the completion besides L and H (a list is no answer); distinct answers are the numbers.
Held-out rows come from generator seed ``seed + 1_000_003`` (``jaxgrpo.env.build_env``).
Until 2026-12-02 the task was ``sum_to_target`` ("two positive whole numbers that add up to T",
with the worked example "1 + 4 = 5"): the screen showed its base-model successes were copies of
the example (0 of 256 samples correct without it), see experiments/results/diversity_screen.md.

Hardware: one 2-core CPU (nothing else running unless stated), SmolLM2-135M-Instruct (packaged),
float32.

Expected (measured 2026-12-02, seed 0, held-out 32 prompts x 16 samples, temperature 1, 16 new tokens --
NOT the 64 x 32 of eval.* below, which would cost ~7 min per evaluation here):
``python -m experiments.tables.diversity --methods GRPO,ProGRPO,DRA-GRPO,DaGRPO,Dr.GRPO,
DRA-Dr.GRPO --seeds 0 --steps 20 --eval_every 10 --eval_prompts 32 --num_samples 16``
  base model: pass@1 0.047, pass@16 0.469, 15 / 32 solved, distinct correct 0.69 per prompt,
    entropy 2.41 nats, 83% of completions cut at 16 tokens (the screen's 32 x 8: pass@1 0.062
    under the earlier last-number rule)
  GRPO, step 10 / 20: pass@1 0.270 / 0.701, pass@16 0.906 / 1.0, distinct correct 3.09 / 3.97,
    top-answer share 0.48 / 0.51, entropy 1.86 / 0.82 nats; 35 s per step, 17.5 min per run
    with its evaluations
  the other methods: README, "Does diversity survive GRPO?", and runs/diversity_range/diversity.md
steps = 60 is a choice, not measured: GRPO's pass@1 was still rising at step 20 (0.27 -> 0.70
from step 10 to 20), so 20 steps do not reach the plateau the issue asks for.
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
    c.steps = 60
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
    c.eval.every = 10
    c.eval.num_prompts = 64
    c.eval.num_samples = 32
    c.eval.ks = ",".join(str(k) for k in default_ks(32))  # 1,2,4,8,16,32
    c.eval.temperature = 1.0
    c.eval.embed_correct = True
    c.checkpoint.every = 10
    return c
