"""Tests for jaxgrpo.losses against NumPy float64 references (written from TRL's, verl's and the
papers' formulas) and analytic gradients."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo import losses

# The split-invariant modes (bnpo and dapo have their own tests).
MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


@pytest.fixture(params=["jit", "eager"])
def variant(request):
    """Runs a test with the function jitted and eagerly (replaces chex.variants)."""
    return jax.jit if request.param == "jit" else (lambda f: f)


def np_surrogate(lp, old, a, eps_low, eps_high):
    rho = np.exp(np.asarray(lp, np.float64) - np.asarray(old, np.float64))
    a = np.asarray(a, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    return -np.minimum(rho * a, np.clip(rho, 1 - eps_low, 1 + eps_high) * a)


def np_kl(lp, ref, est):
    d = np.asarray(lp, np.float64) - np.asarray(ref, np.float64)
    return {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) + d - 1}[est]


def np_agg(x, m, mode, ntok=None, nseq=None, lmax=None):
    x = np.where(m, np.asarray(x, np.float64), 0.0)
    ntok = m.sum() if ntok is None else ntok
    nseq = x.shape[0] if nseq is None else nseq
    lmax = x.shape[1] if lmax is None else lmax
    if mode == "token-mean":
        return x.sum() / ntok
    if mode == "seq-mean-token-mean":
        return sum(x[i].sum() / max(m[i].sum(), 1) for i in range(x.shape[0])) / nseq
    return x.sum() / (nseq * lmax)


def batch(n=6, t=7, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=n)
    lengths[-1] = 0  # an all-masked completion
    mask = np.arange(t)[None] < lengths[:, None]
    old = -rng.exponential(1.0, size=(n, t))
    lp = old + rng.normal(scale=spread, size=(n, t))
    adv = rng.normal(size=n)
    return (jnp.asarray(lp, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
            jnp.asarray(mask))


# ---------------------------------------------------------------- surrogate, KL


@pytest.mark.parametrize("lo,hi", [(0.2, 0.2), (0.2, 0.28)])
def test_surrogate_matches_numpy(variant, lo, hi):
    lp, old, adv, _ = batch(spread=0.5)
    fn = variant(functools.partial(losses.clipped_surrogate, eps_low=lo, eps_high=hi))
    out = fn(lp, old, adv)
    assert out.shape == lp.shape  # unreduced
    np.testing.assert_allclose(out, np_surrogate(lp, old, adv, lo, hi), rtol=1e-5, atol=1e-6)
    per_tok = jnp.broadcast_to(adv[:, None], lp.shape)
    np.testing.assert_allclose(fn(lp, old, per_tok), out, rtol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_behaviour(sign):
    lo, hi = 0.2, 0.28
    ratios = np.asarray([0.5, 0.79, 0.9, 1.0, 1.1, 1.27, 1.5, 3.0], np.float32)
    old = jnp.zeros((1, ratios.size))
    lp = jnp.log(jnp.asarray(ratios))[None]
    a = jnp.asarray([sign])

    def f(lp):
        return jnp.sum(losses.clipped_surrogate(lp, old, a, eps_low=lo, eps_high=hi))

    vals = np.asarray(losses.clipped_surrogate(lp, old, a, eps_low=lo, eps_high=hi))[0]
    grads = np.asarray(jax.grad(f)(lp))[0]
    for r, v, g in zip(ratios, vals, grads):
        if sign > 0:
            clipped = r > 1 + hi  # gain capped above; below 1 - eps_low the unclipped term is min
            np.testing.assert_allclose(v, -min(r, 1 + hi), rtol=1e-6)
        else:
            clipped = r < 1 - lo  # loss of a bad action capped below; no cap above
            np.testing.assert_allclose(v, max(r, 1 - lo), rtol=1e-6)
        if clipped:
            assert g == 0.0, (r, sign)
        else:
            np.testing.assert_allclose(g, -sign * r, rtol=1e-5)


def test_kl():
    lp, old, _, _ = batch(spread=0.5)
    for est in ("k1", "k2", "k3"):
        np.testing.assert_allclose(losses.kl_penalty(lp, old, estimator=est), np_kl(lp, old, est),
                                   rtol=1e-5, atol=1e-6)
    k3 = losses.kl_penalty(lp, old)
    assert np.all(np.asarray(k3) >= 0)
    np.testing.assert_allclose(losses.kl_penalty(lp, old, clamp=0.01),
                               np.clip(np_kl(lp, old, "k3"), -0.01, 0.01), rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(ValueError, match="estimator"):
        losses.kl_penalty(lp, old, estimator="k4")


def test_anchor_surrogate():
    p = np.asarray([[0.01, 0.1, 0.5, 0.9, 1.0]], np.float32)
    lp = jnp.log(jnp.asarray(p))
    a = jnp.asarray([2.0])
    out = losses.anchor_surrogate(lp, a)
    np.testing.assert_allclose(out, -2.0 * p / (p + 0.1), rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(losses.anchor_surrogate(x, a)))(lp)
    # d/dlogp [-A p/(p+g)] = -A g p / (p+g)^2 ; no clipping even at p >> 1 + eps.
    np.testing.assert_allclose(g, -2.0 * 0.1 * p / (p + 0.1) ** 2, rtol=1e-5)


# ---------------------------------------------------------------- aggregation


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_matches_numpy(variant, mode):
    lp, old, adv, mask = batch()
    x = losses.clipped_surrogate(lp, old, adv)
    out = variant(functools.partial(losses.aggregate_loss, mode=mode))(x, mask)
    np.testing.assert_allclose(out, np_agg(x, np.asarray(mask), mode), rtol=1e-5)


@pytest.mark.parametrize("mode,k", [(m, k) for m in MODES for k in (2, 3, 6)])
def test_split_invariance(mode, k):
    lp, old, adv, mask = batch(n=6, t=7, seed=1)
    x = losses.clipped_surrogate(lp, old, adv)
    glob = dict(global_num_tokens=jnp.sum(mask), global_num_seqs=6, max_completion_length=7)
    full = losses.aggregate_loss(x, mask, mode=mode, **glob)
    np.testing.assert_allclose(full, np_agg(x, np.asarray(mask), mode), rtol=1e-5)
    pieces = sum(losses.aggregate_loss(xs, ms, mode=mode, **glob)
                 for xs, ms in zip(jnp.split(x, k), jnp.split(mask, k)))
    np.testing.assert_allclose(pieces, full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_at_ratio_one(mode):
    _, old, adv, mask = batch(seed=2)
    m = np.asarray(mask)
    n, t = m.shape
    ntok, lmax = m.sum(), 10  # a max completion length larger than the array width

    def f(lp):
        loss, _ = losses.policy_loss(lp, old, adv, mask, losses.LossConfig(agg_mode=mode),
                                     norms=losses.LossNorms(global_num_tokens=ntok,
                                                            global_num_seqs=n,
                                                            max_completion_length=lmax))
        return loss

    g = np.asarray(jax.jit(jax.grad(f))(old))  # ratio exactly 1
    a = np.asarray(adv, np.float64)[:, None]
    norm = {"token-mean": np.full((n, 1), ntok),
            "seq-mean-token-mean": np.maximum(m.sum(1, keepdims=True), 1) * n,
            "seq-mean-token-sum-norm": np.full((n, 1), n * lmax)}[mode]
    np.testing.assert_allclose(g, np.where(m, -a / norm, 0.0), rtol=1e-5, atol=1e-8)


def test_unknown_mode():
    with pytest.raises(ValueError, match="aggregation mode"):
        losses.aggregate_loss(jnp.ones((2, 3)), jnp.ones((2, 3), bool), mode="sum")


# ---------------------------------------------------------------- policy_loss


def test_value_and_metrics(variant):
    lp, old, adv, mask = batch(spread=0.5, seed=3)
    ref = old - 0.1
    ent = jnp.abs(lp)
    fn = variant(functools.partial(losses.policy_loss, config=losses.LossConfig(
        eps_low=0.2, eps_high=0.28, beta=0.04, agg_mode="token-mean")))
    loss, met = fn(lp, old, adv, mask, ref_logprobs=ref, token_entropy=ent)
    m = np.asarray(mask)
    surr = np_surrogate(lp, old, adv, 0.2, 0.28)
    kl = np_kl(lp, ref, "k3")
    np.testing.assert_allclose(loss, np_agg(surr + 0.04 * kl, m, "token-mean"), rtol=1e-5)
    rho = np.exp(np.asarray(lp, np.float64) - np.asarray(old))
    a = np.broadcast_to(np.asarray(adv)[:, None], m.shape)
    np.testing.assert_allclose(met["clip_frac_low"], ((rho < 0.8) & (a < 0) & m).sum() / m.sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(met["clip_frac_high"],
                               ((rho > 1.28) & (a > 0) & m).sum() / m.sum(), rtol=1e-6)
    np.testing.assert_allclose(met["ratio_min"], rho[m].min(), rtol=1e-5)
    np.testing.assert_allclose(met["ratio_max"], rho[m].max(), rtol=1e-5)
    np.testing.assert_allclose(met["ratio_mean"], rho[m].mean(), rtol=1e-5)
    np.testing.assert_allclose(met["kl_mean"], kl[m].mean(), rtol=1e-4)
    np.testing.assert_allclose(met["entropy_mean"], np.abs(np.asarray(lp))[m].mean(), rtol=1e-5)
    assert not any(k.startswith("adv") for k in met), "advantage statistics belong to the chain"
    assert float(met["clip_frac_low"]) > 0 and float(met["clip_frac_high"]) > 0
    for v in met.values():
        assert isinstance(v, jax.Array) and v.shape == () and v.dtype == jnp.float32


def test_anchor_rows():
    lp, old, adv, mask = batch(seed=4)
    is_anchor = jnp.asarray([False, False, True, False, True, False])
    old = jnp.where(is_anchor[:, None], 0.0, old)
    adv = jnp.abs(adv)
    loss, met = jax.jit(functools.partial(
        losses.policy_loss, config=losses.LossConfig(agg_mode="token-mean")))(
        lp, old, adv, mask, is_anchor=is_anchor)
    m = np.asarray(mask)
    anc = np.asarray(is_anchor)[:, None]
    p = np.exp(np.asarray(lp, np.float64))
    per = np.where(anc, -(p / (p + 0.1)) * np.asarray(adv)[:, None],
                   np_surrogate(lp, old, adv, 0.2, 0.2))
    np.testing.assert_allclose(loss, np_agg(per, m, "token-mean"), rtol=1e-5)
    np.testing.assert_allclose(met["anchor_token_frac"], (anc & m).sum() / m.sum(), rtol=1e-6)
    # ratio statistics exclude anchor rows (whose "ratio" pi_theta/1 is not a PPO ratio)
    rho = np.exp(np.asarray(lp, np.float64) - np.asarray(old))
    np.testing.assert_allclose(met["ratio_max"], rho[m & ~anc].max(), rtol=1e-5)


def test_all_masked():
    lp, old, adv, _ = batch()
    mask = jnp.zeros(lp.shape, bool)
    for mode in MODES:
        cfg = losses.LossConfig(agg_mode=mode)
        loss, met = jax.jit(functools.partial(losses.policy_loss, config=cfg))(
            lp, old, adv, mask)
        assert float(loss) == 0.0
        assert all(np.isfinite(v) for v in met.values())
        g = jax.jit(jax.grad(lambda x: losses.policy_loss(x, old, adv, mask, cfg)[0]))(
            lp)
        assert np.all(np.asarray(g) == 0.0)


def test_errors():
    lp, old, adv, mask = batch()
    with pytest.raises(ValueError, match="ref_logprobs"):
        losses.policy_loss(lp, old, adv, mask, losses.LossConfig(beta=0.1))
    with pytest.raises(AssertionError):
        losses.policy_loss(lp, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        losses.policy_loss(lp, old, adv[:, None, None], mask)


# ---------------------------------------------------------------- GSPO / dual-clip / delta / clamps


def np_seq_log_ratio(lp, old, m):
    """TRL _compute_loss, importance_sampling_level="sequence": (log_ratio * mask).sum(-1) /
    mask.sum(-1).clamp(min=1), broadcast over tokens."""
    d = np.asarray(lp, np.float64) - np.asarray(old, np.float64)
    m = np.asarray(m, np.float64)
    s = (d * m).sum(-1, keepdims=True) / np.maximum(m.sum(-1, keepdims=True), 1.0)
    return np.broadcast_to(s, d.shape)


def np_clipped_loss(coef_1, a, lo, hi, delta=None, clip_c=None):
    """TRL's coef_1 / coef_2 / delta lines, then verl's dual-clip lines, in float64."""
    a = np.asarray(a, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    coef_2 = np.clip(coef_1, 1 - lo, 1 + hi)
    if delta is not None:
        coef_1 = np.minimum(coef_1, delta)
    loss = -np.minimum(coef_1 * a, coef_2 * a)
    if clip_c is not None:  # verl: clip_pg_losses2 = min(-A c, max(pg1, pg2)) where A < 0
        loss = np.where(a < 0, np.minimum(-a * clip_c, loss), loss)
    return loss


@pytest.mark.parametrize("level", ["sequence", "gspo-token"])
def test_gspo_value_matches_trl_formula(variant, level):
    lp, old, adv, mask = batch(spread=0.3, seed=5)
    lo, hi = 3e-2, 4e-2  # small, so that some sequences clip
    fn = variant(functools.partial(losses.clipped_surrogate, eps_low=lo, eps_high=hi,
                                   importance_sampling_level=level))
    out = np.asarray(fn(lp, old, adv, mask=mask))
    m = np.asarray(mask)
    rho = np.exp(np_seq_log_ratio(lp, old, m))
    ref = np_clipped_loss(rho, adv, lo, hi)
    np.testing.assert_allclose(np.where(m, out, 0), np.where(m, ref, 0), rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.round(rho[m], 6))) > 1  # sequences differ
    with pytest.raises(ValueError, match="mask"):
        losses.clipped_surrogate(lp, old, adv, importance_sampling_level=level)


def _np_gspo_grad(lp, old, adv, m, lo, hi, level):
    """d/dlp of sum_{i,t} m l_it / N_tok (token-mean), by hand from GSPO eq. 7 / 13."""
    m = np.asarray(m, bool)
    a = np.asarray(adv, np.float64)
    a = np.broadcast_to(a[:, None] if a.ndim == 1 else a, m.shape)
    rho = np.exp(np_seq_log_ratio(lp, old, m))
    # d l / d rho = -A where the unclipped term is the min (ties: unclipped), else 0.
    live = ~(((a > 0) & (rho > 1 + hi)) | ((a < 0) & (rho < 1 - lo)))
    dl = np.where(m & live, -a * rho, 0.0)  # dl_t/dlog rho
    n = np.maximum(m.sum(-1, keepdims=True), 1)
    if level == "gspo-token":  # each token's log-weight moves with its own log-prob only
        g = dl
    else:  # log rho = mean_t (lp - old): every token's loss reaches every token by 1/n
        g = np.where(m, dl.sum(-1, keepdims=True) / n, 0.0)
    return g / m.sum()


@pytest.mark.parametrize("level", ["sequence", "gspo-token"])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_gspo_gradient(level, per_token_adv):
    lp, old, adv, mask = batch(spread=0.3, seed=6)
    if per_token_adv:  # the two levels differ only here (GSPO paper §4.3)
        adv = adv[:, None] + jnp.linspace(-1.0, 1.0, lp.shape[1])[None]
    lo, hi = 3e-2, 4e-2

    def f(x):
        return losses.policy_loss(x, old, adv, mask, losses.LossConfig(
            eps_low=lo, eps_high=hi, importance_sampling_level=level, agg_mode="token-mean"))[0]

    g = np.asarray(jax.jit(jax.grad(f))(lp))
    ref = _np_gspo_grad(lp, old, adv, mask, lo, hi, level)
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-7)
    assert np.abs(ref).max() > 0


def test_gspo_levels_share_gradient_for_sequence_advantages():
    lp, old, adv, mask = batch(spread=0.3, seed=7)

    def f(x, level):
        return losses.policy_loss(x, old, adv, mask, losses.LossConfig(
            eps_low=0.05, eps_high=0.05, importance_sampling_level=level))[0]

    g_seq = jax.grad(f)(lp, "sequence")
    g_tok = jax.grad(f)(lp, "gspo-token")
    np.testing.assert_allclose(g_seq, g_tok, rtol=1e-5, atol=1e-8)
    assert not np.allclose(g_seq, jax.grad(f)(lp, "token"))


def test_dual_clip_matches_verl(variant):
    lp, old, adv, mask = batch(spread=1.5, seed=8)  # ratios well above 3
    fn = variant(functools.partial(losses.policy_loss, config=losses.LossConfig(
        eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0, agg_mode="token-mean")))
    loss, met = fn(lp, old, adv, mask)
    m = np.asarray(mask)
    rho = np.exp(np.asarray(lp, np.float64) - np.asarray(old, np.float64))
    ref = np_clipped_loss(rho, adv, 0.2, 0.28, clip_c=3.0)
    np.testing.assert_allclose(loss, np_agg(ref, m, "token-mean"), rtol=1e-5)
    a = np.broadcast_to(np.asarray(adv, np.float64)[:, None], m.shape)
    # verl pg_clipfrac_lower: max(pg1, pg2) > -A c where A < 0
    c1 = np.maximum(-a * rho, -a * np.clip(rho, 0.8, 1.28))
    frac = ((c1 > -a * 3.0) & (a < 0) & m).sum() / m.sum()
    np.testing.assert_allclose(met["dual_clip_frac"], frac, rtol=1e-6)
    assert frac > 0
    # the dual clip changes the loss only where it bites
    plain = np_clipped_loss(rho, adv, 0.2, 0.28)
    assert not np.allclose(np.where(m, ref, 0), np.where(m, plain, 0))


def test_delta_matches_trl(variant):
    lp, old, adv, mask = batch(spread=1.0, seed=9)
    fn = variant(functools.partial(losses.clipped_surrogate, eps_low=0.2, eps_high=0.2,
                                   delta=1.5))
    out = np.asarray(fn(lp, old, adv))
    rho = np.exp(np.asarray(lp, np.float64) - np.asarray(old, np.float64))
    np.testing.assert_allclose(out, np_clipped_loss(rho, adv, 0.2, 0.2, delta=1.5), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(out, np_clipped_loss(rho, adv, 0.2, 0.2), atol=1e-3)


def test_log_ratio_clamp():
    old = jnp.zeros((1, 4))
    lp = jnp.asarray([[30.0, -30.0, 5.0, -5.0]])
    a = jnp.asarray([1.0])
    rho = losses.importance_ratio(lp, old, log_ratio_clamp=20.0)
    np.testing.assert_allclose(rho, np.exp([[20.0, -20.0, 5.0, -5.0]]), rtol=1e-5)
    loss, met = losses.policy_loss(lp, old, -a, jnp.ones((1, 4), bool),
                                   losses.LossConfig(log_ratio_clamp=20.0, clip_ratio_c=3.0))
    assert np.isfinite(loss) and all(np.isfinite(v) for v in met.values())


def test_kl_clamp_preset_matches_verl_low_var_kl():
    rng = np.random.default_rng(10)
    lp = rng.normal(scale=8.0, size=(4, 9))
    ref = rng.normal(scale=8.0, size=(4, 9))
    # verl kl_penalty_forward "low_var_kl"
    kl = np.clip(ref - lp, -20, 20)
    want = np.clip(np.exp(kl) - kl - 1, -10, 10)
    clamp, lr_clamp = losses.KL_CLAMP_PRESETS["verl"]
    got = losses.kl_penalty(jnp.asarray(lp, jnp.float32), jnp.asarray(ref, jnp.float32),
                            clamp=clamp, log_ratio_clamp=lr_clamp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (want == 10).any() and (want < 10).any()


# ---------------------------------------------------------------- bnpo / dapo


def test_bnpo_is_the_mean_of_micro_batch_token_means():
    lp, old, adv, mask = batch(n=6, t=7, seed=11)
    x = losses.clipped_surrogate(lp, old, adv)
    xs, ms = np.asarray(x, np.float64), np.asarray(mask)
    k = 3
    # TRL bnpo: per micro-batch sum / max(tokens, 1), divided by the accumulation steps
    want = sum(np.where(mi, xi, 0).sum() / max(mi.sum(), 1)
               for xi, mi in zip(np.split(xs, k), np.split(ms, k))) / k
    got = sum(losses.aggregate_loss(xi, mi, mode="bnpo", num_micro_batches=k)
              for xi, mi in zip(jnp.split(x, k), jnp.split(mask, k)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    token_mean = np_agg(x, ms, "token-mean")
    assert not np.isclose(want, token_mean)  # unequal micro-batch token counts
    np.testing.assert_allclose(losses.aggregate_loss(x, mask, mode="bnpo"), token_mean, rtol=1e-5)


def test_dapo_normalises_by_the_generation_batch():
    lp, old, adv, mask = batch(n=8, t=7, seed=12)
    x = losses.clipped_surrogate(lp, old, adv)
    xs, ms = np.asarray(x, np.float64), np.asarray(mask)
    n_gen = ms.sum()
    # two optimiser steps (minibatches of 4) of two micro-batches each, one generation batch
    for step in range(2):
        rows = slice(4 * step, 4 * step + 4)
        want = np.where(ms[rows], xs[rows], 0).sum() / n_gen  # TRL: sum / num_items_in_batch
        got = sum(losses.aggregate_loss(x[r], mask[r], mode="dapo", generation_num_tokens=n_gen)
                  for r in (slice(4 * step, 4 * step + 2), slice(4 * step + 2, 4 * step + 4)))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    full = losses.aggregate_loss(x, mask, mode="dapo")
    np.testing.assert_allclose(full, np_agg(x, ms, "token-mean"), rtol=1e-5)


@pytest.mark.parametrize("mode", ["bnpo", "dapo"])
def test_new_modes_through_policy_loss(mode):
    lp, old, adv, mask = batch(seed=13)
    loss, _ = losses.policy_loss(lp, old, adv, mask, losses.LossConfig(agg_mode=mode),
                                 norms=losses.LossNorms(num_micro_batches=2,
                                                        generation_num_tokens=40))
    surr = np_surrogate(lp, old, adv, 0.2, 0.2)
    m = np.asarray(mask)
    denom = 2 * m.sum() if mode == "bnpo" else 40
    np.testing.assert_allclose(loss, np.where(m, surr, 0).sum() / denom, rtol=1e-5)


# ---------------------------------------------------------------- defaults and config


def test_one_default_aggregation_everywhere():
    from jaxgrpo.experiment import base_config

    default = losses.LossConfig().agg_mode
    assert default == base_config().loss.agg_mode == losses.DEFAULT_AGG_MODE == "token-mean"


def test_loss_config_from_config():
    from jaxgrpo.experiment import base_config

    c = base_config()
    cfg = losses.LossConfig.from_config(c.loss)
    assert set(c.loss.keys()) == {f.name for f in dataclasses.fields(losses.LossConfig)}
    assert cfg == losses.LossConfig()  # the config defaults are the class's defaults
    assert losses.kl_clamps(cfg) == (None, None)
    c.loss.kl_clamp_preset = "verl"
    c.loss.clip_ratio_c = 3.0
    c.loss.importance_sampling_level = "sequence"
    cfg = losses.LossConfig.from_config(c.loss)
    assert losses.kl_clamps(cfg) == (10.0, 20.0)
    assert losses.off(cfg.clip_ratio_c) == 3.0 and cfg.importance_sampling_level == "sequence"
