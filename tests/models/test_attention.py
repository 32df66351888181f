"""jaxgrpo.models.attention against independent references.

Oracles: the attention formula in NumPy float64 (outputs) and PyTorch float64 autograd of the same
formula (gradients w.r.t. q, k, v). Inputs have left padding, GQA (rep > 1), queries at a cache
offset (T < S) and rows with no allowed key.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.models import ATTENTION_IMPLS, Decoder, ModelConfig, set_attention
from jaxgrpo.models.attention import _dot_product, attention, cached_attention

torch = pytest.importorskip("torch")

ON_GPU = jax.default_backend() == "gpu"
# "cudnn" runs on an NVIDIA GPU only (its own tests below); the others run everywhere.
PORTABLE = tuple(i for i in ATTENTION_IMPLS if i != "cudnn")


def _inputs(seed, b=3, t=5, s=11, h=6, kvh=2, d=8, offset=4, pad=(0, 3, 6)):
    """Left-padded batch: row i has ``pad[i]`` invalid leading slots; queries at slots
    offset .. offset + t - 1 of an S-slot cache (slots past the last query are unwritten)."""
    rng = np.random.RandomState(seed)
    q = rng.randn(b, t, h, d)
    k = rng.randn(b, kvh, s, d)
    v = rng.randn(b, kvh, s, d)
    key_mask = np.ones((b, s), bool)
    for i, p in enumerate(pad):
        key_mask[i, :p] = False
    key_mask[:, offset + t:] = False  # not yet written
    slots = offset + np.arange(t)
    return q, k, v, key_mask, slots


def _allowed(key_mask, slots):
    s = key_mask.shape[1]
    return (np.arange(s)[None, :] <= slots[:, None])[None] & key_mask[:, None, :]  # [B, T, S]


def _ref64(q, k, v, key_mask, slots):
    """softmax(q k^T / sqrt(D)) v over allowed slots, float64; NaN rows where nothing is allowed."""
    b, t, h, d = q.shape
    rep = h // k.shape[1]
    kk = np.repeat(k, rep, axis=1)  # [B, H, S, D]
    vv = np.repeat(v, rep, axis=1)
    sc = np.einsum("bthd,bhsd->bhts", q, kk) / np.sqrt(d)
    allowed = _allowed(key_mask, slots)[:, None]
    sc = np.where(allowed, sc, -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsd->bthd", p, vv)


def _torch_grads(q, k, v, key_mask, slots, cot):
    """d/d(q, k, v) of sum(out * cot) for the same formula, float64 autograd."""
    tq, tk, tv = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    rep = q.shape[2] // k.shape[1]
    kk = tk.repeat_interleave(rep, dim=1)
    vv = tv.repeat_interleave(rep, dim=1)
    sc = torch.einsum("bthd,bhsd->bhts", tq, kk) / np.sqrt(q.shape[-1])
    allowed = torch.tensor(_allowed(key_mask, slots)[:, None])
    sc = sc.masked_fill(~allowed, -1e300)
    out = torch.einsum("bhts,bhsd->bthd", torch.softmax(sc, -1), vv)
    (out * torch.tensor(cot)).sum().backward()
    return tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


def _offset(impl, slots):
    """"splash" needs the query offset static (slots are traced inside jit)."""
    return dict(query_offset=int(slots[0])) if impl == "splash" else {}


def _run(impl, q, k, v, key_mask, slots, **kw):
    kw = {**_offset(impl, slots), **kw}
    f = jax.jit(lambda q, k, v: attention(q, k, v, jnp.asarray(key_mask), jnp.asarray(slots),
                                          impl=impl, **kw))
    return f(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)))


CASES = [dict(impl=i) for i in PORTABLE] + [
    dict(impl="blockwise", block_size=4),   # several blocks, a clamped partial last one
    dict(impl="blockwise", block_size=3, kv_length=9),  # dynamic bound = last query slot + 1
    dict(impl="blockwise", block_size=1),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_outputs_equal_float64_reference(kw):
    q, k, v, key_mask, slots = _inputs(0)
    ref = _ref64(q, k, v, key_mask, slots)
    kw = dict(kw)
    out = np.asarray(_run(kw.pop("impl"), q, k, v, key_mask, slots, **kw))
    live = _allowed(key_mask, slots).any(-1)  # [B, T] rows with at least one allowed key
    assert (~live).any() and live.any()  # the fixture really has fully-masked rows
    assert np.all(np.isfinite(out))  # the guard: no NaN on rows with no allowed key
    np.testing.assert_allclose(out[live], ref[live], atol=2e-5, rtol=2e-5)


GRAD_CASES = CASES[:len(PORTABLE) + 2]  # every impl, blockwise with several blocks


@pytest.mark.parametrize("kw", GRAD_CASES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_gradients_equal_torch_float64(kw):
    q, k, v, key_mask, slots = _inputs(1)
    live = _allowed(key_mask, slots).any(-1)
    # Rows with no allowed key are padding: their outputs never reach a loss, so their cotangent
    # is 0 in use (and the implementations define those rows differently).
    cot = np.random.RandomState(2).randn(*q.shape) * live[:, :, None, None]
    kw = dict(kw)
    impl = kw.pop("impl")
    kw.update(_offset(impl, slots))

    def loss(q, k, v):
        out = attention(q, k, v, jnp.asarray(key_mask), jnp.asarray(slots), impl=impl, **kw)
        return jnp.sum(out * jnp.asarray(cot, jnp.float32))

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(jnp.asarray(a, jnp.float32)
                                                       for a in (q, k, v)))
    for g, r in zip(got, _torch_grads(q, k, v, key_mask, slots, cot)):
        np.testing.assert_allclose(np.asarray(g), r, atol=5e-5, rtol=5e-5)


def test_blockwise_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v, key_mask, slots = _inputs(3)
    dead = ~_allowed(key_mask, slots).any(-1)
    out = np.asarray(_run("blockwise", q, k, v, key_mask, slots, block_size=4))
    assert dead.any() and np.all(out[dead] == 0)
    g = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, jnp.asarray(key_mask),
                                                   jnp.asarray(slots), impl="blockwise",
                                                   block_size=4) ** 2), argnums=(0, 1, 2))
    for a in g(*(jnp.asarray(a, jnp.float32) for a in (q, k, v))):
        assert np.all(np.isfinite(np.asarray(a)))


@pytest.mark.parametrize("block_size", [4, 16, 64])
def test_decode_with_dynamic_bound_equals_full_attention(block_size):
    """T == 1 at slot i of a 64-slot cache whose unwritten tail holds garbage (masked)."""
    b, s, h, kvh, d = 3, 64, 4, 2, 8
    # One compile: the slot, the mask and the bound are traced, as in the sampler's loop.
    f = jax.jit(lambda q, k, v, m, slots: attention(q, k, v, m, slots, impl="blockwise",
                                                    block_size=block_size,
                                                    kv_length=slots[0] + 1))
    for i in (0, 5, 17, 40, 63):
        q, k, v, key_mask, slots = _inputs(10 + i, b=b, t=1, s=s, h=h, kvh=kvh, d=d, offset=i,
                                           pad=(0, min(i, 2), 0))
        ref = _ref64(q, k, v, key_mask, slots)
        out = f(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(key_mask),
                jnp.asarray(slots, jnp.int32))
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=2e-5)


def test_decode_reads_only_filled_blocks():
    """Garbage (NaN) in blocks past kv_length is never read: the loop stops before them."""
    q, k, v, key_mask, slots = _inputs(4, b=2, t=1, s=64, h=4, kvh=2, d=8, offset=9, pad=(0, 1))
    ref = _ref64(q, k, v, key_mask, slots)
    k[:, :, 16:] = np.nan
    v[:, :, 16:] = np.nan
    out = _run("blockwise", q, k, v, key_mask, slots, block_size=8, kv_length=jnp.int32(10))
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=2e-5)


def test_bf16_cache():
    q, k, v, key_mask, slots = _inputs(5)
    live = _allowed(key_mask, slots).any(-1)
    kb, vb = (np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)) for a in (k, v))
    ref = _ref64(q, kb, vb, key_mask, slots)  # the reference sees the same rounded cache
    f = lambda impl: attention(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.bfloat16),
                               jnp.asarray(v, jnp.bfloat16), jnp.asarray(key_mask),
                               jnp.asarray(slots), impl=impl, block_size=4)
    np.testing.assert_allclose(np.asarray(f("blockwise"), np.float64)[live], ref[live], atol=1e-5)
    # naive casts the probabilities to the cache dtype: bf16 accuracy
    np.testing.assert_allclose(np.asarray(f("naive"), np.float64)[live], ref[live], atol=3e-2)


@pytest.mark.parametrize("impl", PORTABLE + ("cudnn-decode",))
@pytest.mark.parametrize("t", [1, 3])
def test_cached_attention_equals_attention_over_the_written_cache(impl, t):
    """Layer 1 of a 3-layer stacked cache, new keys at a traced slot, the stale slots at and past
    it hold large garbage: the result is attention over the cache with the new keys written in
    (float64 reference), so the new keys replace the stale slots and masked slots stay unread."""
    if impl == "cudnn-decode":  # a cuDNN config's decode step runs blockwise, on any backend
        if t > 1 and not ON_GPU:
            pytest.skip("cuDNN needs a CUDA GPU (its T > 1 passes)")
        impl = "cudnn"
    layers, b, s, h, kvh, d = 3, 3, 32, 4, 2, 8
    f = jax.jit(lambda q, kn, vn, ck, cv, m, i: cached_attention(
        q, kn, vn, ck, cv, jnp.int32(1), m, i, impl=impl, block_size=8))
    rng = np.random.RandomState(t)
    for i in (0, 7, 8, 20):
        q, k, v, key_mask, slots = _inputs(30 + i, b=b, t=t, s=s, h=h, kvh=kvh, d=d, offset=i,
                                           pad=(0, min(i, 2), 0))
        ref = _ref64(q, k, v, key_mask, slots)
        ck, cv = rng.randn(2, layers, b, kvh, s, d)
        ck[1], cv[1] = k, v
        ck[1, :, :, i:], cv[1, :, :, i:] = 1e4, -1e4  # stale or unwritten
        new = lambda a: jnp.asarray(a[:, :, i:i + t], jnp.float32)
        out = f(jnp.asarray(q, jnp.float32), new(k), new(v), jnp.asarray(ck, jnp.float32),
                jnp.asarray(cv, jnp.float32), jnp.asarray(key_mask), jnp.int32(i))
        live = _allowed(key_mask, slots).any(-1)  # rows with no key differ by impl (documented)
        np.testing.assert_allclose(np.asarray(out, np.float64)[live], ref[live], atol=2e-5,
                                   rtol=2e-5, err_msg=f"{impl} t={t} slot {i}")


@pytest.mark.parametrize("t,s,block", [(5, 11, 512), (200, 300, 128)])
def test_splash_with_a_static_cache_index_equals_the_reference(t, s, block):
    """The splash kernel (Pallas interpreter on the CPU) at a static cache offset: one block, and
    several query / key blocks (causal block skipping, T and S padded to the block) with left
    padding and GQA; output vs NumPy float64 and gradients vs PyTorch float64."""
    layers, b, h, kvh, d, off = 2, 3, 4, 2, 8, s - t
    q, k, v, key_mask, slots = _inputs(40 + t, b=b, t=t, s=s, h=h, kvh=kvh, d=d, offset=off,
                                       pad=(0, 3, 5))
    live = _allowed(key_mask, slots).any(-1)
    assert live.all()  # every query reads at least its own slot
    ck, cv = np.zeros((2, layers, b, kvh, s, d))
    ck[0], cv[0] = k, v
    ck[0, :, :, off:], cv[0, :, :, off:] = 1e4, -1e4  # stale: the new keys replace these
    cot = np.random.RandomState(3).randn(*q.shape)

    def loss(q, kn, vn):
        out = cached_attention(q, kn, vn, jnp.asarray(ck, jnp.float32), jnp.asarray(cv, jnp.float32),
                               jnp.int32(0), jnp.asarray(key_mask), off, impl="splash",
                               block_size=block)
        return jnp.sum(out * jnp.asarray(cot, jnp.float32)), out

    args = (jnp.asarray(q, jnp.float32), jnp.asarray(k[:, :, off:], jnp.float32),
            jnp.asarray(v[:, :, off:], jnp.float32))
    (_, out), (gq, gk, gv) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)
    np.testing.assert_allclose(np.asarray(out, np.float64), _ref64(q, k, v, key_mask, slots),
                               atol=2e-5, rtol=2e-5)
    rq, rk, rv = _torch_grads(q, k, v, key_mask, slots, cot)
    np.testing.assert_allclose(np.asarray(gq), rq, atol=5e-5, rtol=5e-5)
    # the cached keys' gradient flows to the new keys only (the cache is read-only)
    np.testing.assert_allclose(np.asarray(gk), rk[:, :, off:], atol=5e-5, rtol=5e-5)
    np.testing.assert_allclose(np.asarray(gv), rv[:, :, off:], atol=5e-5, rtol=5e-5)


def test_splash_needs_a_static_offset():
    q, k, v, key_mask, slots = (jnp.asarray(a) for a in _inputs(0))
    with pytest.raises(ValueError, match="static query offset"):
        jax.jit(lambda s_: attention(q, k, v, key_mask, s_, impl="splash"))(slots)
    with pytest.raises(ValueError, match="contiguous"):
        attention(q, k, v, key_mask, slots[::-1], impl="splash")


def test_cached_decode_rounds_new_keys_to_the_cache_dtype():
    """A bf16 cache: the new key counts as written (rounded) and read back, as every impl sees."""
    q, k, v, key_mask, slots = _inputs(6, t=1, s=16, offset=9)
    kb, vb = (np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)) for a in (k, v))
    ref = _ref64(q, kb, vb, key_mask, slots)
    stack = lambda a: jnp.asarray(a[None], jnp.bfloat16)
    out = cached_attention(jnp.asarray(q, jnp.float32), jnp.asarray(k[:, :, 9:10], jnp.float32),
                           jnp.asarray(v[:, :, 9:10], jnp.float32), stack(k), stack(v),
                           jnp.int32(0), jnp.asarray(key_mask), jnp.int32(9),
                           impl="blockwise", block_size=4)
    live = _allowed(key_mask, slots).any(-1)
    np.testing.assert_allclose(np.asarray(out, np.float64)[live], ref[live], atol=1e-5)


def test_decode_step_does_not_copy_the_stacked_cache():
    """The regression behind a decode cost quadratic in depth: with the cache donated, one
    decode step of an 8-layer decoder needs far less scratch memory than one copy of the
    [L, B, KVH, S, D] stack (writing it inside the scanned layers made XLA copy it per layer:
    2.8 MB of temporaries here, 0.7 MB now)."""
    from flax import nnx

    from jaxgrpo.models import init_cache
    cfg = ModelConfig(model_type="llama", head_dim=16, vocab_size=64, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2)
    b, s = 4, 2048
    graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))

    def step(state, tok, cache, i):
        logits, cache = nnx.merge(graphdef, state)(
            tok[:, None], attention_mask=jnp.ones((b, s), bool),
            positions=jnp.full((b, 1), i), cache=cache, cache_index=i)
        return logits, cache

    cache = jax.eval_shape(lambda: init_cache(cfg, b, s))
    mem = jax.jit(step, donate_argnums=(2,)).lower(
        state, jax.ShapeDtypeStruct((b,), jnp.int32), cache,
        jax.ShapeDtypeStruct((), jnp.int32)).compile().memory_analysis()
    stack_bytes = cache.k.size * 4  # 8 MiB
    assert mem.temp_size_in_bytes < stack_bytes / 6, (mem.temp_size_in_bytes, stack_bytes)


def _temp_bytes(impl, t, grad, **kw):
    b, h, kvh, d = 1, 4, 2, 64
    args = [jax.ShapeDtypeStruct((b, t, h, d), jnp.float32),
            jax.ShapeDtypeStruct((b, kvh, t, d), jnp.float32),
            jax.ShapeDtypeStruct((b, kvh, t, d), jnp.float32)]
    mask, slots = jnp.ones((b, t), bool), jnp.arange(t)
    f = lambda q, k, v: jnp.sum(attention(q, k, v, mask, slots, impl=impl, **kw))
    if grad:
        f = jax.grad(f, argnums=(0, 1, 2))
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("grad", [False, True])
def test_blockwise_temp_memory_far_below_naive(grad):
    """Scratch memory of naive attention grows with T^2 (the scores), blockwise's with T (one
    key block of scores per query): doubling T quadruples the one and doubles the other. (A
    fixed ratio between them depends on how XLA fuses: with YNNPACK reductions off, naive needs
    one score matrix instead of two.)"""
    t = 2048
    naive = {n: _temp_bytes("naive", n, grad) for n in (t // 2, t)}
    block = {n: _temp_bytes("blockwise", n, grad, block_size=128) for n in (t // 2, t)}
    scores = 4 * 4 * t * t  # one f32 [B=1, H=4, T, S] score matrix: 64 MiB
    assert naive[t] >= scores and naive[t] >= 3.5 * naive[t // 2], naive
    assert block[t] <= 2.2 * block[t // 2] and block[t] < scores / 3, block


def test_unknown_impl_and_bad_block_rejected():
    q, k, v, key_mask, slots = (jnp.asarray(a) for a in _inputs(0))
    with pytest.raises(ValueError, match="attention must be one of"):
        attention(q, k, v, key_mask, slots, impl="flash")
    with pytest.raises(ValueError, match="attention_block"):
        attention(q, k, v, key_mask, slots, impl="blockwise", block_size=0)


def test_the_cudnn_call_holds_the_mask_with_is_causal_at_offset_0():
    """The cuDNN path's arguments (the allowed-slot mask and ``is_causal=True`` at query offset
    0), run by jax's XLA implementation: equal to the float64 reference with left padding and
    GQA. On a GPU only the kernel behind the same call changes."""
    q, k, v, key_mask, slots = _inputs(7, t=11, s=11, offset=0)
    ref = _ref64(q, k, v, key_mask, slots)
    out = jax.jit(lambda q, k, v: _dot_product(q, k, v, jnp.asarray(key_mask), jnp.asarray(slots),
                                               "xla", is_causal=True))(
        *(jnp.asarray(a, jnp.float32) for a in (q, k, v)))
    live = _allowed(key_mask, slots).any(-1)
    np.testing.assert_allclose(np.asarray(out)[live], ref[live], atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(ON_GPU, reason="checks the refusal off the GPU")
def test_cudnn_off_the_gpu_is_refused_in_one_line(monkeypatch):
    from jaxgrpo.experiment import ConfigError, base_config, validate
    from jaxgrpo.models import loading
    from jaxgrpo.models.policy import load_policy

    q, k, v, key_mask, slots = _inputs(0)
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
    key_mask, slots = jnp.asarray(key_mask), jnp.asarray(slots)
    with pytest.raises(ValueError, match="attention 'cudnn' needs a CUDA GPU, but the JAX "
                                         "backend is 'cpu'"):
        attention(q, k, v, key_mask, slots, impl="cudnn", query_offset=0)
    c = base_config()
    c.model.attention = "cudnn"
    with pytest.raises(ConfigError, match=r"config.model.attention='cudnn'.*model.dtype=bfloat16"):
        validate(c)
    c.model.dtype = "bfloat16"
    validate(c)  # valid as a config: the backend is checked where the model is loaded

    def weights_read(*a, **kw):
        raise AssertionError("the weights were read before the backend check")
    monkeypatch.setattr(loading, "load_pretrained", weights_read)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        load_policy(c)


@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a CUDA GPU")
def test_cudnn_equals_naive_on_the_gpu():
    """bf16 cuDNN flash attention (forward and gradients) against the float32 naive path, left
    padding and GQA, at offset 0 (a training pass)."""
    q, k, v, key_mask, slots = _inputs(8, b=2, t=64, s=64, h=4, kvh=2, d=64, offset=0,
                                       pad=(0, 9))
    cot = np.random.RandomState(9).randn(*q.shape)

    def loss(impl, dtype):
        def f(q, k, v):
            out = attention(q, k, v, jnp.asarray(key_mask), jnp.asarray(slots), impl=impl,
                            query_offset=0)
            return jnp.sum(out.astype(jnp.float32) * jnp.asarray(cot, jnp.float32)), out
        args = [jnp.asarray(a, dtype) for a in (q, k, v)]
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(*args)

    (_, out), grads = loss("cudnn", jnp.bfloat16)
    (_, ref), ref_grads = loss("naive", jnp.float32)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=6e-2)


def test_set_attention_switches_a_built_model():
    cfg = ModelConfig(model_type="llama", head_dim=8, vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    m = Decoder(cfg, attention="naive")
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 50, (2, 12)))
    mask = jnp.asarray(np.arange(12)[None, :] >= np.array([[0], [5]]))
    a = m(ids, attention_mask=mask)
    assert set_attention(m, "blockwise", 4) is m
    # one stacked Attention module serves every layer
    assert m.layers.self_attn.attention == "blockwise" and m.layers.self_attn.attention_block == 4
    b = m(ids, attention_mask=mask)
    live = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(b)[live], np.asarray(a)[live], atol=1e-5)
    with pytest.raises(ValueError, match="attention must be one of"):
        set_attention(m, "nope")
