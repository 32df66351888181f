"""The policy of a run: the decoder and tokenizer a config names, and its special token ids.

``load_policy(config)`` is what training (``jaxgrpo.loop.Trainer``), evaluation of a run
(``jaxgrpo.policy_io.load_run_policy``) and notebooks use, so all build the same model.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp
from flax import nnx

__all__ = ["load_policy", "eos_ids", "pad_id"]


def load_policy(c):
    """(model, tokenizer) from ``config.model``: real weights, or a random decoder of a small
    shape (``model.random_init_layers`` > 0) with the tokenizer of ``model.path`` (smoke runs
    and tests; only the checkpoint's config and tokenizer are read, not its weights)."""
    from jaxgrpo.models import default_model_path
    from jaxgrpo.models.attention import check_backend
    from jaxgrpo.models.decoder import Decoder
    from jaxgrpo.models.loading import load_config, load_pretrained, load_tokenizer

    check_backend(c.model.attention)  # e.g. "cudnn" on a CPU: one line, before the weights load

    # model.dtype computes, model.param_dtype stores (master weights and optimizer state).
    dtype, param_dtype = (jnp.bfloat16 if d == "bfloat16" else jnp.float32
                          for d in (c.model.dtype, c.model.param_dtype))
    path = c.model.path or str(default_model_path())
    if c.model.random_init_layers == 0:
        model, tokenizer = load_pretrained(path, dtype=param_dtype, compute_dtype=dtype)
    else:
        h = c.model.random_init_hidden
        cfg = dataclasses.replace(
            load_config(path), hidden_size=h, intermediate_size=2 * h,
            num_hidden_layers=c.model.random_init_layers, num_attention_heads=4,
            num_key_value_heads=2, head_dim=h // 4)
        model = Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(c.seed))
        tokenizer = load_tokenizer(path)
    return configure_runtime(model, c), tokenizer


def configure_runtime(model, c):
    """Apply the config's runtime choices to a built decoder (in place; returns it): the
    layer-body remat policy (``model.remat``) and the attention implementation
    (``model.attention``, ``model.attention_block``). They are static attributes of the
    graphdef, so a change means one new compile, never a change of the numbers."""
    from jaxgrpo.models.decoder import set_attention

    model.remat = c.model.remat
    return set_attention(model, c.model.attention, c.model.attention_block)


def eos_ids(model, tokenizer) -> Tuple[int, ...]:
    """Sorted ids that end a completion: the model config's EOS ids, the tokenizer's EOS and the
    chat models' end-of-turn tokens the vocabulary has."""
    ids = set(model.config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # Chat models end a turn with their end-of-turn token.
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return tuple(sorted(ids))


def pad_id(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else its EOS, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)
