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

Expected (seeds 0, 1, 2 at 20 steps; seed 0 measured 2026-12-02, seeds 1-2 on 2026-12-03;
held-out 32 prompts x 16 samples, temperature 1, 16 new tokens -- NOT the 64 x 32 of eval.*
below, which costs ~4 min per evaluation here; ``--final_eval`` runs it once per finished run):
``python -m experiments.tables.diversity --methods GRPO,ProGRPO,DRA-GRPO,DaGRPO,Dr.GRPO,
DRA-Dr.GRPO --seeds 0,1,2 --steps 20 --eval_every 10 --eval_prompts 32 --num_samples 16``
  base model: pass@1 0.042 +- 0.006, pass@16 0.448 +- 0.036, distinct correct 0.64 per prompt,
    entropy 2.41 nats (the screen's 32 x 8: pass@1 0.062 under the earlier last-number rule)
  GRPO at step 20: pass@1 0.568 +- 0.205 (seeds: 0.70, 0.33, 0.67; step 10: 0.27, 0.11, 0.22),
    pass@16 0.990, distinct correct 3.71 +- 0.33, top-answer share 0.52, entropy 1.18 nats;
    ~18 s per step and 6-7 min per run with its evaluations (seed 2; seed 0's machine took
    31-42 s per step)
  every method's pass@1 0.49-0.70; no method's distinct correct above GRPO's (paired 95%
    intervals all contain 0); DaGRPO the most collapsed (2.16 distinct, top share 0.81);
    the full table: README, "Does diversity survive GRPO?", and
    experiments/results/diversity_seeds012_20steps.md
  A seed reproduces on one machine, not across machines (seed 1 GRPO: 0.422 on one, 0.332 on
    another of the same kind: XLA:CPU numerics differ between CPUs).
