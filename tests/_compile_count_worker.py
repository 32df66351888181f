"""Run by tests/test_train.py in a subprocess with 2 fake CPU devices: three host-loop steps
(sampler -> rollout -> update) on a data / fsdp / tensor mesh, counting XLA compilations.

Prints one JSON line: per mesh, the number of compilations of the sampler and of the update
after each step (``jax_log_compiles`` messages, and the jitted functions' cache sizes), the
per-step metrics, the same run's metrics without a mesh, and the error a micro-batch that the
mesh cannot divide gives.
"""
import json
import logging
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrpo import sharding as shd
from jaxgrpo.experiment import base_config, validate
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.sampling import SamplingConfig, make_sampler
from jaxgrpo.rollout import rollout_from_sample
from jaxgrpo.train import build_optimizer, init_train_state, make_update_fn, split_model


class CompileCounter(logging.Handler):
    """Records "Finished XLA compilation of jit(<name>)" (WARNING under jax_log_compiles)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names = []

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of (\S+) in", record.getMessage())
        if m:
            self.names.append(m.group(1))

    def count(self, name):
        return sum(n == name for n in self.names)


def config():
    c = base_config()
    c.train.prompts_per_step = 4
    c.sampling.num_generations = 4
    c.train.grad_accum = 2  # micro-batches of 8 rows = 2 groups: 1 group per device
    c.loss.beta = 0.04  # the reference pass runs per micro-batch
    c.train.logits_chunk = 3
    c.optim.lr = 1e-3
    return validate(c)


def model():
    cfg = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, qkv_bias=True)
    return Decoder(cfg, rngs=nnx.Rngs(0))


def run(mesh, counter, steps=3):
    c = config()
    m = model() if mesh is None else shd.shard_model(model(), mesh)
    graphdef, params, rest = split_model(m)
    tx = build_optimizer(c)
    state = init_train_state(params, tx, c.seed)
    if mesh is not None:  # as jaxgrpo.loop.Trainer lays the state out
        state = state.replace(opt_state=shd.shard_optimizer_state(state.opt_state, mesh))
    ref_params = jax.tree.map(jnp.copy, params)
    scfg = SamplingConfig(max_new_tokens=5, temperature=1.0, eos_token_ids=(1,), pad_token_id=0,
                          num_generations=c.sampling.num_generations, prompt_logprobs_chunk=3)
    sampler = make_sampler(graphdef, scfg)
    update = make_update_fn(c, graphdef, rest, tx)
    prompts = np.random.default_rng(0).integers(2, 64, (c.train.prompts_per_step, 6))
    pmask = np.ones(prompts.shape, bool)
    pmask[1, :2] = False
    put = (lambda x: jnp.asarray(x)) if mesh is None else (
        lambda x: jax.device_put(x, shd.batch_sharding(mesh)))
    counter.names.clear()
    counts, metrics = [], []
    sampler_cache0 = sampler._cache_size()  # make_sampler is cached: earlier runs' entries
    for step in range(steps):
        key = jax.random.fold_in(jax.random.key(1), step)
        out = sampler(nnx.merge_state(state.params, rest), put(prompts), put(pmask), key)
        rewards = np.asarray(jnp.sum(out.completion_tokens % 3 == 0, axis=-1), np.float32)
        ro = rollout_from_sample(out, rewards, rewards > 1)
        state, mets = update(state, ro, ref_params)
        metrics.append({k: float(v) for k, v in jax.device_get(mets).items()})
        counts.append({"sampler_logged": counter.count("jit(sampler)"),
                       "update_logged": counter.count("jit(update)"),
                       "sampler_cache": sampler._cache_size() - sampler_cache0,
                       "update_cache": update._cache_size()})
    q_spec = str(getattr(state.params["layers"]["self_attn"]["q_proj"]["kernel"].sharding,
                         "spec", None))
    return {"counts": counts, "metrics": metrics, "q_spec": q_spec}


def main():
    assert jax.device_count() == 2, jax.devices()
    counter = CompileCounter()
    logging.getLogger("jax").addHandler(counter)
    jax.config.update("jax_log_compiles", True)
    out = {"none": run(None, counter)}
    for name, sizes in (("fsdp", (1, 2, 1)), ("data", (2, 1, 1)), ("tensor", (1, 1, 2))):
        out[name] = run(shd.make_mesh(*sizes), counter)
    # A micro-batch the batch devices cannot divide (9 rows over 2), with a mesh axis of -1
    # that validate() cannot resolve: the update refuses it when it is built for the mesh.
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = 3, 3
    c.mesh.fsdp, c.mesh.data = -1, 1
    validate(c)
    mesh = shd.make_mesh(1, 2, 1)
    graphdef, params, rest = split_model(shd.shard_model(model(), mesh))
    tx = build_optimizer(c)
    state = init_train_state(params, tx, 0)
    r = np.random.default_rng(0)
    from jaxgrpo.rollout import Rollout
    ro = Rollout(prompt_tokens=jnp.ones((3, 4), jnp.int32), prompt_mask=jnp.ones((3, 4), bool),
                 completion_tokens=jnp.ones((3, 3, 5), jnp.int32),
                 completion_mask=jnp.ones((3, 3, 5), bool),
                 logprobs=-jnp.ones((3, 3, 5)), prompt_logprobs=jnp.zeros((3, 4)),
                 rewards=jnp.asarray(r.normal(size=(3, 3)), jnp.float32),
                 correct=jnp.zeros((3, 3), bool), member_mask=jnp.ones((3, 3), bool),
                 is_anchor=jnp.zeros((3, 3), bool))
    try:
        make_update_fn(c, graphdef, rest, tx)(state, ro, None)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
