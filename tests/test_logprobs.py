"""Teacher-forced log-probs / entropies vs transformers' PyTorch logits (float64 NumPy math)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests._torch_oracle import left_padded_prompts, log_softmax64, tiny_pair, torch_logits  # noqa: E402
from jaxgrpo.logprobs import completion_logprobs, prompt_logprobs  # noqa: E402

VOCAB = 97


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request):
    return tiny_pair(request.param, vocab=VOCAB, seed=3)


def _batch(seed=0, g=1):
    rng = np.random.RandomState(seed)
    ids, mask = left_padded_prompts(rng, [7, 4, 2], VOCAB)
    b, tc = ids.shape[0] * g, 6
    comp = rng.randint(1, VOCAB, (b, tc)).astype(np.int32)
    lens = rng.randint(1, tc + 1, b)
    cmask = np.arange(tc)[None] < lens[:, None]
    comp = np.where(cmask, comp, 0)
    return ids, mask, comp, cmask


def _reference(tm, ids, mask, comp, cmask, temperature):
    g = comp.shape[0] // ids.shape[0]
    ids, mask = np.repeat(ids, g, 0), np.repeat(mask, g, 0)
    full = np.concatenate([ids, comp], 1)
    fmask = np.concatenate([mask, cmask.astype(mask.dtype)], 1)
    logits = torch_logits(tm, full, fmask) / temperature
    tp = ids.shape[1]
    logp = log_softmax64(logits[:, tp - 1:-1])
    lp = np.take_along_axis(logp, comp[..., None], -1)[..., 0]
    ent = -(np.exp(logp) * logp).sum(-1)
    return np.where(cmask, lp, 0), np.where(cmask, ent, 0)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("g", [1, 2])
def test_completion_logprobs_match_torch(pair, temperature, g):
    tm, m = pair
    ids, mask, comp, cmask = _batch(g=g)
    lp, ent = completion_logprobs(m, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(comp),
                                  jnp.asarray(cmask), temperature=temperature,
                                  return_entropy=True)
    ref_lp, ref_ent = _reference(tm, ids, mask, comp, cmask, temperature)
    assert lp.shape == comp.shape and lp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lp), ref_lp, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=2e-5)
    assert np.all(np.asarray(lp)[~cmask] == 0) and np.all(np.asarray(ent)[~cmask] == 0)


def test_chunked_equals_unchunked_and_jit(pair):
    _, m = pair
    ids, mask, comp, cmask = _batch(seed=1)
    args = [jnp.asarray(a) for a in (ids, mask, comp, cmask)]
    full = completion_logprobs(m, *args)
    chunked = jax.jit(lambda *a: completion_logprobs(m, *a, chunk_size=4))(*args)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-6)


def test_completion_logprobs_gradient_is_finite(pair):
    from flax import nnx
    _, m = pair
    ids, mask, comp, cmask = _batch(seed=2)
    graphdef, state = nnx.split(m)

    def loss(state):
        lp = completion_logprobs(nnx.merge(graphdef, state), jnp.asarray(ids), jnp.asarray(mask),
                                 jnp.asarray(comp), jnp.asarray(cmask), chunk_size=4)
        return -lp.sum()

    grads = jax.grad(loss)(state)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves)


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_prompt_logprobs_match_torch(pair, temperature):
    tm, m = pair
    ids, mask, _, _ = _batch()
    plp = np.asarray(prompt_logprobs(m, jnp.asarray(ids), jnp.asarray(mask),
                                     temperature=temperature))
    logp = log_softmax64(torch_logits(tm, ids, mask) / temperature)
    ref = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    valid = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    ref = np.concatenate([np.zeros((ids.shape[0], 1)), np.where(valid, ref, 0)], 1)
    np.testing.assert_allclose(plp, ref, atol=2e-5)
    # first real token and padding are 0
    first = np.argmax(mask, 1)
    assert np.all(plp[np.arange(len(first)), first] == 0) and np.all(plp[mask == 0] == 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompt_path_equals_repeated_prompts(temperature):
    """Prompts given once per group (Bp = B / G: one prompt pass, KV cache shared by the G
    completions) give the same log-probs, entropies and gradients as repeating every prompt."""
    import numpy as np
    from flax import nnx

    from jaxgrpo.logprobs import completion_logprobs
    from jaxgrpo.models.config import ModelConfig
    from jaxgrpo.models.decoder import Decoder

    cfg = ModelConfig(model_type="qwen2", vocab_size=50, hidden_size=32, intermediate_size=40,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, qkv_bias=True)
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    r = np.random.default_rng(0)
    p, g, tp, tc = 3, 4, 7, 6
    pmask = np.ones((p, tp), bool)
    pmask[0, :3] = False  # left padding of different lengths
    pmask[2, :1] = False
    cmask = np.ones((p * g, tc), bool)
    cmask[1, 2:] = False
    cmask[5, 4:] = False
    cmask[11, 1:] = False
    pt = jnp.asarray(r.integers(0, 50, (p, tp)), jnp.int32)
    ct = jnp.asarray(r.integers(0, 50, (p * g, tc)), jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(params, shared):
        m = nnx.merge(graphdef, params, rest)
        prompts = (pt, jnp.asarray(pmask)) if shared else (
            jnp.repeat(pt, g, 0), jnp.repeat(jnp.asarray(pmask), g, 0))
        lp, ent = completion_logprobs(m, *prompts, ct, jnp.asarray(cmask),
                                      temperature=temperature, return_entropy=True)
        return jnp.sum(lp * jnp.arange(1, tc + 1)) + 0.1 * jnp.sum(ent), (lp, ent)

    (v1, (lp1, e1)), g1 = jax.value_and_grad(f, has_aux=True)(params, True)
    (v2, (lp2, e2)), g2 = jax.value_and_grad(f, has_aux=True)(params, False)
    np.testing.assert_allclose(lp1, lp2, atol=2e-5)
    np.testing.assert_allclose(e1, e2, atol=2e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 4, 5])  # Tc = 6: 4 and 5 do not divide it
def test_chunked_logprobs_entropy_and_gradient_equal_unchunked(pair, chunk):
    """Time-chunked LM head (remat per chunk): log-probs and entropies match transformers, and
    the gradient of a loss using both equals the one-pass gradient."""
    from flax import nnx
    tm, m = pair
    ids, mask, comp, cmask = _batch(seed=4)
    args = [jnp.asarray(a) for a in (ids, mask, comp, cmask)]
    graphdef, state = nnx.split(m)
    weights = jnp.asarray(np.random.RandomState(0).normal(size=comp.shape), jnp.float32)

    def f(state, chunk_size):
        lp, ent = completion_logprobs(nnx.merge(graphdef, state), *args, temperature=0.8,
                                      return_entropy=True, chunk_size=chunk_size)
        return jnp.sum(lp * weights) + 0.3 * jnp.sum(ent), (lp, ent)

    (v1, (lp, ent)), g1 = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)(
        state, chunk)
    (v0, _), g0 = jax.value_and_grad(f, has_aux=True)(state, None)
    ref_lp, ref_ent = _reference(tm, ids, mask, comp, cmask, 0.8)
    np.testing.assert_allclose(np.asarray(lp), ref_lp, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=2e-5)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_sampler_prompt_logprobs_chunked_match_torch(pair):
    """SamplingConfig.prompt_logprobs_chunk (3, not dividing Tp - 1) gives the prompt
    log-probs of transformers' logits."""
    from jaxgrpo.sampling import SamplingConfig, sample
    tm, m = pair
    ids, mask, _, _ = _batch()
    cfg = SamplingConfig(max_new_tokens=2, temperature=1.3, num_generations=1,
                         prompt_logprobs_chunk=3)
    out = sample(m, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), cfg)
    logp = log_softmax64(torch_logits(tm, ids, mask) / 1.3)
    ref = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    valid = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)
    ref = np.concatenate([np.zeros((ids.shape[0], 1)), np.where(valid, ref, 0)], 1)
    np.testing.assert_allclose(np.asarray(out.prompt_logprobs), ref, atol=2e-5)


