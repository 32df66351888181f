"""The pure update: rollout batch -> advantages -> mu clipped-policy updates -> new state.

``make_update_fn`` returns one pure function (jit-compiled by default)
``update(state, rollout, ref_params) -> (state, metrics)`` that

1. turns rewards into advantages with the configured transform chain
   (``jaxgrpo.advantages.make_advantage_fn``);
2. flattens the ``[P, G, ...]`` groups into N = P * G sequences and splits them into
   ``num_minibatches * grad_accum`` micro-batches of whole groups, taken with a stride over the
   groups (``micro_batches``) so that on a mesh every micro-batch is spread over all the batch
   devices (``('data', 'fsdp')``) instead of living on a few of them;
3. if ``loss.beta > 0``, computes the reference policy's log-probs once, micro-batch by
   micro-batch (``lax.map``): only [N, Tc] float32 log-probs are kept, never [N, Tc, V] logits;
4. runs ``num_iterations`` (mu) passes, each over ``num_minibatches`` optimiser steps
   (``lax.scan``), each step accumulating float32 gradients over ``grad_accum`` micro-batches
   (``lax.scan``). Every micro-batch loss is normalised by the *minibatch's* global counts
   (tokens, sequences, max length), so summing micro-batch gradients gives exactly the
   minibatch gradient, and the value does not depend on sharding or accumulation.

Memory knobs: ``train.logits_chunk`` (time chunks of the LM head, log-probs and entropy, with
remat per chunk), ``model.param_dtype`` (master weights and optimizer state; float32 by default)
and ``model.dtype`` (compute). Compilation: on a mesh the jitted update returns its state with
exactly the shardings it was given, so step 2 reuses step 1's executable.

The whole training step (collect a rollout: sample, verify, assemble; then this update), on the
host path or fused into one jit for token rewards, is composed in ``jaxgrpo.step``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections as mc
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgrpo import config, losses
from jaxgrpo.advantages import make_advantage_fn
from jaxgrpo.data import split_names
from jaxgrpo.errors import ConfigError
from jaxgrpo.logprobs import completion_logprobs
from jaxgrpo.mismatch import metrics_from_sums, mismatch_sums, sampler_correction_weights
from jaxgrpo.rollout import Rollout, mask_truncated_completions
from jaxgrpo.sharding import BATCH_AXES

# Folded into the state's key for LoRA dropout masks (the sampler folds the step alone).
DROPOUT_SALT = 0x10DA

SCHEDULES = ("constant", "cosine", "linear")  # optim.schedule (see lr_schedule)
PI_OLD_SOURCES = ("trainer", "sampler")  # train.pi_old (see pi_old_pass)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(config.Section):
    """The batch of one step and the updates made from it.

    The ``config.train`` section: the batch of a step (with ``sampling.num_generations``) and
    how the update splits it (:func:`check_micro_batch`).
    """

    NAME: ClassVar[str] = "train"
    prompts_per_step: int = config.key(4, 'P; completions per step = P * G', ge=1)
    num_iterations: int = config.key(1, 'mu: policy updates per rollout batch', ge=1)
    num_minibatches: int = config.key(1, 'optimiser steps per iteration', ge=1)
    grad_accum: int = config.key(
        0,
        'micro-batches per minibatch; 0 = auto: the Trainer compiles the update ahead of time '
        'for the allowed counts and takes the preferred one that fits train.memory_fraction of '
        'the device (jaxgrpo.micro_batch; a direct make_update_fn call runs 1)',
        ge=0)
    memory_fraction: float = config.key(
        0.8, "grad_accum=0: the share of one device's memory (of the host's RAM on the CPU) the "
        "update may take", gt=0, le=1)
    logits_chunk: int = config.key(
        0,
        'Time chunk of the LM head + log-softmax + entropy in the update, the reference pass and '
        "the sampler's prompt log-prob pass (rematerialised per chunk): at most [rows, "
        'logits_chunk, vocab] float32 logits live at once. 0 = one pass over all tokens.',
        ge=0)
    fused: bool = config.key(
        False,
        'One jit for the whole step (sample -> token reward -> assemble -> update; jaxgrpo.step).'
        ' Needs a reward computable from tokens (rewards.verifier = "digits") and, for '
        'embeddings, embedding.model = "policy". Per-stage timings are then not available '
        '(time/step only).')
    dynamic_sampling: bool = config.key(
        False,
        'DAPO dynamic sampling (arXiv 2503.14476; verl algorithm.filter_groups): drop groups '
        'whose rewards have zero spread and sample more prompts until the batch is full')
    max_sampling_rounds: int = config.key(
        3, 'sampling rounds per step at most (verl max_num_gen_batches)', ge=1)
    pi_old: str = config.key(
        'trainer',
        "Where the update's pi_old (the importance ratio's denominator) comes from: 'trainer' = "
        "the update's own log-probs of the rollout under the parameters that sampled it (the "
        'stop-gradient of the first pass when one generation feeds one optimiser step: the ratio '
        'is exactly 1; else one no-grad pass before the first step); "sampler" = the sampler\'s '
        'log-probs (KV-cache decode; in bfloat16 they differ from the trainer\'s).',
        choices=PI_OLD_SOURCES)
    completion_buckets: int = config.key(
        4,
        "Before the host path's update, drop completion columns past the batch's longest "
        'completion, rounded up to one of this many widths (max_new_tokens * k / buckets, '
        'multiples of 8): the update then runs on few padding columns, at one compilation per '
        'width. 1 = always the full max_new_tokens (one compilation). The fused step always runs '
        'the full width.',
        ge=1)

    def __post_init__(self):
        if self.dynamic_sampling and self.fused:
            raise ConfigError("config.train.dynamic_sampling=True samples again on the host when "
                              "groups are dropped; it cannot run fused: set "
                              "config.train.fused=False")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig(config.Section):
    """The optimiser: AdamW with global-norm clipping and a learning-rate schedule.

    The ``config.optim`` section (:func:`build_optimizer`, :func:`lr_schedule`).
    """

    NAME: ClassVar[str] = "optim"
    lr: float = config.key(1e-05, 'peak learning rate (AdamW)', gt=0)
    schedule: str = config.key(
        'constant', 'learning-rate schedule after warm-up', choices=SCHEDULES)
    warmup_steps: int = config.key(0, 'linear warm-up from 0, in training steps', ge=0)
    weight_decay: float = config.key(0.0, 'AdamW decoupled weight decay', ge=0)
    b1: float = config.key(0.9, 'AdamW beta1', ge=0, lt=1)
    b2: float = config.key(0.99, 'AdamW beta2', ge=0, lt=1)
    min_lr_ratio: float = config.key(
        0.0,
        'Cosine schedule floor as a fraction of lr (HF "cosine_with_min_lr" min_lr_rate); 0 = to '
        '0.',
        ge=0, le=1)
    grad_clip: float = config.key(1.0, 'global gradient-norm clip; 0 = off', ge=0)

    def __post_init__(self):
        if self.min_lr_ratio and self.schedule != "cosine":
            raise ConfigError(f"config.optim.min_lr_ratio={self.min_lr_ratio} applies to "
                              f"config.optim.schedule='cosine' only, got {self.schedule!r}")


MICRO_BATCH_KEYS = ("train.prompts_per_step * sampling.num_generations / "
                    "(train.num_minibatches * train.grad_accum)")


def check_micro_batch(n_rows: int, group: int, n_micro: int, batch_devices: int = 1, *,
                      need_whole_groups: bool = True) -> int:
    """Rows per micro-batch, or ConfigError (a ValueError) naming the config keys when they do
    not fit.

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


