"""Tests for jaxgrpo.experiment: the composed experiment config (base_config, its --help, the
owning modules' sections and choices) and validate's one-line errors naming the key."""
from __future__ import annotations

import dataclasses

import pytest

from jaxgrpo import config
from jaxgrpo.errors import ConfigError
from jaxgrpo.experiment import (base_config, CHOICES, config_docs, describe_config, flatten,
                                RANGES, SECTIONS, validate)
from tests.test_config import _one_line


# ----------------------------------------------------------------------------- the experiment


def test_every_section_is_declared_beside_its_reader():
    where = {s.NAME: s.__module__ for s in SECTIONS}
    assert where == {
        "": "jaxgrpo.experiment", "model": "jaxgrpo.models.policy", "lora": "jaxgrpo.lora",
        "data": "jaxgrpo.data", "sampling": "jaxgrpo.sampling", "rewards": "jaxgrpo.env",
        "advantage": "jaxgrpo.advantages.registry", "embedding": "jaxgrpo.models.encoder",
        "anchors": "jaxgrpo.advantages.dagrpo", "loss": "jaxgrpo.losses",
        "train": "jaxgrpo.train", "optim": "jaxgrpo.train", "mesh": "jaxgrpo.sharding",
        "log": "jaxgrpo.logger", "eval": "jaxgrpo.evaluate", "checkpoint": "jaxgrpo.checkpoint"}
    for s in SECTIONS:
        assert dataclasses.fields(s) and s.__dataclass_params__.frozen, s


def test_help_lists_every_key_with_its_doc():
    text = describe_config()
    docs = config_docs()
    for key, value in flatten(base_config()).items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(key + " "))
        assert f"default {value!r}" in line
        assert line.rstrip().endswith(docs[key] if key in docs else "")
        doc = docs.get(key) or line.split(": ", 1)[1]
        assert doc.strip(), key


def test_the_sampling_section_is_the_samplers_config():
    """SamplingConfig.from_config(c.sampling, ...) is what the step samples with: its key fields
    are the sampling.* keys, converted ("" -> None, "auto" -> None)."""
    from jaxgrpo.sampling import SamplingConfig

    c = base_config()
    c.sampling.num_generations, c.sampling.cache_dtype, c.sampling.unroll_layers = 6, "", "false"
    s = SamplingConfig.from_config(c.sampling, eos_token_ids=[2, 3], pad_token_id=1)
    assert (s.num_generations, s.max_new_tokens, s.cache_dtype, s.unroll_layers) == (
        6, c.sampling.max_new_tokens, None, False)
    assert (s.eos_token_ids, s.pad_token_id) == ((2, 3), 1)
    assert set(config.keys(SamplingConfig)) == set(c.sampling)


def test_every_key_has_a_doc_and_every_numeric_key_a_range():
    docs = config_docs()
    for key, value in flatten(base_config()).items():
        if key.startswith("advantage.options."):
            continue  # typed by the transform's signature, checked by the transform
        assert docs.get(key), f"config key {key} has no '# doc' comment in base_config()"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert key in RANGES, f"numeric config key {key} has no entry in config.RANGES"


def test_choices_are_the_owning_modules_tuples():
    import importlib

    from jaxgrpo import data, env, losses
    dagrpo = importlib.import_module("jaxgrpo.advantages.dagrpo")  # (the package shadows it)

    assert CHOICES["loss.agg_mode"] is losses.AGG_MODES
    assert CHOICES["loss.kl_estimator"] is losses.KL_ESTIMATORS
    assert CHOICES["anchors.trigger"] is dagrpo.ANCHOR_TRIGGERS
    assert CHOICES["rewards.fine_score"] is env.FINE_SCORES
    assert CHOICES["data.source"] is env.DATA_SOURCES
    assert CHOICES["data.template"] is data.TEMPLATES


def _with(**flat):
    c = base_config()
    c.update_from_flattened_dict(flat)
    return c


@pytest.mark.parametrize("flat,message", [
    ({"sampling.top_k": -5}, "config.sampling.top_k=-5: must be >= 0"),
    ({"rewards.verifier_workers": 0}, "config.rewards.verifier_workers=0: must be >= 1"),
    ({"data.train_size": 0}, "config.data.train_size=0: must be >= 1"),
    ({"eval.ks": "a"}, "config.eval.ks='a': 'a' is not an integer"),
    ({"eval.ks": "1,9"}, "config.eval.ks='1,9': each k must be in [1, eval.num_samples=4]"),
    ({"eval.num_prompts": 100}, "config.eval.num_prompts=100 is more than the held-out rows "
                                "(config.data.eval_size=64)"),
    ({"data.prompt_format": "{quesiton}"}, "config.data.prompt_format='{quesiton}': unknown "
                                           "placeholder {quesiton}"),
    ({"data.prompt_format": "Solve it."}, "has no {question} placeholder"),
    ({"data.prompt_format": "{question} {"}, "config.data.prompt_format='{question} {': not a "
                                             "valid template"),
    ({"anchors.format": "{solution}"}, "config.anchors.format='{solution}': unknown placeholder"),
    ({"data.task_kwargs": "[1]"}, "config.data.task_kwargs='[1]': must be a JSON object"),
    ({"sampling.top_p": 0.0}, "config.sampling.top_p=0.0: must be (0, 1]"),
    ({"optim.b2": 1.0}, "config.optim.b2=1.0: must be [0, 1)"),
    ({"optim.lr": float("nan")}, "config.optim.lr=nan: must be > 0"),
    ({"mesh.data": 0}, "config.mesh.data=0: must be -1 or >= 1"),
    ({"mesh.fsdp": -1}, "config.mesh: at most one axis may be -1"),
    ({"rewards.answer_sources": "boxed,latex"}, "config.rewards.answer_sources='boxed,latex'"),
    ({"seed": -1}, "config.seed=-1: must be >= 0"),
    ({"name": "a/b"}, "config.name='a/b'"),
    ({"loss.agg_mode": "sum"}, "config.loss.agg_mode='sum': is not one of"),
    ({"sampling.unroll_layers": "yes"}, "config.sampling.unroll_layers='yes': is not one of "
                                        "('auto', 'true', 'false')"),
])
def test_8_bad_values_fail_in_validate_with_one_line_naming_the_key(flat, message):
    with pytest.raises(ConfigError) as e:
        validate(_with(**flat))
    assert isinstance(e.value, ValueError)
    assert message in _one_line(e.value)


def test_8_mesh_is_checked_against_the_devices():
    from jaxgrpo.experiment import check_mesh

    with pytest.raises(ConfigError, match=r"mesh\.data=3 x mesh\.fsdp=1 x mesh\.tensor=1 = 3 "
                                          r"devices, but 2 devices are available"):
        check_mesh(_with(**{"mesh.data": 3}), n_devices=2)
    with pytest.raises(ConfigError, match="not divisible"):
        check_mesh(_with(**{"mesh.fsdp": 3}), n_devices=2)
    check_mesh(_with(**{"mesh.data": 2}), n_devices=2)
    check_mesh(_with(), n_devices=2)
