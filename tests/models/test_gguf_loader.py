"""Tests for jaxgrpo.models.gguf_loader: GGUF files written from tiny checkpoints (and the real
SmolLM2-135M, slow) against transformers and the gguf reader."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.models import CheckpointError, gguf_loader, load_config, load_pretrained
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
# GGUF files written from the tiny checkpoints (llama.cpp's Q/K permutation applied)
# --------------------------------------------------------------------------------------------

def _llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py, LlamaModel.permute: the reference for the inverse we load with.
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _write_gguf(hf_dir, out, tokenizer, pre="gpt2"):
    import gguf
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    arch = cfg["model_type"]
    w = gguf.GGUFWriter(str(out), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    if cfg.get("head_dim") and cfg["head_dim"] * cfg["num_attention_heads"] != cfg["hidden_size"]:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), cfg["vocab_size"])]
    special = {a["content"] for a in tj["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(tokenizer.chat_template)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in sorted(load_file(os.path.join(hf_dir, "model.safetensors")).items()):
        t = t.astype(np.float32)
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            mod, leaf = rest.rsplit(".", 1)
            if arch == "llama" and mod == "self_attn.q_proj":
                t = _llama_cpp_permute(t, cfg["num_attention_heads"])
            if arch == "llama" and mod == "self_attn.k_proj":
                t = _llama_cpp_permute(t, cfg["num_key_value_heads"])
            gname = f"blk.{i}.{names[mod]}.{leaf}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
                     "output_norm.weight", "lm_head.weight": "output.weight"}[name]
        w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(out)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_logits_match_transformers(arch, make_tiny_checkpoint, tiny_qwen2_dir, tiny_tokenizer,
                                        tmp_path):
    if arch == "llama":  # GQA 6/2, tied; no rope scaling (GGUF stores llama3 factors as a tensor)
        hf_dir = make_tiny_checkpoint("llama_plain", "llama", seed=7, num_attention_heads=6,
                                      num_key_value_heads=2, tie_word_embeddings=True)
    else:  # untied, one KV head, head_dim != hidden / heads, q/k/v biases
        hf_dir = tiny_qwen2_dir
    path = _write_gguf(hf_dir, tmp_path / f"tiny-{arch}.gguf", tiny_tokenizer)
    model, tok = load_pretrained(path)
    ref_cfg = load_config(hf_dir)
    for field in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "head_dim",
                  "num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "qkv_bias",
                  "rms_norm_eps", "rope_theta", "num_hidden_layers"):
        assert getattr(model.config, field) == pytest.approx(getattr(ref_cfg, field)), field
    ids, mask = _batch(model.config.vocab_size, seed=5)
    err = _max_err(_jax_logits(model, ids, mask), _torch_logits(_hf_model(hf_dir), ids, mask), mask)
    print(f"tiny {arch} GGUF: max abs logit error vs transformers {err:.2e}")
    assert err < 1e-4, err
    texts = ["The capital of France is Paris.", "<|im_start|>user\n12 + 30?<|im_end|>", "héllo  🙂"]
    for text in texts:
        assert tok(text).input_ids == tiny_tokenizer(text).input_ids, text
    msgs = [{"role": "user", "content": "hi"}]
    assert (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            == tiny_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.RandomState(0).randn(3 * 8, 5)
    np.testing.assert_array_equal(gguf_loader.unpermute_qk(_llama_cpp_permute(w, 3), 3), w)


def test_gguf_errors(tmp_path, tiny_qwen2_dir, tiny_tokenizer):
    good = _write_gguf(tiny_qwen2_dir, tmp_path / "good.gguf", tiny_tokenizer)
    data = open(good, "rb").read()
    cases = {
        "magic.gguf": (b"GGML" + data[4:], r"not a GGUF file"),
        "meta.gguf": (data[:2000], r"truncated or corrupt GGUF file \(metadata runs past"),
        "data.gguf": (data[:-100], r"truncated GGUF file: tensor .* ends at byte"),
        "tiny.gguf": (data[:10], r"truncated GGUF file \(10 bytes\)"),
    }
    for name, (blob, pattern) in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=pattern) as e:
            load_pretrained(p)
        assert str(p) in str(e.value), name
    bad_pre = _write_gguf(tiny_qwen2_dir, tmp_path / "pre.gguf", tiny_tokenizer, pre="nonsense")
    with pytest.raises(CheckpointError, match=r"pre\.gguf: unsupported GGUF pre-tokenizer.*nonsense"):
        load_pretrained(bad_pre)


@pytest.mark.slow
def test_smollm2_greedy_next_token(smollm2):
    _, model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    prompts = ["The capital of France is", "One, two, three, four,"]
    want = [" Paris", " five"]
    for prompt, expected in zip(prompts, want):
        ids = tok(prompt).input_ids
        logits = model(jnp.asarray([ids]))
        assert tok.decode([int(jnp.argmax(logits[0, -1]))]) == expected, prompt


@pytest.mark.slow
def test_smollm2_logits_match_transformers_gguf(smollm2):
    """transformers' own GGUF reader (dequantise + its Q/K un-permutation) in PyTorch."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from jaxgrpo.models.loading import hf_config_dict

    path, model, tok = smollm2
    # One parse of the file (it is slow in transformers): the module built from our config only
    # names the tensors; the config transformers parses is compared with ours field by field.
    ref_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(model.config)))
    parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=ref_model)
    meta, sd = parsed["config"], parsed["tensors"]
    cfg = model.config
    assert (meta["num_hidden_layers"], meta["hidden_size"], meta["intermediate_size"],
            meta["num_attention_heads"], meta["num_key_value_heads"], meta["vocab_size"],
            meta["head_dim"], meta["max_position_embeddings"], meta["tie_word_embeddings"]) == (
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
        cfg.num_key_value_heads, cfg.vocab_size, cfg.head_dim, cfg.max_position_embeddings,
        cfg.tie_word_embeddings)
    assert (meta["rope_theta"], meta["rms_norm_eps"]) == (cfg.rope_theta, cfg.rms_norm_eps)
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (
        cfg.bos_token_id, cfg.eos_token_ids[0], cfg.pad_token_id)
    result = ref_model.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys in ([], ["lm_head.weight"])
    ref_model.eval()
    prompts = ["The capital of France is", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"]
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    err = _max_err(_jax_logits(model, ids, mask), _torch_logits(ref_model, ids, mask), mask)
    print(f"SmolLM2 GGUF logits vs transformers (PyTorch): max abs err {err:.2e}")
    assert err < 1e-3


@pytest.mark.slow
def test_smollm2_parser_matches_gguf_reader(smollm2):
    import gguf

    path = smollm2[0]
    ours = gguf_loader.open_gguf(path)
    ref = gguf.GGUFReader(path)
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert ours.fields[key] == field.contents(), key
    for a, b in zip(ref.tensors, ours.tensors, strict=True):
        assert (a.name, tuple(int(s) for s in a.shape), a.tensor_type) == (b.name, b.shape, b.tensor_type)
        assert (int(a.data_offset), int(a.n_bytes)) == (b.data_offset, b.n_bytes)
    # Spot-check raw bytes of a quantised and a float tensor.
    for i in (0, 1, len(ref.tensors) - 1):
        np.testing.assert_array_equal(np.asarray(ref.tensors[i].data).view(np.uint8).ravel(),
                                      ours.tensor_data(ours.tensors[i]).ravel())
