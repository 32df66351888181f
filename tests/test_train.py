"""The training step and the host loop: exact resume, accumulation invariance, bad input."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrpo.checkpoint import CheckpointError
from jaxgrpo.experiment import base_config, validate
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.rollout import Rollout
from jaxgrpo.train import build_optimizer, init_train_state, make_update_fn, split_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_train_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r for r in recs if r["kind"] == "train"}


def params_of(trainer):
    return jax.tree.leaves(jax.device_get(trainer.state.params))


def test_resume_gives_the_uninterrupted_run(tiny_llama_dir, tiny_run_config, tmp_path):
    from jaxgrpo.loop import Trainer

    straight = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "straight"))
    straight.train()
    straight.close()

    first = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "resumed"))
    first.train(stop_at=2)  # preempted after step 2 (checkpoint saved)
    first.close()
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2"]
    second = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "resumed"))
    second.train()
    second.close()

    a = read_train_metrics(tmp_path / "straight")
    b = read_train_metrics(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "reward/mean", "grad_norm", "ratio_mean", "entropy_mean"):
            np.testing.assert_allclose(b[step][key], a[step][key], rtol=0, atol=1e-6,
                                       err_msg=f"step {step} {key}")
    assert any(abs(a[s]["grad_norm"]) > 0 for s in a), "the test run must really update"
    for x, y in zip(params_of(straight), params_of(second)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    run = tmp_path / "straight"
    for name in ("config.json", "metrics.jsonl", "curves.png", "summary.json"):
        assert (run / name).exists(), name


def test_background_save_survives_the_donated_update_that_follows(tmp_path):
    """save(block=False) returns before the files are written; the next jitted update donates
    (and overwrites) the saved arrays at once. The checkpoint must hold the values as saved."""
    from jaxgrpo.checkpoint import Checkpointer

    state = {"w": jnp.arange(4_000_000, dtype=jnp.float32), "b": jnp.ones((1000,), jnp.float32)}
    want = jax.tree.map(np.array, state)
    overwrite = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 7.0, s), donate_argnums=0)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=True)
    ckpt.save(1, state, {"step": 1, "data_position": 0}, block=False)
    for _ in range(3):
        state = overwrite(state)
    jax.block_until_ready(state)
    assert float(state["w"][5]) == -7.0
    ckpt.wait()
    got, meta, step = ckpt.restore(state)
    ckpt.close()
    assert step == 1 and meta["step"] == 1
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_background_periodic_saves_hold_the_state_of_their_step(tiny_llama_dir, tiny_run_config,
                                                                 tmp_path):
    """checkpoint.async_save: the step-2 checkpoint, written in the background while steps 3-4
    donated the state, equals the state of a run stopped after step 2 (a blocking save)."""
    from jaxgrpo.checkpoint import Checkpointer
    from jaxgrpo.loop import Trainer

    ref = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "ref"))
    ref.train(stop_at=2)
    ref.close()
    ref_params = params_of(ref)

    full = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "async", **{
        "checkpoint.every": 1, "checkpoint.keep": 4, "checkpoint.async_save": True}))
    full.train()
    full.close()
    assert sorted(os.listdir(tmp_path / "async" / "checkpoints")) == ["1", "2", "3", "4"]
    ckpt = Checkpointer(str(tmp_path / "async" / "checkpoints"))
    state, meta, step = ckpt.restore(full.state, step=2)
    ckpt.close()
    assert step == 2 and meta["step"] == 2
    for x, y in zip(jax.tree.leaves(jax.device_get(state.params)), ref_params):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(params_of(full), ref_params))


def test_corrupt_checkpoint_is_reported(tiny_llama_dir, tiny_run_config, tmp_path):
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run"))
    t.train(stop_at=1)
    t.close()
    ckpt = tmp_path / "run" / "checkpoints" / "1" / "state"
    victims = [os.path.join(d, f) for d, _, fs in os.walk(ckpt) for f in fs
               if not f.startswith("_") and os.path.getsize(os.path.join(d, f)) > 0]
    for v in victims:
        with open(v, "r+b") as f:
            f.truncate(max(1, os.path.getsize(v) // 3))
    t2 = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run"))
    with pytest.raises(CheckpointError, match="checkpoints/1"):
        t2.train()
    t2.close()


def test_incompatible_checkpoint_is_reported(tiny_llama_dir, tiny_run_config, tiny_qwen2_dir, tmp_path):
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run"))
    t.train(stop_at=1)
    t.close()
    from jaxgrpo.checkpoint import Checkpointer
    from jaxgrpo.errors import ConfigError

    # Resuming the run with another model is refused before anything is built (jaxgrpo.run_dir)
    with pytest.raises(ConfigError, match="model.path"):
        Trainer(tiny_run_config(tiny_qwen2_dir, tmp_path / "run"))
    # and the checkpoint itself refuses a state of another shape.
    other = Trainer(tiny_run_config(tiny_qwen2_dir, tmp_path / "other"))  # another model shape
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    with pytest.raises(CheckpointError, match="incompatible|structure"):
        ckpt.restore(other.state)
    ckpt.close()
    other.close()


def test_nan_metrics_stop_with_a_clear_error(tiny_llama_dir, tiny_run_config, tmp_path, monkeypatch):
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run", **{"checkpoint.every": 1}))
    real = t.step.update

    def poisoned(*args):
        state, m = real(*args)
        return state, {**m, "loss": jnp.float32(np.nan)}

    t.train(stop_at=1)
    t.step.update = poisoned
    with pytest.raises(FloatingPointError, match=r"loss.*checkpoint"):
        t.train()
    t.close()
    assert "1" in os.listdir(tmp_path / "run" / "checkpoints")  # finished work kept


# ------------------------------------------------------------------------------ pure update


def _tiny_model():
    cfg = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8)
    return Decoder(cfg, rngs=nnx.Rngs(0))


def _random_rollout(p=2, g=4, tp=6, tc=5, seed=0, vocab=64):
    r = np.random.default_rng(seed)
    cmask = np.ones((p, g, tc), bool)
    cmask[0, 1, 3:] = False
    cmask[1, 2, 1:] = False
    pmask = np.ones((p, tp), bool)
    pmask[1, :2] = False
    return Rollout(
        prompt_tokens=jnp.asarray(r.integers(0, vocab, (p, tp)), jnp.int32),
        prompt_mask=jnp.asarray(pmask),
        completion_tokens=jnp.asarray(r.integers(0, vocab, (p, g, tc)), jnp.int32),
        completion_mask=jnp.asarray(cmask),
        logprobs=jnp.asarray(np.where(cmask, -r.uniform(1, 5, (p, g, tc)), 0), jnp.float32),
        prompt_logprobs=jnp.zeros((p, tp), jnp.float32),
        rewards=jnp.asarray(r.normal(size=(p, g)), jnp.float32),
        correct=jnp.asarray(r.integers(0, 2, (p, g)).astype(bool)),
        member_mask=jnp.ones((p, g), bool), is_anchor=jnp.zeros((p, g), bool))


@pytest.mark.parametrize("agg", ["token-mean", pytest.param("seq-mean-token-mean", marks=pytest.mark.slow),
                                 pytest.param("seq-mean-token-sum-norm", marks=pytest.mark.slow)])
def test_grad_accumulation_does_not_change_the_update(agg):
    """grad_accum = 1, 2, 4 micro-batches give the same loss and gradient (global normalisers).

    Plain SGD (lr 1) so the parameter change *is* the gradient; Adam's first step is g/|g|,
    which would amplify float round-off in near-zero gradient entries. grad_accum = 8 (2-row
    micro-batches that split the groups of 4) is refused by validate, naming the keys, and the
    update itself still gives the same result (groups split over micro-batches)."""
    import optax
    ro = _random_rollout(p=4)
    results = []
    for acc in (1, 2, 4, 8):
        c = base_config()
        c.train.grad_accum = acc
        c.train.prompts_per_step = 4
        c.sampling.num_generations = 4
        c.loss.agg_mode = agg
        c.optim.lr = 1e-2
        if acc < 8:
            validate(c)
        else:
            with pytest.raises(ValueError, match=r"grad_accum.*prompts_per_step"):
                validate(c)
        graphdef, params, rest = split_model(_tiny_model())
        tx = optax.sgd(1.0)
        state = init_train_state(params, tx, 0)
        update = make_update_fn(c, graphdef, rest, tx)
        state, m = update(state, ro, None)
        results.append((jax.tree.leaves(jax.device_get(state.params)), float(m["loss"])))
    for leaves, loss in results[1:]:
        np.testing.assert_allclose(loss, results[0][1], rtol=1e-5, atol=1e-6)
        for x, y in zip(leaves, results[0][0]):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_kl_term_and_several_iterations_run():
    """beta > 0 keeps a reference model; mu = 2 iterations over 2 minibatches each."""
    ro = _random_rollout()
    c = base_config()
    c.loss.beta = 0.04
    c.train.num_iterations = 2
    c.train.num_minibatches = 2
    c.train.prompts_per_step = 2
    c.sampling.num_generations = 4
    validate(c)
    graphdef, params, rest = split_model(_tiny_model())
    tx = build_optimizer(c)
    state = init_train_state(params, tx, 0)
    update = make_update_fn(c, graphdef, rest, tx)
    ref = jax.tree.map(jnp.copy, params)
    state, m = update(state, ro, ref)
    assert int(state.step) == 1
    assert np.isfinite(float(m["loss"])) and float(m["kl_mean"]) >= 0.0
    assert float(m["ratio_max"]) > 1.0 or float(m["ratio_min"]) < 1.0  # later updates moved


# ------------------------------------------------------------------------------ config errors


@pytest.mark.parametrize("key,value,match", [
    ("advantage.baseline", "ppo", "advantage.baseline"),
    ("loss.agg_mode", "sum", "loss.agg_mode"),
    ("sampling.num_generations", 1, "num_generations"),
    ("advantage.reward_transforms", "dra,foo", "foo"),
    ("eval.ks", "1,99", "eval.ks"),
])
def test_bad_config_values_name_the_key(key, value, match):
    c = base_config()
    node = c
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError, match=match):
        validate(c)


def test_cli_rejects_unknown_key_and_wrong_type():
    for arg, needle in (("--config.stepz=3", "steps"), ("--config.steps=abc", "steps"),
                        ("--config.advantage.baseline=ppo", "advantage.baseline"),
                        ("stray_positional", "unexpected arguments")):
        p = subprocess.run([sys.executable, "-m", "experiments.run", arg], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0
        assert needle in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr


def test_every_experiment_config_validates():
    import importlib
    names = [f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
             if f.endswith(".py") and f not in ("__init__.py", "common.py")]
    assert {"grpo", "dr_grpo", "dra_grpo", "dra_dr_grpo", "dagrpo", "progrpo",
            "dra_paper", "default"} <= set(names)
    for n in names:
        c = importlib.import_module(f"experiments.configs.{n}").get_config()
        validate(c)
        doc = importlib.import_module(f"experiments.configs.{n}").__doc__
        assert "Command" in doc and "Hardware" in doc and "Expected" in doc, n


@pytest.mark.slow
def test_same_run_on_an_8_device_mesh(tiny_llama_dir, tiny_run_config, tmp_path):
    """The same config on 8 fake CPU devices (data 2 x fsdp 2 x tensor 2) gives the same
    metrics as on one device (the flag is set only in the subprocess)."""
    from jaxgrpo.loop import Trainer

    over = {"steps": 2, "train.prompts_per_step": 4, "eval.num_prompts": 4}
    c = tiny_run_config(tiny_llama_dir, tmp_path / "one", **over)
    t = Trainer(c)
    t.train()
    t.close()
    one = read_train_metrics(tmp_path / "one")

    flat = _flat(c.to_dict())
    for k in ("model.path", "run_dir", "mesh.data", "mesh.fsdp", "mesh.tensor"):
        flat.pop(k)
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_train_mesh_worker.py"),
                        tiny_llama_dir, str(tmp_path / "mesh"), "2", "2", "2", json.dumps(flat)],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert "fsdp" in out["q_spec"] and "tensor" in out["q_spec"], out["q_spec"]
    mesh = {r["step"]: r for r in out["metrics"] if r["kind"] == "train"}
    for step in (1, 2):
        for key in ("loss", "reward/mean", "grad_norm", "entropy_mean", "completion_length"):
            np.testing.assert_allclose(mesh[step][key], one[step][key], rtol=1e-4, atol=1e-5,
                                       err_msg=f"step {step} {key}")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tiny_llama_dir, tiny_run_config, tmp_path):
    """`python -m experiments.run` under SIGTERM: finishes the step, saves a checkpoint, exits
    with EXIT_STOPPED = 75 (resuming from such a checkpoint is
    test_resume_gives_the_uninterrupted_run)."""
    import signal
    import time

    run_dir = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run_dir, steps=200)
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        "import json\nfrom jaxgrpo.experiment import base_config\n\n\ndef get_config():\n"
        "    c = base_config()\n"
        f"    c.update_from_flattened_dict(json.loads({json.dumps(json.dumps(_flat(c.to_dict())))}))\n"
        "    return c\n")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", f"--config={cfg_file}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]  # jaxgrpo.errors.EXIT_STOPPED
    assert "saving a checkpoint" in out
    steps = [int(s) for s in os.listdir(run_dir / "checkpoints")]
    assert len(steps) == 1 and 1 <= steps[0] < 200
    assert "eval_step200.jsonl" not in os.listdir(run_dir)  # stopped early, no final eval


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("chain", [
    {"advantage.reward_transforms": "dra"},  # packaged MiniLM encoder
    pytest.param({"advantage.reward_transforms": "dra", "embedding.model": "policy"},
                 marks=pytest.mark.slow),
    pytest.param({"advantage.baseline": "dagrpo", "anchors.enabled": True, "anchors.trigger": "always"},
                 marks=pytest.mark.slow),
    pytest.param({"advantage.baseline": "dr_grpo", "advantage.advantage_transforms": "progrpo",
                  "loss.agg_mode": "seq-mean-token-sum-norm"}, marks=pytest.mark.slow),
])
def test_each_method_chain_trains_in_the_loop(tiny_llama_dir, tiny_run_config, tmp_path, chain):
    """DRA (both embedders), DaGRPO with anchors and ProGRPO run through the host loop and
    report their diagnostics."""
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run", steps=1, **chain))
    t.train()
    t.close()
    m = read_train_metrics(tmp_path / "run")[1]
    assert np.isfinite(m["loss"])
    name = (chain.get("advantage.reward_transforms") or chain.get("advantage.advantage_transforms")
            or chain["advantage.baseline"])
    assert any(k.startswith(f"{name}/") for k in m), sorted(m)
    if chain.get("anchors.enabled"):
        assert m["anchor_token_frac"] > 0


def test_a_registered_transform_is_a_config_choice_with_typed_options():
    """Extending: register a baseline, and it is selectable and configurable like the built-ins."""
    from jaxgrpo.advantages import registry
    from jaxgrpo.train import advantage_fn_from_config

    def sign_baseline(rollout, *, scale: float = 1.0):
        adv = scale * jnp.sign(rollout.rewards - rollout.rewards.mean(axis=1, keepdims=True))
        return adv, {"frac_positive": jnp.mean(adv > 0)}

    registry.register_transform("sign", "baseline", sign_baseline)
    try:
        c = base_config()
        c.advantage.baseline = "sign"
        c.advantage.options.sign.scale = 2.0
        validate(c)
        with pytest.raises(TypeError):
            c.advantage.options.sign.scale = "big"  # typed from the default
        adv, diag = advantage_fn_from_config(c)(_random_rollout())
        r = np.asarray(_random_rollout().rewards)
        np.testing.assert_allclose(adv, 2.0 * np.sign(r - r.mean(1, keepdims=True)))
        assert "sign/frac_positive" in diag
    finally:
        registry._REGISTRY.pop("sign")


def test_random_init_smoke_run_uses_the_checkpoints_tokenizer_only(tiny_llama_dir,
                                                                   tiny_run_config, tmp_path):
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run", steps=1,
                                **{"model.random_init_layers": 1, "model.random_init_hidden": 32}))
    assert t.model_config.num_hidden_layers == 1 and t.model_config.hidden_size == 32
    assert t.model_config.vocab_size == 320  # the checkpoint's vocabulary, for its tokenizer
    t.train()
    t.close()
    assert np.isfinite(read_train_metrics(tmp_path / "run")[1]["loss"])


# ------------------------------------------------- memory: micro-batched reference, chunked head


def _other_params(seed=1):
    """Reference-policy params of the tiny model's shape, from another initialisation."""
    cfg = _tiny_model().config
    return split_model(Decoder(cfg, rngs=nnx.Rngs(seed)))[1]


