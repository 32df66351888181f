"""Load and save decoder checkpoints: Hugging Face safetensors directories and GGUF files.

Public API
----------
- ``load_pretrained(path, *, dtype=jnp.float32) -> (Decoder, tokenizer)``: ``path`` is a local
  Hugging Face checkpoint directory (config.json + model.safetensors or sharded
  model-*.safetensors with model.safetensors.index.json + tokenizer.json) or a ``.gguf`` file.
- ``load_config(path) -> ModelConfig``, ``load_tokenizer(path)``: the pieces alone.
- ``read_hf_tensors(path) -> {hf_name: np.ndarray}``: raw tensors of a directory (no torch).
- ``decoder_from_hf_tensors(cfg, tensors, *, dtype) -> Decoder``: builds the model from
  Hugging-Face-named NumPy arrays without materialising a random initialisation first.
- ``save_pretrained(model, tokenizer, path)``: writes config.json + model.safetensors +
  tokenizer files that both ``load_pretrained`` and transformers' PyTorch classes read.

Every problem with a checkpoint raises ``jaxgrpo.errors.CheckpointError`` (a ``ValueError``; the
missing-path case is ``CheckpointNotFoundError``, also a ``FileNotFoundError``) whose message names the file and the problem.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgrpo.errors import CheckpointError, CheckpointNotFoundError
from jaxgrpo.models.config import ModelConfig, rope_inv_freq
from jaxgrpo.models.decoder import Decoder

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_pretrained",
    "load_config",
    "load_tokenizer",
    "read_hf_tensors",
    "decoder_from_hf_tensors",
    "hf_tensors_from_decoder",
    "hf_config_dict",
    "save_pretrained",
]

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
# Buffers some exporters save that are recomputed from the config, not learned.
_IGNORED_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _is_gguf(path: str) -> bool:
    return str(path).lower().endswith(".gguf")


def _check_exists(path: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        kind = "GGUF file" if _is_gguf(path) else "checkpoint directory"
        raise CheckpointNotFoundError(f"{path}: {kind} does not exist")
    if not _is_gguf(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + "
                              "*.safetensors) or a .gguf file")
    return path


# --------------------------------------------------------------------------------------------
# Config and tokenizer
# --------------------------------------------------------------------------------------------

def load_config(path) -> ModelConfig:
    """The decoder config of a checkpoint directory (its config.json) or of a GGUF file."""
    path = _check_exists(path)
    if _is_gguf(path):
        from jaxgrpo.models import gguf_loader
        return gguf_loader.read_gguf_config(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointNotFoundError(f"{cfg_path}: missing config.json in checkpoint directory")
    try:
        return ModelConfig.from_json_file(cfg_path)
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise CheckpointError(msg if cfg_path in msg else f"{cfg_path}: {msg}") from None


def load_tokenizer(path):
    """The tokenizer of a checkpoint directory or GGUF file (see ``jaxgrpo.models.tokenizer``)."""
    from jaxgrpo.models import tokenizer as tok_mod
    path = _check_exists(path)
    if _is_gguf(path):
        return tok_mod.tokenizer_from_gguf(path)
    return tok_mod.load_hf_tokenizer(path)


# --------------------------------------------------------------------------------------------
# Safetensors reading (NumPy only)
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _np_dtype(st_dtype: str, file: str, name: str):
    if st_dtype in _ST_DTYPES:
        return np.dtype(_ST_DTYPES[st_dtype])
    import ml_dtypes  # a jax dependency; NumPy has no bfloat16 / float8 of its own
    extra = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
             "F8_E5M2": ml_dtypes.float8_e5m2}
    if st_dtype not in extra:
        raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {st_dtype}")
    return np.dtype(extra[st_dtype])


def _read_safetensors_header(file: str) -> Tuple[int, Dict[str, Any]]:
    """(data start offset, header dict) after checking the file is complete."""
    size = os.path.getsize(file)
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CheckpointError(f"{file}: truncated or corrupt safetensors file (header of {n} "
                                      f"bytes announced, file has {size} bytes)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{file}: truncated safetensors file: {size} bytes on disk, the header "
                              f"describes {8 + n + end} bytes")
    return 8 + n, header


def _read_safetensors_file(file: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    start, header = _read_safetensors_header(file)
    # safetensors.numpy reads every dtype NumPy knows; bfloat16 / float8 (no NumPy dtype) are read
    # from a memory map of the same documented layout.
    numpy_native = all(v["dtype"] in _ST_DTYPES for v in header.values())
    if numpy_native:
        try:
            return load_file(file)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{file}: cannot read safetensors file ({e})") from None
    mm = np.memmap(file, dtype=np.uint8, mode="r")
    out = {}
    for name, v in header.items():
        dt = _np_dtype(v["dtype"], file, name)
        a, b = (int(x) for x in v["data_offsets"])
        shape = tuple(int(s) for s in v["shape"])
        if (b - a) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise CheckpointError(f"{file}: tensor {name!r} byte range does not match its shape "
                                  f"{shape} and dtype {v['dtype']}")
        out[name] = mm[start + a:start + b].view(dt).reshape(shape)
    return out


def read_hf_tensors(path) -> Dict[str, np.ndarray]:
    """All tensors of a Hugging Face checkpoint directory, by their Hugging Face names.

    Reads ``model.safetensors`` or, when present, the shards listed in
    ``model.safetensors.index.json`` (checking every listed shard exists and holds exactly the
    tensors the index assigns to it).
    """
    path = _check_exists(path)
    index_file = os.path.join(path, SAFE_INDEX)
    single = os.path.join(path, SAFE_SINGLE)
    if os.path.isfile(index_file):
        try:
            with open(index_file) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_file}: not a valid safetensors index ({e!r})") from None
        by_file: Dict[str, set] = {}
        for name, shard in weight_map.items():
            by_file.setdefault(shard, set()).add(name)
        tensors: Dict[str, np.ndarray] = {}
        for shard, names in sorted(by_file.items()):
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise CheckpointNotFoundError(f"{shard_path}: shard listed in {index_file} is missing")
            part = _read_safetensors_file(shard_path)
            if set(part) != names:
                missing = sorted(names - set(part))[:5]
                extra = sorted(set(part) - names)[:5]
                raise CheckpointError(f"{shard_path}: tensors disagree with {index_file} "
                                      f"(missing {missing}, unlisted {extra})")
            tensors.update(part)
        return tensors
    if os.path.isfile(single):
        return _read_safetensors_file(single)
    have = sorted(os.listdir(path))
    hint = (" (a PyTorch .bin checkpoint is not supported: re-save with safetensors)"
            if "pytorch_model.bin" in have else "")
    raise CheckpointNotFoundError(f"{single}: not found (no {SAFE_SINGLE} or {SAFE_INDEX} in the "
                                  f"checkpoint directory{hint}; it holds {have[:20]})")


# --------------------------------------------------------------------------------------------
# Name mapping between the decoder's state and Hugging Face tensors
# --------------------------------------------------------------------------------------------

def _hf_names(path: Tuple, num_layers: int) -> Tuple[List[str], bool, bool]:
    """Decoder state path -> (Hugging Face tensor names, transposed?, stacked?).

    A stacked layer parameter (``layers/self_attn/q_proj/kernel``, [L, ...]) maps to the L names
    ``model.layers.{i}.self_attn.q_proj.weight``; anything else to one name.
    """
    parts = [str(p) for p in path]
    leaf = parts[-1]
    if parts[0] == "lm_head":
        return ["lm_head.weight"], True, False
    transpose = leaf == "kernel"
    suffix = "weight" if leaf in ("kernel", "embedding") else leaf  # RMSNorm weight, Linear bias
    if parts[0] == "layers":
        rest = ".".join(parts[1:-1] + [suffix])
        return [f"model.layers.{i}.{rest}" for i in range(num_layers)], transpose, True
    return ["model." + ".".join(parts[:-1] + [suffix])], transpose, False


def _abstract_decoder(cfg: ModelConfig, dtype, compute_dtype):
    def make():
        return Decoder(cfg, dtype=compute_dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    return make, nnx.eval_shape(make)


def decoder_from_hf_tensors(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], *,
                            dtype=jnp.float32, compute_dtype=None,
                            source: str = "checkpoint") -> Decoder:
    """Build a ``Decoder`` whose parameters are the given Hugging-Face-named arrays.

    Checks every parameter is present with the right shape and that no tensor is left over
    (rotary ``inv_freq`` buffers are ignored; an ``lm_head.weight`` is ignored when embeddings
    are tied). Parameters are created directly from the arrays (cast to ``dtype``); no random
    initialisation is materialised. ``compute_dtype`` defaults to ``dtype``.
    """
    compute_dtype = dtype if compute_dtype is None else compute_dtype
    make, abstract = _abstract_decoder(cfg, dtype, compute_dtype)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    np_dtype = np.dtype(jnp.dtype(dtype))
    used = set()
    missing, bad_shape = [], []
    flat = []
    for path, var in nnx.to_flat_state(params):
        names, transpose, stacked = _hf_names(path, cfg.num_hidden_layers)
        want = tuple(var.get_value().shape[1:] if stacked else var.get_value().shape)
        arrays = []
        for name in names:
            if name not in tensors:
                missing.append(name)
                continue
            used.add(name)
            arr = tensors[name]
            got_shape = tuple(arr.shape[::-1]) if transpose else tuple(arr.shape)
            if got_shape != want:
                hf_shape = want[::-1] if transpose else want
                bad_shape.append(f"{name}: expected {hf_shape}, found {tuple(arr.shape)}")
                continue
            arrays.append(np.asarray(arr.T if transpose else arr, dtype=np_dtype))
        if len(arrays) != len(names):
            continue
        # Stacked layers: one [L, ...] array, built on the host (one device transfer).
        value = np.stack(arrays) if stacked else arrays[0]
        flat.append((path, var.replace(jnp.asarray(value))))
    if bad_shape:
        raise CheckpointError(f"{source}: {len(bad_shape)} tensor(s) with mismatched shape "
                              f"for the config: " + "; ".join(bad_shape[:8]))
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} missing tensor(s): "
                              + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    leftover = sorted(k for k in tensors if k not in used and not _IGNORED_TENSORS.search(k)
                      and not (cfg.tie_word_embeddings and k == "lm_head.weight"))
    if leftover:
        raise CheckpointError(f"{source}: {len(leftover)} unexpected tensor(s) the decoder does not "
                              f"use: " + ", ".join(leftover[:8]) + (" ..." if len(leftover) > 8 else ""))
    return nnx.merge(graphdef, nnx.from_flat_state(flat), _non_param_state(cfg, make, rest))


def _non_param_state(cfg: ModelConfig, make, abstract_rest):
    """Values of the decoder's non-parameter variables (RoPE inverse frequencies, ...)."""
    known = {("inv_freq",): lambda: jnp.asarray(rope_inv_freq(cfg), jnp.float32)}
    flat = list(nnx.to_flat_state(abstract_rest))
    if all(tuple(p) in known for p, _ in flat):
        return nnx.from_flat_state([(p, v.replace(known[tuple(p)]())) for p, v in flat])
    # Unknown buffers: take them from the constructor itself. Under jit the random parameter
    # initialisers are dead code, but tracing the constructor costs seconds for deep models.
    return jax.jit(lambda: nnx.state(make(), nnx.Not(nnx.Param)))()


