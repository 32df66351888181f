"""Tokenizers: a Hugging Face checkpoint directory's own, or one rebuilt from a GGUF file.

- ``load_hf_tokenizer(dir)``: ``transformers.AutoTokenizer`` over the local directory (offline),
  or, when the directory declares the generic fast tokenizer and a model type whose
  ``AutoTokenizer`` result is that class (``_DIRECT_MODEL_TYPES``), that class's
  ``from_pretrained`` directly: the same object, without ``AutoTokenizer``'s import of the model
  configs (and of torch where it is installed: 6.0 s vs 0.35 s for SmolLM2, measured).
- ``tokenizer_from_gguf(path)``: a byte-level BPE ``tokenizers.Tokenizer`` built from the GGUF
  vocabulary, merges and token types, with the pre-tokenizer llama.cpp uses for the file's
  ``tokenizer.ggml.pre`` type, wrapped as a ``transformers.PreTrainedTokenizerFast`` carrying the
  bos/eos/pad/unk tokens and the chat template from the GGUF metadata. The result is cached as a
  tokenizer directory under ``$JAXGRPO_CACHE_DIR`` (default ``~/.cache/jaxgrpo``), keyed by the
  file's size and a hash of its head (where GGUF keeps all metadata).

Pre-tokenisation follows llama.cpp (``llama-vocab.cpp``), which is what the model was run with:
SmolLM / StarCoder-family vocabularies split every digit on its own *before* the GPT-2 regex.
transformers' GGUF converter (5.x) omits that digit split for ``smollm``; the two differ only on
whitespace directly before a digit (``"x  1"``: llama.cpp and the original SmolLM2 tokenizer give
``x|ĠĠ|1``, transformers' GGUF conversion ``x|Ġ|Ġ|1``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from jaxgrpo.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["load_hf_tokenizer", "tokenizer_from_gguf", "build_gguf_tokenizer", "cache_dir"]

_GPT2_SPLIT_TYPES = ("gpt2", "mpt", "olmo", "jais", "trillion", "default")
_DIGIT_SPLIT_TYPES = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                      "minerva")
_LLAMA3_TYPES = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3")
_QWEN2_TYPES = ("qwen2", "deepseek-r1-qwen")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_CACHE_VERSION = "v1"


def cache_dir() -> str:
    return os.environ.get("JAXGRPO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                "jaxgrpo")


# Model types whose AutoTokenizer resolution is the generic fast tokenizer when
# tokenizer_config.json declares it (not in transformers' MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
# which remaps e.g. qwen2; tests/models/test_tokenizer.py checks that against the installed transformers).
_DIRECT_MODEL_TYPES = ("llama",)
_GENERIC_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _direct_tokenizer_class(path: str):
    """``PreTrainedTokenizerFast`` when ``AutoTokenizer`` would build exactly it for ``path``
    (generic fast class declared, no remote code, a ``tokenizer.json``, a model type of
    ``_DIRECT_MODEL_TYPES``); else None (``AutoTokenizer`` decides)."""
    import json

    try:
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            tcfg = json.load(f)
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError):
        return None
    if (tcfg.get("tokenizer_class") not in _GENERIC_FAST or "auto_map" in tcfg
            or model_type not in _DIRECT_MODEL_TYPES
            or not os.path.isfile(os.path.join(path, "tokenizer.json"))):
        return None
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast


def load_hf_tokenizer(path: str):
    """The tokenizer of a local checkpoint directory, as ``AutoTokenizer`` builds it (see the
    module docstring for the direct path), never touching the network."""
    import transformers

    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path}: checkpoint directory does not exist")
    has_files = any(os.path.isfile(os.path.join(path, f)) for f in
                    ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))
    if not has_files:
        raise CheckpointNotFoundError(f"{path}: no tokenizer.json / tokenizer_config.json in "
                                      "checkpoint directory")
    try:
        cls = _direct_tokenizer_class(path) or transformers.AutoTokenizer
        return cls.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/... depending on the problem
        raise CheckpointError(f"{path}: cannot load tokenizer ({type(e).__name__}: {e})") from None


def _file_key(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(64 << 20))  # GGUF metadata (vocab, merges, template) precedes tensor data
    return f"{h.hexdigest()[:32]}-{size}"


def _pre_tokenizer(pre_type: str, source: str):
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre_type in _GPT2_SPLIT_TYPES:
        return None, byte_level
    if pre_type in _DIGIT_SPLIT_TYPES:
        return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              byte_level])
    split = {**{t: _LLAMA3_SPLIT for t in _LLAMA3_TYPES}, **{t: _QWEN2_SPLIT for t in _QWEN2_TYPES}}
    if pre_type in split:
        norm = normalizers.NFC() if pre_type in _QWEN2_TYPES else None
        return norm, pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split[pre_type]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    supported = sorted(_GPT2_SPLIT_TYPES + _DIGIT_SPLIT_TYPES + tuple(split))
    raise CheckpointError(f"{source}: unsupported GGUF pre-tokenizer tokenizer.ggml.pre="
                          f"{pre_type!r} (supported: {supported})")


def build_gguf_tokenizer(reader, source: str):
    """A ``PreTrainedTokenizerFast`` from an open ``gguf.GGUFReader`` (see module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from jaxgrpo.models.gguf_loader import gguf_field

    kind = gguf_field(reader, "tokenizer.ggml.model", None)
    if kind != "gpt2":
        raise CheckpointError(f"{source}: unsupported GGUF tokenizer tokenizer.ggml.model={kind!r} "
                              "(only byte-level BPE, 'gpt2', is supported)")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    merges = gguf_field(reader, "tokenizer.ggml.merges")
    types = gguf_field(reader, "tokenizer.ggml.token_type", None) or [1] * len(tokens)
    pre_type = gguf_field(reader, "tokenizer.ggml.pre", "default")
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                     fuse_unk=False, byte_fallback=False,
                     ignore_merges=pre_type in _LLAMA3_TYPES)
    tk = Tokenizer(bpe)
    normalizer, pre = _pre_tokenizer(pre_type, source)
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()

    def token(key):
        i = gguf_field(reader, key, None)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = token("tokenizer.ggml.bos_token_id")
    if gguf_field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab[bos])])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens (<|im_start|>, ...) are matched whole and are special; user-defined ones are
    # matched whole but decoded as text, as llama.cpp does.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == _CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    eos, pad, unk = (token(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "padding", "unknown"))
    ctx = None
    arch = gguf_field(reader, "general.architecture", None)
    if arch is not None:
        ctx = gguf_field(reader, f"{arch}.context_length", None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        chat_template=gguf_field(reader, "tokenizer.chat_template", None),
        model_max_length=int(ctx) if ctx else int(1e30), clean_up_tokenization_spaces=False)


def tokenizer_from_gguf(path: str, *, reader=None, cache: bool = True):
    """The tokenizer of a GGUF file, from the on-disk cache when it was built before."""
    from transformers import PreTrainedTokenizerFast

    from jaxgrpo.models.gguf_loader import open_gguf

    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: GGUF file does not exist")
    target = os.path.join(cache_dir(), "gguf-tokenizers", f"{_CACHE_VERSION}-{_file_key(path)}")
    if cache and os.path.isfile(os.path.join(target, "tokenizer.json")):
        try:
            return PreTrainedTokenizerFast.from_pretrained(target, local_files_only=True)
        except Exception:  # a damaged cache entry: rebuild it below
            shutil.rmtree(target, ignore_errors=True)
    tok = build_gguf_tokenizer(reader if reader is not None else open_gguf(path), path)
    if cache:
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".tmp-")
            tok.save_pretrained(tmp)
            try:
                os.replace(tmp, target)  # atomic; a concurrent writer may have won the race
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # an unwritable cache only costs speed
    return tok
