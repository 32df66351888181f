"""The jit sampler against independent references.

Oracles: transformers' PyTorch ``generate`` (greedy), PyTorch teacher-forced logits in float64
NumPy (allowed sets of top-k / top-p), and ``completion_logprobs`` (itself tested against PyTorch
in test_logprobs.py) for the behaviour log-probs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests._torch_oracle import left_padded_prompts, log_softmax64, tiny_pair, torch_logits  # noqa: E402
from jaxgrpo.logprobs import completion_logprobs, prompt_logprobs  # noqa: E402
from jaxgrpo.sampling import SampleOutput, SamplingConfig, make_sampler, sample  # noqa: E402

VOCAB = 97
LENGTHS = [6, 3, 9, 1]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request):
    return tiny_pair(request.param, vocab=VOCAB, seed=1)


@pytest.fixture(scope="module")
def prompts():
    return left_padded_prompts(np.random.RandomState(0), LENGTHS, VOCAB)


def _run(model, ids, mask, cfg, seed=0):
    return sample(model, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(seed), cfg)


def test_greedy_matches_transformers_generate(pair, prompts):
    tm, m = pair
    ids, mask = prompts
    n = 10
    out = _run(m, ids, mask, SamplingConfig(max_new_tokens=n, greedy=True, num_generations=2))
    with torch.no_grad():
        ref = tm.generate(torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                          eos_token_id=None)[:, ids.shape[1]:].numpy()
    got = np.asarray(out.completion_tokens)
    assert got.shape == (len(LENGTHS) * 2, n)
    np.testing.assert_array_equal(got[0::2], ref)  # rows are prompt-major: p*G + g
    np.testing.assert_array_equal(got[1::2], ref)
    assert np.all(np.asarray(out.completion_mask)) and not np.any(~np.asarray(out.truncated))


def test_greedy_with_splash_prefill_matches_transformers_generate(pair, prompts):
    """model.attention="splash": the prefill (static offset 0) runs the Pallas kernel
    (interpreted on the CPU), the decode steps (a traced slot) the blockwise path."""
    from flax import nnx

    from jaxgrpo.models.decoder import set_attention

    tm, m = pair
    ids, mask = prompts
    n = 6
    out = _run(set_attention(nnx.clone(m), "splash"), ids, mask,
               SamplingConfig(max_new_tokens=n, greedy=True, num_generations=1))
    with torch.no_grad():
        ref = tm.generate(torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                          eos_token_id=None)[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(np.asarray(out.completion_tokens), ref)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7),
                                dict(temperature=1.3, top_k=5, top_p=0.8),
                                dict(temperature=0.9, greedy=True)])
def test_sampler_logprobs_equal_teacher_forced(pair, prompts, kw):
    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=12, eos_token_ids=(3, 4, 5), num_generations=3, **kw)
    out = _run(m, ids, mask, cfg, seed=7)
    lp = completion_logprobs(m, jnp.asarray(ids), jnp.asarray(mask), out.completion_tokens,
                             out.completion_mask, temperature=cfg.temperature)
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(lp), atol=1e-4)
    plp = prompt_logprobs(m, jnp.asarray(ids), jnp.asarray(mask), temperature=cfg.temperature)
    np.testing.assert_allclose(np.asarray(out.prompt_logprobs), np.asarray(plp), atol=1e-4)


@pytest.mark.parametrize("kw", [dict(top_k=4), dict(top_p=0.5), dict(top_k=6, top_p=0.7)])
def test_truncation_only_emits_allowed_tokens(pair, prompts, kw):
    tm, m = pair
    ids, mask = prompts
    temperature = 1.5
    cfg = SamplingConfig(max_new_tokens=8, temperature=temperature, num_generations=4, **kw)
    out = _run(m, ids, mask, cfg, seed=3)
    comp = np.asarray(out.completion_tokens)
    g = cfg.num_generations
    full = np.concatenate([np.repeat(ids, g, 0), comp], 1)
    fmask = np.concatenate([np.repeat(mask, g, 0), np.ones_like(comp)], 1)
    logp = log_softmax64(torch_logits(tm, full, fmask)[:, ids.shape[1] - 1:-1] / temperature)
    order = np.argsort(-logp, -1)
    p_sorted = np.exp(np.take_along_axis(logp, order, -1))
    rank = np.argsort(order, -1)  # rank of every token
    tok_rank = np.take_along_axis(rank, comp[..., None], -1)[..., 0]
    if "top_k" in kw:
        assert tok_rank.max() < kw["top_k"]
    if "top_p" in kw:
        k = kw.get("top_k", VOCAB)
        p_k = p_sorted[..., :k] / p_sorted[..., :k].sum(-1, keepdims=True)
        before = np.cumsum(p_k, -1) - p_k
        # nucleus size (the 1e-6 slack only forgives float32 round-off at the boundary)
        n_keep = (before < kw["top_p"] + 1e-6).sum(-1)
        assert np.all(tok_rank < n_keep)
        assert np.any(n_keep < p_sorted.shape[-1])  # the nucleus really excludes tokens here
    assert len(np.unique(comp)) > 1


def test_left_padding_does_not_change_results(pair, prompts):
    _, m = pair
    ids, mask = prompts
    extra = 5
    ids2 = np.concatenate([np.zeros((ids.shape[0], extra), ids.dtype), ids], 1)
    mask2 = np.concatenate([np.zeros((ids.shape[0], extra), mask.dtype), mask], 1)
    for kw in [dict(temperature=1.0), dict(temperature=0.8, top_k=10, top_p=0.9)]:
        cfg = SamplingConfig(max_new_tokens=10, num_generations=2, eos_token_ids=(3,), **kw)
        a, b = _run(m, ids, mask, cfg, seed=11), _run(m, ids2, mask2, cfg, seed=11)
        np.testing.assert_array_equal(np.asarray(a.completion_tokens),
                                      np.asarray(b.completion_tokens))
        np.testing.assert_array_equal(np.asarray(a.completion_mask), np.asarray(b.completion_mask))
        np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-5)
        np.testing.assert_allclose(np.asarray(a.prompt_logprobs),
                                   np.asarray(b.prompt_logprobs)[:, extra:], atol=1e-5)


def test_eos_stops_rows_and_masks(pair, prompts):
    _, m = pair
    ids, mask = prompts
    eos = tuple(range(10, 40))  # a third of the vocabulary: most rows stop early
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, eos_token_ids=eos, pad_token_id=1,
                         num_generations=4)
    out = _run(m, ids, mask, cfg, seed=5)
    toks, cmask = np.asarray(out.completion_tokens), np.asarray(out.completion_mask)
    lengths, trunc = np.asarray(out.lengths), np.asarray(out.truncated)
    lp = np.asarray(out.logprobs)
    assert cmask.dtype == bool and toks.dtype == np.int32
    stopped = 0
    for r in range(toks.shape[0]):
        hits = np.flatnonzero(np.isin(toks[r], eos))
        n = hits[0] + 1 if len(hits) else toks.shape[1]
        assert lengths[r] == n and trunc[r] == (len(hits) == 0)
        np.testing.assert_array_equal(cmask[r], np.arange(toks.shape[1]) < n)
        assert np.all(toks[r, n:] == 1) and np.all(lp[r, n:] == 0) and np.all(lp[r, :n] < 0)
        stopped += len(hits) > 0
    assert stopped >= toks.shape[0] // 2


def test_no_eos_runs_to_max_and_early_exit_when_all_stop(pair, prompts):
    _, m = pair
    ids, mask = prompts
    out = _run(m, ids, mask, SamplingConfig(max_new_tokens=5, num_generations=1))
    assert np.all(np.asarray(out.lengths) == 5) and np.all(np.asarray(out.truncated))
    # every token is EOS: all rows stop at the first token
    out = _run(m, ids, mask, SamplingConfig(max_new_tokens=7, eos_token_ids=tuple(range(VOCAB)),
                                            num_generations=1))
    assert np.all(np.asarray(out.lengths) == 1) and not np.any(np.asarray(out.truncated))
    assert np.all(np.asarray(out.completion_tokens)[:, 1:] == 0)


def test_determinism_and_group_diversity(pair, prompts):
    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, num_generations=4)
    a, b, c = (_run(m, ids, mask, cfg, seed=s) for s in (0, 0, 1))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.any(np.asarray(a.completion_tokens) != np.asarray(c.completion_tokens))
    groups = np.asarray(a.completion_tokens).reshape(len(LENGTHS), 4, -1)
    for p in range(len(LENGTHS)):  # the G samples of a prompt differ
        assert len({tuple(r) for r in groups[p]}) > 1


def test_make_sampler_is_cached_and_pure(pair, prompts):
    from flax import nnx
    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=4, num_generations=2)
    graphdef, state = nnx.split(m)
    f = make_sampler(graphdef, cfg)
    assert make_sampler(graphdef, cfg) is f
    out = f(state, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0))
    assert isinstance(out, SampleOutput) and out.group_size == 2
    assert out.prompt_tokens.shape == ids.shape and out.completion_tokens.shape == (8, 4)
    n = f._cache_size()
    f(state, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(1))
    assert f._cache_size() == n  # same shapes: no recompilation
    np.testing.assert_array_equal(np.asarray(sample((graphdef, state), ids, mask,
                                                    jax.random.key(0), cfg).completion_tokens),
                                  np.asarray(out.completion_tokens))


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(max_new_tokens=4, temperature=0.0),
                                 dict(max_new_tokens=4, top_p=0.0),
                                 dict(max_new_tokens=4, top_k=-1),
                                 dict(max_new_tokens=4, num_generations=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


# --------------------------------------------------------------------------- top-k / top-p sets

def _allowed_ref64(z, top_k, top_p):
    """The sorted definition in float64: top-k (ties at the k-th value kept), then top-p over the
    renormalised kept mass (a token is kept iff the mass strictly before the first of its tie
    run, in descending order, is < top_p)."""
    z = np.asarray(z, np.float64)
    keep = np.ones(z.shape, bool)
    for r in range(z.shape[0]):
        row = z[r]
        order = np.argsort(-row, kind="stable")
        srt = row[order]
        k = top_k if top_k else len(row)
        kth = srt[min(k, len(row)) - 1]
        kk = row >= kth
        if top_p < 1.0:
            p = np.exp(row - row.max()) * kk
            p = p / p.sum()
            ps = p[order]
            before = np.cumsum(ps) - ps
            thresh = min(srt[j] for j in range(len(row)) if kk[order[j]] and before[j] < top_p)
            kk = kk & (row >= thresh)
        keep[r] = kk
    return keep


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (1, 1.0), (0, 0.6), (0, 0.95), (7, 0.5),
                                         (40, 0.9), (200, 0.3)])
def test_allowed_tokens_equal_sorted_float64_reference(top_k, top_p):
    from jaxgrpo.sampling import allowed_tokens
    rng = np.random.RandomState(top_k * 7 + int(top_p * 100))
    z = rng.randn(64, 150) * 2.0
    z[::2] = np.round(z[::2] * 2) / 2  # even rows: many ties (half-integer logits)
    z[1, :] = 0.0  # a uniform row
    z[3, :10] = z[3].max() + 1.0  # a tie run at the top
    got = np.asarray(jax.jit(lambda z: allowed_tokens(z, top_k, top_p))(jnp.asarray(z,
                                                                                   jnp.float32)))
    np.testing.assert_array_equal(got, _allowed_ref64(z.astype(np.float32), top_k, top_p))
    assert np.all(got.sum(-1) >= 1) and np.any(got.sum(-1) < z.shape[1])


@pytest.mark.parametrize("kw", [dict(), dict(top_k=6), dict(top_p=0.7), dict(top_k=9, top_p=0.8),
                                dict(temperature=0.6, top_p=0.9)])
def test_empirical_frequencies_match_truncated_distribution(kw):
    """Chi-square goodness of fit of 40,000 draws against the renormalised allowed probabilities
    (float64, from the sorted definition), for one logits row with ties; V = 45 is not a power of
    two, so the two-level inverse cdf has a padded last block."""
    from scipy.stats import chi2

    from jaxgrpo.sampling import select_tokens
    rng = np.random.RandomState(0)
    row = np.round(rng.randn(45) * 1.5, 1)
    row[[3, 17, 30]] = row.max()  # a tie at the top
    cfg = SamplingConfig(max_new_tokens=1, **kw)
    n = 40_000
    u = jax.random.uniform(jax.random.key(1), (n,))
    logits = jnp.broadcast_to(jnp.asarray(row, jnp.float32), (n, row.size))
    tok, lp = jax.jit(lambda l, u: select_tokens(l, u, cfg))(logits, u)
    z = row.astype(np.float32).astype(np.float64) / cfg.temperature
    keep = _allowed_ref64(z[None], cfg.top_k, cfg.top_p)[0]
    prob = np.exp(z - z.max()) * keep
    prob /= prob.sum()
    counts = np.bincount(np.asarray(tok), minlength=row.size)
    assert np.all(counts[~keep] == 0)
    stat = np.sum((counts[keep] - n * prob[keep]) ** 2 / (n * prob[keep]))
    assert stat < chi2.ppf(0.999, keep.sum() - 1), stat
    # the reported log-probs stay those of the untruncated softmax(z)
    full = z - np.log(np.sum(np.exp(z)))
    np.testing.assert_allclose(np.asarray(lp), full[np.asarray(tok)], atol=1e-5)


def test_ignore_eos_runs_every_row_to_max(pair, prompts):
    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=6, eos_token_ids=tuple(range(VOCAB)), ignore_eos=True,
                         num_generations=2)
    out = _run(m, ids, mask, cfg)
    assert np.all(np.asarray(out.lengths) == 6) and np.all(np.asarray(out.completion_mask))
    lp = completion_logprobs(m, jnp.asarray(ids), jnp.asarray(mask), out.completion_tokens,
                             out.completion_mask)
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(lp), atol=1e-4)


def test_bf16_cache_logprobs_close_to_teacher_forced(pair, prompts):
    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=8, num_generations=2, cache_dtype="bfloat16")
    assert cfg.cache_dtype == "bfloat16"
    out = _run(m, ids, mask, cfg, seed=4)
    lp = completion_logprobs(m, jnp.asarray(ids), jnp.asarray(mask), out.completion_tokens,
                             out.completion_mask)
    err = np.abs(np.asarray(out.logprobs) - np.asarray(lp))
    assert err.max() < 5e-2 and err.max() > 0  # bf16 K/V rounding, nothing worse
    with pytest.raises(ValueError, match="cache_dtype"):
        SamplingConfig(max_new_tokens=4, cache_dtype="int8")


@pytest.mark.parametrize("cache_dtype", [None, "bfloat16"])
def test_unrolled_decode_equals_the_scanned_stack(pair, prompts, cache_dtype):
    """``unroll_layers`` (per-layer weights and caches) against the scanned layer stack (the
    default off the CPU): the same tokens and log-probs, EOS stops included, for both
    architectures (GQA, left padding, a stop token sampled on the way) and a bf16 cache.

    The unrolled layer writes its new key before attending (one block) where the stack folds it
    in after the cache blocks, so float32 sums differ in order; with a bf16 cache such a
    difference can flip one rounding of a cached key (one bf16 ulp, ~0.4%), seen as ~2e-4 in
    later log-probs of that row."""
    _, m = pair
    ids, mask = prompts
    kw = dict(max_new_tokens=12, temperature=1.0, num_generations=3, eos_token_ids=(5, 11),
              cache_dtype=cache_dtype)
    scanned = _run(m, ids, mask, SamplingConfig(unroll_layers=False, **kw), seed=3)
    unrolled = _run(m, ids, mask, SamplingConfig(unroll_layers=True, **kw), seed=3)
    np.testing.assert_array_equal(np.asarray(unrolled.completion_tokens),
                                  np.asarray(scanned.completion_tokens))
    np.testing.assert_array_equal(np.asarray(unrolled.completion_mask),
                                  np.asarray(scanned.completion_mask))
    assert not np.all(np.asarray(scanned.completion_mask))  # some row stopped early
    np.testing.assert_allclose(np.asarray(unrolled.logprobs), np.asarray(scanned.logprobs),
                               rtol=0, atol=1e-5 if cache_dtype is None else 1e-3)


@pytest.mark.parametrize("unroll", [True, False])
def test_decode_loop_copies_no_layer_cache(pair, prompts, unroll):
    """The compiled decode loop holds no copy of a layer's cache. Unrolled, each layer writes its
    new key into its own cache before attending (``layer_cache_attention``); reading first and
    writing after made XLA:CPU copy every layer's [B, KVH, S, D] cache twice per token (2 x L
    copies per step, ~10% of the 135M sampler). Scanned, the stack is read in place."""
    import re

    from flax import nnx

    _, m = pair
    ids, mask = prompts
    cfg = SamplingConfig(max_new_tokens=6, num_generations=3, unroll_layers=unroll)
    graphdef, state = nnx.split(m)
    hlo = make_sampler(graphdef, cfg).lower(state, jnp.asarray(ids), jnp.asarray(mask),
                                            jax.random.key(0)).compile().as_text()
    c = m.config
    rows, slots = len(LENGTHS) * cfg.num_generations, ids.shape[1] + cfg.max_new_tokens
    layer_cache = f"f32[{rows},{c.num_key_value_heads},{slots},{c.head_dim}]"
    copies = [ln for ln in hlo.splitlines()
              if re.search(r"= " + re.escape(layer_cache) + r"\{[0-9,]*\} copy\(", ln)]
    assert f"{layer_cache}{{" in hlo  # the shape this test looks for is in the program
    assert copies == [], f"{len(copies)} copies of a layer cache: {copies[:2]}"


def test_unroll_layers_auto_unrolls_on_the_cpu_only(monkeypatch):
    """``unroll_layers=None`` (the config's "auto") unrolls the decode loop on the CPU backend and
    scans it elsewhere; "true" / "false" are kept whatever the backend."""
    from jaxgrpo import sampling
    from jaxgrpo.experiment import base_config, unroll_layers

    c = base_config()
    assert c.sampling.unroll_layers == "auto" and unroll_layers(c) is None
    for value, want in (("true", True), ("false", False)):
        c.sampling.unroll_layers = value
        assert unroll_layers(c) is want
    auto = SamplingConfig(max_new_tokens=2)
    assert sampling.decode_unrolled(auto) is (jax.default_backend() == "cpu")
    for backend, want in (("cpu", True), ("gpu", False), ("tpu", False)):
        monkeypatch.setattr(sampling.jax, "default_backend", lambda b=backend: b)
        assert sampling.decode_unrolled(auto) is want
        assert sampling.decode_unrolled(SamplingConfig(max_new_tokens=2, unroll_layers=False)) \
            is False
        assert sampling.decode_unrolled(SamplingConfig(max_new_tokens=2, unroll_layers=True))
