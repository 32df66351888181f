"""Tests for jaxgrpo.losses against NumPy float64 references and analytic gradients."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxgrpo import losses

MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


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


class SurrogateTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((0.2, 0.2), (0.2, 0.28))
    def test_matches_numpy(self, lo, hi):
        lp, old, adv, _ = batch(spread=0.5)
        fn = self.variant(functools.partial(losses.clipped_surrogate, eps_low=lo, eps_high=hi))
        out = fn(lp, old, adv)
        assert out.shape == lp.shape  # unreduced
        np.testing.assert_allclose(out, np_surrogate(lp, old, adv, lo, hi), rtol=1e-5, atol=1e-6)
        per_tok = jnp.broadcast_to(adv[:, None], lp.shape)
        np.testing.assert_allclose(fn(lp, old, per_tok), out, rtol=1e-6)

    @parameterized.parameters(1.0, -1.0)
    def test_clip_behaviour(self, sign):
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

    def test_kl(self):
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

    def test_anchor_surrogate(self):
        p = np.asarray([[0.01, 0.1, 0.5, 0.9, 1.0]], np.float32)
        lp = jnp.log(jnp.asarray(p))
        a = jnp.asarray([2.0])
        out = losses.anchor_surrogate(lp, a)
        np.testing.assert_allclose(out, -2.0 * p / (p + 0.1), rtol=1e-6)
        g = jax.grad(lambda x: jnp.sum(losses.anchor_surrogate(x, a)))(lp)
        # d/dlogp [-A p/(p+g)] = -A g p / (p+g)^2 ; no clipping even at p >> 1 + eps.
        np.testing.assert_allclose(g, -2.0 * 0.1 * p / (p + 0.1) ** 2, rtol=1e-5)


class AggregationTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*MODES)
    def test_matches_numpy(self, mode):
        lp, old, adv, mask = batch()
        x = losses.clipped_surrogate(lp, old, adv)
        out = self.variant(functools.partial(losses.aggregate_loss, mode=mode))(x, mask)
        np.testing.assert_allclose(out, np_agg(x, np.asarray(mask), mode), rtol=1e-5)

    @parameterized.parameters(*[(m, k) for m in MODES for k in (2, 3, 6)])
    def test_split_invariance(self, mode, k):
        lp, old, adv, mask = batch(n=6, t=7, seed=1)
        x = losses.clipped_surrogate(lp, old, adv)
        glob = dict(global_num_tokens=jnp.sum(mask), global_num_seqs=6, max_completion_length=7)
        full = losses.aggregate_loss(x, mask, mode=mode, **glob)
        np.testing.assert_allclose(full, np_agg(x, np.asarray(mask), mode), rtol=1e-5)
        pieces = sum(losses.aggregate_loss(xs, ms, mode=mode, **glob)
                     for xs, ms in zip(jnp.split(x, k), jnp.split(mask, k)))
        np.testing.assert_allclose(pieces, full, rtol=1e-5, atol=1e-7)

    @parameterized.parameters(*MODES)
    def test_gradient_at_ratio_one(self, mode):
        _, old, adv, mask = batch(seed=2)
        m = np.asarray(mask)
        n, t = m.shape
        ntok, lmax = m.sum(), 10  # a max completion length larger than the array width

        def f(lp):
            loss, _ = losses.policy_loss(lp, old, adv, mask, agg_mode=mode, global_num_tokens=ntok,
                                         global_num_seqs=n, max_completion_length=lmax)
            return loss

        g = np.asarray(jax.jit(jax.grad(f))(old))  # ratio exactly 1
        a = np.asarray(adv, np.float64)[:, None]
        norm = {"token-mean": np.full((n, 1), ntok),
                "seq-mean-token-mean": np.maximum(m.sum(1, keepdims=True), 1) * n,
                "seq-mean-token-sum-norm": np.full((n, 1), n * lmax)}[mode]
        np.testing.assert_allclose(g, np.where(m, -a / norm, 0.0), rtol=1e-5, atol=1e-8)

    def test_unknown_mode(self):
        with pytest.raises(ValueError, match="aggregation mode"):
            losses.aggregate_loss(jnp.ones((2, 3)), jnp.ones((2, 3), bool), mode="sum")


class PolicyLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_metrics(self):
        lp, old, adv, mask = batch(spread=0.5, seed=3)
        ref = old - 0.1
        ent = jnp.abs(lp)
        fn = self.variant(functools.partial(losses.policy_loss, eps_low=0.2, eps_high=0.28,
                                            beta=0.04, agg_mode="token-mean"))
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
        np.testing.assert_allclose(met["adv_mean"], a[m].mean(), rtol=1e-5)
        np.testing.assert_allclose(met["adv_max"], a[m].max(), rtol=1e-6)
        assert float(met["clip_frac_low"]) > 0 and float(met["clip_frac_high"]) > 0
        for v in met.values():
            assert isinstance(v, jax.Array) and v.shape == () and v.dtype == jnp.float32

    def test_anchor_rows(self):
        lp, old, adv, mask = batch(seed=4)
        is_anchor = jnp.asarray([False, False, True, False, True, False])
        old = jnp.where(is_anchor[:, None], 0.0, old)
        adv = jnp.abs(adv)
        loss, met = jax.jit(functools.partial(losses.policy_loss, agg_mode="token-mean"))(
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

    def test_all_masked(self):
        lp, old, adv, _ = batch()
        mask = jnp.zeros(lp.shape, bool)
        for mode in MODES:
            loss, met = jax.jit(functools.partial(losses.policy_loss, agg_mode=mode))(
                lp, old, adv, mask)
            assert float(loss) == 0.0
            assert all(np.isfinite(v) for v in met.values())
            g = jax.jit(jax.grad(lambda x: losses.policy_loss(x, old, adv, mask, agg_mode=mode)[0]))(
                lp)
            assert np.all(np.asarray(g) == 0.0)

    def test_errors(self):
        lp, old, adv, mask = batch()
        with pytest.raises(ValueError, match="ref_logprobs"):
            losses.policy_loss(lp, old, adv, mask, beta=0.1)
        with pytest.raises(AssertionError):
            losses.policy_loss(lp, old[:, :3], adv, mask)
        with pytest.raises(ValueError, match="advantages"):
            losses.policy_loss(lp, old, adv[:, None, None], mask)
