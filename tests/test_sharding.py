"""jaxgrpo.sharding: meshes, partition rules, sharded model / optimizer state.

The multi-device checks need 8 fake CPU devices (``--xla_force_host_platform_device_count=8``),
a flag that must be set before JAX starts its backend and that would slow every other test
module. So they run once, in a subprocess (tests/_sharding_worker.py) whose environment alone
carries the flag; each test below reads one of its results. The rest runs in-process on
abstract shapes (``nnx.eval_shape``) and ``AbstractMesh``es.
"""
import json
import os
import subprocess
import sys

import jax
import jax.extend
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from jaxgrpo import sharding as shd
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sharding_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract_state(cfg):
    return nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))


def _cfg(**kw):
    base = dict(model_type="qwen2", vocab_size=128, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                qkv_bias=True)
    base.update(kw)
    return ModelConfig(**base)


def _specs_by_path(specs):
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    return {shd.path_to_str(p): s for p, s in flat}


# ------------------------------------------------------------------------- in-process tests


@pytest.mark.parametrize("cfg", [
    _cfg(),  # Qwen2: q/k/v biases, untied
    _cfg(model_type="llama", qkv_bias=True, o_bias=True, mlp_bias=True),  # every bias there is
    _cfg(model_type="llama", qkv_bias=False, tie_word_embeddings=True),  # tied: no lm_head
], ids=["qwen2", "llama_all_biases", "llama_tied"])
def test_default_rules_cover_every_variable(cfg):
    state = _abstract_state(cfg)
    specs = _specs_by_path(shd.match_partition_rules(shd.DEFAULT_RULES, state))
    n_leaves = len(jax.tree.leaves(state))
    assert len(specs) == n_leaves
    # Stacked layers: the per-layer rule behind a leading None for the layer axis.
    assert specs["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert specs["layers/input_layernorm/weight"] == P(None, None)
    assert specs["embed_tokens/embedding"] == P("tensor", "fsdp")
    assert specs["inv_freq"] == P(None)
    if cfg.mlp_bias:
        assert specs["layers/mlp/up_proj/bias"] == P(None, "tensor")
        assert specs["layers/mlp/down_proj/bias"] == P(None, None)
    if cfg.o_bias:
        assert specs["layers/self_attn/o_proj/bias"] == P(None, None)


def test_unmatched_parameters_are_listed():
    state = _abstract_state(_cfg())
    rules = [r for r in shd.DEFAULT_RULES if "mlp" not in r[0]]
    with pytest.raises(ValueError) as e:
        shd.match_partition_rules(rules, state)
    msg = str(e.value)
    assert "no partition rule matched 3 array(s)" in msg  # gate/up/down, stacked over 2 layers
    assert "layers/mlp/gate_proj/kernel (2, 32, 64)" in msg
    assert "layers/mlp/down_proj/kernel (2, 64, 32)" in msg


def test_first_matching_rule_wins_and_scalars_are_replicated():
    state = {"a": {"kernel": jax.ShapeDtypeStruct((4, 6), "float32")},
             "step": jax.ShapeDtypeStruct((), "int32")}
    rules = [(r"a/kernel", P(None, "tensor")), (r"kernel", P("fsdp"))]
    specs = shd.match_partition_rules(rules, state)  # "step" needs no rule
    assert specs == {"a": {"kernel": P(None, "tensor")}, "step": P()}


def test_bad_rules_fail_clearly():
    state = {"w": jax.ShapeDtypeStruct((4,), "float32")}
    with pytest.raises(ValueError, match="rank 1"):
        shd.match_partition_rules([("w", P("fsdp", "tensor"))], state)
    mesh = AbstractMesh((2, 2, 2), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with pytest.raises(ValueError, match="'model'"):
        shd.match_partition_rules([("w", P("model"))], state, mesh)


def test_non_divisible_dims_fall_back_to_replication():
    # vocab 100 and intermediate 60 are not divisible by tensor=8; hidden 40 is by fsdp=2 x 4.
    cfg = _cfg(model_type="llama", vocab_size=100, hidden_size=40, intermediate_size=60,
               num_attention_heads=10, num_key_value_heads=5, head_dim=4, qkv_bias=False,
               num_hidden_layers=1)
    mesh = AbstractMesh((1, 1, 8), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    fallbacks = []
    specs = _specs_by_path(shd.match_partition_rules(shd.DEFAULT_RULES, _abstract_state(cfg),
                                                     mesh, fallbacks=fallbacks))
    assert specs["embed_tokens/embedding"] == P(None, "fsdp")
    assert specs["lm_head/kernel"] == P("fsdp", None)
    assert specs["layers/mlp/gate_proj/kernel"] == P(None, "fsdp", None)
    assert specs["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")  # 40 % 8 == 0
    # Dims count the stacked layer axis (dim 0).
    assert {(f.path, f.dim) for f in fallbacks} == {
        ("embed_tokens/embedding", 0), ("lm_head/kernel", 1),
        ("layers/self_attn/k_proj/kernel", 2), ("layers/self_attn/v_proj/kernel", 2),
        ("layers/mlp/gate_proj/kernel", 2), ("layers/mlp/up_proj/kernel", 2),
        ("layers/mlp/down_proj/kernel", 1)}
    # A multi-axis entry keeps the divisible prefix: 12 rows over (data=2, fsdp=4) -> data only.
    mesh = AbstractMesh((2, 4, 1), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    fb = []
    got = shd.match_partition_rules([("x", P(("data", "fsdp")))],
                                    {"x": jax.ShapeDtypeStruct((12, 3), "float32")}, mesh,
                                    fallbacks=fb)
    assert got == {"x": P("data", None)}
    assert fb == [shd.Fallback(path="x", dim=0, size=12, axes=("data", "fsdp"), kept=("data",))]


def test_optimizer_state_paths_match_param_rules():
    import optax
    state = nnx.state(nnx.eval_shape(lambda: Decoder(_cfg(), rngs=nnx.Rngs(0))), nnx.Param)
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, state)
    specs = _specs_by_path(shd.match_partition_rules(shd.DEFAULT_RULES, opt_state))
    assert specs["0/count"] == P()
    assert specs["0/mu/layers/self_attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert specs["0/nu/embed_tokens/embedding"] == P("tensor", "fsdp")


def test_stacked_prefix_only_for_stacked_layers():
    # ``layers/<i>/...`` (a list of per-layer modules) keeps the per-layer spec; ``layers/...``
    # (stacked, [L, ...]) gets the layer axis in front; other paths are untouched.
    sds = jax.ShapeDtypeStruct
    state = {"layers": {"0": {"mlp": {"up_proj": {"kernel": sds((4, 6), "float32")}}},
                        "mlp": {"up_proj": {"kernel": sds((3, 4, 6), "float32")}}},
             "encoder": {"mlp": {"up_proj": {"kernel": sds((4, 6), "float32")}}},
             "blocks_layers": {"mlp": {"up_proj": {"kernel": sds((4, 6), "float32")}}}}
    specs = _specs_by_path(shd.match_partition_rules(shd.DEFAULT_RULES, state))
    assert specs == {"layers/0/mlp/up_proj/kernel": P("fsdp", "tensor"),
                     "layers/mlp/up_proj/kernel": P(None, "fsdp", "tensor"),
                     "encoder/mlp/up_proj/kernel": P("fsdp", "tensor"),
                     "blocks_layers/mlp/up_proj/kernel": P("fsdp", "tensor")}


def _constraints(fn, *args):
    """The PartitionSpecs of every sharding_constraint in ``fn``'s jaxpr (nested ones included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "sharding_constraint":
                found.append((tuple(eqn.invars[0].aval.shape), eqn.params["sharding"].spec))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_constrain_is_a_no_op_without_a_mesh():
    x = jax.numpy.ones((4, 3, 8))
    assert _constraints(lambda a: shd.constrain(a, shd.ACT_HIDDEN), x) == []
    # A one-device mesh: nothing to constrain either.
    with jax.set_mesh(shd.make_mesh()):
        assert _constraints(lambda a: shd.constrain(a, shd.ACT_HIDDEN), x) == []


def test_constrain_under_an_abstract_mesh_drops_non_dividing_axes():
    mesh = AbstractMesh((2, 4, 2), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(mesh):
        got = _constraints(lambda a, b, c: (shd.constrain(a, shd.ACT_HEADS),
                                            shd.constrain(b, shd.ACT_HEADS),
                                            shd.constrain(c, P("model"))),
                           jax.numpy.ones((16, 3, 4, 8)), jax.numpy.ones((6, 3, 3, 8)),
                           jax.numpy.ones((4,)))
    assert [s for _, s in got] == [
        P(("data", "fsdp"), None, "tensor", None),  # 16 rows over 2 x 4, 4 heads over 2
        P("data", None, None, None),  # 6 rows: data only; 3 heads: replicated
        P(None)]  # an axis the mesh lacks is dropped


def test_decoder_constrains_its_activations_under_a_mesh():
    cfg = _cfg(num_hidden_layers=3)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    ids = jax.ShapeDtypeStruct((8, 5), "int32")
    fwd = lambda s, i: nnx.merge(graphdef, s)(i)  # noqa: E731
    assert _constraints(fwd, state, ids) == []
    mesh = AbstractMesh((1, 4, 2), shd.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(mesh):
        got = set(_constraints(fwd, state, ids))
    want = {((8, 5, 32), P(("data", "fsdp"), None, None)),  # residual stream
            ((8, 5, 4, 8), P(("data", "fsdp"), None, "tensor", None)),  # q heads
            ((8, 5, 2, 8), P(("data", "fsdp"), None, "tensor", None)),  # k / v heads
            ((8, 5, 64), P(("data", "fsdp"), None, "tensor")),  # MLP units
            ((8, 5, 128), P(("data", "fsdp"), None, "tensor"))}  # logits, vocab-split
    assert got == want, got


def test_make_mesh_on_one_device():
    mesh = shd.make_mesh()
    assert mesh.axis_names == shd.MESH_AXES and dict(mesh.shape) == {
        "data": 1, "fsdp": 1, "tensor": 1}
    assert shd.make_mesh(fsdp=-1).devices.size == jax.device_count()
    with pytest.raises(ValueError, match="devices"):
        shd.make_mesh(data=2, tensor=2 * jax.device_count())
    with pytest.raises(ValueError, match="at most one"):
        shd.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="positive int or -1"):
        shd.make_mesh(tensor=0)
    assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"))


def test_initialize_distributed_only_when_multi_host(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for var in ("JAXGRPO_MULTI_HOST", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    assert shd.initialize_distributed() is False and calls == []
    assert not shd._multi_host_from_env({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"})
    assert shd._multi_host_from_env({"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]"})
    assert shd._multi_host_from_env({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "2"})
    assert shd._multi_host_from_env({"TPU_WORKER_HOSTNAMES": "h0,h1"})
    assert not shd._multi_host_from_env({"TPU_WORKER_HOSTNAMES": "h0"})
    monkeypatch.setenv("JAXGRPO_MULTI_HOST", "1")
    assert shd.initialize_distributed() is True
    assert shd.initialize_distributed(multi_host=False) is False
    assert shd.initialize_distributed(coordinator_address="h:1", num_processes=2,
                                      process_id=0) is True
    assert calls == [{}, {"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}]


def test_initialize_distributed_reads_the_process_count_and_id_from_the_environment(monkeypatch):
    """JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (no cluster manager): the
    count and id reach jax.distributed.initialize; a bad value is a ConfigError naming it."""
    from jaxgrpo.errors import ConfigError
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}
    assert shd.initialize_distributed(env=env) is True
    assert calls == [{"num_processes": 2, "process_id": 1}]
    assert shd.initialize_distributed(env={"JAX_COORDINATOR_ADDRESS": "h:1"}) is True
    assert calls[-1] == {}  # JAX's own detection (a cluster manager) decides
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID='one'"):
        shd.initialize_distributed(env=dict(env, JAX_PROCESS_ID="one"))
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='-2'"):
        shd.initialize_distributed(env=dict(env, JAX_NUM_PROCESSES="-2"))


# ------------------------------------------------------------- 8 fake devices (subprocess)


@pytest.fixture(scope="module")
def worker():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # XLA's SPMD "involuntary rematerialization" warnings
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, WORKER], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"sharding worker failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _result(worker, name):
    r = worker[name]
    assert r["ok"], f"{name} failed in the 8-device worker:\n{r.get('error')}"
    return r


def test_make_mesh_with_8_devices(worker):
    _result(worker, "make_mesh_8_devices")


@pytest.mark.parametrize("mesh", ["2x2x2", "8x1x1", "1x1x8"])
def test_sharded_forward_matches_single_device(worker, mesh):
    r = _result(worker, f"forward_{mesh}")
    assert r["max_abs_diff"] < 1e-5 and r["devices_per_leaf"] == [8]


def test_sharded_init(worker):
    _result(worker, "sharded_init_equals_unsharded_init")
    assert _result(worker, "forward_sharded_init_2x2x2")["max_abs_diff"] < 1e-5


def test_parameters_sharded_as_the_rules_say(worker):
    _result(worker, "param_layout_2x2x2")
    _result(worker, "param_layout_1x1x8_and_8x1x1")


def test_non_divisible_model_still_shards(worker):
    assert _result(worker, "non_divisible_fallback_1x1x8")["max_abs_diff"] < 1e-5


def test_splash_attention_under_a_mesh_matches_single_device(worker):
    r = _result(worker, "splash_loss_and_grads_2x2x2")
    # The loss sums ~10^4 log-probs (|loss| ~ 50): float32 rounding, relative to its size.
    assert r["loss_abs_diff"] < 1e-6 * max(1.0, abs(r["ref_loss"])), r
    assert r["grad_max_abs_diff"] < 1e-5, r


def test_adamw_step_sharded_matches_unsharded(worker):
    r = _result(worker, "adamw_step_2x2x2")
    assert r["param_max_abs_diff"] < 1e-5 and r["loss_abs_diff"] < 1e-5
    _result(worker, "nnx_optimizer_state_1x1x8")


def test_greedy_sampling_sharded_matches_single_device(worker):
    r = _result(worker, "greedy_sampling")
    if "skipped" in r:
        pytest.skip(r["skipped"])
