"""Shared starting points for experiment configs (each experiment file overrides a few fields)."""
from jaxgrpo.experiment import base_config


def smoke_config(name: str):
    """CPU smoke size: SmolLM2-135M-Instruct (packaged, offline) on a reasoning-gym task.

    Small enough to finish in minutes on a 2-core CPU; the advantage chain is set by the caller.
    """
    c = base_config()
    c.name = name
    c.steps = 15
    c.data.source = "reasoning_gym"
    c.data.task = "basic_arithmetic"
    # Single-digit addition: SmolLM2-135M-Instruct answers ~20% of these right at temperature 1
    # (pass@4 ~0.6), so groups have reward spread from the first step.
    c.data.task_kwargs = ('{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, '
                          '"operators": ["+"], "allow_negation": false, "allow_parentheses": false}')
    c.data.template = "chat"
    c.data.prompt_format = "{question}"
    c.rewards.answer_sources = "answer_tag,boxed,last_number"  # it answers in prose
    c.sampling.num_generations = 4
    c.sampling.max_new_tokens = 24
    c.sampling.temperature = 1.0
    c.train.prompts_per_step = 8
    c.optim.lr = 1e-5
    c.eval.num_prompts = 32
    c.eval.num_samples = 4
    c.eval.ks = "1,4"
    c.checkpoint.every = 10
    return c


def paper_dra_config(name: str, baseline: str):
    """DRA paper scale (arXiv 2505.09655, METHODS.md §2): DeepSeek-R1-Distill-Qwen-1.5B, G = 6,
    lr 1e-6 cosine, beta 0.04 (k3), temperature 0.7, 3,584 completion tokens, 48 completions per
    optimiser step, 500 steps, rewards format (1.0) + cosine-scaled correctness (2.0).

    Where the released stack (Open-RS / TRL 0.15.2 GRPOTrainer / HF Trainer, recipes/
    dra_grpo.yaml, github.com/xiwenc1/DRA-GRPO) set a value, it is set here: AdamW with HF's
    defaults (beta2 0.999, no weight decay, max_grad_norm 1.0), ``cosine_with_min_lr`` with
    min_lr_rate 0.1, warmup_ratio 0.1 (50 of 500 steps). DRA's similarity scope is the paper's
    definition (``scope="group"``, the G completions of a prompt); the released code built it
    per device micro-batch of 4 completions, which ``--config.advantage.options.dra.scope=
    microbatch --config.advantage.options.dra.microbatch_size=4`` reproduces."""
    c = base_config()
    c.name = name
    c.steps = 500
    c.model.path = "/path/to/DeepSeek-R1-Distill-Qwen-1.5B"  # a local HF checkpoint directory
    c.model.dtype = "bfloat16"  # compute
    c.model.param_dtype = "float32"  # master weights + Adam moments (bf16 loses lr-1e-6 steps)
    c.data.source = "file"
    c.data.path = "/path/to/open-rs.jsonl"  # local copy of the 7,000-problem Open-RS mix
    c.data.question_field = "problem"
    c.data.answer_field = "solution"
    c.data.template = "chat"
    c.data.system_prompt = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer, and put your final answer within \\boxed{} . The "
        "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
        "</answer>. Note that you should respond by English, NOT use other languages.")
    c.data.prompt_format = "{question}"
    c.data.max_prompt_tokens = 512
    c.sampling.num_generations = 6
    c.sampling.max_new_tokens = 3584
    c.sampling.temperature = 0.7
    c.rewards.accuracy = 0.0
    c.rewards.format = 1.0
    c.rewards.cosine = 2.0
    c.advantage.baseline = baseline
    c.advantage.reward_transforms = "dra"
    c.advantage.options.dra.scope = "group"  # the paper's; released code: "microbatch", 4
    c.embedding.model = "minilm"  # the paper used jina-embeddings-v2-small-en: set encoder_path
    c.loss.beta = 0.04
    c.loss.kl_estimator = "k3"
    c.loss.agg_mode = "seq-mean-token-mean" if baseline == "grpo" else "seq-mean-token-sum-norm"
    c.train.prompts_per_step = 8  # 8 prompts x G=6 = 48 completions per optimiser step
    c.train.num_iterations = 1
    c.train.num_minibatches = 1
    # One generation feeds one optimiser step (mu = 1, one minibatch), so pi_old is the update's
    # own detached log-probs: the ratio is exactly 1 in bf16 as the paper's on-policy setting
    # intends, at no extra pass. No importance correction for the sampler: the DRA reference
    # (open-r1 / TRL, 2025) trained without one, and here sampler and trainer are the same JAX
    # model, so the gap is bf16 rounding, logged as mismatch/*; if mismatch/k3 grows, TRL's
    # default is loss.sampler_correction='sequence_mask' with cap 3 (verl: 'token_truncate', 2).
    c.train.pi_old = "trainer"
    c.loss.sampler_correction = "none"
    # 2 micro-batches of 24 rows = 4 whole groups each; 24 divides over 1, 2, 4, 6, 8, 12 or 24
    # batch devices (mesh.data * mesh.fsdp). On 4 x 40 GB GPUs grad_accum = 4 (12 rows, 3 per
    # device) also fits the rules; 12 rows do not divide over 8 devices.
    c.train.grad_accum = 2
    c.train.logits_chunk = 512  # [rows, 512, 151936] f32 logits at a time, not [rows, 3584, ...]
    # Recompute each layer in the backward pass: without it the 28 layers' saved activations
    # take 68.05 GB per device (XLA:TPU v5p-8, 3 rows/device, 60.94 GB of it temporaries), more
    # than a 40 GB A100; with "full": 17.77 GB (experiments/memory_plan, docs/scaling.md).
    c.model.remat = "full"
    c.optim.lr = 1e-6
    c.optim.schedule = "cosine"
    c.optim.min_lr_ratio = 0.1  # HF lr_scheduler_type cosine_with_min_lr, min_lr_rate 0.1
    c.optim.warmup_steps = 50  # warmup_ratio 0.1 of 500 steps
    c.optim.b1 = 0.9  # HF AdamW defaults (TrainingArguments adam_beta1 / adam_beta2)
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0  # HF max_grad_norm
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.eval.every = 50
    c.eval.num_prompts = 64  # all held-out rows (data.eval_size); benchmarks: experiments/evaluate.py
    c.eval.num_samples = 1
    c.eval.ks = "1"
    c.eval.temperature = 0.6
    c.checkpoint.every = 50
    return c