steps = 60, measured on seed 0 (2026-12-03, this 2-core CPU, ~25 s per step, 32 x 16 held-out):
``python -m experiments.tables.diversity --methods GRPO,ProGRPO --seeds 0 --steps 60
--eval_every 10 --eval_prompts 32 --num_samples 16`` (experiments/results/diversity_seed0_60steps.md)
  GRPO pass@1 0.70 / 0.77 / 0.89 / 0.967 / 0.975 at steps 20 / 30 / 40 / 50 / 60: the plateau
    is at ~50 steps; distinct correct 3.97 at step 20 -> 1.16 at step 60, top-answer share
    0.51 -> 0.98, entropy 0.82 -> 0.06 nats (collapse onto one answer per prompt)
  ProGRPO at step 60: pass@1 0.928, distinct correct 3.66, top share 0.56, entropy 0.63;
    pass@16 1.0 for both; ~33 min per run with its evaluations
  DRA-GRPO at step 60 (``--methods DRA-GRPO``, 2,197 s): pass@1 0.869, distinct correct 4.25,
    top share 0.55, entropy 1.32 (no collapse; pass@1 flat after step 40)
  final evaluation at 64 x 32 (``--methods GRPO,ProGRPO,DRA-GRPO ... --final_eval``, 226-243 s
    each): pass@1 / pass@32 / distinct correct per prompt: base 0.054 / 0.656 / 1.47, GRPO
    0.982 / 1.000 / 1.27, ProGRPO 0.950 / 0.984 / 4.75, DRA-GRPO 0.861 / 1.000 / 5.05,
    DaGRPO 0.999 / 1.000 / 1.02 (DaGRPO's step 60: pass@1 1.000, 1.06 distinct, 1,292 s)
  Dr.GRPO (``--methods Dr.GRPO``, 2026-12-03 on a 2-core Intel Xeon, 1,961 s + 2 final
    evaluations of ~250 s): step 60 pass@1 0.975, distinct correct 3.78 at step 20 -> 1.31,
    top share 0.94, entropy 0.07 (collapses like GRPO, a little later); 64 x 32: 0.985 /
    1.000 / 1.36, base on that CPU 0.053 / 0.656 / 1.45
  DRA-Dr.GRPO (``--methods DRA-Dr.GRPO``, same Intel CPU, 1,868 s + 261 s): step 60 pass@1
    0.930, distinct correct 2.62, top share 0.75, entropy 0.47; 64 x 32: 0.933 / 1.000 / 3.44
    (experiments/results/diversity_seed0_60steps_all.md: every method in one table)
steps = 60, seed 1 (2026-12-04, the same Intel CPU, quiet; ``--seeds 1 --final_eval``, one
method at a time; experiments/results/diversity_seeds01_60steps.md, both seeds, every method):
  GRPO (1,892 s): pass@1 0.959 / 0.990 / 0.996 at steps 40 / 50 / 60, distinct correct 3.34 at
    step 20 -> 1.22 at step 60; 64 x 32: 0.997 / 1.000 / 1.20 (base on seed 1's prompts and key:
    0.050 / 0.719 / 1.41)
  ProGRPO (1,731 s): step 60 pass@1 0.957, distinct correct 3.44; 64 x 32: 0.958 / 1.000 / 3.69
  DRA-GRPO (1,667 s): step 60 pass@1 0.900, distinct correct 2.09; 64 x 32: 0.899 / 1.000 / 2.83
  DaGRPO (1,909 s): one answer per prompt by step 20, frozen from step 40 (pass@1 0.781,
    entropy 0.00); 64 x 32: 0.859 / 0.891 / 0.89
  over seeds 0-1 (64 x 32, paired): GRPO below the base in distinct correct by 0.195 [0.096,
    0.295]; ProGRPO +2.98 and DRA-GRPO +2.70 over GRPO, positive on both seeds, 1-dof intervals
    containing 0; pass@1 -3.5 and -10.9 points
steps = 60, seeds 0-2, every method (seed 2 and Dr.GRPO / DRA-Dr.GRPO seed 1 on 2026-12-04, a
2-core AMD EPYC, one run at a time, 19-25 min per run with its evaluations; the whole 60-step
comparison ~8.9 h of one 2-core CPU; experiments/results/diversity_seeds012_60steps.md):
``python -m experiments.tables.diversity --methods GRPO,ProGRPO,DRA-GRPO,DaGRPO,Dr.GRPO,
DRA-Dr.GRPO --seeds 0,1,2 --steps 60 --eval_every 10 --eval_prompts 32 --num_samples 16
--final_eval``; 64 x 32, mean over seeds, pass@1 / pass@32 / distinct correct per prompt:
  base 0.051 / 0.693 / 1.41; GRPO 0.988 / 1.000 / 1.40 (top share 0.96); Dr.GRPO 0.984 /
    1.000 / 1.37; DaGRPO 0.949 / 0.964 / 0.99 (top share 1.00); ProGRPO 0.957 / 0.995 / 4.12;
    DRA-GRPO 0.873 / 1.000 / 3.95; DRA-Dr.GRPO 0.941 / 1.000 / 3.21
  method - GRPO, distinct correct, 95% t-interval over the 3 paired seeds: ProGRPO +2.72 [+1.05,
    +4.40], DRA-Dr.GRPO +1.82 [+1.06, +2.58], DRA-GRPO +2.56 [-0.19, +5.31], Dr.GRPO -0.03
    [-0.29, +0.24], DaGRPO -0.41 [-0.95, +0.14]; base - GRPO +0.02 [-0.72, +0.76]; pass@1
    ProGRPO -3.1, DRA-GRPO -11.5, DRA-Dr.GRPO -4.7 points; no pass@32 below the base's
Prompts (``PROMPTS``; ``diversity.py:grpo,prefill``, ``--prompt prefill`` in the comparison):
  "question" (the default, every result above): base pass@1 0.043 in the screen's 32 x 8
  "prefill": the assistant's turn begun "The number is", 8 new tokens: base pass@1 0.141, 22 of
    32 prompts solved at n = 8 (2026-12-04, the AMD EPYC; experiments/results/diversity_screen.md)
steps = 60, prompt "prefill", seeds 0-2, every method (seed 0's GRPO and ProGRPO on 2026-12-04,
1,009 s and 876 s per run; the other 16 runs on 2026-12-07 with jaxgrpo.cpu's CPU settings,
~6.5-7.5 min per run with its 64 x 32 evaluation; the 2-core AMD EPYC, quiet; one method per invocation:
``python -m experiments.tables.diversity --prompt prefill --methods <method> --seeds <s> --steps 60
--eval_every 10 --eval_prompts 32 --num_samples 16 --final_eval --out runs/diversity_prefill``;
experiments/results/diversity_prefill_60steps.md), 64 x 32, pass@1 / pass@32 / distinct correct:
  base 0.146 / 0.953 / 3.50 (top share 0.48); GRPO 0.994 / 1.000 / 1.06 (0.99); Dr.GRPO 0.999 /
    1.000 / 1.09; DaGRPO 0.999 / 1.000 / 1.09; ProGRPO 0.989 / 1.000 / 1.22 (entropy 1.30 nats:
    its diversity is in the words after the number); DRA-GRPO 0.973 / 1.000 / 3.84; DRA-Dr.GRPO
    0.969 / 1.000 / 5.05 (the DRA runs dip to ~1.7-2.0 distinct at step 20, then recover)
  seed 1 (2026-12-07, same settings): base 0.168 / 1.000 / 3.84; GRPO 1.000 / 1.000 / 1.23;
    Dr.GRPO 1.000 / 1.000 / 1.14; DaGRPO 0.993 / 1.000 / 1.00; ProGRPO 1.000 / 1.000 / 2.19;
    DRA-GRPO 0.983 / 1.000 / 5.84; DRA-Dr.GRPO 0.978 / 1.000 / 4.95
  seed 2 (2026-12-07, same settings, 380-436 s per run): base 0.143 / 0.969 / 3.27; GRPO 1.000 /
    1.000 / 1.11; Dr.GRPO 1.000 / 1.000 / 1.12; DaGRPO 1.000 / 1.000 / 1.06; ProGRPO 0.995 /
    1.000 / 2.88; DRA-GRPO 0.947 / 1.000 / 6.05; DRA-Dr.GRPO 0.989 / 1.000 / 3.03
  Over seeds 0-2, paired, distinct correct - GRPO's (95% t-interval): DRA-GRPO +4.11 [+1.22,
    +7.00], DRA-Dr.GRPO +3.21 [+0.42, +6.00], ProGRPO +0.96 [-1.04, +2.96], Dr.GRPO -0.02
    [-0.19, +0.15], DaGRPO -0.08 [-0.42, +0.26], base +2.40 [+1.83, +2.97]; pass@32 1.000 for
    every trained run (base 0.974 +- 0.024). Table merged with ``--report --merge
    experiments/results/diversity_prefill_seed0_60steps.json``.
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

