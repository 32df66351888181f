"""Run by tests/integration/test_multihost.py: the same tiny training run as one process with 8 CPU devices
(``single``) or as one of 2 processes with 4 CPU devices each (``multi``), on one 8-device mesh.

    python tests/_multihost_worker.py single OUT.json CKPT_DIR [MULTI_CKPT_DIR]
    python tests/_multihost_worker.py multi OUT.json CKPT_DIR PORT PROCESS_ID

The environment sets the device count (``XLA_FLAGS``) before the interpreter starts. Each process
builds the policy in its sharded layout, feeds only its own rows of every batch
(``jaxgrpo.sharding.global_batch``), runs the jitted sampler once and two jitted updates (advantages
as the host loop computes them), saves the train state with ``jaxgrpo.checkpoint.Checkpointer``
(orbax; a collective save), restores it, compares the restored shards with the saved ones, and
runs a third update from the restored state. ``single`` also restores the 2-process checkpoint
into its own layout. Results (JSON) go to OUT.json (multi: OUT.json.<process id>).
"""
from __future__ import annotations

import json
import sys

MESH = (1, 4, 2)  # fsdp spans both processes; tensor within each
P, G, TP, TC = 4, 2, 5, 6


def rollout_rows(step: int, vocab: int):
    """The whole host batch of a step (every process can build it; each feeds its own rows)."""
    import numpy as np
    r = np.random.default_rng(100 + step)
    cmask = np.arange(TC)[None, None, :] < r.integers(2, TC + 1, (P, G))[..., None]
    return dict(
        prompt_tokens=r.integers(2, vocab, (P, TP)).astype(np.int32),
        prompt_mask=np.ones((P, TP), bool),
        completion_tokens=r.integers(2, vocab, (P, G, TC)).astype(np.int32),
        completion_mask=cmask,
        logprobs=np.where(cmask, -r.uniform(0.5, 3.0, (P, G, TC)), 0.0).astype(np.float32),
        prompt_logprobs=np.zeros((P, TP), np.float32),
        rewards=r.integers(0, 2, (P, G)).astype(np.float32),
        correct=r.integers(0, 2, (P, G)).astype(bool),
        member_mask=np.ones((P, G), bool),
        is_anchor=np.zeros((P, G), bool))


def _flat_host(tree):
    """{'/'-joined path: NumPy array} of a pytree of host arrays (for .npz files)."""
    import jax
    from jaxgrpo.sharding import path_to_str
    return {path_to_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(mode: str, out: str, ckpt_dir: str, *rest: str):
    import jax

    from jaxgrpo import sharding as shd

    if mode == "multi":
        port, pid = rest
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        shd.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                   process_id=int(pid))
        out = f"{out}.{pid}"

    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxgrpo import train as train_lib
    from jaxgrpo.checkpoint import Checkpointer
    from jaxgrpo.experiment import base_config
    from jaxgrpo.models import Decoder
    from jaxgrpo.models.config import ModelConfig
    from jaxgrpo.rollout import Rollout
    from jaxgrpo.sampling import SamplingConfig, make_sampler

    assert jax.device_count() == 8, jax.devices()
    res = dict(process_index=jax.process_index(), process_count=jax.process_count(),
               local_devices=jax.local_device_count())
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = P, G
    c.sampling.max_new_tokens = TC
    c.train.grad_accum = 2
    c.loss.beta = 0.04
    # Adam's first steps move each weight by about lr whatever the gradient's size, so the
    # float round-off of a different reduction order (gloo across processes vs in-process)
    # becomes an O(lr) weight difference; the paper's lr keeps it below the tests' tolerance.
    c.optim.lr = 1e-6
    cfg = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, qkv_bias=True, eos_token_ids=(1,), pad_token_id=0)
    mesh = shd.make_mesh(*MESH)
    model = shd.sharded_init(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, params, rest_state = train_lib.split_model(model)
    tx = train_lib.build_optimizer(c)
    state = train_lib.init_train_state(params, tx, 0)
    state = state.replace(opt_state=shd.shard_optimizer_state(state.opt_state, mesh))
    ref = jax.tree.map(jnp.copy, params)
    advantage_fn = jax.jit(train_lib.advantage_fn_from_config(c))
    update = train_lib.make_update_fn(c, graphdef, rest_state, tx)
    initial = _flat_host(shd.to_host(params))
    rows = shd.process_rows(mesh, P)
    res["rows"] = [rows.start, rows.stop]

    def batch(step):
        full = rollout_rows(step, cfg.vocab_size)
        ro = Rollout(**shd.global_batch({k: v[rows] for k, v in full.items()}, mesh, P))
        return full, ro

    # The sampler on the process-local prompts; its batch-sharded output read back on the host.
    full, ro = batch(0)
    scfg = SamplingConfig(max_new_tokens=TC, temperature=1.0, eos_token_ids=(1,),
                          pad_token_id=0, num_generations=G)
    sampler = make_sampler(graphdef, scfg)
    sample = sampler(nnx.merge_state(state.params, rest_state), ro.prompt_tokens,
                     ro.prompt_mask, jax.random.key(7))
    res["sample_tokens"] = shd.to_host(sample.completion_tokens).tolist()
    res["sample_logprobs"] = shd.to_host(sample.logprobs).tolist()
    res["prompts_roundtrip"] = bool(np.array_equal(shd.to_host(ro.prompt_tokens),
                                                   full["prompt_tokens"]))

    metrics = []
    for step in range(2):
        _, ro = batch(step)
        adv, _ = advantage_fn(ro)
        state, m = update(state, ro, ref, adv)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    res["metrics"] = metrics

    ckpt = Checkpointer(ckpt_dir)
    ckpt.save(2, state, {"step": 2, "data_position": 8})
    saved = _flat_host(shd.to_host(state.params))
    if jax.process_index() == 0:
        np.savez(f"{out}.saved.npz", **saved)
    res["params_changed"] = max(float(np.max(np.abs(saved[k] - initial[k]))) for k in saved)
    restored, meta, step = ckpt.restore(state)
    same = [bool(np.array_equal(np.asarray(a.addressable_shards[i].data),
                                np.asarray(b.addressable_shards[i].data)))
            and a.sharding == b.sharding
            for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored))
            for i in range(len(a.addressable_shards))]
    res["restore_shards_equal"] = all(same)
    res["restore_meta"] = meta
    res["restore_step"] = step
    _, ro = batch(2)
    adv, _ = advantage_fn(ro)
    restored, m3 = update(restored, ro, ref, adv)
    res["metrics_after_restore"] = {k: float(v) for k, v in jax.device_get(m3).items()}
    res["param_checksum"] = float(sum(jnp.sum(jnp.abs(x.astype(jnp.float32)))
                                      for x in jax.tree.leaves(restored.params)))

    if mode == "single" and rest:  # restore the 2-process checkpoint into this layout
        other = Checkpointer(rest[0])
        theirs, meta2, _ = other.restore(state)
        np.savez(f"{out}.cross_restored.npz", **_flat_host(shd.to_host(theirs.params)))
        res["cross_restore_sharding_same"] = all(
            a.sharding == b.sharding
            for a, b in zip(jax.tree.leaves(theirs), jax.tree.leaves(state)))
        res["cross_restore_meta"] = meta2
        other.close()
    ckpt.close()
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
