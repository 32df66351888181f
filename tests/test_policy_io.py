"""Tests for jaxgrpo.policy_io without a training run: a run directory is written by hand
(config.json as jaxgrpo.run_dir writes it, checkpoints/<step>/ by jaxgrpo.checkpoint.Checkpointer
with the tiny random Llama's params perturbed by known noise), then read back: the config
record, the checkpoint steps, the params of the chosen step, and the errors."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxgrpo import policy_io
from jaxgrpo.errors import CheckpointError


def _config(model_dir, **overrides):
    from jaxgrpo.experiment import base_config

    c = base_config()
    c.model.path = str(model_dir)
    c.data.template = "plain"
    c.update_from_flattened_dict(overrides)
    return c


def _write_config(run_dir, c):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))  # what jaxgrpo.run_dir.write_config writes


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def saved_run(tiny_llama_dir, tmp_path_factory):
    """(run_dir, {step: params leaves}) with checkpoints at steps 3 and 7 of distinct params.

    The saved opt_state is a dict unlike any optimizer's: load_run_policy must not read it."""
    from jaxgrpo.checkpoint import Checkpointer
    from jaxgrpo.models import load_policy
    from jaxgrpo.train import TrainState, split_model

    run_dir = str(tmp_path_factory.mktemp("policy_io") / "run")
    c = _config(tiny_llama_dir, steps=7)
    _write_config(run_dir, c)
    model, _ = load_policy(c)
    _, params, _ = split_model(model)
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=5, async_save=False)
    saved = {}
    try:
        for step in (3, 7):
            leaves, treedef = jax.tree.flatten(params)
            keys = jax.random.split(jax.random.key(step), len(leaves))
            noisy = jax.tree.unflatten(treedef, [
                x + 0.01 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
            state = TrainState(params=noisy, opt_state={"not_adam": jnp.arange(5.0)},
                               step=jnp.asarray(step, jnp.int32),
                               rng=jax.random.key_data(jax.random.key(0)))
            ckpt.save(step, state, {"data_position": step, "step": step,
                                    "config": c.to_dict()})
            saved[step] = _leaves(noisy)
    finally:
        ckpt.close()
    base = _leaves(params)
    assert all(not np.array_equal(a, b) for a, b in zip(base, saved[3]))
    return run_dir, saved, base


def test_checkpoint_steps_sorts_numerically(tmp_path):
    assert policy_io.checkpoint_steps(tmp_path) == []  # no checkpoints/ at all
    root = tmp_path / "checkpoints"
    for d in ("2", "10", "1", "tmp", "3.orbax-checkpoint-tmp-1"):
        (root / d).mkdir(parents=True)
    (root / "5").write_text("a file, not a checkpoint")
    assert policy_io.checkpoint_steps(tmp_path) == [1, 2, 10]
    assert policy_io.checkpoint_steps(str(tmp_path)) == [1, 2, 10]


def test_load_run_config_round_trips_the_record(tmp_path, tiny_llama_dir):
    c = _config(tiny_llama_dir, steps=9, seed=11, **{"optim.lr": 0.003, "data.eval_size": 40,
                                                    "rewards.answer_sources": "boxed"})
    _write_config(tmp_path, c)
    got = policy_io.load_run_config(tmp_path)
    assert got.to_dict() == c.to_dict()
    assert (got.steps, got.seed, got.optim.lr, got.data.template) == (9, 11, 0.003, "plain")
    # a float key written as an integer (JSON writes 1.0 as 1 sometimes) stays a float
    values = json.loads((tmp_path / "config.json").read_text())
    values["optim"]["lr"] = 1
    (tmp_path / "config.json").write_text(json.dumps(values))
    lr = policy_io.load_run_config(tmp_path).optim.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_load_run_config_errors_name_the_file_and_key(tmp_path, tiny_llama_dir):
    assert issubclass(policy_io.RunDirError, FileNotFoundError)
    with pytest.raises(policy_io.RunDirError, match=r"run directory not found: .*nope"):
        policy_io.load_run_config(tmp_path / "nope")
    with pytest.raises(policy_io.RunDirError, match=r"no config\.json in run directory"):
        policy_io.load_run_config(tmp_path)
    path = tmp_path / "config.json"
    good = json.loads(_config(tiny_llama_dir).to_json_best_effort())
    cases = [
        ("{not json", r"config\.json: could not read the run config"),
        ("[1, 2]", r"config\.json: expected a JSON object, got list"),
        (json.dumps({**good, "data": 3}), r"config\.json: config key 'data' must be a mapping"),
        (json.dumps({**good, "nosuchkey": 1}), r"config\.json: unknown config key 'nosuchkey'"),
        (json.dumps({**good, "data": {**good["data"], "template": "fancy"}}),
         r"config\.json: .*data\.template"),  # a validate() failure, prefixed with the file
    ]
    for text, match in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=match) as e:
            policy_io.load_run_config(tmp_path)
        assert str(path) in str(e.value)


def test_load_run_policy_restores_the_chosen_step(saved_run, tiny_llama_dir):
    from flax import nnx

    run_dir, saved, base = saved_run
    assert policy_io.checkpoint_steps(run_dir) == [3, 7]
    model, tok, config = policy_io.load_run_policy(run_dir)  # the latest: 7
    assert config.steps == 7 and config.model.path == str(tiny_llama_dir)
    assert tok.eos_token == "<|im_end|>"
    got = _leaves(nnx.state(model, nnx.Param))
    assert len(got) == len(saved[7])
    for a, b in zip(got, saved[7]):
        np.testing.assert_array_equal(a, b)
    got3 = _leaves(nnx.state(policy_io.load_run_policy(run_dir, step=3)[0], nnx.Param))
    for a, b in zip(got3, saved[3]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match=r"step 5 not found in .*checkpoints "
                                              r"\(available: \[3, 7\]\)"):
        policy_io.load_run_policy(run_dir, step=5)


def test_load_run_policy_model_path_replaces_a_moved_model(saved_run, tiny_llama_dir, tmp_path):
    from flax import nnx

    src, saved, _ = saved_run
    run_dir = tmp_path / "copied"
    os.makedirs(run_dir)
    os.symlink(os.path.join(src, "checkpoints"), run_dir / "checkpoints")
    c = policy_io.load_run_config(src)
    c.model.path = str(tmp_path / "moved_away")  # the base weights are gone from here
    _write_config(str(run_dir), c)
    with pytest.raises(FileNotFoundError, match=r"moved_away"):
        policy_io.load_run_policy(run_dir)
    model, _, config = policy_io.load_run_policy(run_dir, model_path=tiny_llama_dir)
    assert config.model.path == str(tiny_llama_dir)
    for a, b in zip(_leaves(nnx.state(model, nnx.Param)), saved[7]):
        np.testing.assert_array_equal(a, b)


def test_load_run_policy_errors(saved_run, tiny_llama_dir, tmp_path):
    src, _, _ = saved_run
    c = policy_io.load_run_config(src)
    no_ckpt = tmp_path / "no_ckpt"
    _write_config(str(no_ckpt), c)
    with pytest.raises(policy_io.RunDirError, match=r"no checkpoints/ directory in run "
                                                    r".*no_ckpt"):
        policy_io.load_run_policy(no_ckpt)
    (no_ckpt / "checkpoints" / "tmp").mkdir(parents=True)
    with pytest.raises(policy_io.RunDirError, match=r"no checkpoint found in .*no_ckpt"):
        policy_io.load_run_policy(no_ckpt)
    # config.json builds another model shape than the one saved: CheckpointError naming the path
    other = tmp_path / "other"
    os.makedirs(other)
    os.symlink(os.path.join(src, "checkpoints"), other / "checkpoints")
    c.model.random_init_layers = 1
    c.model.random_init_hidden = 16
    _write_config(str(other), c)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoints/7 does not match the "
                                              r"model its config\.json builds") as e:
        policy_io.load_run_policy(other)
    assert "\n" not in str(e.value)


