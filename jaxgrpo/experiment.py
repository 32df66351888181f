"""An experiment's config: the sections that make it, the rules across them, and its inputs.

Each section is declared beside the code that reads it (``jaxgrpo.config`` is the mechanism)::

    section              class                                  module
    (root)               RunConfig: name, seed, run_dir, steps   jaxgrpo.experiment
    model                PolicyConfig                            jaxgrpo.models.policy
    lora                 LoraSection                             jaxgrpo.lora
    data                 DataConfig                              jaxgrpo.data
    sampling             SamplingConfig                          jaxgrpo.sampling
    rewards              RewardsConfig                           jaxgrpo.env
    advantage            AdvantageConfig (+ options.*)           jaxgrpo.advantages.registry
    embedding            EmbeddingConfig                         jaxgrpo.models.encoder
    anchors              AnchorsConfig                           jaxgrpo.advantages.dagrpo
    loss                 LossConfig                              jaxgrpo.losses
    train / optim        TrainConfig / OptimConfig               jaxgrpo.train
    mesh                 MeshConfig                              jaxgrpo.sharding
    log                  LogConfig                               jaxgrpo.logger
    eval                 EvalConfig                              jaxgrpo.evaluate
    checkpoint           CheckpointConfig                        jaxgrpo.checkpoint

``base_config()`` returns the locked ``ml_collections.ConfigDict`` of all of them: setting an
unknown key raises (naming it) and a value of the wrong type is refused. ``validate(config)``
checks every key once (type, choice, range), then each section's own cross-field rules (its
``__post_init__``), then the rules across sections here; each raises a one-line
:class:`~jaxgrpo.errors.ConfigError` naming the key. ``validate(config, inputs=True)`` also opens
what the config points at (data files and their first rows, the reasoning-gym task, the model and
encoder paths, the device count for the mesh), still before anything heavy is built. Experiment
files in ``experiments/configs`` start from ``base_config()`` and override fields.

Adding a key: a field ``name: type = config.key(default, "one-line doc", ...)`` in its section
(``python -m experiments.run --help`` lists it with its type, default, range and doc).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import ClassVar, Dict, Optional

import ml_collections as mc

from jaxgrpo import config
from jaxgrpo.advantages.dagrpo import AnchorsConfig
from jaxgrpo.advantages.registry import AdvantageConfig
from jaxgrpo.checkpoint import CheckpointConfig
from jaxgrpo.config import check_template, flatten  # re-exported
from jaxgrpo.data import DataConfig, check_prompt_file, split_names  # split_names: re-exported
from jaxgrpo.env import ANSWER_SOURCES, RewardsConfig  # ANSWER_SOURCES: re-exported
from jaxgrpo.errors import ConfigError
from jaxgrpo.evaluate import EvalConfig
from jaxgrpo.logger import LogConfig
from jaxgrpo.lora import LoraSection
from jaxgrpo.losses import LossConfig
from jaxgrpo.models.encoder import EmbeddingConfig
from jaxgrpo.models.policy import PolicyConfig
from jaxgrpo.rewards.tasks import OWN_TASKS, make_task
from jaxgrpo.sampling import UNROLL_LAYERS, SamplingConfig  # UNROLL_LAYERS: re-exported
from jaxgrpo.sharding import MeshConfig
from jaxgrpo.micro_batch import require_candidates
from jaxgrpo.train import MICRO_BATCH_KEYS, OptimConfig, TrainConfig, check_micro_batch

__all__ = ["RunConfig", "SECTIONS", "base_config", "validate", "sections", "check_inputs",
           "check_task", "check_mesh", "describe_config", "config_docs", "CHOICES", "RANGES",
           "flatten", "split_names", "parse_ks", "unroll_layers", "check_micro_batch",
           "check_template", "ANSWER_SOURCES", "UNROLL_LAYERS", "MICRO_BATCH_KEYS"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig(config.Section):
    """The run: its name, seed, directory and length (the config's root keys)."""

    NAME: ClassVar[str] = ""
    name: str = config.key(
        "grpo", "experiment name; the default run directory is runs/<name>-<timestamp>")
    seed: int = config.key(
        0, "seeds the data order, the sampling keys and random-init weights", ge=0)
    run_dir: str = config.key(
        "", 'run directory; "" = runs/<name>-<timestamp>; an existing one is resumed')
    steps: int = config.key(
        20, "training steps (each: one rollout batch, train.num_iterations updates)", ge=1)

    def __post_init__(self):
        if not self.name or os.sep in self.name:
            config.fail("name", self.name, "must be a non-empty name without a path separator "
                                           "(it names the run directory)")


# In this order in the config, --help and validation.
SECTIONS = (RunConfig, PolicyConfig, LoraSection, DataConfig, SamplingConfig, RewardsConfig,
            AdvantageConfig, EmbeddingConfig, AnchorsConfig, LossConfig, TrainConfig, OptimConfig,
            MeshConfig, LogConfig, EvalConfig, CheckpointConfig)

# {"section.key": allowed values} and {"section.key": range text}, read from the sections.
CHOICES: Dict[str, tuple] = config.choices(SECTIONS)
RANGES: Dict[str, str] = config.ranges(SECTIONS)


def base_config() -> mc.ConfigDict:
    """Every key of every section at its default, locked (see the module docstring). The
    advantage transforms' options are read from the registry now, so a transform registered
    before this call is a valid choice with typed options."""
    return config.compose(SECTIONS)


def config_docs() -> Dict[str, str]:
    """``{key: one-line doc}`` of every declared key, and each section's doc under its name."""
    return config.docs(SECTIONS)


def describe_config(c: Optional[mc.ConfigDict] = None) -> str:
    """The ``--help`` text: every key of ``c`` (default ``base_config()``), grouped by section
    in declaration order, each with its type, allowed values or range, default and doc."""
    return config.describe(SECTIONS, base_config() if c is None else c,
                           extra_docs=AdvantageConfig.nested_docs(),
                           source="jaxgrpo.experiment.base_config()")


def sections(c: mc.ConfigDict) -> Dict[str, config.Section]:
    """``{NAME: typed section}`` of a config (each runs its ``__post_init__`` checks)."""
    return {s.NAME: s.from_config(c[s.NAME] if s.NAME else c) for s in SECTIONS}


def parse_ks(c) -> tuple:
    """``eval.ks`` as a tuple of ints; ConfigError naming the key for a bad entry."""
    return EvalConfig.from_config(c.eval).parsed_ks


def unroll_layers(c) -> Optional[bool]:
    """``sampling.unroll_layers`` as ``SamplingConfig.unroll_layers`` (``UNROLL_LAYERS``)."""
    return SamplingConfig.from_config(c.sampling).unroll_layers


def validate(c: mc.ConfigDict, *, inputs: bool = False) -> mc.ConfigDict:
    """Check values and raise a one-line ConfigError (a ValueError) that names the key.

    Always: every key's type, choice and range (once each), each section's cross-field rules,
    then the rules across sections (:func:`check_across`); pure and fast. With ``inputs=True``
    also what the config points at, still before any model is built (:func:`check_inputs`: data
    files, the reasoning-gym task and options, the model / encoder paths, and the mesh against
    the devices, which initialises JAX's backend: call ``jax.distributed.initialize()`` first on
    a multi-host run). Returns the config.
    """
    config.check_keys(c, SECTIONS)
    check_across(c, sections(c))
    if inputs:
        check_inputs(c)
    return c


def check_across(c: mc.ConfigDict, s: Dict[str, config.Section]) -> None:
    """The rules that join keys of several sections; ConfigError naming them."""
    sampling, train, mesh = s["sampling"], s["train"], s["mesh"]
    # Micro-batches: whole groups, split evenly over the batch devices. A mesh axis of -1 is
    # resolved (and checked again) when the update is built: counting devices here would
    # start a JAX backend before jax.distributed.initialize() on multi-host runs.
    group = sampling.num_generations + (1 if s["anchors"].enabled else 0)
    batch_devices = mesh.data * mesh.fsdp if min(mesh.data, mesh.fsdp) > 0 else 1
    if train.grad_accum == 0:  # auto: some count must be allowed (chosen when training starts)
        require_candidates(c, batch_devices)
    else:
        n_micro = train.num_minibatches * train.grad_accum
        check_micro_batch(train.prompts_per_step * sampling.num_generations,
                          sampling.num_generations, n_micro, need_whole_groups=False)
        check_micro_batch(train.prompts_per_step * group, group, n_micro, batch_devices)
    data, ev = s["data"], s["eval"]
    if not data.eval_path and ev.num_prompts > data.eval_size:
        raise ConfigError(
            f"config.eval.num_prompts={ev.num_prompts} is more than the held-out rows "
            f"(config.data.eval_size={data.eval_size}); lower eval.num_prompts or raise "
            "data.eval_size")
    if s["anchors"].enabled and s["advantage"].baseline != "dagrpo":
        raise ConfigError("config.anchors.enabled=True needs config.advantage.baseline='dagrpo'")
    r = s["rewards"]
    if r.overlong and not 1 <= r.overlong_buffer < sampling.max_new_tokens:
        raise ConfigError(
            f"config.rewards.overlong={r.overlong} needs 1 <= config.rewards.overlong_buffer < "
            f"config.sampling.max_new_tokens={sampling.max_new_tokens}; got "
            f"{r.overlong_buffer}")
    if r.verifier == "digits":
        for name in ("format", "cosine"):
            if getattr(r, name):
                raise ConfigError(f"config.rewards.{name}={getattr(r, name)} is a text reward; "
                                  "the digits verifier (rewards.verifier='digits') scores token "
                                  f"ids only: set rewards.{name}=0")
        if r.fine_score == "format":
            raise ConfigError("config.rewards.fine_score='format' reads the text format reward; "
                              "with rewards.verifier='digits' use 'logprob' or 'none'")
    if train.fused and r.verifier != "digits":
        raise ConfigError("config.train.fused=True needs a reward computable from token ids: "
                          "set config.rewards.verifier='digits' (or train.fused=False)")
    if s["loss"].sampler_correction != "none" and train.pi_old != "trainer":
        raise ConfigError(
            f"config.loss.sampler_correction={s['loss'].sampler_correction!r} weights by "
            "pi_old / pi_sampler, which is 1 with config.train.pi_old='sampler': set "
            "train.pi_old='trainer' (or loss.sampler_correction='none')")


def check_inputs(c: mc.ConfigDict) -> None:
    """The input checks of ``validate(c, inputs=True)`` (see there); ConfigError naming the key."""
    d = c.data
    if c.model.path and not os.path.exists(c.model.path):
        config.fail("model.path", c.model.path, "no such file or directory")
    if c.embedding.encoder_path and not os.path.isdir(c.embedding.encoder_path):
        config.fail("embedding.encoder_path", c.embedding.encoder_path, "no such directory")
    if d.source == "file":
        n = check_prompt_file(d.path, d.question_field, d.answer_field, key="data.path")
        if d.eval_path:
            m = check_prompt_file(d.eval_path, d.question_field, d.answer_field,
                                  key="data.eval_path")
            if m is not None and m < c.eval.num_prompts:
                raise ConfigError(
                    f"config.eval.num_prompts={c.eval.num_prompts} is more than the {m} rows of "
                    f"config.data.eval_path={d.eval_path!r}; lower eval.num_prompts")
        elif n is not None and n <= d.eval_size:
            raise ConfigError(
                f"config.data.eval_size={d.eval_size}: data.path={d.path!r} has {n} rows, not "
                "more than data.eval_size (its last rows are held out); set data.eval_path or "
                "a smaller data.eval_size")
    else:
        check_task(d.task, d.task_kwargs, c.seed)
    check_mesh(c)


def check_task(name: str, task_kwargs: str, seed: int) -> None:
    """The task exists (one of ours, ``jaxgrpo.rewards.tasks.OWN_TASKS``, or a reasoning-gym
    task) and accepts ``task_kwargs`` (builds a 1-row dataset)."""
    import difflib

    # reasoning_gym imports slowly: only when the inputs are checked.
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    kwargs = json.loads(task_kwargs) if task_kwargs else {}
    if name in OWN_TASKS:
        try:
            make_task(name, seed=seed, size=1, **kwargs)
        except (TypeError, ValueError) as e:
            config.fail("data.task_kwargs", task_kwargs,
                        f"rejected by task {name!r}: {' '.join(str(e).split())[:300]}")
        return
    if name not in DATASETS:
        near = difflib.get_close_matches(name, sorted(DATASETS), n=3)
        hint = f"; did you mean {' / '.join(near)}?" if near else ""
        config.fail("data.task", name, f"is not a reasoning-gym task ({len(DATASETS)} known, "
                                       f"e.g. basic_arithmetic, countdown, gsm_symbolic; ours: "
                                       f"{', '.join(OWN_TASKS)}){hint}")
    try:
        reasoning_gym.create_dataset(name, seed=seed, size=1, **kwargs)
    except Exception as e:  # a bad option: the generator's own message
        msg = " ".join(str(e).split())
        config.fail("data.task_kwargs", task_kwargs,
                    f"rejected by reasoning-gym task {name!r}: {type(e).__name__}: {msg[:300]}")


def check_mesh(c: mc.ConfigDict, n_devices: Optional[int] = None) -> None:
    """mesh.data * mesh.fsdp * mesh.tensor fits the devices (-1 fills the rest)."""
    if n_devices is None:
        import jax
        n_devices = jax.device_count()
    sizes = {"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor}
    known = math.prod(s for s in sizes.values() if s != -1)
    desc = " x ".join(f"mesh.{k}={v}" for k, v in sizes.items())
    if -1 in sizes.values():
        if n_devices % known:
            raise ConfigError(f"config.mesh: {desc}: {n_devices} devices are not divisible by "
                              f"the other axes' product {known}")
    elif known != n_devices:
        avail = f"{n_devices} device{'s are' if n_devices != 1 else ' is'} available"
        raise ConfigError(f"config.mesh: {desc} = {known} devices, but {avail}; make the "
                          "product equal the device count or set one axis to -1")
