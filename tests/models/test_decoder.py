"""jaxgrpo.models.decoder's structure: stacked, scanned layers, the stacked KV cache, remat.

Numerical parity with transformers is in tests/models/test_loading.py and test_logprobs.py /
test_sampling.py (cache paths); here: the program does not grow with depth, every remat policy
gives the same loss and gradients as none, and remat does not save the stacked cache per layer.
"""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrpo import train as train_lib
from jaxgrpo.experiment import base_config
from jaxgrpo.logprobs import completion_logprobs
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import REMAT_POLICIES, Decoder
from jaxgrpo.rollout import Rollout


def _cfg(layers=2, **kw):
    base = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, qkv_bias=True)
    base.update(kw)
    return ModelConfig(**base)


def _abstract_rollout(p, g, tp, tc):
    s = jax.ShapeDtypeStruct
    return Rollout(
        prompt_tokens=s((p, tp), jnp.int32), prompt_mask=s((p, tp), jnp.bool_),
        completion_tokens=s((p, g, tc), jnp.int32), completion_mask=s((p, g, tc), jnp.bool_),
        logprobs=s((p, g, tc), jnp.float32), prompt_logprobs=s((p, tp), jnp.float32),
        rewards=s((p, g), jnp.float32), correct=s((p, g), jnp.bool_),
        member_mask=s((p, g), jnp.bool_), is_anchor=s((p, g), jnp.bool_))


def _update_stablehlo_ops(layers, remat="none"):
    """Number of StableHLO operations in the lowered update of a ``layers``-deep decoder."""
    model = nnx.eval_shape(lambda: Decoder(_cfg(layers), rngs=nnx.Rngs(0)))
    model.remat = remat
    graphdef, params, rest = train_lib.split_model(model)
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), rest)
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = 2, 2
    tx = train_lib.build_optimizer(c)
    state = jax.eval_shape(lambda prm: train_lib.init_train_state(prm, tx, 0), params)
    update = train_lib.make_update_fn(c, graphdef, rest, tx)
    text = update.lower(state, _abstract_rollout(2, 2, 4, 4), None).as_text()
    return sum(1 for line in text.splitlines() if " = stablehlo." in line or " = \"stablehlo."
               in line)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_update_program_does_not_grow_with_depth(remat):
    # One scanned layer body: the same program at 2 and 6 layers (a Python loop over layers gave
    # a program ~3x as large at 6).
    n2, n6 = _update_stablehlo_ops(2, remat), _update_stablehlo_ops(6, remat)
    assert n2 > 100  # the count sees the program
    assert n6 == n2, (n2, n6)


def test_layers_are_stacked_and_distinct():
    model = Decoder(_cfg(3), rngs=nnx.Rngs(0))
    q = np.asarray(model.layers.self_attn.q_proj.kernel[...])
    assert q.shape == (3, 32, 32)
    # Each layer drew its own initialisation.
    assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])
    cache = model.init_cache(2, 7)
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 7, 8) and cache.max_length == 7
    k = jnp.asarray(np.random.default_rng(0).normal(size=cache.k.shape), jnp.float32)
    rep = type(cache)(k=k, v=k + 1).repeat(3)
    np.testing.assert_array_equal(np.asarray(rep.k), np.repeat(np.asarray(k), 3, axis=1))
    np.testing.assert_array_equal(np.asarray(rep.v), np.repeat(np.asarray(k) + 1, 3, axis=1))


def test_bad_remat_policy_names_the_key():
    with pytest.raises(ValueError, match="model.remat"):
        Decoder(_cfg(), remat="sometimes")


def _loss(graphdef, params, rest, prompts, pmask, comps, cmask):
    model = nnx.merge(graphdef, params, rest)
    # Teacher-forced (no cache) and shared-prompt (stacked cache, repeated per group) paths.
    lp_full = completion_logprobs(model, jnp.repeat(prompts, 2, axis=0),
                                  jnp.repeat(pmask, 2, axis=0), comps, cmask)
    lp_grouped, ent = completion_logprobs(model, prompts, pmask, comps, cmask,
                                          return_entropy=True)
    return jnp.sum(lp_full ** 2) + jnp.sum(lp_grouped * jnp.arange(comps.shape[1])) + jnp.sum(ent)


def _data(vocab):
    r = np.random.default_rng(0)
    prompts = jnp.asarray(r.integers(3, vocab, (2, 5)), jnp.int32)
    pmask = jnp.asarray([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    comps = jnp.asarray(r.integers(3, vocab, (4, 4)), jnp.int32)
    cmask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    return prompts, pmask, comps, cmask


@pytest.mark.slow
def test_every_remat_policy_gives_the_same_loss_and_gradients():
    model = Decoder(_cfg(3), rngs=nnx.Rngs(0))
    data = _data(64)
    results = {}
    for remat in REMAT_POLICIES:
        model.remat = remat  # settable after construction, before nnx.split
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        fn = jax.jit(jax.value_and_grad(lambda p: _loss(graphdef, p, rest, *data)))
        results[remat] = fn(params)
        # The policy is really applied: a checkpoint (remat) in the gradient's jaxpr iff not none.
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: _loss(graphdef, p, rest, *data)))(params))
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (remat != "none"), remat
    ref_loss, ref_grads = results["none"]
    for remat, (loss, grads) in results.items():
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss))), remat
        # Relative to each gradient's scale (entries here are up to ~1e2): fp32 recomputation may
        # reassociate sums.
        diffs = jax.tree.leaves(jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1.0)),
            grads, ref_grads))
        assert max(diffs) < 1e-5, (remat, max(diffs))


def test_remat_does_not_save_the_stacked_cache_per_layer():
    # Under remat the scanned body's inputs are saved per layer; the stacked cache is one of them
    # unless its layer slice is saved by name. An [L, L, B, KVH, S, D] array would be L x the cache.
    layers = 4
    model = Decoder(_cfg(layers), rngs=nnx.Rngs(0), remat="full")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    data = _data(64)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: _loss(graphdef, p, rest, *data)))(params)
    shapes = set()

    def walk(j):
        for eqn in j.eqns:
            for v in eqn.outvars:
                shapes.add(tuple(getattr(v.aval, "shape", ())))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(jaxpr.jaxpr)
    cache_shape = (layers, 4, 2, 9, 8)  # [L, B, KVH, Tp + Tc, D] of the grouped pass
    assert cache_shape in shapes
    assert (layers,) + cache_shape not in shapes