def _param_leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


# ----------------------------------------------------------------------------- policy_io


def test_load_run_policy_restores_the_trained_params(trained, tiny_llama_dir):
    from jaxgrpo.checkpoint import CheckpointError
    from jaxgrpo.policy_io import checkpoint_steps, load_run_policy

    run_dir, final = trained
    assert checkpoint_steps(run_dir) == [1, 2]
    model, tok, config = load_run_policy(run_dir)
    assert config.steps == 2 and config.model.path == tiny_llama_dir
    assert tok.eos_token == "<|im_end|>"
    got = _param_leaves(model)
    assert len(got) == len(final)
    for a, b in zip(got, final):
        np.testing.assert_array_equal(a, b)
    # step 1 is an earlier state (lr 1e-2 really moved the params)
    early = _param_leaves(load_run_policy(run_dir, step=1)[0])
    assert any(not np.array_equal(a, b) for a, b in zip(early, final))
    with pytest.raises(CheckpointError, match=r"step 7 not found .*checkpoints.*\[1, 2\]"):
        load_run_policy(run_dir, step=7)


def test_load_run_policy_errors_name_the_path(trained, tmp_path):
    from jaxgrpo.policy_io import load_run_config, load_run_policy

    run_dir, _ = trained
    with pytest.raises(FileNotFoundError, match="run directory not found: .*nope"):
        load_run_policy(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in run directory .*empty"):
        load_run_policy(empty)
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/ directory in run .*no_ckpt"):
        load_run_policy(no_ckpt)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "optim": {**cfg["optim"],
                                                                  "learning_rate": 1.0}}))
    with pytest.raises(ValueError, match=r"config\.json: unknown config key 'optim\.learning_rate'"):
        load_run_config(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "steps": "many"}))
    with pytest.raises(ValueError, match=r"config\.json: config key 'steps'"):
        load_run_config(bad)
    # Run directories written before "auto" hold a boolean sampling.unroll_layers.
    for old, new in ((True, "true"), (False, "false")):
        (bad / "config.json").write_text(json.dumps(
            {**cfg, "sampling": {**cfg["sampling"], "unroll_layers": old}}))
        assert load_run_config(bad).sampling.unroll_layers == new
