"""Shared helpers for the advantage transforms: input checks, member masks, non-finite rewards.

Everything here is pure and jit-compatible; shape checks run at trace time.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

NONFINITE_POLICIES = ("mask", "propagate", "check")


def check_group_rewards(rewards: jax.Array, name: str = "rewards") -> Tuple[int, int]:
    """Trace-time checks on a ``[P, G]`` reward array; returns ``(P, G)``.

    Raises:
      ValueError: rank is not 2, or ``G < 2`` (a group of one has no relative signal, and its
        unbiased std is undefined).
    """
    if jnp.ndim(rewards) != 2:
        raise ValueError(f"{name} must have shape [P, G] (rank 2); got shape {jnp.shape(rewards)}.")
    p, g = jnp.shape(rewards)
    if g < 2:
        raise ValueError(
            f"{name} has group size G={g}; group-relative advantages need G >= 2 completions per "
            "prompt.")
    return p, g


def out_dtype(rewards: jax.Array):
    """Output dtype of a transform: the rewards' float dtype, float32 for int/bool rewards."""
    dt = jnp.result_type(rewards)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.float32


def member_mask_or_ones(member_mask: Optional[jax.Array], shape) -> jax.Array:
    """``member_mask`` as bool of ``shape`` (all True when None), shape-checked."""
    if member_mask is None:
        return jnp.ones(shape, dtype=bool)
    if tuple(jnp.shape(member_mask)) != tuple(shape):
        raise ValueError(
            f"member_mask must have shape {tuple(shape)} like rewards; got {jnp.shape(member_mask)}.")
    return jnp.asarray(member_mask).astype(bool)


def handle_nonfinite(rewards: jax.Array, member_mask: jax.Array, nonfinite: str):
    """Applies the non-finite reward policy.

    Policies (``nonfinite``):
      * ``"mask"``: a NaN/inf reward marks its completion as unscorable: it is dropped from the
        group statistics (member_mask False) and its advantage is exactly 0. This is TRL's
        NaN-aware behaviour (``nanmean``/``nanstd``; unscorable samples get advantage 0).
      * ``"propagate"``: no special handling (NaN spreads to the whole group, as in the plain
        PyTorch reference code).
      * ``"check"``: a ``jax.experimental.checkify`` check that all member rewards are finite.
        Eagerly it raises ``JaxRuntimeError``; under ``jax.jit`` the caller must functionalise it
        with ``checkify.checkify(fn)`` (JAX refuses an unfunctionalised check inside jit).

    Returns:
      ``(rewards_float32, member_mask)``; in ``"mask"`` mode non-finite entries are replaced by 0.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; got {nonfinite!r}.")
    r = jnp.asarray(rewards).astype(jnp.promote_types(out_dtype(rewards), jnp.float32))
    if nonfinite == "mask":
        finite = jnp.isfinite(r)
        return jnp.where(finite, r, 0.0), member_mask & finite
    if nonfinite == "check":
        checkify.check(jnp.all(jnp.isfinite(r) | ~member_mask), "non-finite reward in a group member")
    return r, member_mask


def masked_group_mean(x: jax.Array, mask: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Mean over axis 1 of ``x`` [P, G] restricted to ``mask``; returns ``(mean [P,1], n [P,1])``."""
    n = jnp.sum(mask, axis=1, keepdims=True).astype(x.dtype)
    s = jnp.sum(jnp.where(mask, x, 0.0), axis=1, keepdims=True)
    return s / jnp.maximum(n, 1.0), n


def scalar(x) -> jax.Array:
    """A float32 jnp scalar (diagnostics are scalars only)."""
    return jnp.asarray(x, dtype=jnp.float32).reshape(())
