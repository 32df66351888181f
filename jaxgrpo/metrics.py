"""Evaluation metrics: unbiased pass@k, maj@k, diversity of correct answers, embedding diversity.

pass@k: Chen et al., "Evaluating Large Language Models Trained on Code", arXiv 2107.03374.
pass_at_k / maj_at_k / distinct_correct / top_correct_share are host-side NumPy helpers;
mean_pairwise_cosine_distance and masked_stats are jit-able JAX.
"""
from __future__ import annotations

import collections
from typing import Dict, Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def pass_at_k(n, c, k) -> np.ndarray:
    """Unbiased pass@k = 1 - C(n - c, k) / C(n, k) from n samples with c correct.

    Computed stably as 1 - prod_{i = n-c+1}^{n} (1 - k / i) (Chen et al. 2021, arXiv 2107.03374),
    which is 1 when n - c < k. Vectorised: n, c, k broadcast as NumPy integer arrays.

    Args:
      n: samples per problem (>= 1); c: correct samples (0 <= c <= n); k: budget (1 <= k <= n).

    Returns:
      float64 array of the broadcast shape (a 0-d array for scalar inputs).

    Raises:
      ValueError: non-integer inputs, k < 1, k > n, c < 0 or c > n.
    """
    n, c, k = (np.asarray(v) for v in (n, c, k))
    for name, v in (("n", n), ("c", c), ("k", k)):
        if v.size and not np.issubdtype(v.dtype, np.integer):
            if not np.all(np.equal(np.mod(v, 1), 0)):
                raise ValueError(f"pass_at_k: {name} must be integers; got {v}.")
    n, c, k = np.broadcast_arrays(n.astype(np.int64), c.astype(np.int64), k.astype(np.int64))
    if np.any(k < 1):
        raise ValueError(f"pass_at_k: k must be >= 1; got {k[k < 1]}.")
    if np.any(k > n):
        raise ValueError(f"pass_at_k: k must be <= n (need at least k samples); got k={k[k > n]} "
                         f"with n={n[k > n]}.")
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("pass_at_k: need 0 <= c <= n.")
    if n.size == 0:
        return np.zeros(n.shape, np.float64)
    i = np.arange(1, int(n.max()) + 1, dtype=np.float64)  # [M]
    nn, cc, kk = n[..., None], c[..., None], k[..., None].astype(np.float64)
    in_range = (i > nn - cc) & (i <= nn)
    terms = np.where(in_range, 1.0 - kk / i, 1.0)
    out = 1.0 - np.prod(terms, axis=-1)
    return np.where(n - c < k, 1.0, out)


