"""Shared by tests/advantages: NumPy float64 references, a hand-made Rollout, jitted variants."""
import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import settings, strategies as st

from jaxgrpo.advantages import dr_grpo, grpo
from jaxgrpo.rollout import Rollout


HYP = settings(max_examples=50, deadline=None)


# ---------------------------------------------------------------- NumPy float64 references


def np_grpo(r, ddof=1, eps=1e-4, mask=None, scale=True):
    r = np.asarray(r, np.float64)
    mask = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        x = r[p][mask[p]]
        if x.size == 0 or x.max() == x.min():
            continue
        c = x - x.mean()
        if scale:
            c = c / (x.std(ddof=ddof) + eps)
        out[p][mask[p]] = c
    return out


def np_dra(r, e, eps=1e-6, floor=None):
    r = np.asarray(r, np.float64)
    e = np.asarray(e, np.float64)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        s = e[p] @ e[p].T
        rs = s.sum(1)
        if floor is not None:
            rs = np.maximum(rs, floor)
        out[p] = r[p] / (rs + eps)
    return out


def np_dagrpo(r, tau=0.1, adaptive=False, kappa=0.1, z_mode="group", dist=None):
    r = np.asarray(r, np.float64)
    p_, g = r.shape
    out = np.zeros_like(r)
    for p in range(p_):
        d = np.abs(r[p][:, None] - r[p][None, :]) if dist is None else dist[p]
        thr = kappa * max(d[i, j] for i in range(g) for j in range(g) if i != j) if adaptive else tau
        for i in range(g):
            kept = [j for j in range(g) if j != i and d[i, j] >= thr]
            tot = sum(r[p, i] - r[p, j] for j in kept)
            z = (g - 1) if z_mode == "group" else max(1, len(kept))
            out[p, i] = tot / z
    return out


def np_low_k(n, rho):
    return max(1, math.ceil(fractions.Fraction(rho).limit_denominator(1000) * n))


def np_answer_conf(lp, m, reading="low_fraction", rho=0.2):
    lp = np.asarray(lp, np.float64)
    out = np.ones(lp.shape[:-1])
    for idx in np.ndindex(*lp.shape[:-1]):
        v = lp[idx][np.asarray(m)[idx].astype(bool)]
        if v.size == 0:
            continue
        if reading == "low_fraction":
            out[idx] = math.exp(np.sort(v)[:np_low_k(v.size, rho)].mean())
        elif reading == "low_fraction_norm":
            out[idx] = math.exp(v.sum() / (rho * v.size))
        else:
            out[idx] = math.exp(v.mean())
    return out


def np_prompt_conf(plp, pm, reading="mean", rho=0.2):
    out = np.ones(plp.shape[0])
    for p in range(plp.shape[0]):
        idx = np.nonzero(pm[p])[0][1:]  # predicted tokens: real tokens after the first
        v = np.asarray(plp[p], np.float64)[idx]
        if v.size == 0:
            continue
        if reading == "mean":
            out[p] = math.exp(v.mean())
        else:
            out[p] = math.exp(np.sort(v)[:np_low_k(v.size, rho)].mean())
    return out


def np_arm(a, correct, ca, cq, alpha=1.0, gate_all_correct=False):
    out = np.array(a, np.float64)
    for p in range(out.shape[0]):
        nc = int(np.sum(correct[p]))
        if nc == 0 or (gate_all_correct and nc == out.shape[1]):
            continue
        out[p] = out[p] + alpha * (cq[p] - ca[p])
    return out


# ---------------------------------------------------------------- helpers


def make_rollout(rewards, *, correct=None, tc=6, tp=5, d=4, seed=0, fine=True, emb=True,
                 empty=None):
    rewards = np.asarray(rewards, np.float32)
    p, g = rewards.shape
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, tc + 1, size=(p, g))
    cmask = np.arange(tc)[None, None, :] < lengths[..., None]
    if empty is not None:
        cmask[empty] = False
    lp = np.where(cmask, -rng.exponential(1.0, size=(p, g, tc)), 0.0).astype(np.float32)
    plen = rng.integers(2, tp + 1, size=(p,))
    pmask = np.arange(tp)[None, :] >= (tp - plen)[:, None]  # left-padded
    plp = np.where(pmask, -rng.exponential(0.5, size=(p, tp)), 0.0)
    plp[np.arange(p), tp - plen] = 0.0  # the first real token has no prediction
    e = rng.normal(size=(p, g, d))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    if correct is None:
        correct = rewards > 0.5
    return Rollout(
        prompt_tokens=jnp.asarray(rng.integers(0, 100, size=(p, tp)), jnp.int32),
        prompt_mask=jnp.asarray(pmask),
        completion_tokens=jnp.asarray(rng.integers(0, 100, size=(p, g, tc)), jnp.int32),
        completion_mask=jnp.asarray(cmask),
        logprobs=jnp.asarray(lp),
        prompt_logprobs=jnp.asarray(plp, jnp.float32),
        rewards=jnp.asarray(rewards),
        correct=jnp.asarray(np.asarray(correct, bool)),
        member_mask=jnp.ones((p, g), bool),
        is_anchor=jnp.zeros((p, g), bool),
        fine_scores=jnp.asarray(rng.uniform(size=(p, g)), jnp.float32) if fine else None,
        embeddings=jnp.asarray(e, jnp.float32) if emb else None,
    )


# Few distinct shapes (P = 3, G in {2, 4, 7}) so that the jitted functions compile a few times
# only; values are multiples of 1/4, exact in float32.
group_rewards = st.sampled_from([2, 4, 7]).flatmap(
    lambda g: st.lists(st.lists(st.integers(-8, 8), min_size=g, max_size=g), min_size=3,
                       max_size=3)).map(lambda x: np.asarray(x, np.float32) * 0.25)


jit_grpo = jax.jit(grpo, static_argnames=("std_ddof", "eps", "zero_spread_tol", "nonfinite"))


jit_dr_grpo = jax.jit(dr_grpo)