@struct.dataclass
class TrainState:
    """Everything that changes across steps. ``rng`` is raw uint32 key data (checkpointable)."""

    params: Any  # nnx.State of the policy's nnx.Param variables
    opt_state: Any
    step: jax.Array  # int32 scalar: optimiser-step count of completed train steps
    rng: jax.Array


def split_model(model: nnx.Module):
    """(graphdef, params, rest): params are the trainable nnx.Param leaves, rest the others
    (e.g. RoPE frequencies), which stay constant."""
    return nnx.split(model, nnx.Param, ...)


def lr_schedule(c: mc.ConfigDict) -> optax.Schedule:
    """The learning rate per optimiser update: linear warmup from 0 over ``warmup_steps`` train
    steps, then constant, cosine or linear decay over ``steps * num_iterations *
    num_minibatches`` updates. Cosine ends at ``lr * optim.min_lr_ratio`` (0 default; 0.1 is HF's
    ``cosine_with_min_lr`` with ``min_lr_rate=0.1``), linear at 0."""
    o = c.optim
    total = c.steps * c.train.num_iterations * c.train.num_minibatches
    warm = o.warmup_steps * c.train.num_iterations * c.train.num_minibatches
    if o.schedule == "constant":
        sched = (optax.linear_schedule(0.0, o.lr, warm) if warm else optax.constant_schedule(o.lr))
        if warm:
            sched = optax.join_schedules([sched, optax.constant_schedule(o.lr)], [warm])
    elif o.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0 if warm else o.lr, o.lr, max(warm, 1),
                                                   max(total, warm + 1),
                                                   end_value=o.lr * o.min_lr_ratio)
    else:  # linear
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, max(warm, 1)),
             optax.linear_schedule(o.lr, 0.0, max(total - warm, 1))], [max(warm, 1)])
    return sched


