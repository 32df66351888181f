"""LoRA (Hu et al., arXiv 2106.09685) as a pure transform of the decoder's parameter tree.

A frozen kernel W [..., in, out] (leading axes, e.g. a stacked layer axis, are kept) gets a
trainable low-rank update

    W' = W + scale * A @ B,    A [..., in, r],  B [..., r, out],  scale = alpha / r
                               (alpha / sqrt(r) with ``use_rslora``, arXiv 2312.03732)

for every parameter whose ``'/'``-joined path (``jaxgrpo.sharding.path_to_str``, e.g.
``layers/0/self_attn/q_proj/kernel``) matches ``targets`` (``re.search``). Initialisation follows
PEFT's ``LoraLayer.reset_lora_parameters`` (``init_lora_weights=True``): A ~ kaiming-uniform with
a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the adapted policy starts equal to the base.

Why a parameter transform rather than adapter modules inside the decoder: the update is
``merge_params(base, adapters)`` at the top of the loss, so the decoder, its loading, its
partition rules and the scanned layer layout need no LoRA-specific code; gradients reach only the
adapters (the optimizer state holds only them); the reference policy of the KL term is the base
itself (``adapters`` off), so no second copy of the weights exists. The cost is one merged kernel
per matched weight inside the step (a transient, not state).

LoRA dropout (PEFT ``lora_dropout``: ``base(x) + lora_B(lora_A(dropout(x))) * scaling``) cannot
be merged: the mask depends on the token. With ``dropout > 0`` the training loss runs the
unmerged form instead: the decoder takes a ``LoraBranch`` (``Decoder(..., lora=branch)``) and
every adapted projection computes ``x W + scale * (dropout(x) A) B``
(``linear_with_branch``), with an inverted-dropout mask (kept entries scaled by 1 / (1 - p)) drawn
independently per layer, per projection and per forward pass from the branch's key. Only
adapters on the decoder layers' projections can take this path (``branch_supported``). Sampling
and the KL reference run without dropout (evaluation mode), so with dropout the importance
ratio at the first update is not exactly 1: the behaviour log-probs are the sampler's.

Adapters are a nested dict mirroring the parameter paths (string keys, so orbax checkpoints
them as any pytree): ``adapters["layers"]["self_attn"]["q_proj"] == {"lora_a": A, "lora_b": B}``
(stacked [L, ...] for the scanned decoder). Their partition rules are derived from the kernels'
(``jaxgrpo.sharding.DEFAULT_RULES``): A splits like the kernel's input dimension, B like its
output dimension.

In training (``config.lora.rank > 0``) the ``TrainState`` holds the adapters, the frozen base
travels beside it (``jaxgrpo.train.policy_params``), and a merged HF checkpoint is written with
``save_pretrained(nnx.merge(graphdef, merge_params(base, adapters, cfg), rest), tokenizer, dir)``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxgrpo import config
from jaxgrpo.errors import ConfigError
from jaxgrpo.sharding import path_to_str

__all__ = ["LoraSection", "LoraConfig", "lora_config", "init_adapters", "merge_params",
           "adapter_paths", "num_adapter_params", "DEFAULT_TARGETS", "LoraBranch",
           "linear_with_branch", "branch_supported", "dropout_keep_mask"]

# Every linear map of the Qwen2 / Llama decoder (PEFT's ``target_modules="all-linear"`` minus the
# LM head).
DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)/kernel$"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraSection(config.Section):
    """LoRA adapters (arXiv 2106.09685; names as PEFT's LoraConfig, see jaxgrpo.lora): only the
    adapters train and are checkpointed; the reference policy is the base (adapters off).

    The ``config.lora`` section; :meth:`adapters` gives the ``LoraConfig`` it asks for.
    """

    NAME: ClassVar[str] = "lora"
    rank: int = config.key(0, 'adapter rank r; 0 = off (full fine-tuning)', ge=0)
    alpha: float = config.key(16.0, 'PEFT lora_alpha: the update is scaled by alpha / r', gt=0)
    targets: str = config.key(
        DEFAULT_TARGETS,
        'regex searched in each parameter path (e.g. layers/self_attn/q_proj/kernel); default: '
        'every linear map of the decoder (PEFT "all-linear" without the LM head)')
    dropout: float = config.key(
        0.0, 'PEFT lora_dropout on the adapter input, in the loss (unmerged form)', ge=0, lt=1)
    use_rslora: bool = config.key(
        False, 'scale alpha / sqrt(r) (rank-stabilised LoRA, arXiv 2312.03732)')

    def adapters(self) -> "LoraConfig | None":
        """The adapters' ``LoraConfig``; None when ``rank`` is 0 (off)."""
        if not self.rank:
            return None
        try:
            return LoraConfig(rank=int(self.rank), alpha=float(self.alpha), targets=self.targets,
                              dropout=float(self.dropout), use_rslora=bool(self.use_rslora))
        except ValueError as e:
            key = ("dropout" if "dropout" in str(e) else "targets" if "regex" in str(e)
                   else "rank")
            raise ConfigError(f"config.lora.{key}: {e}") from None

    def __post_init__(self):
        self.adapters()  # values LoRA cannot take (a bad regex): ConfigError naming the key


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA hyper-parameters (names as PEFT's ``LoraConfig``).

    Attributes:
      rank: r, the adapter rank (PEFT ``r``).
      alpha: PEFT ``lora_alpha``; the update is scaled by alpha / r.
      targets: regex searched in each parameter path; only matching rank >= 2 kernels adapt.
      dropout: PEFT ``lora_dropout`` in [0, 1): dropout on the adapter input in the training
        loss (the unmerged form; see the module docstring).
      use_rslora: scale alpha / sqrt(r) (rank-stabilised LoRA, arXiv 2312.03732).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"LoRA targets {self.targets!r} is not a valid regex: {e}") from None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _leaves(params) -> List[Tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(path_to_str(path), leaf) for path, leaf in flat]


def adapter_paths(params, cfg: LoraConfig) -> List[str]:
    """Paths of the kernels ``cfg.targets`` selects (rank >= 2, named ``kernel``: an embedding
    table is never adapted, ``merge_params`` would ignore it), in tree order."""
    rx = re.compile(cfg.targets)
    return [name for name, leaf in _leaves(params)
            if jnp.ndim(leaf) >= 2 and name.endswith("kernel") and rx.search(name)]


def _get(tree: Dict, parts: List[str]):
    for p in parts:
        tree = tree[p]
    return tree


def _set(tree: Dict, parts: List[str], value) -> None:
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def init_adapters(params, cfg: LoraConfig, key: jax.Array, dtype=jnp.float32) -> Dict:
    """Fresh adapters for ``params`` (an ``nnx.State`` of the decoder's ``nnx.Param``s).

    Raises ValueError naming ``targets`` when it matches no kernel.
    """
    names = adapter_paths(params, cfg)
    if not names:
        some = [n for n, leaf in _leaves(params) if jnp.ndim(leaf) >= 2][:6]
        raise ValueError(f"LoRA targets {cfg.targets!r} match no kernel; parameter paths look "
                         f"like {some}")
    shapes = {name: jnp.shape(leaf) for name, leaf in _leaves(params)}
    adapters: Dict = {}
    for i, name in enumerate(names):
        *lead, d_in, d_out = shapes[name]
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on a [r, in] weight
        a = jax.random.uniform(jax.random.fold_in(key, i), (*lead, d_in, cfg.rank), dtype,
                               -bound, bound)
        b = jnp.zeros((*lead, cfg.rank, d_out), dtype)
        _set(adapters, name.split("/")[:-1], {"lora_a": a, "lora_b": b})
    return adapters


def merge_params(params, adapters: Dict, cfg: LoraConfig):
    """``params`` with every adapted kernel replaced by W + scale * A @ B (same dtype as W).

    Differentiable in both arguments; in training only ``adapters`` is differentiated.
    """
    def merge(path, w):
        name = path_to_str(path)
        parts = name.split("/")
        try:
            ad = _get(adapters, parts[:-1])
        except (KeyError, TypeError):
            return w
        if not isinstance(ad, dict) or "lora_a" not in ad or parts[-1] != "kernel":
            return w
        delta = jnp.einsum("...ir,...ro->...io", ad["lora_a"].astype(jnp.float32),
                           ad["lora_b"].astype(jnp.float32))
        return (w.astype(jnp.float32) + cfg.scale * delta).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(merge, params)


@struct.dataclass
class LoraBranch:
    """The unmerged LoRA branch a ``Decoder`` call adds to its adapted projections.

    ``adapters`` is the subtree of ``init_adapters``' dict for the module being called (the
    decoder hands each layer its slice of ``adapters["layers"]``, each block its
    ``["self_attn"]`` / ``["mlp"]``); ``key`` is the dropout key of that module (None: no
    dropout), ``scale`` is ``LoraConfig.scale`` and ``rate`` is the dropout probability.
    """

    adapters: Dict
    key: Optional[jax.Array]
    scale: float = struct.field(pytree_node=False)
    rate: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def from_config(cls, adapters: Dict, cfg: LoraConfig, key: Optional[jax.Array] = None):
        return cls(adapters=adapters, key=key, scale=cfg.scale, rate=cfg.dropout)

    def sub(self, name: str) -> "Optional[LoraBranch]":
        """The branch of child module ``name`` (None when no adapter lives under it); its key is
        this key folded with ``name``."""
        if name not in self.adapters:
            return None
        return self.replace(adapters=self.adapters[name], key=self._fold(name))

    def fold(self, index) -> "LoraBranch":
        """The same branch with its key folded with ``index`` (e.g. a layer or a pass)."""
        return self if self.key is None else self.replace(
            key=jax.random.fold_in(self.key, index))

    def _fold(self, name: str):
        """This key folded with a stable id of ``name`` (None without a key)."""
        if self.key is None:
            return None
        return jax.random.fold_in(self.key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def dropout_keep_mask(key: jax.Array, shape, rate: float) -> jax.Array:
    """The inverted-dropout multiplier of ``linear_with_branch``: 1 / (1 - rate) where kept,
    0 where dropped (Bernoulli(1 - rate) per entry)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(jnp.float32) / (1.0 - rate)


def linear_with_branch(linear, x: jax.Array, branch: "Optional[LoraBranch]", name: str):
    """``linear(x)`` (an ``nnx.Linear``) plus, when ``branch`` holds an adapter ``name``,
    ``scale * (dropout(x) @ A) @ B`` (PEFT's ``Linear.forward``; the dropout key is the
    branch's folded with ``name``)."""
    y = linear(x)
    if branch is None or name not in branch.adapters:
        return y
    ad = branch.adapters[name]
    h = x
    if branch.rate > 0 and branch.key is not None:
        key = branch._fold(name)
        h = (x * dropout_keep_mask(key, x.shape, branch.rate)).astype(x.dtype)
    a, b = ad["lora_a"].astype(x.dtype), ad["lora_b"].astype(x.dtype)
    return y + (branch.scale * ((h @ a) @ b)).astype(y.dtype)


def branch_supported(adapters: Dict) -> bool:
    """Whether every adapter lives on a decoder layer's projection (the only place the unmerged
    branch is wired: ``layers/{self_attn,mlp}/<proj>``)."""
    if set(adapters) != {"layers"}:
        return False
    return all(block in ("self_attn", "mlp") and all(
        isinstance(v, dict) and set(v) == {"lora_a", "lora_b"} for v in node.values())
        for block, node in adapters["layers"].items())


def num_adapter_params(adapters: Dict) -> int:
    return int(sum(x.size for x in jax.tree.leaves(adapters)))


def lora_config(c) -> "LoraConfig | None":
    """The ``config.lora`` section as a ``LoraConfig`` (None when ``lora.rank`` is 0: off).
    Raises ``ConfigError`` naming the key for a value LoRA cannot take."""
    return LoraSection.from_config(c.lora).adapters()


# ----------------------------------------------------------------------------- preflight


def check_lora(c, param_paths: List[Tuple[str, tuple]]) -> None:
    """Preflight (before the model loads): ``lora.dropout`` needs LoRA (``lora.rank`` > 0),
    ``lora.targets`` must match at least one kernel of the model (``param_paths``: (path,
    shape) of its parameters, e.g. ``jaxgrpo.loop.abstract_param_paths``), and with dropout every match must be a decoder layer's
    projection (the only place the unmerged branch runs). ConfigError naming the key."""
    from jaxgrpo.errors import ConfigError

    if not c.lora.rank:
        if c.lora.dropout:
            raise ConfigError(f"config.lora.dropout={c.lora.dropout} has no effect without LoRA "
                              "(config.lora.rank=0): set config.lora.rank > 0 or drop "
                              "lora.dropout")
        return
    cfg = lora_config(c)
    rx = re.compile(cfg.targets)
    kernels = [n for n, shape in param_paths if len(shape) >= 2 and n.endswith("kernel")]
    names = [n for n in kernels if rx.search(n)]
    if not names:
        raise ConfigError(f"config.lora.targets={cfg.targets!r} matches no kernel of the model; "
                          f"its kernel paths look like {kernels[:4]}")
    if cfg.dropout > 0:
        off = sorted(n for n in names if not re.match(r"layers/(\d+/)?(self_attn|mlp)/", n))
        if off:
            raise ConfigError(
                f"config.lora.dropout={cfg.dropout} runs the adapters unmerged, which only the "
                f"decoder layers' projections support; config.lora.targets={cfg.targets!r} also "
                f"matches {off[:4]}")
