"""``train.grad_accum = 0`` ("auto"): the micro-batch count, chosen from the device's memory.

Before training, :func:`choose_grad_accum` compiles the jitted update ahead of time for the
candidate counts (abstract arguments: the state's shapes and shardings and a rollout of the
config's full widths, ``data.max_prompt_tokens`` + ``sampling.max_new_tokens``), reads each
program's peak from ``memory_analysis()`` (arguments + temporaries + outputs not aliased to the
donated state) and takes, in the backend's order of preference, the first that fits the budget
(``train.memory_fraction`` of one device's memory; of the host's RAM on the CPU). Nothing the
compile builds is kept.

The order of preference (:func:`preference`):

* GPU / TPU: the fewest micro-batches (larger matmuls use the chip better).
* CPU: the fewest micro-batches of at most :data:`CPU_TOKENS_PER_MICRO_BATCH` tokens, then more:
  on XLA:CPU a smaller micro-batch was faster than one big one (docs/performance.md), while
  micro-batches smaller than needed only add loop steps.

Candidates are the counts the config allows: micro-batches of whole groups (with anchors, G + 1
rows each) that the mesh's batch devices divide (:func:`grad_accum_candidates`). The choice
depends on the config and the devices only, so a resumed run chooses as the first did.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections as mc
from jax.experimental import checkify

from jaxgrpo import sharding as shd
from jaxgrpo.advantages import required_inputs
from jaxgrpo.errors import ConfigError
from jaxgrpo.rollout import Rollout
from jaxgrpo.train import advantage_chain, check_micro_batch, make_update_fn

__all__ = ["CPU_TOKENS_PER_MICRO_BATCH", "Choice", "grad_accum_candidates", "preference",
           "require_candidates", "memory_budget", "with_grad_accum", "abstract_rollout", "choose_grad_accum"]

# Tokens per micro-batch the CPU order prefers at most, counted as the choice counts them
# (rows x (data.max_prompt_tokens + sampling.max_new_tokens)): SmolLM2-135M's update in the race
# (32 rows, max_prompt_tokens 96, 128 new tokens) ran fastest on the 2-core XLA:CPU VM as 4
# micro-batches of 8 rows, against 1 x 32 and 2 x 16 (docs/performance.md).
CPU_TOKENS_PER_MICRO_BATCH = 8 * (96 + 128)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The chosen ``grad_accum``, its compiled peak and the budget (bytes; budget None: the
    device reports no limit), and every candidate compiled on the way ``{n: peak}``."""

    grad_accum: int
    rows_per_micro_batch: int
    peak_bytes: int
    budget_bytes: Optional[int]
    tried: Dict[int, int]

    def describe(self) -> str:
        budget = ("no memory limit reported" if self.budget_bytes is None
                  else f"budget {self.budget_bytes / 1e9:.2f} GB")
        return (f"train.grad_accum=auto: {self.grad_accum} micro-batch(es) of "
                f"{self.rows_per_micro_batch} rows, predicted peak "
                f"{self.peak_bytes / 1e9:.2f} GB per device ({budget})")


def _group(c: mc.ConfigDict) -> int:
    return c.sampling.num_generations + (1 if c.anchors.enabled else 0)