def build_optimizer(c: mc.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule (:func:`lr_schedule`)."""
    o = c.optim
    parts = []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    parts.append(optax.adamw(lr_schedule(c), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
    return optax.chain(*parts)


def advantage_chain(c: mc.ConfigDict):
    """``(baseline, reward_transforms, advantage_transforms, options)`` of ``config.advantage``,
    the arguments of ``make_advantage_fn`` and ``jaxgrpo.advantages.needs.required_inputs``."""
    reward_t = split_names(c.advantage.reward_transforms)
    adv_t = split_names(c.advantage.advantage_transforms)
    names = (*reward_t, c.advantage.baseline, *adv_t)
    options = {n: dict(c.advantage.options[n]) for n in names if n in c.advantage.options}
    return c.advantage.baseline, reward_t, adv_t, options


def advantage_fn_from_config(c: mc.ConfigDict) -> Callable:
    """The configured transform chain as one pure function ``rollout -> (adv [P, G], diag)``."""
    return make_advantage_fn(*advantage_chain(c))


def flatten_rollout(rollout: Rollout, advantages: jax.Array) -> Dict[str, jax.Array]:
    """[P, G, ...] groups -> N = P * G sequences (row p * G + g), prompts repeated G times."""
    p, g = rollout.rewards.shape

    def flat(x):
        return x.reshape(p * g, *x.shape[2:])

    out = dict(
        prompt_tokens=jnp.repeat(rollout.prompt_tokens, g, axis=0),
        prompt_mask=jnp.repeat(rollout.prompt_mask, g, axis=0),
        completion_tokens=flat(rollout.completion_tokens),
        completion_mask=flat(rollout.completion_mask) & flat(rollout.member_mask)[:, None],
        sampler_logprobs=flat(rollout.logprobs),
        advantages=flat(advantages),
        is_anchor=flat(rollout.is_anchor),
    )
    return out


def _reduce_metrics(ms: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """Collapses stacked per-update metrics: min/max keys by min/max, the rest by mean."""
    out = {}
    for k, v in ms.items():
        if k.endswith("min"):
            out[k] = jnp.min(v)
        elif k.endswith("max"):
            out[k] = jnp.max(v)
        else:
            out[k] = jnp.mean(v)
    return out


def shared_prompts(batch, group: int):
    """Prompt rows once per group (rows p * group + g share prompt p), so the log-prob pass runs
    each prompt once (``completion_logprobs`` shares its KV cache); ``group=1``: as is."""
    if group == 1:
        return batch["prompt_tokens"], batch["prompt_mask"]
    return batch["prompt_tokens"][::group], batch["prompt_mask"][::group]


def micro_batches(batch: Dict[str, jax.Array], n_micro: int, group: int):
    """Split N rows into ``n_micro`` micro-batches taken with a stride over whole groups.

    ``batch`` holds [N, ...] arrays whose rows p * group + g are the members of group p.
    Micro-batch m holds groups m, m + n_micro, m + 2 * n_micro, ... (each group's rows kept
    together and in order, so the shared-prompt pass of ``make_loss_fn`` still applies). Why a
    stride: a batch split over D devices holds contiguous blocks of rows, and a contiguous
    micro-batch would sit on a few of the devices while the others idle (and XLA then replicates
    it); the strided micro-batch takes an equal share of every block (exactly, with no data
    movement, when D divides the micro-batch's group count; otherwise XLA moves the small token
    arrays once). When ``n_micro`` does not divide the number of groups, the stride is over
    single rows (groups are split across micro-batches and prompts are repeated per row).

    Returns ``(mbs, unit)``: ``mbs`` the same keys with arrays [n_micro, N / n_micro, ...],
    ``unit`` the group size the micro-batches keep whole (``group``, or 1).
    """
    n = batch["advantages"].shape[0]
    if n % n_micro:
        raise ValueError(f"{n} rows do not split into {n_micro} micro-batches")
    unit = group if (n // group) % n_micro == 0 else 1
    per = n // n_micro

    def split(x):
        x = x.reshape(n // (unit * n_micro), n_micro, unit, *x.shape[1:])
        return x.swapaxes(0, 1).reshape(n_micro, per, *x.shape[3:])

    return jax.tree.map(split, batch), unit


def constrain_rows(tree: Any, mesh: Optional[Mesh], axis: int = 0) -> Any:
    """``with_sharding_constraint`` on every array of ``tree``: dimension ``axis`` (the rows)
    split over the batch axes ``('data', 'fsdp')``, the other dimensions replicated. A no-op
    without a mesh."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape) if mesh is not None else ()
    if not axes:
        return tree
    sharding = NamedSharding(mesh, P(*([None] * axis), axes))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def policy_params(c: mc.ConfigDict, params, frozen=None):
    """The decoder's full parameters from the trained ones: ``params`` itself, or with LoRA
    (``config.lora.rank > 0``) the frozen base ``frozen`` with the adapters ``params`` merged
    in (``jaxgrpo.lora.merge_params``). Pure; differentiable in ``params``."""
    from jaxgrpo.lora import lora_config, merge_params

    lora = lora_config(c)
    if lora is None:
        return params
    return merge_params(_frozen_base(frozen), params, lora)


def _frozen_base(frozen):
    """``frozen``, which a LoRA update needs (the base its adapters apply to)."""
    if frozen is None:
        raise ValueError("config.lora.rank > 0: the frozen base parameters are required")
    return frozen


def make_loss_fn(c: mc.ConfigDict, graphdef, rest, group: int = 1) -> Callable:
    """``loss_fn(params, batch, norms, frozen=None, dropout_key=None) -> (loss, metrics)`` for
    one micro-batch whose rows are whole groups of ``group`` completions (``group=1``: no
    assumption); ``norms`` the minibatch's ``losses.LossNorms``. ``frozen``: the LoRA base
    (``policy_params``); with ``lora.dropout > 0`` the adapters run unmerged with dropout keyed
    by ``dropout_key`` (None: no dropout).

    The LM head, log-softmax and entropy run in time chunks of ``train.logits_chunk`` tokens
    (0: one pass), each chunk rematerialised in the backward pass, so at most
    [rows, chunk, V] float32 logits are live."""
    from jaxgrpo.lora import LoraBranch, lora_config

    loss_cfg = losses.LossConfig.from_config(c.loss)
    chunk = c.train.logits_chunk or None
    lora = lora_config(c)
    unmerged = lora is not None and lora.dropout > 0

    def loss_fn(params, batch, norms, frozen=None, dropout_key=None):
        if unmerged:  # LoRA dropout: x W + scale * dropout(x) A B inside the decoder
            model = nnx.merge(graphdef, _frozen_base(frozen), rest)
            branch = LoraBranch.from_config(params, lora, dropout_key)
        else:
            model = nnx.merge(graphdef, policy_params(c, params, frozen), rest)
            branch = None
        logp, entropy = completion_logprobs(
            model, *shared_prompts(batch, group), batch["completion_tokens"],
            batch["completion_mask"], temperature=c.sampling.temperature, return_entropy=True,
            chunk_size=chunk, lora=branch)
        old, trainer = old_logprobs(c, batch, logp)
        onpolicy = batch["completion_mask"] & ~batch["is_anchor"][:, None]
        weights = None
        if loss_cfg.sampler_correction != "none":
            weights = sampler_correction_weights(
                old, batch["sampler_logprobs"], onpolicy, mode=loss_cfg.sampler_correction,
                cap=loss_cfg.sampler_correction_cap, floor=loss_cfg.sampler_correction_floor)
        loss, metrics = losses.policy_loss(
            logp, old, batch["advantages"], batch["completion_mask"], loss_cfg, norms=norms,
            ref_logprobs=batch.get("ref_logprobs"), is_anchor=batch["is_anchor"],
            token_entropy=entropy, is_weights=weights)
        metrics.update(pass_mismatch_sums(trainer, batch["sampler_logprobs"], onpolicy, weights))
        return loss, metrics

    return loss_fn


def old_logprobs(c: mc.ConfigDict, batch: Dict[str, jax.Array], logp: jax.Array):
    """``(pi_old, trainer)`` [N, T] for a loss pass whose log-probs are ``logp``.

    ``train.pi_old = "sampler"``: pi_old is the sampler's log-probs, and ``trainer`` (the
    trainer's log-probs to compare them with) is this pass's, detached. ``"trainer"``: the
    batch's ``old_logprobs`` when :func:`pi_old_pass` computed them, else this pass's detached
    log-probs (the update's first and only optimiser step: the ratio is exactly 1); anchor rows
    keep the sampler's value (0: behaviour probability 1) either way."""
    sampler = batch["sampler_logprobs"]
    if c.train.pi_old == "sampler":
        return sampler, jax.lax.stop_gradient(logp)
    trainer = batch.get("old_logprobs")
    if trainer is None:
        trainer = jnp.where(batch["is_anchor"][:, None], sampler, jax.lax.stop_gradient(logp))
    return trainer, trainer


def pass_mismatch_sums(trainer: jax.Array, sampler: jax.Array, mask: jax.Array,
                       weights: Optional[jax.Array]) -> Dict[str, jax.Array]:
    """One loss pass's ``mismatch_sum/*`` aux metrics (:func:`mismatch_from_metrics`): the
    sums of :func:`jaxgrpo.mismatch.mismatch_sums` over the on-policy tokens ``mask``, and of
    the sampler correction's ``weights`` there when given."""
    sums = mismatch_sums(trainer, sampler, mask)
    if weights is not None:
        sums["is_weight"] = jnp.sum(jnp.where(mask, weights, 0.0))
        sums["is_weight_max"] = jnp.max(jnp.where(mask, weights, -jnp.inf))
        sums["is_weight_min"] = jnp.min(jnp.where(mask, weights, jnp.inf))
    return {f"mismatch_sum/{k}": v for k, v in sums.items()}


def mismatch_from_metrics(ms: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """``mismatch/*`` of the ``mismatch_sum/*`` entries of reduced metrics (each a mean over
    micro-batches of one pass's sums, so their ratios are token means over the batch)."""
    sums = {k.split("/", 1)[1]: v for k, v in ms.items() if k.startswith("mismatch_sum/")}
    out = metrics_from_sums(sums)
    if "is_weight" in sums:
        out["mismatch/is_weight_mean"] = sums["is_weight"] / jnp.maximum(sums["count"], 1.0)
        out["mismatch/is_weight_max"] = sums["is_weight_max"]
        out["mismatch/is_weight_min"] = sums["is_weight_min"]
    return out


def _mesh_of(tree: Any) -> Optional[Mesh]:
    """The mesh of the first array in ``tree`` laid out with a ``NamedSharding`` (None: none)."""
    for x in jax.tree.leaves(tree):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding):
            return s.mesh
    return None


class StateShardedJit:
    """``jax.jit(fn, donate_argnums=(0,))`` for ``fn(state, *args) -> (state, metrics)`` whose
    returned state has exactly the shardings of the state it was given.

    Without ``out_shardings`` XLA picks the output layout itself (on a 2-device fsdp mesh it
    returned ``P('fsdp',)`` for a ``P('fsdp', 'tensor')`` kernel and split the replicated norm
    weights), so the second call saw new input shardings and compiled again, and so did every
    other function taking the params (the sampler). Here the layout of the first call's state is
    the contract: each array that carries a ``NamedSharding`` on the mesh keeps it, every other
    array (e.g. ``step`` and ``rng`` from ``init_train_state``) is replicated, the metrics are
    replicated, and the state is ``device_put`` to that layout (a no-op once it is there).

    ``build(mesh) -> fn`` makes the pure function for a mesh (None: no mesh); the mesh is the
    one given, or else that of the state's first ``NamedSharding``. ``lower`` takes the same
    arguments (arrays or ``jax.ShapeDtypeStruct`` with shardings) for AOT compilation.
    """

    def __init__(self, build: Callable[[Optional[Mesh]], Callable], mesh: Optional[Mesh] = None,
                 *, replicate_aux: bool = True):
        self._build = build
        self._mesh = mesh
        # The outputs after the state: replicated (metrics), or left to XLA (a rollout).
        self._replicate_aux = replicate_aux
        self._jits: Dict[Any, Any] = {}

    def _prepare(self, state):
        mesh = self._mesh if self._mesh is not None else _mesh_of(state)
        if mesh is None:
            key, shardings = None, None
        else:
            rep = NamedSharding(mesh, P())

            def keep(x):
                s = getattr(x, "sharding", None)
                return s if isinstance(s, NamedSharding) and s.mesh == mesh else rep

            shardings = jax.tree.map(keep, state)
            key = (mesh, tuple(jax.tree.leaves(shardings)))
        if key not in self._jits:
            fn = self._build(mesh)
            aux = NamedSharding(mesh, P()) if self._replicate_aux and mesh is not None else None
            self._jits[key] = (jax.jit(fn, donate_argnums=(0,)) if mesh is None else jax.jit(
                fn, donate_argnums=(0,), out_shardings=(shardings, aux)))
        return self._jits[key], shardings

    def __call__(self, state, *args, **kwargs):
        fn, shardings = self._prepare(state)
        if shardings is not None:
            state = jax.device_put(state, shardings)
        return fn(state, *args, **kwargs)

    def lower(self, state, *args, **kwargs):
        fn, _ = self._prepare(state)
        return fn.lower(state, *args, **kwargs)

    def _cache_size(self) -> int:
        """Compiled variants over all layouts seen (1 in a run whose shapes do not change)."""
        return sum(f._cache_size() for f in self._jits.values())


def make_update_fn(c: mc.ConfigDict, graphdef, rest, tx: optax.GradientTransformation,
                   advantage_fn: Optional[Callable] = None, *, jit: bool = True,
                   mesh: Optional[Mesh] = None) -> Callable:
    """The pure update ``(state, rollout, ref_params, frozen=None) -> (state, metrics)``.

    With LoRA (``config.lora.rank > 0``) ``state.params`` are the adapters and ``frozen`` the
    base parameters (``policy_params``), which is also the reference policy.

    The advantages [P, G] are computed inside from the rollout with ``advantage_fn`` (default:
    the configured chain). ``ref_params`` is the frozen reference policy's params (used when
    ``loss.beta > 0``; pass None otherwise). With ``jit`` the function is jitted
    (``StateShardedJit``: the state is donated and comes back with the shardings it went in
    with, so later steps do not recompile). ``mesh``: the mesh whose ``('data', 'fsdp')`` axes
    split every micro-batch (default: the mesh of the state's params, if they are sharded);
    without one, no sharding constraints. A micro-batch that those batch devices cannot divide
    raises ``ValueError``.
    """
    advantage_fn = advantage_fn or advantage_fn_from_config(c)

    def build(mesh):
        return build_update(c, graphdef, rest, tx, advantage_fn, mesh)

    return StateShardedJit(build, mesh) if jit else build(mesh)


def split_micro_batches(batch: Dict[str, jax.Array], group: int, n_micro: int,
                        mesh: Optional[Mesh]):
    """``(mbs, unit)``: the flat batch as ``n_micro`` strided micro-batches of whole groups
    (:func:`micro_batches`; arrays [n_micro, N / n_micro, ...]), their rows split over the
    mesh's batch devices. A micro-batch those devices or the groups cannot divide raises
    ``ValueError`` (``jaxgrpo.config.check_micro_batch``)."""
    batch_devices = 1 if mesh is None else math.prod(dict(mesh.shape).get(a, 1)
                                                     for a in BATCH_AXES)
    n = batch["advantages"].shape[0]
    check_micro_batch(n, group, n_micro, batch_devices, need_whole_groups=False)
    mbs, unit = micro_batches(batch, n_micro, group)
    return constrain_rows(mbs, mesh, axis=1), unit


def pass_logprobs(model, mbs: Dict[str, jax.Array], unit: int, mesh: Optional[Mesh],
                  *, temperature: float, chunk: Optional[int]) -> jax.Array:
    """float32 [n_micro, per, Tc]: ``model``'s log-probs of every micro-batch's completions (the
    reference policy's, or the policy's own pi_old), one micro-batch at a time (``lax.map``),
    in the update's precision and chunking, so only [N, Tc] log-probs survive, never the
    [N, Tc, V] logits of all rows at once. No gradient."""

    def one(mb):
        mb = constrain_rows(mb, mesh)
        lp = completion_logprobs(
            model, *shared_prompts(mb, unit), mb["completion_tokens"],
            mb["completion_mask"], temperature=temperature, chunk_size=chunk)
        return jax.lax.stop_gradient(lp)

    keys = ("prompt_tokens", "prompt_mask", "completion_tokens", "completion_mask")
    return constrain_rows(jax.lax.map(one, {k: mbs[k] for k in keys}), mesh, axis=1)


def minibatch_norms(mb: Dict[str, jax.Array], max_len: int, n_acc: int,
                    generation_tokens: jax.Array) -> losses.LossNorms:
    """The loss normalisers of one minibatch ``mb`` ([n_acc, per, ...]): its valid tokens and
    sequences, the generation limit ``max_len``, its ``n_acc`` micro-batches, and the
    rollout's valid tokens (``agg_mode="dapo"``)."""
    return losses.LossNorms(global_num_tokens=jnp.sum(mb["completion_mask"]),
                            global_num_seqs=jnp.sum(jnp.any(mb["completion_mask"], axis=-1)),
                            max_completion_length=max_len, num_micro_batches=n_acc,
                            generation_num_tokens=generation_tokens)


def micro_batch_grads(loss_fn: Callable, params, mb: Dict[str, jax.Array], keys,
                      norms: losses.LossNorms, frozen, mesh: Optional[Mesh]):
    """``(grads, losses [n_acc], metrics {name: [n_acc]})``: the float32 sum of the loss
    gradients over the minibatch's micro-batches ``mb`` ([n_acc, per, ...], ``lax.scan``),
    each normalised by the minibatch's ``norms`` so that the sum is the minibatch gradient.
    ``keys``: [n_acc] LoRA dropout keys, or None."""

    def micro(gsum, xs):
        micro_batch, key = xs
        micro_batch = constrain_rows(micro_batch, mesh)
        (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, micro_batch, norms,
                                                                 frozen, key)
        # float32 accumulator whatever the parameter dtype: bf16 sums lose small terms.
        return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), gsum, g), (loss, m)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, (micro_losses, ms) = jax.lax.scan(micro, zeros, (mb, keys))
    return grads, micro_losses, ms


