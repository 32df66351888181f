"""Tests for jaxgrpo.models.loading: safetensors checkpoints against transformers (logits, bf16,
save round trip) and one-line errors for broken checkpoints."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.models import (CheckpointError, CheckpointNotFoundError, load_pretrained,
                            save_pretrained)
from tests.models._helpers import _batch, _hf_model, _jax_logits, _max_err, _torch_logits


torch = pytest.importorskip("torch")


transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _precise_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # The GGUF tokenizer cache goes to a per-session directory, not the user's ~/.cache.
    monkeypatch.setenv("JAXGRPO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jaxgrpo-cache"))


# --------------------------------------------------------------------------------------------
# Hugging Face directories: logits parity
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded_qwen2_dir(make_tiny_checkpoint):
    return make_tiny_checkpoint("qwen2_sharded", "qwen2", shard=True, seed=3, num_key_value_heads=2,
                                tie_word_embeddings=True, num_hidden_layers=3)


@pytest.mark.parametrize("which", ["tiny_qwen2_dir", "tiny_llama_dir", "sharded_qwen2_dir"])
def test_logits_match_transformers(which, request):
    path = request.getfixturevalue(which)
    if which == "sharded_qwen2_dir":
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        assert not os.path.isfile(os.path.join(path, "model.safetensors"))
    model, tok = load_pretrained(path)
    ref_model = _hf_model(path)
    ids, mask = _batch(model.config.vocab_size)
    err = _max_err(_jax_logits(model, ids, mask), _torch_logits(ref_model, ids, mask), mask)
    print(f"{which}: max abs logit error vs transformers {err:.2e}")
    assert err < 1e-4, f"{which}: max abs logit error {err}"
    # The checkpoint's properties the test claims to cover.
    cfg = model.config
    if which == "tiny_qwen2_dir":
        assert cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size
        assert cfg.num_key_value_heads == 1 and not cfg.tie_word_embeddings
        assert model.lm_head is not None
    if which == "tiny_llama_dir":
        assert cfg.tie_word_embeddings and model.lm_head is None
        assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
    # The tokenizer is the directory's own.
    text = "The capital of France is Paris. 12 + 30 = 42"
    assert tok(text).input_ids == transformers.AutoTokenizer.from_pretrained(path).encode(text)


def test_bf16_loading_close(tiny_qwen2_dir):
    model, _ = load_pretrained(tiny_qwen2_dir, dtype=jnp.bfloat16, tokenizer=False)
    kernel = model.layers.self_attn.q_proj.kernel[...]  # stacked [L, E, H*D]
    assert kernel.dtype == jnp.bfloat16
    ids, mask = _batch(model.config.vocab_size)
    ref = _torch_logits(_hf_model(tiny_qwen2_dir), ids, mask)
    out = _jax_logits(model, ids, mask)
    scale = float(np.abs(ref[mask.astype(bool)]).max())
    assert _max_err(out, ref, mask) < 0.05 * scale


def test_bf16_checkpoint_file(make_tiny_checkpoint):
    # Most published checkpoints store bfloat16, which NumPy has no dtype for.
    path = make_tiny_checkpoint("llama_bf16", "llama", torch_dtype="bfloat16", seed=5)
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    model, _ = load_pretrained(path, tokenizer=False)  # upcast to float32
    ref_model = _hf_model(path, dtype=torch.float32)  # the same bf16 values, upcast by torch
    ids, mask = _batch(model.config.vocab_size, seed=1)
    assert _max_err(_jax_logits(model, ids, mask), _torch_logits(ref_model, ids, mask), mask) < 1e-4


def test_save_pretrained_round_trip(tiny_qwen2_dir, tmp_path):
    model, tok = load_pretrained(tiny_qwen2_dir)
    out = save_pretrained(model, tok, tmp_path / "export")
    assert sorted(f for f in os.listdir(out) if f in ("config.json", "model.safetensors",
                                                      "tokenizer.json")) == [
        "config.json", "model.safetensors", "tokenizer.json"]
    ids, mask = _batch(model.config.vocab_size, seed=2)
    ref = _torch_logits(_hf_model(tiny_qwen2_dir), ids, mask)
    # transformers reads the export, and so do we.
    assert _max_err(_torch_logits(_hf_model(out), ids, mask), ref, mask) < 1e-4
    again, tok2 = load_pretrained(out)
    assert again.config == model.config
    assert _max_err(_jax_logits(again, ids, mask), ref, mask) < 1e-4
    assert tok2("hello 123").input_ids == tok("hello 123").input_ids


def test_save_pretrained_bf16_tied(tiny_llama_dir, tmp_path):
    model, tok = load_pretrained(tiny_llama_dir)
    out = save_pretrained(model, None, tmp_path / "bf16", dtype=jnp.bfloat16)
    ref_model = _hf_model(out, dtype=torch.float32)
    assert ref_model.config.tie_word_embeddings
    back, none_tok = load_pretrained(out, tokenizer=False)
    assert none_tok is None
    ids, mask = _batch(model.config.vocab_size, seed=4)
    assert _max_err(_jax_logits(back, ids, mask), _torch_logits(ref_model, ids, mask), mask) < 1e-4


# --------------------------------------------------------------------------------------------
# Bad input: every error names the file and the problem
# --------------------------------------------------------------------------------------------

def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        load_pretrained(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_pretrained(tmp_path / "nope.gguf")


def test_missing_config(tiny_qwen2_dir, tmp_path):
    d = _copy(tiny_qwen2_dir, tmp_path / "c")
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(CheckpointError, match=r"config\.json.*missing config\.json"):
        load_pretrained(d)


def test_unsupported_architecture(tiny_qwen2_dir, tmp_path):
    d = _copy(tiny_qwen2_dir, tmp_path / "g")
    cfg_file = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(CheckpointError, match=r"config\.json.*unsupported architecture.*gpt2"):
        load_pretrained(d)


def test_mismatched_shape(tiny_qwen2_dir, tmp_path):
    d = _copy(tiny_qwen2_dir, tmp_path / "s")
    cfg_file = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["intermediate_size"] = 96
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(CheckpointError, match=r"mismatched shape.*mlp\.gate_proj\.weight: "
                                              r"expected \(96, 48\), found \(80, 48\)") as e:
        load_pretrained(d)
    assert d in str(e.value)


def test_truncated_safetensors(tiny_qwen2_dir, tmp_path):
    d = _copy(tiny_qwen2_dir, tmp_path / "t")
    f = os.path.join(d, "model.safetensors")
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_pretrained(d)
    open(f, "wb").write(data[:4])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_pretrained(d)


def test_missing_and_unexpected_tensors(tiny_qwen2_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(tiny_qwen2_dir, tmp_path / "m")
    f = os.path.join(d, "model.safetensors")
    tensors = load_file(f)
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.bias"}, f)
    with pytest.raises(CheckpointError, match=r"missing tensor.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_pretrained(d)
    save_file({**tensors, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32),
               "model.rotary_emb.inv_freq": np.zeros(4, np.float32)}, f)
    with pytest.raises(CheckpointError, match=r"1 unexpected tensor.*mlp\.extra\.weight"):
        load_pretrained(d)


def test_missing_shard(sharded_qwen2_dir, tmp_path):
    d = _copy(sharded_qwen2_dir, tmp_path / "sh")
    shard = sorted(f for f in os.listdir(d) if f.startswith("model-"))[1]
    os.remove(os.path.join(d, shard))
    with pytest.raises(CheckpointNotFoundError, match=f"{shard}: shard listed in .*index.json is missing"):
        load_pretrained(d)