def grad_accum_candidates(c: mc.ConfigDict, batch_devices: int = 1) -> List[int]:
    """The ``grad_accum`` values the config and ``batch_devices`` (mesh.data * mesh.fsdp) allow,
    ascending (the checks ``jaxgrpo.experiment.validate`` makes for a given value)."""
    p, g, n_mb = c.train.prompts_per_step, c.sampling.num_generations, c.train.num_minibatches
    out = []
    for n in range(1, p * _group(c) // n_mb + 1):
        try:
            check_micro_batch(p * g, g, n_mb * n, need_whole_groups=False)
            check_micro_batch(p * _group(c), _group(c), n_mb * n, batch_devices)
        except ConfigError:
            continue
        out.append(n)
    return out


def require_candidates(c: mc.ConfigDict, batch_devices: int) -> None:
    """ConfigError naming the keys when ``train.grad_accum = 0`` has no allowed count
    (:func:`grad_accum_candidates`) for ``batch_devices`` (mesh.data * mesh.fsdp)."""
    if not grad_accum_candidates(c, batch_devices):
        raise ConfigError(
            f"config.train.grad_accum=0 (auto): no micro-batch count gives whole groups of "
            f"{_group(c)} that the mesh's {batch_devices} batch devices (mesh.data * mesh.fsdp) "
            "divide: change train.prompts_per_step, train.num_minibatches or the mesh")


def preference(c: mc.ConfigDict, candidates: List[int], platform: str) -> List[int]:
    """``candidates`` in the order they are tried (see the module docstring)."""
    order = sorted(candidates)
    if platform != "cpu":
        return order
    rows = c.train.prompts_per_step * _group(c) // c.train.num_minibatches
    tokens = c.data.max_prompt_tokens + c.sampling.max_new_tokens
    small = [n for n in order if rows // n * tokens <= CPU_TOKENS_PER_MICRO_BATCH]
    first = small[0] if small else order[-1]
    return [n for n in order if n >= first]


def memory_budget(fraction: float, device=None) -> Optional[int]:
    """``fraction`` of one device's memory (``memory_stats()['bytes_limit']``), of the host's
    physical RAM on the CPU; None when an accelerator reports no limit."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return int(fraction * limit) if limit else None


def with_grad_accum(c: mc.ConfigDict, n: int) -> mc.ConfigDict:
    """A copy of ``c`` with ``train.grad_accum = n``."""
    out = c.copy_and_resolve_references()
    out.train.grad_accum = int(n)
    return out


def _embedding_dim(c: mc.ConfigDict, hidden_size: int) -> int:
    if c.embedding.model == "policy":
        return hidden_size
    from jaxgrpo.models.encoder import default_encoder_path
    path = os.path.join(c.embedding.encoder_path or str(default_encoder_path()), "config.json")
    with open(path) as f:
        return int(json.load(f)["hidden_size"])


def abstract_rollout(c: mc.ConfigDict, mesh, hidden_size: int) -> Rollout:
    """A Rollout of ``jax.ShapeDtypeStruct``s at the config's full widths, with the extras the
    chain reads, laid out as the step lays out prompts (split over data x fsdp when they
    divide, else replicated)."""
    p, g = c.train.prompts_per_step, _group(c)
    tp, tc = c.data.max_prompt_tokens, c.sampling.max_new_tokens
    sharding = None
    if mesh is not None:
        n = mesh.shape["data"] * mesh.shape["fsdp"]
        sharding = shd.batch_sharding(mesh) if p % n == 0 else shd.replicated(mesh)

    def arr(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    need = required_inputs(*advantage_chain(c))
    extras = {}
    if "embeddings" in need:
        extras["embeddings"] = arr((p, g, _embedding_dim(c, hidden_size)), jnp.float32)
    if "fine_scores" in need:
        extras["fine_scores"] = arr((p, g), jnp.float32)
    if "question_mask" in need:
        extras["question_mask"] = arr((p, tp), jnp.bool_)
    if c.loss.mask_truncated_completions:
        extras["truncated"] = arr((p, g), jnp.bool_)
    return Rollout(
        prompt_tokens=arr((p, tp), jnp.int32), prompt_mask=arr((p, tp), jnp.bool_),
        completion_tokens=arr((p, g, tc), jnp.int32), completion_mask=arr((p, g, tc), jnp.bool_),
        logprobs=arr((p, g, tc), jnp.float32), prompt_logprobs=arr((p, tp), jnp.float32),
        rewards=arr((p, g), jnp.float32), correct=arr((p, g), jnp.bool_),
        member_mask=arr((p, g), jnp.bool_), is_anchor=arr((p, g), jnp.bool_), **extras)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        tree)


def _peak(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)


def choose_grad_accum(c: mc.ConfigDict, *, graphdef, rest, tx, state, hidden_size: int,
                      mesh=None, ref_params=None, frozen=None,
                      budget_bytes: Optional[int] = None) -> Choice:
    """The micro-batch count for config ``c`` (``train.grad_accum = 0``) and the training state
    ``state`` (arrays or ShapeDtypeStructs), as the module docstring says. ``budget_bytes``
    defaults to :func:`memory_budget` of ``train.memory_fraction``. ConfigError when no
    candidate fits, naming the keys to change."""
    batch_devices = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    order = preference(c, grad_accum_candidates(c, batch_devices),
                       jax.devices()[0].platform)
    if not order:
        raise ConfigError("config.train.grad_accum=0 (auto): no micro-batch count makes whole "
                          "groups that the mesh's batch devices divide; set train.grad_accum")
    if budget_bytes is None:
        budget_bytes = memory_budget(c.train.memory_fraction)
    args = (_abstract(state), abstract_rollout(c, mesh, hidden_size),
            _abstract(ref_params), _abstract(frozen))
    rows = c.train.prompts_per_step * _group(c) // c.train.num_minibatches
    tried: Dict[int, int] = {}
    for n in order:
        # checkify-functionalised: a chain with nonfinite="check" stages a check (as the step's
        # checked update does); without one it only adds an empty error value.
        update = jax.jit(checkify.checkify(make_update_fn(with_grad_accum(c, n), graphdef, rest,
                                                          tx, jit=False, mesh=mesh)),
                         donate_argnums=(0,))
        tried[n] = _peak(update.lower(*args).compile())
        if budget_bytes is None or tried[n] <= budget_bytes:
            return Choice(n, rows // n, tried[n], budget_bytes, tried)
    peaks = ", ".join(f"{n}: {b / 1e9:.2f} GB" for n, b in tried.items())
    raise ConfigError(
        f"config.train.grad_accum=0 (auto): no micro-batch count fits "
        f"{budget_bytes / 1e9:.2f} GB (config.train.memory_fraction={c.train.memory_fraction}; "
        f"peaks {peaks}): lower train.prompts_per_step or the completion length, or set "
        "model.remat='full' / train.logits_chunk")
