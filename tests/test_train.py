"""The training step and the host loop: exact resume, accumulation invariance, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrpo.checkpoint import CheckpointError
from jaxgrpo.config import base_config, validate
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
    real = t.update

    def poisoned(*args):
        state, m = real(*args)
        return state, {**m, "loss": jnp.float32(np.nan)}

    t.train(stop_at=1)
    t.update = poisoned
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


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_grad_accumulation_does_not_change_the_update(agg):
    """grad_accum = 1, 2, 4 micro-batches give the same loss and gradient (global normalisers).

    Plain SGD (lr 1) so the parameter change *is* the gradient; Adam's first step is g/|g|,
    which would amplify float round-off in near-zero gradient entries."""
    import optax
    ro = _random_rollout()
    results = []
    for acc in (1, 2, 4):
        c = base_config()
        c.train.grad_accum = acc
        c.train.prompts_per_step = 2
        c.sampling.num_generations = 4
        c.loss.agg_mode = agg
        c.optim.lr = 1e-2
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
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
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


def test_fully_jitted_step_with_a_token_reward_matches_the_split_pipeline():
    """make_train_step (sample -> jittable token reward -> advantages -> update in ONE jit)
    equals the host-loop composition of the same pieces."""
    import optax

    from jaxgrpo.rewards.token_rewards import digit_match_reward
    from jaxgrpo.sampling import SamplingConfig, make_sampler
    from jaxgrpo.train import make_train_step, rollout_from_sample

    c = base_config()
    c.train.prompts_per_step = 2
    c.sampling.num_generations = 4
    validate(c)
    digits = jnp.arange(10, 20)  # pretend ids 10..19 are the digits 0..9
    scfg = SamplingConfig(max_new_tokens=6, temperature=1.0, eos_token_ids=(1,),
                          pad_token_id=0, num_samples=4)
    p, tp = 2, 5
    prompts = jnp.asarray(np.random.default_rng(0).integers(2, 64, (p, tp)), jnp.int32)
    pmask = jnp.ones((p, tp), bool)
    # Target "1" (id 11) for every row: a random policy hits it now and then.
    targets = (jnp.full((p * 4, 1), 11, jnp.int32), jnp.ones((p * 4, 1), bool))

    def reward_fn(out, tgt):
        r = digit_match_reward(out.completion_tokens, out.completion_mask, tgt[0], tgt[1],
                               digits, 1, "all", True)
        return r, r >= 1.0

    def fresh():
        graphdef, params, rest = split_model(_tiny_model())
        tx = optax.sgd(0.5)
        return graphdef, rest, tx, init_train_state(params, tx, 3)

    graphdef, rest, tx, state = fresh()
    step = make_train_step(c, graphdef, rest, tx, scfg, reward_fn)
    state, m_fused = step(state, prompts, pmask, targets)
    fused = jax.tree.leaves(jax.device_get(state.params))

    graphdef, rest, tx, state = fresh()
    sampler = make_sampler(graphdef, scfg)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    out = sampler(nnx.merge_state(state.params, rest), prompts, pmask, key)
    r, ok = reward_fn(out, targets)
    update = make_update_fn(c, graphdef, rest, tx)
    state, m_split = update(state, rollout_from_sample(out, np.asarray(r), np.asarray(ok)), None)
    assert float(m_fused["reward/mean"]) == pytest.approx(float(m_split["reward/mean"]))
    np.testing.assert_allclose(float(m_fused["loss"]), float(m_split["loss"]), atol=1e-6)
    for x, y in zip(fused, jax.tree.leaves(jax.device_get(state.params))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


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
        "import json\nfrom jaxgrpo.config import base_config\n\n\ndef get_config():\n"
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
    {"advantage.reward_transforms": "dra", "embedding.model": "policy"},
    {"advantage.baseline": "dagrpo", "anchors.enabled": True, "anchors.trigger": "always"},
    {"advantage.baseline": "dr_grpo", "advantage.advantage_transforms": "progrpo",
     "loss.agg_mode": "seq-mean-token-sum-norm"},
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