def optimiser_step(tx: optax.GradientTransformation, params, opt_state, grads):
    """``(params, opt_state, grad_norm)`` after one optax step on float32 ``grads``; the
    optimiser sees them in the parameters' dtype, so its state keeps its dtype across steps
    (float32 master weights: no cast at all). ``grad_norm``: of the float32 gradients."""
    grad_norm = optax.global_norm(grads)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grad_norm


def minibatch_step(carry, xs, *, loss_fn: Callable, tx: optax.GradientTransformation,
                   norms_of: Callable, frozen, mesh: Optional[Mesh]):
    """One optimiser step of ``lax.scan``: carry ``(params, opt_state)``, xs ``(minibatch,
    keys)``; returns the new carry and the minibatch's metrics (``loss``: the sum of its
    micro-batch losses, which share the minibatch normaliser; ``grad_norm``)."""
    mb, mb_keys = xs
    params, opt_state = carry
    grads, micro_losses, ms = micro_batch_grads(loss_fn, params, mb, mb_keys, norms_of(mb),
                                                frozen, mesh)
    params, opt_state, grad_norm = optimiser_step(tx, params, opt_state, grads)
    ms = _reduce_metrics(ms)
    ms["loss"] = jnp.sum(micro_losses)
    ms["grad_norm"] = grad_norm
    return (params, opt_state), ms


