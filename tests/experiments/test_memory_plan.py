"""experiments.memory_plan on a tiny config (2 layers, vocab 128, 2 fake CPU devices).

The script runs in a subprocess (it re-executes itself with the fake-device flag). Its numbers
are checked against (a) ``memory_analysis()`` of the same update compiled directly from a real,
allocated, sharded model and batch in another subprocess (this file run as a script), and (b) the
per-device parameter bytes counted by hand from the shape and the partition rules.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128,
             tie_word_embeddings=False, eos_token_id=1, pad_token_id=0)
OVERRIDES = ["--config.train.prompts_per_step=2", "--config.sampling.max_new_tokens=8",
             "--config.data.max_prompt_tokens=8", "--config.loss.beta=0.04",
             # DRA, as the paper configs: the update reads rollout.embeddings [P, G, D]
             "--config.advantage.reward_transforms=dra", "--config.embedding.model=policy"]


def _env(devices=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _param_bytes_per_device(fsdp: int) -> int:
    """float32 bytes one device holds under DEFAULT_RULES on a (1, fsdp, 1) mesh, by hand: every
    matrix is split over fsdp along one dimension (all divide here), vectors are replicated."""
    e, i, v, h, kvh, d = 32, 64, 128, 4, 2, 8
    layer_mats = e * h * d + 2 * e * kvh * d + h * d * e + 3 * e * i
    layer_vecs = h * d + 2 * kvh * d + 2 * e  # q/k/v biases (over 'tensor' = 1), two norms
    mats = 2 * layer_mats + 2 * v * e  # embedding and untied lm_head
    vecs = 2 * layer_vecs + e  # final norm
    return 4 * (mats // fsdp + vecs)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory_plan")
    shape = tmp / "tiny.json"
    shape.write_text(json.dumps(SHAPE))
    out_json = tmp / "plan.json"
    cmd = [sys.executable, "-m", "experiments.memory_plan", "--mesh", "1,2,1", "--shape",
           str(shape), "--json", str(out_json), *OVERRIDES]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return dict(stdout=p.stdout, json=json.loads(out_json.read_text()), shape=str(shape))


def test_output_format_and_peak_line(plan):  # the default set runs the plan (~17 s)
    lines = plan["stdout"].strip().splitlines()
    m = re.fullmatch(r"peak_gb_per_device=([0-9.eE+-]+)", lines[-1])
    assert m, lines[-1]
    peak = float(m.group(1))
    assert peak > 0
    text = plan["stdout"]
    for label in ("params", "optimizer state", "reference params", "gradients", "logits",
                  "activations", "KV cache (sampler)", "-- update (compiled; memory_analysis)",
                  "-- sampler (compiled; memory_analysis)"):
        assert label in text, label
    arg = int(re.search(r"^update\.argument_bytes=(\d+)$", text, re.M).group(1))
    temp = int(re.search(r"^update\.temp_bytes=(\d+)$", text, re.M).group(1))
    assert peak == pytest.approx((arg + temp) / 1e9, rel=1e-5)


@pytest.mark.slow
def test_numbers_match_a_direct_compile_of_real_arrays(plan):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), plan["shape"]], cwd=ROOT,
                       env=_env(devices=2), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    direct = json.loads(p.stdout.strip().splitlines()[-1])
    res = plan["json"][0]
    upd = res["update"]["2"]
    # The same program: the plan's abstract arguments carry the shardings of the real ones.
    assert upd["argument"] == direct["argument"]
    assert upd["temp"] == direct["temp"]
    assert upd["output"] == direct["output"]
    assert res["result"]["update"]["peak"] == direct["argument"] + direct["temp"]
    # Parameter bytes per device: from the rules, and counted by hand.
    assert res["shapes"]["2"]["params"] == _param_bytes_per_device(2) == direct["params"]
    # Adam's two moments mirror the params (plus optax's scalar counts).
    assert 2 * res["shapes"]["2"]["params"] <= res["shapes"]["2"]["opt_state"] \
        <= 2 * res["shapes"]["2"]["params"] + 64


@pytest.mark.slow  # three of the cases start JAX in a subprocess
def test_bad_arguments_give_one_line_errors(tmp_path):
    cases = [(["--mesh", "1,x,1"], "--mesh must be three positive ints"),
             (["--mesh", "1,2,1", "--layers", "1"], "--layers N needs N >= 2"),
             (["--mesh", "1,2,1", "--shape", "no-such-model"], "--shape 'no-such-model'"),
             (["--mesh", "1,2,1", "--config.model.path=/nowhere/Unknown-Model"],
              "config.model.path='/nowhere/Unknown-Model' does not exist"),
             (["--mesh", "1,2,1", "--rows-per-device", "3"], "--rows-per-device 3"),
             (["--mesh", "1,2,1", "--config.model.attention=cudnn",
               "--config.model.dtype=bfloat16"], "config.model.attention='cudnn' compiles for")]
    for args, msg in cases:
        p = subprocess.run([sys.executable, "-m", "experiments.memory_plan", *args], cwd=ROOT,
                           env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode != 0, args
        assert msg in p.stderr, (args, p.stderr[-2000:])


# ----------------------------------------------------------- the direct compile (a subprocess)


def _direct(shape_path):
    """Real tiny model and batch, sharded as the host loop shards them; the update's
    memory_analysis() as JSON."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from experiments.run import parse_config
    from jaxgrpo import sharding as shd
    from jaxgrpo import train as train_lib
    from jaxgrpo.models import Decoder
    from jaxgrpo.models.config import ModelConfig
    from jaxgrpo.rollout import Rollout

    assert jax.device_count() == 2
    sys.argv = ["direct", *OVERRIDES]  # ml_collections finds --config.* overrides in sys.argv
    c = parse_config(sys.argv)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 1
    mesh = shd.make_mesh(1, 2, 1)
    cfg = ModelConfig.from_json_file(shape_path)
    model = shd.shard_model(Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, params, rest = train_lib.split_model(model)
    tx = train_lib.build_optimizer(c)
    state = train_lib.init_train_state(params, tx, 0)
    rep = shd.replicated(mesh)
    state = state.replace(opt_state=shd.shard_optimizer_state(state.opt_state, mesh),
                          step=jax.device_put(state.step, rep), rng=jax.device_put(state.rng, rep))
    ref = jax.tree.map(jnp.copy, params)
    p, g, tp, tc = 2, c.sampling.num_generations, 8, 8
    r = np.random.default_rng(0)
    host = dict(
        prompt_tokens=r.integers(0, 128, (p, tp)).astype(np.int32),
        prompt_mask=np.ones((p, tp), bool),
        completion_tokens=r.integers(0, 128, (p, g, tc)).astype(np.int32),
        completion_mask=np.ones((p, g, tc), bool),
        logprobs=-r.uniform(0, 3, (p, g, tc)).astype(np.float32),
        prompt_logprobs=np.zeros((p, tp), np.float32),
        rewards=r.uniform(0, 1, (p, g)).astype(np.float32), correct=np.ones((p, g), bool),
        member_mask=np.ones((p, g), bool), is_anchor=np.zeros((p, g), bool))
    emb = r.normal(size=(p, g, cfg.hidden_size)).astype(np.float32)
    host["embeddings"] = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    ro = Rollout(**shd.shard_batch(host, mesh))
    update = train_lib.make_update_fn(c, graphdef, rest, tx)
    with jax.set_mesh(mesh):  # as Trainer.train traces (the activation constraints read it)
        ma = update.lower(state, ro, ref).compile().memory_analysis()
    per_dev = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params))
    print(json.dumps(dict(argument=ma.argument_size_in_bytes, temp=ma.temp_size_in_bytes,
                          output=ma.output_size_in_bytes, params=per_dev)))