# SmolLM2-135M-Instruct's own chat template written out (``data.template="plain"``) with the
# assistant's turn begun: the completion continues "The number is" instead of opening with
# "Sure, I'd be happy to help ...". tests/test_diversity.py checks it against the tokenizer's
# template. Base pass@1 0.141 at 8 new tokens (the question prompt: 0.043), see
# experiments/results/diversity_screen.md.
RANGE_PREFILL = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                 "Hugging Face<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                 "<|im_start|>assistant\nThe number is")

# The testbed's prompts, the part after a comma (``diversity.py:grpo,prefill``):
# name -> (data.template, data.prompt_format, sampling.max_new_tokens).
PROMPTS = {
    "question": ("chat", PROMPT_FORMAT, 16),  # the question alone (every 3-seed result above)
    "prefill": ("plain", RANGE_PREFILL, 8),   # the answer right after the prefill: 8 tokens
}


def get_config(arg: str = "grpo"):
    """``arg``: a method module, optionally ``,<prompt>`` (``PROMPTS``; default "question")."""
    method, _, prompt = arg.partition(",")
    prompt = prompt or "question"
    if method not in METHOD_MODULES:
        raise ValueError(f"experiments/configs/diversity.py:{method}: unknown method; choose "
                         f"from {METHOD_MODULES}")
    if prompt not in PROMPTS:
        raise ValueError(f"experiments/configs/diversity.py:{arg}: unknown prompt {prompt!r}; "
                         f"choose from {tuple(PROMPTS)}")
    c = importlib.import_module(f"experiments.configs.{method}").get_config()
    c.name = f"diversity_{method}"
    c.steps = 60
    c.data.source = "reasoning_gym"  # make_task also builds our own tasks by name
    c.data.task = TASK
    c.data.task_kwargs = TASK_KWARGS
    c.data.template, c.data.prompt_format, max_new_tokens = PROMPTS[prompt]
    c.data.train_size = 2000
    c.data.eval_size = 64
    c.sampling.num_generations = 8
    c.sampling.max_new_tokens = max_new_tokens
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
