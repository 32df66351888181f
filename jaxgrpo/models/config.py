"""Decoder configuration, read from a Hugging Face ``config.json`` (Qwen2 and Llama families)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional, Tuple

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs; field names follow Hugging Face where one exists.

    ``rope_scaling`` is stored as a sorted tuple of (key, value) pairs so the config stays
    hashable (it is a static argument of jitted functions).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[Tuple[Tuple[str, Any], ...]] = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True; Llama: ``attention_bias``
    o_bias: bool = False  # Llama ``attention_bias`` also biases o_proj; Qwen2 never does
    mlp_bias: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: Optional[int] = None
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture model_type={self.model_type!r}; "
                f"jaxgrpo's decoder supports {SUPPORTED_ARCHITECTURES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def rope_scaling_dict(self) -> Optional[dict]:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "ModelConfig":
        """Build from a parsed Hugging Face config.json. ``source`` names the file in errors."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported architecture model_type={model_type!r} "
                f"(architectures={d.get('architectures')}); supported: {SUPPORTED_ARCHITECTURES}")
        try:
            hidden = int(d["hidden_size"])
            heads = int(d["num_attention_heads"])
            kwargs = dict(
                model_type=model_type,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing required field {e.args[0]!r}") from None
        # transformers 5 moves rope_theta into rope_parameters; accept both spellings.
        rope = d.get("rope_parameters") or {}
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
            if rope_type not in ("default", "llama3", "linear"):
                raise ValueError(f"{source}: unsupported rope_scaling type {rope_type!r} "
                                 "(supported: default, linear, llama3)")
            scaling = None if rope_type == "default" else tuple(sorted(
                (k, tuple(v) if isinstance(v, list) else v) for k, v in scaling.items()))
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        attention_bias = bool(d.get("attention_bias", False))
        return cls(
            **kwargs,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=d.get("pad_token_id"),
        )

    @classmethod
    def from_json_file(cls, path: str) -> "ModelConfig":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path)


def rope_inv_freq(cfg: ModelConfig):
    """RoPE inverse frequencies [head_dim // 2] as NumPy float64, with the config's scaling.

    Mirrors transformers' ``_compute_default_rope_parameters`` / ``_compute_llama3_parameters``
    / linear scaling.
    """
    import numpy as np

    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float64) / d))
    s = cfg.rope_scaling_dict
    if not s:
        return inv
    rope_type = s.get("rope_type", s.get("type"))
    if rope_type == "linear":
        return inv / float(s["factor"])
    if rope_type == "llama3":
        factor = float(s["factor"])
        low = float(s.get("low_freq_factor", 1.0))
        high = float(s.get("high_freq_factor", 4.0))
        old_len = float(s.get("original_max_position_embeddings", 8192))
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out)
    raise ValueError(f"unsupported rope scaling {rope_type!r}")