def dropout_keys(state: TrainState, shape) -> jax.Array:
    """LoRA dropout keys [mu, n_mb, n_acc], one per micro-batch forward: a function of
    ``(state.rng, state.step)`` only, so a resumed run draws the same masks."""
    base = jax.random.fold_in(jax.random.wrap_key_data(state.rng), DROPOUT_SALT)
    return jax.random.split(jax.random.fold_in(base, state.step), shape)


def rollout_metrics(rollout: Rollout, adv_diag: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """The advantage chain's diagnostics (``adv/...`` unless namespaced) and the on-policy
    members' mean reward, accuracy and completion length."""
    metrics = {f"adv/{k}" if "/" not in k else k: v for k, v in adv_diag.items()}
    member = rollout.member_mask & ~rollout.is_anchor
    n_member = jnp.maximum(jnp.sum(member), 1)
    metrics["reward/mean"] = jnp.sum(jnp.where(member, rollout.rewards, 0)) / n_member
    metrics["accuracy"] = jnp.sum(rollout.correct & member) / n_member
    lengths = jnp.sum(rollout.completion_mask, axis=-1)
    metrics["completion_length"] = jnp.sum(jnp.where(member, lengths, 0)) / n_member
    return metrics


def pi_old_pass(c: mc.ConfigDict) -> bool:
    """Whether the update runs a no-grad pass for pi_old (``train.pi_old = "trainer"`` and the
    rollout feeds more than one optimiser step: ``num_iterations`` or ``num_minibatches`` > 1);
    with one step pi_old is that step's own detached log-probs (:func:`old_logprobs`)."""
    return c.train.pi_old == "trainer" and c.train.num_iterations * c.train.num_minibatches > 1


def update_mismatch(c: mc.ConfigDict, ms: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """The update's ``mismatch/*`` metrics from the [mu, n_mb] stacked pass metrics ``ms``:
    over every pass when pi_old is the trainer's (each compares the same pi_old with the
    sampler); with ``train.pi_old = "sampler"`` over the first optimiser step's passes only,
    the ones run under the parameters that sampled (the first minibatch's rows)."""
    mm = {k: v for k, v in ms.items() if k.startswith("mismatch_sum/")}
    if c.train.pi_old == "sampler":
        mm = {k: v[0, 0] for k, v in mm.items()}
    return mismatch_from_metrics(_reduce_metrics(mm))


def build_update(c, graphdef, rest, tx, advantage_fn, mesh: Optional[Mesh]) -> Callable:
    """The pure update of :func:`make_update_fn` for ``mesh`` (None: no sharding
    constraints): advantages, micro-batches, reference log-probs, then ``num_iterations``
    passes of ``num_minibatches`` optimiser steps (:func:`minibatch_step`)."""
    # 0 = auto is chosen by the Trainer before the update is built (jaxgrpo.micro_batch).
    mu, n_mb, n_acc = c.train.num_iterations, c.train.num_minibatches, c.train.grad_accum or 1
    loss_cfg = losses.LossConfig.from_config(c.loss)
    chunk = c.train.logits_chunk or None
    lora = c.lora.rank > 0
    lora_dropout = lora and float(c.lora.dropout) > 0
    old_pass = pi_old_pass(c)

    def update(state: TrainState, rollout: Rollout, ref_params=None, frozen=None):
        if lora:  # the reference policy is the base: adapters off, no second copy
            ref_params = frozen
        adv, adv_diag = advantage_fn(rollout)
        if loss_cfg.mask_truncated_completions:  # after the advantages: only the loss drops them
            rollout = mask_truncated_completions(rollout)
        batch = flatten_rollout(rollout, adv)
        mbs, unit = split_micro_batches(batch, rollout.rewards.shape[1], n_mb * n_acc, mesh)
        if loss_cfg.beta > 0:
            mbs["ref_logprobs"] = pass_logprobs(
                nnx.merge(graphdef, ref_params, rest), mbs, unit, mesh,
                temperature=c.sampling.temperature, chunk=chunk)
        if old_pass:  # pi_old from the trainer, before the first optimiser step moves it
            mbs["old_logprobs"] = jnp.where(mbs["is_anchor"][..., None], mbs["sampler_logprobs"],
                                            pass_logprobs(
                nnx.merge(graphdef, policy_params(c, state.params, frozen), rest), mbs, unit,
                mesh, temperature=c.sampling.temperature, chunk=chunk))
        mbs = jax.tree.map(lambda x: x.reshape(n_mb, n_acc, *x.shape[1:]), mbs)
        # Dr.GRPO's constant normaliser is the generation limit (TRL max_completion_length),
        # not the array width: the host path trims padding columns (train.completion_buckets).
        max_len = max(batch["completion_tokens"].shape[-1], c.sampling.max_new_tokens)
        gen_tokens = jnp.sum(batch["completion_mask"])  # for agg_mode="dapo"
        keys = dropout_keys(state, (mu, n_mb, n_acc)) if lora_dropout else None
        # Micro-batches of whole groups run each prompt once; otherwise prompts are repeated.
        opt_step = functools.partial(
            minibatch_step, loss_fn=make_loss_fn(c, graphdef, rest, unit), tx=tx,
            norms_of=lambda mb: minibatch_norms(mb, max_len, n_acc, gen_tokens),
            frozen=frozen, mesh=mesh)

        def iteration(carry, it_keys):  # one pass over the minibatches
            return jax.lax.scan(opt_step, carry, (mbs, it_keys))

        (params, opt_state), ms = jax.lax.scan(iteration, (state.params, state.opt_state),
                                               keys, length=mu)
        metrics = _reduce_metrics({k: v for k, v in ms.items()
                                   if not k.startswith("mismatch_sum/")})
        metrics["loss_first"] = ms["loss"][0, 0]
        metrics.update(update_mismatch(c, ms))
        metrics.update(rollout_metrics(rollout, adv_diag))
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    return update


def init_train_state(params, tx: optax.GradientTransformation, seed: int,
                     opt_shardings: Any = None) -> TrainState:
    """A fresh TrainState. With ``opt_shardings`` (a pytree of shardings shaped like
    ``tx.init(params)``) the optimizer state is built by one jitted ``tx.init`` laid out so."""
    init = tx.init if opt_shardings is None else jax.jit(tx.init, out_shardings=opt_shardings)
    return TrainState(params=params, opt_state=init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)))
