"""Restore a trained policy from a run directory (written by ``jaxgrpo.loop.Trainer``).

A run directory holds ``config.json`` (the resolved config) and ``checkpoints/<step>/`` (orbax:
the ``TrainState`` {params, opt_state, step, rng} plus JSON metadata). ``load_run_policy``
rebuilds the model exactly as training did (``jaxgrpo.models.load_policy``: the same weights file,
dtype and random-init shape), then overwrites its parameters with the checkpoint's.

Only the parameters are read from disk: the restore target is ``{"params": <abstract params>}``
with orbax's ``partial_restore=True``, so the optimizer state (twice the parameters for AdamW)
is never read and evaluating a 1.5B model does not allocate its Adam moments.

    from jaxgrpo.policy_io import load_run_policy
    model, tokenizer, config = load_run_policy("runs/dra-20250101-120000")          # latest
    model, tokenizer, config = load_run_policy("runs/dra-20250101-120000", step=50)
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

import jax
import ml_collections as mc

from jaxgrpo.errors import CheckpointError

__all__ = ["RunDirError", "load_run_config", "checkpoint_steps", "load_run_policy"]


class RunDirError(FileNotFoundError):
    """A run directory, its config.json or its checkpoints are missing."""


def _update_locked(node: mc.ConfigDict, values: dict, prefix: str, source: str) -> None:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in node:
            raise ValueError(f"{source}: unknown config key {path!r} (not in jaxgrpo.experiment."
                             "base_config(); written by another jaxgrpo version?)")
        if isinstance(node[key], mc.ConfigDict):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: config key {path!r} must be a mapping, got {value!r}")
            _update_locked(node[key], value, path + ".", source)
            continue
        current = node[key]
        if path == "sampling.unroll_layers" and isinstance(value, bool):
            from jaxgrpo.sampling import UNROLL_LAYERS  # a boolean before "auto" (2026-12-07)
            value = next(k for k, v in UNROLL_LAYERS.items() if v is value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # JSON writes 1.0 as 1 sometimes
        try:
            node[key] = value
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{source}: config key {path!r} = {value!r}: {e}") from None


def load_run_config(run_dir) -> mc.ConfigDict:
    """``base_config()`` updated from ``<run_dir>/config.json``, validated.

    Raises:
      RunDirError: no such directory or no config.json in it.
      ValueError: the JSON is unreadable, or has a key base_config() lacks / a value of the wrong
        type (the message names the file and the key).
    """
    from jaxgrpo.experiment import base_config, validate

    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory not found: {run_dir}")
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise RunDirError(f"no config.json in run directory {run_dir} (not a jaxgrpo run?)")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: could not read the run config: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    c = base_config()
    _update_locked(c, values, "", path)
    try:
        validate(c)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return c


def checkpoint_steps(run_dir) -> list:
    """Sorted steps with a checkpoint directory under ``<run_dir>/checkpoints`` (no orbax)."""
    root = os.path.join(os.fspath(run_dir), "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(d) for d in os.listdir(root)
                  if d.isdigit() and os.path.isdir(os.path.join(root, d)))


def _restore_params(ckpt_dir: str, step: int, params_target: Any) -> Any:
    """Restore only ``state.params`` of checkpoint ``step`` (orbax partial restore: opt_state,
    step and rng are not read). Errors become CheckpointError naming the path."""
    import orbax.checkpoint as ocp

    from jaxgrpo.checkpoint import abstract_like, check_structure, restore_errors

    path = os.path.join(ckpt_dir, str(step))
    abstract = {"params": abstract_like(params_target)}
    mgr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
        create=False, read_only=True))
    try:
        with restore_errors(path, "does not match the model its config.json builds (different "
                                  "model or config?)"):
            out = mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True)))
    finally:
        mgr.close()
    params = out.state["params"]
    check_structure(path, params, params_target, "the saved params (against the model its "
                    "config.json builds)")
    return params


def load_run_policy(run_dir, step: Optional[int] = None, *, mesh=None,
                    model_path: Optional[str] = None) -> Tuple[Any, Any, mc.ConfigDict]:
    """``(model, tokenizer, config)`` of a training run, with the checkpoint's parameters.

    Args:
      run_dir: a directory written by ``jaxgrpo.loop.Trainer`` (config.json, checkpoints/).
      step: the checkpoint step; default the latest.
      mesh: optional ``jax.sharding.Mesh``; the model is laid out on it
        (``jaxgrpo.sharding.shard_model``) and the parameters restored into those shardings.
      model_path: replaces the config's ``model.path`` (the base weights / tokenizer moved, e.g.
        the run directory was copied to another machine); the returned config carries it.

    Returns:
      The NNX model (its ``nnx.Param`` leaves replaced by the checkpoint's), the tokenizer, and
      the run's config (``load_run_config``).

    Raises:
      RunDirError: the run directory, config.json or checkpoints/ is missing, or there is no
        checkpoint (the message names the path).
      CheckpointError: ``step`` is not saved (the available steps are listed), or the checkpoint
        is corrupt or does not match the model.
      ValueError: a bad config.json (see ``load_run_config``).
    """
    from flax import nnx

    from jaxgrpo import sharding as shd
    from jaxgrpo.lora import init_adapters, lora_config, merge_params
    from jaxgrpo.models import load_policy
    from jaxgrpo.train import split_model

    run_dir = os.path.abspath(os.fspath(run_dir))
    config = load_run_config(run_dir)
    if model_path is not None:
        config.model.path = os.fspath(model_path)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    steps = checkpoint_steps(run_dir)
    if not os.path.isdir(ckpt_dir):
        raise RunDirError(f"no checkpoints/ directory in run {run_dir} (the run saved none)")
    if not steps:
        raise RunDirError(f"no checkpoint found in {ckpt_dir}")
    if step is None:
        step = steps[-1]
    elif int(step) not in steps:
        raise CheckpointError(f"checkpoint step {step} not found in {ckpt_dir} "
                              f"(available: {steps})")
    model, tokenizer = load_policy(config)
    if mesh is not None:
        model = shd.shard_model(model, mesh)
    graphdef, params, rest = split_model(model)
    lora = lora_config(config)
    if lora is None:
        params = _restore_params(ckpt_dir, int(step), params)
    else:  # a LoRA run saved its adapters: restore them and merge them into the base
        adapters = init_adapters(params, lora, jax.random.key(0))
        if mesh is not None:
            adapters = shd.shard_state(adapters, mesh)
        params = merge_params(params, _restore_params(ckpt_dir, int(step), adapters), lora)
    model = nnx.merge(graphdef, params, rest)
    return model, tokenizer, config