def maj_at_k(answers: Sequence[Optional[Hashable]], correct: Sequence[bool], k: int) -> bool:
    """maj@k for one problem: majority vote over the first k sampled answers.

    Unparsable answers (None) do not vote; ties go to the answer seen first. The vote is correct
    when a sample carrying the winning answer is correct (answers are assumed to be normalised,
    so equal answers are equally correct). No valid answer -> False.

    Raises:
      ValueError: k < 1, k > len(answers), or answers/correct lengths differ.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags.")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)}; got k={k}.")
    counts: "collections.OrderedDict[Hashable, int]" = collections.OrderedDict()
    first_correct = {}
    for a, ok in zip(answers[:k], correct[:k]):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first_correct.setdefault(a, bool(ok))
    if not counts:
        return False
    best = max(counts.values())
    winner = next(a for a, v in counts.items() if v == best)
    return first_correct[winner]


def maj_at_k_mean(answers: Sequence[Sequence[Optional[Hashable]]],
                  correct: Sequence[Sequence[bool]], k: int) -> float:
    """maj@k averaged over problems (lists of per-problem answers / correctness)."""
    if len(answers) == 0:
        raise ValueError("maj_at_k_mean: no problems.")
    return float(np.mean([maj_at_k(a, c, k) for a, c in zip(answers, correct)]))


def distinct_correct(answers: Sequence[Sequence[Optional[Hashable]]],
                     correct) -> np.ndarray:
    """Distinct answers among each problem's correct samples, int64 ``[P]``.

    Args:
      answers: P lists of n (canonical) answers; None answers are not counted.
      correct: bool [P, n].

    A problem with no correct sample counts 0. With canonical solutions as answers (e.g.
    ``jaxgrpo.rewards.tasks.SumTask.answers``) this is the number of distinct correct solutions.
    """
    correct = np.asarray(correct, bool)
    if correct.ndim != 2 or len(answers) != correct.shape[0] or any(
            len(a) != correct.shape[1] for a in answers):
        raise ValueError(f"distinct_correct: answers must be {correct.shape[0]} lists matching "
                         f"correct of shape {correct.shape}.")
    return np.array([len({a for a, ok in zip(row, oks) if ok and a is not None})
                     for row, oks in zip(answers, correct.tolist())], np.int64)


def top_correct_share(answers: Sequence[Sequence[Optional[Hashable]]], correct) -> np.ndarray:
    """Share of a problem's correct samples that carry its most frequent correct answer,
    float64 ``[P]`` in (0, 1]; NaN for a problem with no correct sample.

    1.0 means every correct sample gave the same answer (collapse onto one mode); 1/c for c
    correct samples with all-different answers. Correct samples whose answer is None count in
    the denominator (they are correct, with no comparable answer) but never in the mode.
    """
    correct = np.asarray(correct, bool)
    if correct.ndim != 2 or len(answers) != correct.shape[0] or any(
            len(a) != correct.shape[1] for a in answers):
        raise ValueError(f"top_correct_share: answers must be {correct.shape[0]} lists matching "
                         f"correct of shape {correct.shape}.")
    out = np.full(correct.shape[0], np.nan)
    for i, (row, oks) in enumerate(zip(answers, correct.tolist())):
        n_ok = sum(oks)
        if n_ok:
            counts = collections.Counter(a for a, ok in zip(row, oks) if ok and a is not None)
            out[i] = (max(counts.values()) if counts else 0) / n_ok
    return out


def mean_pairwise_cosine_distance(embeddings: jax.Array, mask: Optional[jax.Array] = None, *,
                                  fill_value: float = 0.0) -> jax.Array:
    """Mean of 1 - cos(e_i, e_j) over unordered pairs i < j of valid members.

    Args:
      embeddings: float [..., G, D] (need not be normalised; zero vectors count as cosine 0).
      mask: optional bool [..., G] (e.g. correct completions only); default all valid.
      fill_value: returned where fewer than two members are valid (default 0.0).

    Returns:
      float32 [...].
    """
    e = embeddings.astype(jnp.float32)
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    g = e.shape[-2]
    m = jnp.ones(e.shape[:-1], bool) if mask is None else mask.astype(bool)
    if m.shape != e.shape[:-1]:
        raise ValueError(f"mask must have shape {e.shape[:-1]}; got {m.shape}.")
    cos = jnp.einsum("...id,...jd->...ij", e, e)
    pair = m[..., :, None] & m[..., None, :] & ~jnp.eye(g, dtype=bool)
    npairs = jnp.sum(pair, axis=(-1, -2))
    tot = jnp.sum(jnp.where(pair, 1.0 - cos, 0.0), axis=(-1, -2))
    return jnp.where(npairs > 0, tot / jnp.maximum(npairs, 1), fill_value)


def masked_stats(x: jax.Array, mask: jax.Array) -> Dict[str, jax.Array]:
    """Mean, std (population), min and max of ``x`` where ``mask`` is True; all 0 when the mask
    is empty. Jit-able: the loss's token statistics and the advantage chain's ``adv/*``."""
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    nn = jnp.maximum(n, 1.0)
    mean = jnp.sum(x * m) / nn
    var = jnp.sum(((x - mean) ** 2) * m) / nn
    has = n > 0
    mask = mask.astype(bool)
    return {
        "mean": jnp.where(has, mean, 0.0),
        "std": jnp.where(has, jnp.sqrt(var), 0.0),
        "min": jnp.where(has, jnp.min(jnp.where(mask, x, jnp.inf)), 0.0),
        "max": jnp.where(has, jnp.max(jnp.where(mask, x, -jnp.inf)), 0.0),
    }
