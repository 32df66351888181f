"""Tests for jaxgrpo.models.tokenizer: the GGUF tokenizer and the direct transformers path against
AutoTokenizer."""
from __future__ import annotations

import json
import os
import shutil
import time

import jax
import pytest

from jaxgrpo.models.tokenizer import tokenizer_from_gguf


transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _precise_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # The GGUF tokenizer cache goes to a per-session directory, not the user's ~/.cache.
    monkeypatch.setenv("JAXGRPO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jaxgrpo-cache"))


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer(smollm2):
    path = smollm2[0]
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                      gguf_file=os.path.basename(path))


_TOKENIZER_TEXTS = [
    "The capital of France is Paris.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "3.14159 + 2,718 = 5859.14159; 1e-9 x 10^9 = 1 (100%)",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindent\r\n",
    "Ünïcödé: naïve café, 東京, Москва, 🙂🚀, zero\u200bwidth",
    "  leading spaces, trailing spaces   ",
    "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n",
    "it's don't we'll I'M YOU'RE",
    "",
]


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_hf_tokenizer):
    _, _, tok = smollm2
    ref = smollm2_hf_tokenizer
    for text in _TOKENIZER_TEXTS:
        assert tok(text).input_ids == ref(text).input_ids, text
        assert tok.decode(tok(text).input_ids) == text
    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    ours = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert ours == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok(ours).input_ids == ref(ours).input_ids
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, attr) == getattr(ref, attr), attr
    assert len(tok) == len(ref) == 49152


@pytest.mark.slow
def test_smollm2_digit_split_follows_llama_cpp(smollm2, smollm2_hf_tokenizer):
    # llama.cpp's 'smollm' pre-tokenizer splits each digit before the GPT-2 regex, so whitespace
    # before a digit is its own pre-token: "x  1" -> x | ĠĠ | 1. transformers' GGUF converter
    # drops that split and gives x | Ġ | Ġ | 1. We follow llama.cpp (what the model ran with).
    # (\p{N} includes non-ASCII numerals: " ½" is Ġ | ½ here, one token Ġ½ in transformers.)
    _, _, tok = smollm2
    ids = tok("x  1").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["x", "ĠĠ", "1"]
    assert smollm2_hf_tokenizer.convert_ids_to_tokens(smollm2_hf_tokenizer("x  1").input_ids) == [
        "x", "Ġ", "Ġ", "1"]


@pytest.mark.slow
def test_smollm2_tokenizer_cache(smollm2):
    path, _, tok = smollm2
    t0 = time.perf_counter()
    cached = tokenizer_from_gguf(path)  # built by the fixture, now read from the cache
    assert time.perf_counter() - t0 < 5
    text = _TOKENIZER_TEXTS[4] + _TOKENIZER_TEXTS[6]
    assert cached(text).input_ids == tok(text).input_ids
    assert cached.chat_template == tok.chat_template


def _same_tokenizer(a, b):
    """What a run reads from a tokenizer: class, special tokens and ids, vocabulary, chat
    template, and the ids / text of encoding (with and without special tokens) and decoding."""
    assert type(a) is type(b)
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id",
                 "eos_token_id", "pad_token_id", "padding_side", "truncation_side",
                 "model_max_length", "chat_template"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.get_vocab() == b.get_vocab() and len(a) == len(b)
    assert {i: str(t) for i, t in a.added_tokens_decoder.items()} == {
        i: str(t) for i, t in b.added_tokens_decoder.items()}
    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    chat = b.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert a.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == chat
    for text in _TOKENIZER_TEXTS + [chat]:
        for special in (True, False):
            ids = b(text, add_special_tokens=special).input_ids
            assert a(text, add_special_tokens=special).input_ids == ids, (text, special)
            assert a.decode(ids) == b.decode(ids)


def test_direct_tokenizer_path_builds_what_autotokenizer_builds(tiny_llama_dir, tiny_qwen2_dir):
    """load_hf_tokenizer skips AutoTokenizer (and its torch import) only where AutoTokenizer
    would build the generic fast tokenizer anyway: the same tokenizer in every respect a run
    reads; a qwen2 directory (which transformers remaps) still goes through AutoTokenizer."""
    from transformers.models.auto.tokenization_auto import MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS

    from jaxgrpo.models import tokenizer as tok_mod

    # the allowlist's premise, against the installed transformers
    assert not set(tok_mod._DIRECT_MODEL_TYPES) & set(MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)
    assert tok_mod._direct_tokenizer_class(tiny_llama_dir) is transformers.PreTrainedTokenizerFast
    _same_tokenizer(tok_mod.load_hf_tokenizer(tiny_llama_dir),
                    transformers.AutoTokenizer.from_pretrained(tiny_llama_dir,
                                                               local_files_only=True))
    assert tok_mod._direct_tokenizer_class(tiny_qwen2_dir) is None
    _same_tokenizer(tok_mod.load_hf_tokenizer(tiny_qwen2_dir),
                    transformers.AutoTokenizer.from_pretrained(tiny_qwen2_dir,
                                                               local_files_only=True))


def test_direct_tokenizer_path_only_for_the_generic_class(tiny_llama_dir, tmp_path):
    """A declared model-specific class, remote code or a missing config.json: AutoTokenizer."""
    from jaxgrpo.models import tokenizer as tok_mod

    for change in ({"tokenizer_class": "LlamaTokenizer"}, {"auto_map": {"AutoTokenizer": ["x", None]}}):
        d = tmp_path / next(iter(change))
        shutil.copytree(tiny_llama_dir, d)
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps({**cfg, **change}))
        assert tok_mod._direct_tokenizer_class(str(d)) is None, change
    d = tmp_path / "noconfig"
    shutil.copytree(tiny_llama_dir, d)
    (d / "config.json").unlink()
    assert tok_mod._direct_tokenizer_class(str(d)) is None