def hf_tensors_from_decoder(model: Decoder, dtype=None) -> Dict[str, np.ndarray]:
    """The model's parameters as Hugging-Face-named NumPy arrays ([out, in] weights); stacked
    layer parameters are split back into one tensor per layer."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names, transpose, stacked = _hf_names(path, model.config.num_hidden_layers)
        arr = np.asarray(jax.device_get(var.get_value()))
        if dtype is not None:
            arr = arr.astype(np.dtype(jnp.dtype(dtype)))
        for name, a in zip(names, arr if stacked else [arr]):
            out[name] = np.ascontiguousarray(a.T if transpose else a)
    return out


# --------------------------------------------------------------------------------------------
# Public load / save
# --------------------------------------------------------------------------------------------

def load_pretrained(path, *, dtype=jnp.float32, compute_dtype=None, tokenizer: bool = True):
    """Load ``(model, tokenizer)`` from a checkpoint directory or a ``.gguf`` file.

    ``dtype`` is the parameter dtype (float32 or bfloat16); ``compute_dtype`` (default: ``dtype``)
    the activation dtype. GGUF tensors are dequantised to float32 and then cast. With
    ``tokenizer=False`` the second element is None.
    """
    path = _check_exists(path)
    if _is_gguf(path):
        from jaxgrpo.models import gguf_loader
        cfg, tensors, reader = gguf_loader.read_gguf(path)
        model = decoder_from_hf_tensors(cfg, tensors, dtype=dtype, compute_dtype=compute_dtype,
                                        source=path)
        tok = None
        if tokenizer:
            from jaxgrpo.models.tokenizer import tokenizer_from_gguf
            tok = tokenizer_from_gguf(path, reader=reader)
        return model, tok
    cfg = load_config(path)
    tensors = read_hf_tensors(path)
    model = decoder_from_hf_tensors(cfg, tensors, dtype=dtype, compute_dtype=compute_dtype,
                                    source=path)
    return model, (load_tokenizer(path) if tokenizer else None)


def hf_config_dict(cfg: ModelConfig, dtype=jnp.float32) -> Dict[str, Any]:
    """A Hugging Face config.json dict for ``cfg`` (read by transformers 5 and by ``load_config``)."""
    arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM"}[cfg.model_type]
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling_dict:
        rope.update(cfg.rope_scaling_dict)
        rope.pop("type", None)
        rope.setdefault("rope_type", dict(cfg.rope_scaling).get("type", "default"))
    eos = list(cfg.eos_token_ids)
    d = {
        "architectures": [arch],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id,
        "dtype": str(jnp.dtype(dtype)),
    }
    if cfg.model_type != "qwen2":
        d["attention_bias"] = cfg.qkv_bias
        d["mlp_bias"] = cfg.mlp_bias
    return d


def save_pretrained(model: Decoder, tokenizer, path, *, dtype=None) -> str:
    """Write ``model`` (and ``tokenizer`` unless None) as a Hugging Face checkpoint directory.

    Files: config.json, model.safetensors (weights in ``dtype``, default: the parameters' own),
    and the tokenizer's ``save_pretrained`` output (tokenizer.json, tokenizer_config.json).
    Tied embeddings are written once (no ``lm_head.weight``), as transformers does.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = hf_tensors_from_decoder(model, dtype=dtype)
    out_dtype = next(iter(tensors.values())).dtype
    if out_dtype.name == "bfloat16":
        _save_bf16_safetensors(tensors, os.path.join(path, SAFE_SINGLE))
    else:
        save_file(tensors, os.path.join(path, SAFE_SINGLE), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config_dict(model.config, out_dtype), f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _save_bf16_safetensors(tensors: Mapping[str, np.ndarray], file: str) -> None:
    """safetensors.numpy cannot write bfloat16; write the documented layout directly."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
