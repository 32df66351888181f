"""Read GGUF files (llama.cpp's format) into a ``ModelConfig`` and Hugging-Face-named arrays.

Tensors are dequantised to float32 NumPy with llama.cpp's own ``gguf`` package; names are mapped
to Hugging Face's (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``) and,
for the ``llama`` architecture, the row permutation llama.cpp's converter applies to Q and K
(interleaved RoPE pairs, ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``) is undone, so the
result is exactly what a Hugging Face checkpoint holds and ``decoder_from_hf_tensors`` loads it.

Supported architectures: ``llama`` (SmolLM, Llama, Mistral) and ``qwen2``.
"""
from __future__ import annotations

import os
import re
import struct
from typing import Any, Dict, NamedTuple, Tuple

import numpy as np

from jaxgrpo.models.config import ModelConfig
from jaxgrpo.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["GGUFFile", "open_gguf", "gguf_field", "read_gguf", "read_gguf_config", "gguf_to_hf_name",
           "unpermute_qk"]

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


class GGUFTensorInfo(NamedTuple):
    name: str
    shape: Tuple[int, ...]  # GGUF order: fastest-varying dimension first
    tensor_type: Any  # gguf.GGMLQuantizationType
    data_offset: int  # absolute byte offset in the file
    n_bytes: int


