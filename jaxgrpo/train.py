"""The pure update: rollout batch -> advantages -> mu clipped-policy updates -> new state.

``make_update_fn`` returns one pure function (jit-compiled by default)
``update(state, rollout, ref_params) -> (state, metrics)`` that

1. turns rewards into advantages with the configured transform chain
   (``jaxgrpo.advantages.make_advantage_fn``);
2. flattens the ``[P, G, ...]`` groups into N = P * G sequences and, if ``loss.beta > 0``,
   computes the reference policy's log-probs once;
3. runs ``num_iterations`` (mu) passes, each over ``num_minibatches`` optimiser steps
   (``lax.scan``), each step accumulating gradients over ``grad_accum`` micro-batches
   (``lax.scan``). Every micro-batch loss is normalised by the *minibatch's* global counts
   (tokens, sequences, max length), so summing micro-batch gradients gives exactly the
   minibatch gradient, and the value does not depend on sharding or accumulation.

The whole training step (collect a rollout: sample, verify, assemble; then this update), on the
host path or fused into one jit for token rewards, is composed in ``jaxgrpo.step``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections as mc
import optax
from flax import nnx, struct

from jaxgrpo import losses
from jaxgrpo.advantages import make_advantage_fn
from jaxgrpo.config import split_names
from jaxgrpo.logprobs import completion_logprobs
from jaxgrpo.rollout import Rollout


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


def build_optimizer(c: mc.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule (warmup then constant,
    cosine or linear decay to 0 over ``steps * num_iterations * num_minibatches`` updates)."""
    o = c.optim
    total = c.steps * c.train.num_iterations * c.train.num_minibatches
    warm = o.warmup_steps * c.train.num_iterations * c.train.num_minibatches
    if o.schedule == "constant":
        sched = (optax.linear_schedule(0.0, o.lr, warm) if warm else optax.constant_schedule(o.lr))
        if warm:
            sched = optax.join_schedules([sched, optax.constant_schedule(o.lr)], [warm])
    elif o.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0 if warm else o.lr, o.lr, max(warm, 1),
                                                   max(total, warm + 1), end_value=0.0)
    else:  # linear
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, max(warm, 1)),
             optax.linear_schedule(o.lr, 0.0, max(total - warm, 1))], [max(warm, 1)])
    parts = []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    parts.append(optax.adamw(sched, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
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
        old_logprobs=flat(rollout.logprobs),
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


def make_loss_fn(c: mc.ConfigDict, graphdef, rest, group: int = 1) -> Callable:
    """``loss_fn(params, batch, norms) -> (loss, metrics)`` for one micro-batch whose rows are
    whole groups of ``group`` completions (``group=1``: no assumption)."""
    lc = c.loss

    def loss_fn(params, batch, norms):
        model = nnx.merge(graphdef, params, rest)
        logp, entropy = completion_logprobs(
            model, *shared_prompts(batch, group), batch["completion_tokens"],
            batch["completion_mask"], temperature=c.sampling.temperature, return_entropy=True)
        return losses.policy_loss(
            logp, batch["old_logprobs"], batch["advantages"], batch["completion_mask"],
            ref_logprobs=batch.get("ref_logprobs"), is_anchor=batch["is_anchor"],
            token_entropy=entropy, eps_low=lc.eps_low, eps_high=lc.eps_high, beta=lc.beta,
            kl_estimator=lc.kl_estimator, kl_clamp=lc.kl_clamp or None, agg_mode=lc.agg_mode,
            anchor_gamma=lc.anchor_gamma, **norms)

    return loss_fn


def make_update_fn(c: mc.ConfigDict, graphdef, rest, tx: optax.GradientTransformation,
                   advantage_fn: Optional[Callable] = None, *, jit: bool = True) -> Callable:
    """The pure update ``(state, rollout, ref_params) -> (state, metrics)``.

    The advantages [P, G] are computed inside from the rollout with ``advantage_fn`` (default:
    the configured chain). ``ref_params`` is the frozen reference policy's params (used when
    ``loss.beta > 0``; pass None otherwise). With ``jit`` the function is jitted and the state
    donated.
    """
    advantage_fn = advantage_fn or advantage_fn_from_config(c)
    mu, n_mb, n_acc = c.train.num_iterations, c.train.num_minibatches, c.train.grad_accum
    beta = c.loss.beta

    def update(state: TrainState, rollout: Rollout, ref_params=None):
        adv, adv_diag = advantage_fn(rollout)
        batch = flatten_rollout(rollout, adv)
        group = rollout.rewards.shape[1]
        if beta > 0:
            ref_model = nnx.merge(graphdef, ref_params, rest)
            ref_lp = completion_logprobs(
                ref_model, *shared_prompts(batch, group), batch["completion_tokens"],
                batch["completion_mask"], temperature=c.sampling.temperature)
            batch["ref_logprobs"] = jax.lax.stop_gradient(ref_lp)
        n = batch["advantages"].shape[0]
        per = n // (n_mb * n_acc)
        # Micro-batches of whole groups run each prompt once; otherwise prompts are repeated.
        loss_fn = make_loss_fn(c, graphdef, rest, group if per % group == 0 else 1)
        mbs = jax.tree.map(lambda x: x.reshape(n_mb, n_acc, per, *x.shape[1:]), batch)
        max_len = batch["completion_tokens"].shape[-1]

        def opt_step(carry, mb):
            params, opt_state = carry
            norms = dict(global_num_tokens=jnp.sum(mb["completion_mask"]),
                         global_num_seqs=jnp.sum(jnp.any(mb["completion_mask"], axis=-1)),
                         max_completion_length=max_len)

            def micro(gsum, micro_batch):
                (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, micro_batch, norms)
                return jax.tree.map(jnp.add, gsum, g), (loss, m)

            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, (micro_losses, ms) = jax.lax.scan(micro, zeros, mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            ms = _reduce_metrics(ms)
            ms["loss"] = jnp.sum(micro_losses)  # micro losses share the minibatch normaliser
            ms["grad_norm"] = optax.global_norm(grads)
            return (params, opt_state), ms

        def iteration(carry, _):
            return jax.lax.scan(opt_step, carry, mbs)

        (params, opt_state), ms = jax.lax.scan(iteration, (state.params, state.opt_state),
                                               None, length=mu)
        metrics = _reduce_metrics(ms)
        metrics["loss_first"] = ms["loss"][0, 0]
        metrics.update({f"adv/{k}" if "/" not in k else k: v for k, v in adv_diag.items()})
        member = rollout.member_mask & ~rollout.is_anchor
        metrics["reward/mean"] = jnp.sum(jnp.where(member, rollout.rewards, 0)) / jnp.maximum(
            jnp.sum(member), 1)
        metrics["accuracy"] = jnp.sum(rollout.correct & member) / jnp.maximum(jnp.sum(member), 1)
        lengths = jnp.sum(rollout.completion_mask, axis=-1)
        metrics["completion_length"] = jnp.sum(jnp.where(member, lengths, 0)) / jnp.maximum(
            jnp.sum(member), 1)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    return jax.jit(update, donate_argnums=(0,)) if jit else update


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      rng=jax.random.key_data(jax.random.key(seed)))