@pytest.mark.slow
def test_reference_pass_per_micro_batch_and_chunked_head_keep_the_update():
    """beta > 0 with a reference policy unlike the policy: the reference log-probs computed per
    (strided) micro-batch with a time-chunked LM head (chunks 3 and 2 do not divide Tc = 5)
    give the loss and gradient (SGD lr 1: the parameter change) of one pass over all rows, and
    the KL metric equals k3 = exp(-d) + d - 1 computed in float64 from full-batch log-probs."""
    import optax

    from jaxgrpo.logprobs import completion_logprobs
    from jaxgrpo.train import flatten_rollout

    ro = _random_rollout(p=4)
    ref = _other_params()
    runs = []
    for acc, chunk in ((1, 0), (2, 3), (4, 2)):
        c = base_config()
        c.train.prompts_per_step, c.sampling.num_generations = 4, 4
        c.train.grad_accum, c.train.logits_chunk = acc, chunk
        c.loss.beta = 0.04
        validate(c)
        graphdef, params, rest = split_model(_tiny_model())
        before = jax.tree.leaves(jax.device_get(params))
        tx = optax.sgd(1.0)
        state, m = make_update_fn(c, graphdef, rest, tx)(init_train_state(params, tx, 0), ro, ref)
        delta = [a - b for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), before)]
        runs.append((delta, float(m["loss"]), float(m["kl_mean"])))
    assert max(float(np.abs(d).max()) for d in runs[0][0]) > 1e-3  # a real gradient
    for delta, loss, _ in runs[1:]:
        np.testing.assert_allclose(loss, runs[0][1], rtol=1e-5, atol=1e-6)
        for x, y in zip(delta, runs[0][0]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # KL of the one-micro-batch run against an independent float64 k3 over all tokens.
    graphdef, params, rest = split_model(_tiny_model())
    b = flatten_rollout(ro, jnp.zeros(ro.rewards.shape))
    args = (b["prompt_tokens"], b["prompt_mask"], b["completion_tokens"], b["completion_mask"])
    lp = np.asarray(completion_logprobs(nnx.merge(graphdef, params, rest), *args), np.float64)
    lr = np.asarray(completion_logprobs(nnx.merge(graphdef, ref, rest), *args), np.float64)
    mask = np.asarray(b["completion_mask"])
    d = lp - lr
    k3 = (np.exp(-d) + d - 1)[mask].mean()
    assert k3 > 1e-3
    np.testing.assert_allclose(runs[0][2], k3, rtol=1e-4)


def test_micro_batches_are_strided_whole_groups():
    """Micro-batch m holds groups m, m + n, ... with each group's rows in order; a split that
    cannot keep groups whole strides over rows."""
    from jaxgrpo.train import micro_batches

    n_rows, g = 24, 3  # 8 groups
    batch = {"advantages": jnp.arange(n_rows), "x": jnp.arange(2 * n_rows).reshape(n_rows, 2)}
    mbs, unit = micro_batches(batch, 4, g)
    assert unit == 3
    groups = np.asarray(mbs["advantages"]).reshape(4, 2, 3) // 3
    np.testing.assert_array_equal(groups[:, :, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(np.asarray(mbs["advantages"])[1], [3, 4, 5, 15, 16, 17])
    np.testing.assert_array_equal(np.asarray(mbs["x"])[1, :, 0], 2 * np.array([3, 4, 5, 15, 16, 17]))
    mbs, unit = micro_batches(batch, 12, g)  # 2-row micro-batches: groups cannot stay whole
    assert unit == 1
    np.testing.assert_array_equal(np.asarray(mbs["advantages"])[5], [5, 17])


# --------------------------------------------------------------------- precision that trains


def _changed(before, after):
    """(fraction of entries that changed, ||after - before|| / ||before||) over all leaves."""
    b = np.concatenate([np.asarray(x, np.float64).ravel() for x in before])
    a = np.concatenate([np.asarray(x, np.float64).ravel() for x in after])
    return float(np.mean(a != b)), float(np.linalg.norm(a - b) / np.linalg.norm(b)), a - b


@pytest.mark.slow
def test_fp32_master_weights_with_bf16_compute_train_at_lr_1e_6():
    """10 AdamW steps at lr 1e-6: float32 parameters with bfloat16 compute change (almost) every
    weight that has a gradient, by the relative amount and in the direction of an all-float32
    run; bfloat16
    parameters (the old paper config) round the updates away."""
    from jaxgrpo.logprobs import completion_logprobs
    from jaxgrpo.train import flatten_rollout

    cfg = _tiny_model().config
    ro0 = _random_rollout(p=4)
    b = flatten_rollout(ro0, jnp.zeros(ro0.rewards.shape))
    # On-policy behaviour log-probs (ratio 1 at the start), from the float32 model.
    ref_model = Decoder(cfg, rngs=nnx.Rngs(0))
    old = completion_logprobs(ref_model, b["prompt_tokens"], b["prompt_mask"],
                              b["completion_tokens"], b["completion_mask"])
    ro = ro0.replace(logprobs=old.reshape(ro0.completion_tokens.shape))
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = 4, 4
    c.optim.lr, c.optim.grad_clip = 1e-6, 1.0
    validate(c)
    out = {}
    for name, param_dtype, dtype in (("fp32", jnp.float32, jnp.float32),
                                     ("bf16_compute", jnp.float32, jnp.bfloat16),
                                     ("bf16_params", jnp.bfloat16, jnp.bfloat16)):
        graphdef, params, rest = split_model(
            Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
        before = jax.tree.leaves(jax.device_get(params))
        tx = build_optimizer(c)
        state = init_train_state(params, tx, 0)
        update = make_update_fn(c, graphdef, rest, tx)
        for _ in range(10):
            state, m = update(state, ro, None)
        assert all(x.dtype == param_dtype for x in jax.tree.leaves(state.params))
        mu = state.opt_state[1][0].mu
        assert all(x.dtype == param_dtype for x in jax.tree.leaves(mu))  # moments follow params
        out[name] = _changed(before, jax.tree.leaves(jax.device_get(state.params)))
    frac32, rel32, d32 = out["fp32"]
    frac_mixed, rel_mixed, d_mixed = out["bf16_compute"]
    frac16, rel16, _ = out["bf16_params"]
    print({k: v[:2] for k, v in out.items()})
    # Entries with no gradient at all (embedding rows of tokens not in the batch) stay put in
    # every run; the rest move.
    assert frac32 > 0.9 and frac_mixed > 0.99 * frac32
    assert 0.8 < rel_mixed / rel32 < 1.25
    cosine = float(d32 @ d_mixed / (np.linalg.norm(d32) * np.linalg.norm(d_mixed)))
    assert cosine > 0.9, cosine
    assert frac16 < 0.05 and rel16 < 0.25 * rel32  # bf16 master weights lose the updates


def test_load_policy_reads_param_and_compute_dtypes(tiny_llama_dir):
    from jaxgrpo.loop import load_policy

    c = base_config()
    c.model.path = tiny_llama_dir
    c.model.dtype = "bfloat16"
    for random_layers in (0, 1):  # the checkpoint's weights, and a random decoder of its vocab
        c.model.random_init_layers = random_layers
        model, _ = load_policy(validate(c))
        kernel = model.layers.self_attn.q_proj.kernel[...]  # stacked [L, E, H*D]
        assert kernel.dtype == jnp.float32 and model.dtype == jnp.bfloat16
        hidden, _ = model.hidden_states(jnp.ones((1, 3), jnp.int32))
        assert hidden.dtype == jnp.bfloat16


# ------------------------------------------------------------------ micro-batch validation


def test_micro_batch_the_mesh_or_the_group_cannot_divide_is_refused():
    import importlib
    c = importlib.import_module("experiments.configs.dra_paper").get_config()
    c.mesh.data, c.mesh.fsdp = 1, 8
    validate(c)  # 2 micro-batches of 24 rows on 8 batch devices
    c.train.grad_accum = 4  # 12 rows over 8 devices
    with pytest.raises(ValueError, match=r"mesh\.data \* mesh\.fsdp.*train\.grad_accum"):
        validate(c)
    c.mesh.data, c.mesh.fsdp = 2, 2  # 12 rows over 4 devices: fine
    validate(c)
    c.train.grad_accum = 3  # 16 rows: not whole groups of G = 6
    with pytest.raises(ValueError, match=r"group size G = 6.*train\.grad_accum"):
        validate(c)


# -------------------------------------------------------- no recompilation after the first step


@pytest.mark.slow  # two subprocess runs on 2-device meshes (~80 s)
def test_no_recompilation_after_the_first_step_on_2_device_meshes():
    """3 host-loop steps (sampler, then update with beta > 0, 2 micro-batches, chunked head) on
    fsdp, data and tensor meshes of 2 fake devices compile the sampler and the update once each
    (counted from jax_log_compiles and from the jit caches) and give the metrics of the run
    without a mesh; a micro-batch the mesh cannot divide is refused naming the keys."""
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_compile_count_worker.py")],
                       env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for name in ("none", "fsdp", "data", "tensor"):
        for step, counts in enumerate(out[name]["counts"]):
            assert counts == {"sampler_logged": 1, "update_logged": 1, "sampler_cache": 1,
                              "update_cache": 1}, (name, step, counts)
    assert "fsdp" in out["fsdp"]["q_spec"] and "tensor" in out["tensor"]["q_spec"]
    for name in ("fsdp", "data", "tensor"):
        for step, (a, b) in enumerate(zip(out[name]["metrics"], out["none"]["metrics"])):
            for key in ("loss", "kl_mean", "grad_norm", "reward/mean", "entropy_mean"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5,
                                           err_msg=f"{name} step {step + 1} {key}")
    assert out["none"]["metrics"][-1]["kl_mean"] > 0  # the policy moved off the reference
    err = out["indivisible_error"]
    assert err and "mesh.data * mesh.fsdp" in err and "train.grad_accum" in err, err

# ------------------------------------------------------------------------------ loss menu wiring


def _menu_update(ro, advantages=None, **cfg):
    """One update of the tiny model with plain SGD; returns (metrics, params leaves)."""
    import optax
    c = base_config()
    c.train.prompts_per_step = 2
    c.sampling.num_generations = 4
    for k, v in cfg.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    validate(c)
    graphdef, params, rest = split_model(_tiny_model())
    tx = optax.sgd(1e-2)
    fixed = None if advantages is None else (lambda _: (advantages, {}))
    update = make_update_fn(c, graphdef, rest, tx, advantage_fn=fixed)
    state, m = update(init_train_state(params, tx, 0), ro, None)
    return jax.device_get(m), jax.tree.leaves(jax.device_get(state.params))


@pytest.mark.slow  # four compiles of the update
def test_dapo_and_bnpo_normalisers_in_the_update():
    """dapo divides each optimiser step by the rollout's token count, bnpo each micro-batch by
    its own (TRL loss_type); the ratios to token-mean follow from the mask counts alone."""
    ro = _random_rollout()
    ro = ro.replace(rewards=ro.rewards.at[1].set(0.5))  # prompt 1: constant group, advantage 0
    m = np.asarray(ro.completion_mask)
    n0, n1 = m[0].sum(), m[1].sum()  # tokens of prompt 0's and prompt 1's rows
    tm, _ = _menu_update(ro, **{"train.num_minibatches": 2, "loss.agg_mode": "token-mean"})
    dapo, _ = _menu_update(ro, **{"train.num_minibatches": 2, "loss.agg_mode": "dapo"})
    np.testing.assert_allclose(dapo["loss_first"], tm["loss_first"] * n0 / (n0 + n1), rtol=1e-5)
    tm, _ = _menu_update(ro, **{"train.grad_accum": 2, "loss.agg_mode": "token-mean"})
    bnpo, _ = _menu_update(ro, **{"train.grad_accum": 2, "loss.agg_mode": "bnpo"})
    assert abs(float(tm["loss"])) > 1e-4
    np.testing.assert_allclose(bnpo["loss"], tm["loss"] * (n0 + n1) / (2 * n0), rtol=1e-5)


@pytest.mark.slow  # three compiles of the update
def test_mask_truncated_completions_drops_them_from_the_loss_only():
    ro = _random_rollout()
    trunc = np.zeros((2, 4), bool)
    trunc[0, 2] = trunc[1, 0] = True
    ro = ro.replace(truncated=jnp.asarray(trunc))
    from jaxgrpo.train import advantage_fn_from_config
    adv, _ = advantage_fn_from_config(base_config())(ro)  # from all members, truncated included
    masked = ro.replace(completion_mask=ro.completion_mask & ~jnp.asarray(trunc)[..., None])
    a, pa = _menu_update(ro, **{"loss.mask_truncated_completions": True})
    b, pb = _menu_update(masked, advantages=adv)
    c, _ = _menu_update(ro)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    assert a["num_tokens"] == b["num_tokens"] < c["num_tokens"]
    for x, y in zip(pa, pb):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="truncated"):
        _menu_update(ro.replace(truncated=None), **{"loss.mask_truncated_completions": True})


def test_cosine_schedule_with_min_lr_matches_hf():
    """transformers get_cosine_with_min_lr_schedule_with_warmup (min_lr_rate), written out."""
    from jaxgrpo.train import lr_schedule

    c = base_config()
    c.steps, c.optim.lr, c.optim.schedule = 50, 1e-6, "cosine"
    c.optim.warmup_steps, c.optim.min_lr_ratio = 5, 0.1
    validate(c)
    sched = lr_schedule(c)

    def hf(step, warm=5, total=50, min_lr_rate=0.1):
        if step < warm:
            return step / max(1, warm)
        progress = (step - warm) / max(1, total - warm)
        factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
        return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)

    for s in range(0, 51):
        np.testing.assert_allclose(float(sched(s)), 1e-6 * hf(s), rtol=1e-5, atol=1e-13)


@pytest.mark.parametrize("key,value,match", [
    ("loss.importance_sampling_level", "seq", "loss.importance_sampling_level"),
    ("loss.agg_mode", "grpo", "loss.agg_mode"),
    ("loss.clip_ratio_c", 0.5, "loss.clip_ratio_c"),
    ("loss.delta", 1.0, "loss.delta"),
    ("loss.log_ratio_clamp", -1.0, "loss.log_ratio_clamp"),
    ("loss.kl_clamp_preset", "trl", "loss.kl_clamp_preset"),
    ("optim.min_lr_ratio", 0.1, "optim.schedule"),
    ("optim.min_lr_ratio", 1.5, "optim.min_lr_ratio"),
])
def test_bad_loss_menu_values_name_the_key(key, value, match):
    c = base_config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ValueError, match=match):
        validate(c)


def test_kl_clamp_preset_conflicts_with_explicit_clamps():
    c = base_config()
    c.loss.kl_clamp_preset = "verl"
    validate(c)
    c.loss.kl_clamp = 5.0
    with pytest.raises(ValueError, match="loss.kl_clamp_preset.*loss.kl_clamp"):
        validate(c)


def test_logits_chunk_bounds_the_updates_memory():
    """train.logits_chunk reaches the update's LM head (loss and reference pass): XLA's own
    memory analysis of the compiled update holds [rows, Tc, V] float32 logits at once without
    it and a chunk of them with it (measured: 224.6 MB against 38.4 MB, 64 MiB of logits)."""
    import optax

    cfg = ModelConfig(model_type="llama", vocab_size=8192, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8)
    ro = _random_rollout(p=2, g=4, tc=256, vocab=8192)
    logits_bytes = 2 * 4 * 256 * 8192 * 4  # one [rows, Tc, V] float32 array: 64 MiB
    temps = {}
    for chunk in (0, 32):
        c = base_config()
        c.train.prompts_per_step, c.sampling.num_generations = 2, 4
        c.train.logits_chunk = chunk
        c.loss.beta = 0.04
        validate(c)
        graphdef, params, rest = split_model(Decoder(cfg, rngs=nnx.Rngs(0)))
        tx = optax.adamw(1e-6)
        fn = make_update_fn(c, graphdef, rest, tx, jit=False)
        compiled = jax.jit(fn).lower(init_train_state(params, tx, 0), ro, params).compile()
        temps[chunk] = compiled.memory_analysis().temp_size_in_bytes
    assert temps[0] >= logits_bytes, temps  # the one-pass head holds the whole logits
    assert temps[32] < 0.3 * temps[0], temps
    assert temps[32] < logits_bytes, temps  # neither pass (policy, reference) holds them all


# ------------------------------------------------------------ pi_old from the trainer (issue 40)


def _sampled_rollout(dtype, p=2, g=4, tp=6, tc=8, seed=0):
    """A rollout the tiny model sampled itself (KV-cache decode in ``dtype``), with rewards
    that spread in every group: its logprobs are the sampler's, which in bfloat16 are not the
    update's teacher-forced ones."""
    from jaxgrpo.rollout import rollout_from_sample
    from jaxgrpo.sampling import SamplingConfig, make_sampler

    cfg = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8)
    model = Decoder(cfg, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    r = np.random.default_rng(seed)
    sampler = make_sampler(graphdef, SamplingConfig(max_new_tokens=tc, num_generations=g,
                                                    eos_token_ids=(), pad_token_id=0))
    out = sampler(state, jnp.asarray(r.integers(1, 64, (p, tp)), jnp.int32),
                  jnp.ones((p, tp), bool), jax.random.key(seed))
    rewards = jnp.asarray(r.normal(size=(p * g,)), jnp.float32)
    return model, rollout_from_sample(out, rewards, rewards > 0)


def _update_of(model, ro, **cfg):
    import optax
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = ro.rewards.shape
    c.sampling.max_new_tokens = ro.completion_tokens.shape[-1]
    for k, v in cfg.items():
        section, name = k.split(".")
        c[section][name] = v
    validate(c)
    graphdef, params, rest = split_model(model)
    params = jax.tree.map(jnp.copy, params)  # the update donates its state
    tx = optax.sgd(1e-2)
    update = make_update_fn(c, graphdef, rest, tx)
    return jax.device_get(update(init_train_state(params, tx, 0), ro, None)[1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_on_policy_first_pass_ratio_is_exactly_one(dtype):
    """mu = 1, one minibatch: pi_old is the update's own detached log-probs, so every ratio is
    exp(0) = 1 in bf16 as in fp32, while the sampler's log-probs (today's pi_old, kept as
    train.pi_old='sampler') give ratios != 1 in bf16: the gap the mismatch metrics report."""
    model, ro = _sampled_rollout(dtype)
    m = _update_of(model, ro, **{"train.grad_accum": 2})
    assert float(m["ratio_min"]) == 1.0 and float(m["ratio_max"]) == 1.0
    assert float(m["clip_frac"]) == 0.0
    legacy = _update_of(model, ro, **{"train.pi_old": "sampler", "train.grad_accum": 2})
    # the same gap, measured from the same (first and only) pass in both modes
    for k in ("mismatch/abs_mean", "mismatch/abs_max", "mismatch/kl", "mismatch/k3"):
        np.testing.assert_allclose(m[k], legacy[k], rtol=1e-6, atol=1e-9)
    # with the sampler's pi_old the ratio is exp(trainer - sampler): its extremes are the gap's
    np.testing.assert_allclose(max(np.log(legacy["ratio_max"]), -np.log(legacy["ratio_min"])),
                               legacy["mismatch/abs_max"], rtol=1e-3, atol=1e-7)
    if dtype == jnp.bfloat16:
        assert float(m["mismatch/abs_max"]) > 1e-3  # bf16 decode vs teacher forcing differ
        assert float(legacy["ratio_max"]) > 1.0 or float(legacy["ratio_min"]) < 1.0
    else:
        assert float(m["mismatch/abs_max"]) < 1e-4  # float32 paths agree


def _separate_pass(model, ro):
    """log pi(o_t) of the rollout by one plain teacher-forced forward pass (each group's prompt
    run once, as the update does)."""
    from jaxgrpo.logprobs import completion_logprobs
    p, g, tc = ro.completion_tokens.shape
    lp = completion_logprobs(model, ro.prompt_tokens, ro.prompt_mask,
                             ro.completion_tokens.reshape(p * g, tc),
                             ro.completion_mask.reshape(p * g, tc))
    return np.asarray(lp, np.float64), np.asarray(ro.logprobs.reshape(p * g, tc), np.float64), \
        np.asarray(ro.completion_mask.reshape(p * g, tc))


@pytest.mark.parametrize("cfg", [{"train.num_iterations": 2}, {"train.num_minibatches": 2}])
def test_pi_old_pass_equals_a_separate_forward_pass(cfg):
    """mu > 1 or several minibatches: pi_old comes from one no-grad pass before the first
    optimiser step. Its gap to the sampler equals that of a separate forward pass of the
    sampling parameters, and later passes see ratios != 1 (the policy moved)."""
    model, ro = _sampled_rollout(jnp.bfloat16)
    trainer, sampler, mask = _separate_pass(model, ro)
    r = (trainer - sampler)[mask]
    m = _update_of(model, ro, **cfg)
    np.testing.assert_allclose(m["mismatch/abs_mean"], np.abs(r).mean(), rtol=1e-4)
    np.testing.assert_allclose(m["mismatch/abs_max"], np.abs(r).max(), rtol=1e-4)
    np.testing.assert_allclose(m["mismatch/kl"], (-r).mean(), rtol=1e-3, atol=1e-7)
    assert float(m["ratio_max"]) > 1.0 or float(m["ratio_min"]) < 1.0


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_sampler_correction_weights_the_policy_gradient_term(mode):
    """loss.sampler_correction: with the ratio 1 (mu = 1) each token's surrogate is -A w, w the
    TRL weight of pi_old = the trainer's pass against the sampler's log-probs (float64 port),
    so pg_loss (token-mean) = -sum(A w) / tokens."""
    model, ro = _sampled_rollout(jnp.bfloat16)
    trainer, sampler, mask = _separate_pass(model, ro)
    adv = np.asarray(np.random.default_rng(3).normal(size=ro.rewards.shape), np.float32)
    diff = (trainer - sampler) * mask
    if mode.startswith("sequence"):
        diff = np.broadcast_to(diff.sum(-1, keepdims=True), diff.shape)
    w = np.exp(diff)
    cap = 1.002  # small: bf16 gaps of ~1e-3 per token cross it, so both branches are exercised
    w = np.clip(w, None, cap) if mode.endswith("truncate") else np.where(w > cap, 0.0, w)
    assert (w[mask] != 1).any()
    a = np.repeat(adv.reshape(-1, 1), mask.shape[1], 1)
    expect = -(a * w * mask).sum() / mask.sum()

    import optax
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = ro.rewards.shape
    c.loss.sampler_correction, c.loss.sampler_correction_cap = mode, cap
    validate(c)
    graphdef, params, rest = split_model(model)
    params = jax.tree.map(jnp.copy, params)  # the update donates its state
    tx = optax.sgd(1e-2)
    update = make_update_fn(c, graphdef, rest, tx, advantage_fn=lambda _: (jnp.asarray(adv), {}))
    m = jax.device_get(update(init_train_state(params, tx, 0), ro, None)[1])
    np.testing.assert_allclose(m["pg_loss"], expect, rtol=2e-3, atol=1e-6)
    assert float(m["mismatch/is_weight_max"]) <= cap + 1e-6


def test_sampler_correction_needs_the_trainers_pi_old():
    c = base_config()
    c.loss.sampler_correction = "token_truncate"
    c.train.pi_old = "sampler"
    with pytest.raises(ValueError, match=r"loss\.sampler_correction.*train\.pi_old='trainer'"):
        validate(c)