class GGUFFile:
    """A parsed GGUF file: ``fields`` (metadata key -> Python value), ``tensors`` (infos in file
    order), ``data`` (read-only memory map of the whole file) and ``filename``.

    The format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) is parsed here rather
    than with ``gguf.GGUFReader``, which builds NumPy views for every one of the ~100k vocabulary
    strings and takes seconds; this takes tens of milliseconds. Dequantisation still uses the
    ``gguf`` package. Raises ``CheckpointError`` on truncated or corrupt files.
    """

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
    _STRING, _ARRAY = 8, 9

    def __init__(self, path: str):
        import gguf

        self.filename = path
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        self._buf = memoryview(self.data)
        self._pos = 0
        size = len(self.data)
        if bytes(self._take(4)) != b"GGUF":
            raise CheckpointError(f"{path}: not a GGUF file (bad magic bytes)")
        version = self._scalar(4)
        if version not in (2, 3):
            raise CheckpointError(f"{path}: unsupported GGUF version {version} (or a big-endian "
                                  "file); expected 2 or 3")
        n_tensors, n_kv = self._scalar(10), self._scalar(10)
        if n_tensors > size or n_kv > size:
            raise CheckpointError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        self.fields: Dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.fields[key] = self._value(self._scalar(4))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar(4)
            if n_dims > 8:
                raise CheckpointError(f"{path}: corrupt tensor info for {name!r} ({n_dims} dims)")
            dims = tuple(self._scalar(10) for _ in range(n_dims))
            ttype, offset = self._scalar(4), self._scalar(10)
            infos.append((name, dims, ttype, offset))
        align = int(self.fields.get("general.alignment", 32))
        start = -(-self._pos // align) * align
        self.tensors = []
        for name, dims, ttype, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(ttype)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise CheckpointError(f"{path}: tensor {name!r} has unknown GGML type {ttype}") from None
            n = int(np.prod(dims, dtype=np.int64))
            if n % block:
                raise CheckpointError(f"{path}: tensor {name!r} shape {dims} does not fit "
                                      f"{qtype.name} blocks of {block}")
            info = GGUFTensorInfo(name, dims, qtype, start + offset, n // block * type_size)
            if info.data_offset + info.n_bytes > size:
                raise CheckpointError(f"{path}: truncated GGUF file: tensor {name!r} ends at byte "
                                      f"{info.data_offset + info.n_bytes}, file has {size} bytes")
            self.tensors.append(info)

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._buf):
            raise CheckpointError(f"{self.filename}: truncated or corrupt GGUF file (metadata runs "
                                  f"past the end of the file at byte {self._pos})")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _scalar(self, vtype: int):
        fmt = self._SCALARS[vtype]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        n = self._scalar(10)
        try:
            return str(self._take(n), "utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.filename}: corrupt GGUF string ({e})") from None

    def _value(self, vtype: int):
        if vtype in self._SCALARS:
            return self._scalar(vtype)
        if vtype == self._STRING:
            return self._string()
        if vtype == self._ARRAY:
            etype, count = self._scalar(4), self._scalar(10)
            if etype in self._SCALARS and etype != 7:
                dt = np.dtype(self._SCALARS[etype])
                return np.frombuffer(self._take(count * dt.itemsize), dt).tolist()
            if count > len(self._buf):
                raise CheckpointError(f"{self.filename}: corrupt GGUF array length {count}")
            return [self._value(etype) for _ in range(count)]
        raise CheckpointError(f"{self.filename}: corrupt GGUF metadata (value type {vtype})")

    def tensor_data(self, info: GGUFTensorInfo) -> np.ndarray:
        """Raw bytes of a tensor as uint8 [rows, bytes_per_row] (what ``dequantize`` takes)."""
        raw = self.data[info.data_offset:info.data_offset + info.n_bytes]
        rows = int(np.prod(info.shape[1:], dtype=np.int64)) if len(info.shape) > 1 else 1
        return raw.reshape(rows, -1)


def open_gguf(path: str) -> GGUFFile:
    """Parse the metadata and tensor table of a GGUF file, checking it is complete."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: GGUF file does not exist")
    if os.path.getsize(path) < 24:
        raise CheckpointError(f"{path}: truncated GGUF file ({os.path.getsize(path)} bytes)")
    return GGUFFile(path)


def gguf_field(reader: GGUFFile, key: str, default: Any = KeyError):
    """A metadata value as Python (str / int / float / list), or ``default`` if absent."""
    if key not in reader.fields:
        if default is KeyError:
            raise CheckpointError(f"{reader.filename}: missing GGUF metadata key {key!r}")
        return default
    return reader.fields[key]


def _config_from_reader(reader, source: str) -> ModelConfig:
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(f"{source}: unsupported GGUF architecture {arch!r} "
                              f"(supported: {SUPPORTED_GGUF_ARCHITECTURES})")

    def meta(key, default=KeyError):
        return gguf_field(reader, f"{arch}.{key}", default)

    names = {t.name for t in reader.tensors}
    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    tokens = gguf_field(reader, "tokenizer.ggml.tokens", None)
    vocab = meta("vocab_size", None) or (len(tokens) if tokens is not None else None)
    if vocab is None:
        emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if emb is None:
            raise CheckpointError(f"{source}: cannot determine the vocabulary size")
        vocab = int(emb.shape[-1])
    if "rope_freqs.weight" in names:
        raise CheckpointError(f"{source}: per-frequency RoPE factors (rope_freqs, Llama-3.1 style "
                              "scaling) in GGUF files are not supported; load the Hugging Face "
                              "checkpoint instead")
    scaling = None
    stype = meta("rope.scaling.type", None)
    if stype not in (None, "none"):
        if stype != "linear":
            raise CheckpointError(f"{source}: unsupported GGUF rope scaling type {stype!r}")
        scaling = (("factor", float(meta("rope.scaling.factor"))), ("rope_type", "linear"))
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id", None)
    attn_bias = "blk.0.attn_q.bias" in names
    model_type = arch
    try:
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(meta("feed_forward_length")),
            num_hidden_layers=int(meta("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(meta("attention.head_count_kv", heads)),
            head_dim=int(meta("attention.key_length", hidden // heads)),
            rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(meta("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            tie_word_embeddings="output.weight" not in names,
            qkv_bias=True if arch == "qwen2" else attn_bias,
            o_bias=False if arch == "qwen2" else "blk.0.attn_output.bias" in names,
            mlp_bias="blk.0.ffn_up.bias" in names,
            max_position_embeddings=int(meta("context_length", 4096)),
            bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id", None),
            eos_token_ids=() if eos is None else (int(eos),),
            pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id", None),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: invalid model metadata ({e})") from None


def read_gguf_config(path: str) -> ModelConfig:
    return _config_from_reader(open_gguf(path), path)


def gguf_to_hf_name(name: str) -> str:
    """GGUF tensor name -> Hugging Face name; unknown names come back prefixed with ``gguf:``."""
    m = _BLK.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    base, _, leaf = name.rpartition(".")
    if base in _GLOBAL_NAMES and leaf in ("weight", "bias"):
        return f"{_GLOBAL_NAMES[base]}.{leaf}"
    return "gguf:" + name


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: [n*D, ...] with per-head interleaved (even, odd)
    rotary pairs back to Hugging Face's rotate-half layout (first halves, then second halves)."""
    d = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, d // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(d, *rest)


def read_gguf(path: str) -> Tuple[ModelConfig, Dict[str, np.ndarray], Any]:
    """(config, {hf_name: float32 array}, parsed file) of a GGUF file; tensors dequantised."""
    from gguf.quants import dequantize

    reader = open_gguf(path)
    cfg = _config_from_reader(reader, path)
    permute = cfg.model_type == "llama"
    tensors: Dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = gguf_to_hf_name(t.name)
        try:
            w = dequantize(reader.tensor_data(t), t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"{path}: tensor {t.name!r} has unsupported quantisation "
                                  f"{t.tensor_type.name} ({e})") from None
        # GGUF lists dims fastest-first; the row-major array is the reverse ([out, in]).
        shape = tuple(int(s) for s in reversed(t.shape))
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if permute and name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            w = unpermute_qk(w, cfg.num_attention_heads)
        elif permute and name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            w = unpermute_qk(w, cfg.num_key_value_heads)
        tensors[name] = w
    return cfg, tensors, reader