def test_splash_attention_logprobs_and_gradients_match(pair, g=2):
    """model.attention="splash" (the Pallas kernel, interpreted on the CPU) through the update's
    own passes: the prompt pass (offset 0) and the completion pass over the prompt's cache
    (static offset Tp), with left padding and ragged completions. Log-probs and entropies vs
    transformers (float64); parameter gradients vs the default blockwise model's."""
    from flax import nnx

    from jaxgrpo.models.decoder import set_attention

    tm, m = pair
    ms = set_attention(nnx.clone(m), "splash")
    ids, mask, comp, cmask = _batch(seed=4, g=g)
    args = [jnp.asarray(a) for a in (ids, mask, comp, cmask)]
    lp, ent = completion_logprobs(ms, *args, return_entropy=True)
    ref_lp, ref_ent = _reference(tm, ids, mask, comp, cmask, 1.0)
    np.testing.assert_allclose(np.asarray(lp), ref_lp, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=2e-5)

    def grads(model):
        gd, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p: jnp.sum(completion_logprobs(nnx.merge(gd, p, rest), *args)
                                 * jnp.arange(1, comp.shape[1] + 1))
        return jax.jit(jax.grad(loss))(params)

    for a, b in zip(jax.tree.leaves(grads(ms)), jax.tree.leaves(grads(m))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
