"""Language models: the Qwen2 / Llama decoder in Flax NNX, its checkpoint loading and tokenizers.

Curated API::

    from jaxgrpo.models import load_pretrained, default_model_path
    model, tokenizer = load_pretrained(default_model_path())  # SmolLM2-135M-Instruct (GGUF)
    model, tokenizer = load_policy(config)                     # what a run config names
    logits = model(input_ids, attention_mask=mask)             # [B, T, vocab] float32

The DRA sentence encoder lives in ``jaxgrpo.models.encoder`` (imported on demand, not here).
"""
from __future__ import annotations

from jaxgrpo.errors import CheckpointError, CheckpointNotFoundError
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.attention import ATTENTION_IMPLS
from jaxgrpo.models.decoder import (Decoder, KVCache, init_cache, positions_from_mask,
                                    set_attention)
from jaxgrpo.models.loading import load_config, load_pretrained, load_tokenizer, save_pretrained
from jaxgrpo.models.packaged import (DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_PIP,
                                     default_model_path)
from jaxgrpo.models.policy import PolicyConfig, eos_ids, load_policy, pad_id

__all__ = [
    "ATTENTION_IMPLS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "DEFAULT_MODEL_PIP",
    "Decoder",
    "KVCache",
    "ModelConfig",
    "PolicyConfig",
    "default_model_path",
    "eos_ids",
    "init_cache",
    "load_config",
    "load_policy",
    "load_pretrained",
    "load_tokenizer",
    "pad_id",
    "positions_from_mask",
    "save_pretrained",
    "set_attention",
]
