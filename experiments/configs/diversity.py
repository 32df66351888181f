"""Diversity testbed: one method on ``number_in_range``, a task with many correct answers.

Command:
    python -m experiments.run --config experiments/configs/diversity.py:grpo
    python -m experiments.run --config experiments/configs/diversity.py:dra_grpo,prefill --config.seed=1
    python -m experiments.diversity --prompt prefill --seeds 0,1,2 --final_eval   # every method
    python -m experiments.diversity.diversity_screen   # base-model screen of task / prompt variants

The argument after ``:`` is a method config module of ``experiments/configs`` (grpo, dr_grpo,
dra_grpo, dra_dr_grpo, dagrpo, progrpo): its advantage chain and loss aggregation are kept,
everything else is set here, identical for every method; after a comma, the prompt
(``PROMPTS``: "question", the default, or "prefill").

Task: ``jaxgrpo.rewards.tasks.RangeTask`` -- "Write a whole number greater than L and less than
H." with L in [1, 50] and H - L in [6, 20] (5-19 correct answers); the answer is the one number
of the completion besides L and H; distinct answers are the numbers. Held-out rows come from
generator seed ``seed + 1_000_003`` (``jaxgrpo.env.build_env``).

Hardware: one 2-core CPU, SmolLM2-135M-Instruct (packaged), float32; 60 steps take 6.5-7.5 min
per run with the final 64 x 32 evaluation on the prefill prompt (2026-12-07, the 2-core AMD EPYC
VM, quiet).

Expected (the current figures; the report, its tables and intervals:
experiments/diversity/README.md and experiments/diversity/results/): on the prefill prompt,
seeds 0-2, 60 steps, 64 x 32 held-out samples, GRPO, Dr.GRPO and DaGRPO collapse to 1.05-1.14
distinct correct answers per prompt (base 3.54) while DRA-GRPO keeps 5.25 (+4.11 over GRPO,
paired 95% interval [+1.22, +7.00]) at pass@1 0.968 against GRPO's 0.998; pass@32 is 1.0 for
every trained run.
"""
import importlib

from jaxgrpo.evaluate import default_ks

METHOD_MODULES = ("grpo", "dr_grpo", "dra_grpo", "dra_dr_grpo", "dagrpo", "progrpo")

# A whole number strictly between a lower bound in [1, 50] and an upper bound 6-20 above it:
# 5-19 correct answers per prompt, so distinct correct answers can grow well beyond 1. No worked
# example in the prompt: the base model copies one (an earlier task's did; experiments/diversity).
TASK = "number_in_range"
TASK_KWARGS = '{"divisors": [1]}'
PROMPT_FORMAT = "{question}"

# SmolLM2-135M-Instruct's own chat template written out (``data.template="plain"``) with the
# assistant's turn begun: the completion continues "The number is" instead of opening with
# "Sure, I'd be happy to help ...". tests/experiments/test_diversity.py checks it against the tokenizer's
# template. Base pass@1 0.141 at 8 new tokens (the question prompt: 0.043), see
# experiments/diversity/results/screen.md.
RANGE_PREFILL = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                 "Hugging Face<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
                 "<|im_start|>assistant\nThe number is")

# The testbed's prompts, the part after a comma (``diversity.py:grpo,prefill``):
# name -> (data.template, data.prompt_format, sampling.max_new_tokens).
PROMPTS = {
    "question": ("chat", PROMPT_FORMAT, 16),  # the question alone
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