if __name__ == "__main__":
    _direct(sys.argv[1])


def test_layer_choice_and_linear_extrapolation():
    from experiments.memory_plan import plan as mp

    assert mp.parse_layers("") == ()
    assert mp.parse_layers("2") == (1, 2)
    assert mp.parse_layers("6") == (3, 6)
    assert mp.parse_layers("2,4") == (2, 4)
    # y = 10 + 3 * layers through (1, 13) and (2, 16): at 28 layers 94, slope 3.
    assert mp.extrapolate([(1, 13.0), (2, 16.0)], 28) == (94.0, 3.0)
    assert mp.extrapolate([(2, 16.0), (4, 22.0)], 28) == (94.0, 3.0)
    assert mp.TPU_TYPES["v5p-8"] == ("v5:2x2x1", 4)  # v5p-N counts TensorCores, 2 per chip


def test_model_factory_applies_the_runtime_keys_as_the_run_does():
    """model.attention / attention_block / remat reach the planned model (they are set after
    construction, by jaxgrpo.models.policy.configure_runtime, exactly as a run sets them)."""
    from flax import nnx

    from experiments.memory_plan import plan as mp
    from jaxgrpo.experiment import base_config
    from jaxgrpo.models.config import ModelConfig

    c = base_config()
    c.model.attention, c.model.attention_block, c.model.remat = "splash", 256, "full"
    cfg = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8)
    _, factory, desc = mp.model_factory(c, cfg)
    m = nnx.eval_shape(factory(3))
    assert m.layers.self_attn.attention == "splash" and m.layers.self_attn.attention_block == 256
    assert m.remat == "full" and "attention=splash" in desc and "not used" in desc
    assert "'attention'" not in desc.split("not used")[1]
